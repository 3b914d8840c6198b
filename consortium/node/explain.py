"""Why a member is not making progress, in words an operator can act on.

The cores report what they are doing as structured, read-only status (pbft: `view_change`,
`catching_up`, `waiting_for`; raft: `election`, `installing_snapshot`, `unresponsive`); the shell
adds what only it knows (which peers are connected, how long the height has not moved). This
module turns both into sentences with member names, for `consortium status`, GET /readyz and
GET /status:

    view change to 5 in progress: 2 of 3 needed VIEW-CHANGE messages
    behind by 1,200 blocks, catching up from n2
    no quorum: n3 and n4 unreachable
    no leader: election in progress (term 7): 1 of 2 votes
    clock: this member's clock is 600.0 s ahead of the batches a quorum committed (...)
    n=4 f=1: 3 of 4 up, tolerates 0 more                     (the fault budget)

A member is READY (GET /readyz answers 200) exactly when `blockers()` is empty: it reaches a
quorum, is not recovering from a restored backup or lost state, is not in a view change or
election, is not far behind, its clock agrees with the network's time and it has not stalled
with work pending. `waiting_for` is finer detail (the next message a slot needs), shown but not
blocking: it changes every few milliseconds on a healthy node.

Pure functions of their inputs, so the words are unit-tested against the cores' harnesses.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class PeerLink:
    """What the shell knows of one peer's connections (transport.peer_status)."""

    index: int
    name: str
    outbound: bool  # we hold a live connection to it (it answered our ping recently)
    inbound: bool  # it holds one to us (a frame came on it recently)
    silent_s: float | None = None  # a connection is up but nothing came for this long
    duplicate: str = ""  # "two processes claim n2 (from ADDR and ADDR)", seen recently

    @property
    def up(self) -> bool:
        """Counted as up: the link works both ways. Peers deliver to us on THEIR connection
        (transport: two one-way connections), so reaching a peer says nothing of whether it
        reaches us; a member no peer can reach (its listen address not the one genesis lists,
        a firewall on its peer port) hears nothing and must not say it is ready."""
        return self.outbound and self.inbound

    @property
    def state(self) -> str:
        if self.silent_s is not None and not (self.outbound and self.inbound):
            return f"silent for {self.silent_s:.0f} s"
        if self.outbound and self.inbound:
            return "connected"
        if self.outbound:
            return "outbound only"
        if self.inbound:
            return "inbound only"
        return "unreachable"


def join_names(names: Sequence[str]) -> str:
    """'n3', 'n3 and n4', 'n2, n3 and n4'."""
    if len(names) <= 1:
        return "".join(names)
    return f"{', '.join(names[:-1])} and {names[-1]}"


def fault_budget(n: int, f: int, quorum: int, up: int) -> str:
    """How many more members may go down before the network stops: `up - quorum` (with
    n = 3f+1 or 2f+1 this is f minus the members already down)."""
    head = f"n={n} f={f}: {up} of {n} up"
    if up >= quorum:
        return f"{head}, tolerates {up - quorum} more"
    return f"{head}, no quorum ({quorum} needed): no progress until a member returns"


def peer_warnings(links: Sequence[PeerLink]) -> list[str]:
    """What an operator must see that does not stop this member (so no reason it is not
    ready: a stray copy of one member's home must not take every other member out of a load
    balancer): two processes claiming one member."""
    return [
        f"{link.duplicate}: the newer connection is refused while the older answers; "
        f"stop one of them (two copies of {link.name}'s home)"
        for link in links
        if link.duplicate
    ]


def name_members(text: str, names: Sequence[str]) -> str:
    """The cores speak of members by index ('primary 2', 'member 3'); operators by name."""

    def name(index: str) -> str:
        i = int(index)
        return names[i] if 0 <= i < len(names) else index

    def many(match: re.Match[str]) -> str:
        indexes = re.split(r", ", match.group(2))
        return f"{match.group(1)} {', '.join(name(i) for i in indexes)}"

    return re.sub(r"\b(primary|members?|leaders?|transferred by) (\d+(?:, \d+)*)\b", many, text)


def blockers(
    mode: str,
    core: dict[str, Any],
    *,
    names: Sequence[str],
    me: int,
    quorum: int,
    links: Sequence[PeerLink],
    behind_blocks_max: int,
    stalled_s: float | None = None,
) -> list[str]:
    """Every reason this member cannot make progress now (empty: it can), most basic first.

    `core` is the core's status(); `links` this member's peers; `stalled_s` how long the
    height has not moved while transactions wait (None: not stalled, or nothing waiting);
    `behind_blocks_max` how far behind the others a member may be and still count as ready.
    """
    reasons: list[str] = []
    unreachable = [
        link.name + (f" (silent for {link.silent_s:.0f} s)" if link.silent_s is not None else "")
        for link in links
        if not link.up
    ]
    up = 1 + sum(1 for link in links if link.up)
    if up < quorum:
        # A silent link is up but carries nothing: named as silent, not as a refused dial.
        quiet = [link for link in links if link.silent_s is None]
        deaf = [link.name for link in quiet if link.outbound and not link.inbound]
        mute = [link.name for link in quiet if link.inbound and not link.outbound]
        detail = "; ".join(
            [
                f"{join_names(deaf)} cannot connect to this member (check its peer listen "
                "address and firewall)"
            ]
            * bool(deaf)
            + [f"this member cannot connect to {join_names(mute)}"] * bool(mute)
        )
        reasons.append(
            f"no quorum: {join_names(unreachable)} unreachable" + (f" ({detail})" if detail else "")
        )
    down = {link.name for link in links if not link.up}
    recovering = core.get("recovering")
    if recovering:
        reasons.append(_recovering(mode, recovering))
    if mode == "pbft":
        reasons += _pbft_blockers(core, names, me, down, behind_blocks_max)
    else:
        reasons += _raft_blockers(core, names, quorum, down, up >= quorum, behind_blocks_max)
    reasons += clock_blockers(mode, core, names)
    if stalled_s is not None and not reasons:
        detail = name_members(str(core.get("waiting_for") or ""), names)
        pending = int(core.get("pending_txs") or 0)
        reasons.append(
            f"no progress for {stalled_s:.1f} s with {pending:,} transactions pending"
            + (f": waiting for {detail}" if detail else "")
        )
    return reasons


def _recovering(mode: str, rec: dict[str, Any]) -> str:
    """A member started from a restored backup or lost state, behind the recovery gate
    (pbft/recovery.py; crashft/node.py "Recovery")."""
    head = f"recovering from {rec.get('from') or 'a restart'}"
    floor = rec.get("floor")
    if mode == "pbft":
        until = "it counts as one of the f faulty members"
        if floor is None:
            return (
                f"{head}: {rec['reports']} of {rec['needed']} members answered with their view; "
                f"it sends no votes until then and {until}"
            )
        view = int(rec["view"])
        if view < int(floor) or not rec.get("view_active"):
            return f"{head}: it sends no votes before view {floor} (it is in view {view}); {until}"
        return (
            f"{head}: in view {view}, catching up to height {int(rec['target']):,} "
            f"(at {int(rec['executed']):,}); until then {until}"
        )
    until = "it counts as unavailable"
    if floor is None:
        # Answers of members recovering themselves do not count (crashft/node.py "Recovery").
        others = int(rec.get("recovering_peers") or 0)
        also = f" ({others} more answered but are recovering too)" if others else ""
        return (
            f"{head}: {rec['reports']} of {rec['needed']} members answered with their "
            f"term{also}; it grants no vote and does not campaign until then, and {until}"
        )
    term = int(rec["term"])
    if term < int(floor):
        return (
            f"{head}: it grants no vote and does not campaign before term {floor} (it is in term "
            f"{term}); {until}"
        )
    return (
        f"{head}: in term {term}, waiting to commit an entry of this term from the leader; "
        f"until then {until}"
    )


def clock_blockers(mode: str, core: dict[str, Any], names: Sequence[str]) -> list[str]:
    """This member's clock, when the core found it off the network's time (ledger/clock.py):
    pbft, and a raft follower, measure it against batches a quorum accepted; a raft leader
    against the median of a majority's clocks, and proposes nothing meanwhile."""
    clock = core.get("clock") or {}
    if not clock.get("disagrees") or clock.get("offset_ms") is None:
        return []
    offset_ms, limit_ms = int(clock["offset_ms"]), int(clock["limit_ms"])
    side = "ahead of" if offset_ms > 0 else "behind"
    head = f"clock: this member's clock is {abs(offset_ms) / 1000:,.1f} s {side}"
    limit = f"more than {limit_ms / 1000:,.1f} s"
    if mode == "pbft":
        return [
            f"{head} the batches a quorum committed ({limit}): its PREPAREs are withheld; "
            "fix its time source"
        ]
    if core.get("role") == "leader":
        to = clock.get("handing_to")
        then = (
            f"handing leadership to {names[int(to)]}"
            if to is not None and 0 <= int(to) < len(names)
            else "no member whose clock agrees to hand leadership to"
        )
        samples = int(clock["samples"])
        clocks = "1 member's clock" if samples == 1 else f"{samples} members' clocks"
        return [f"{head} the median of {clocks} ({limit}): not proposing; {then}"]
    return [
        f"{head} the entries its leader proposed ({limit}): as leader it would hand "
        "leadership away; fix its time source"
    ]


def _pbft_blockers(
    core: dict[str, Any], names: Sequence[str], me: int, down: set[str], behind_max: int
) -> list[str]:
    reasons: list[str] = []
    diverged = core.get("diverged")
    if diverged:
        reasons.append(
            f"diverged from the network: at seq {int(diverged['seq'])} this member executed "
            f"block {str(diverged['ours'])[:12]}, a quorum certified "
            f"{str(diverged['certified'])[:12]}; its state is not the network's and it signs "
            "no more votes: it sets its store aside and fetches the ledger from the others "
            '(docs/operations.md, "A member that diverged")'
        )
    vc = core.get("view_change")
    if vc:
        have, needed, view = int(vc["view_changes"]), int(vc["needed"]), int(vc["view"])
        # Members at this view or a later one: what the NEW-VIEW timer counts (a NEW-VIEW
        # itself needs `needed` VIEW-CHANGEs for exactly this view).
        members = int(vc.get("members_at_or_above", have))
        primary = names[int(vc["new_view_from"])]
        alone = vc.get("alone")
        if alone:
            working = join_names([names[int(i)] for i in alone["members"]])
            reasons.append(
                f"view change to {view}: this member is alone in it for "
                f"{int(vc.get('waited_ms') or 0) / 1000:.1f} s while {working} work in view "
                f"{int(alone['view'])}; it counts as one of the f faulty members until their "
                f"next view change reaches view {view}, and follows their blocks by state "
                "transfer meanwhile"
            )
        elif members < needed:
            reasons.append(
                f"view change to {view} in progress: {members} of {needed} needed VIEW-CHANGE "
                "messages"
            )
        elif have < needed:
            reasons.append(
                f"view change to {view}: {members} members asked for view {view} or later, "
                f"{have} for view {view} itself; moving on to view {view + 1} unless a NEW-VIEW "
                "comes in time"
            )
        elif int(vc["new_view_from"]) == me:
            reasons.append(f"view change to {view}: this member sends NEW-VIEW next")
        else:
            gone = " (unreachable)" if primary in down else ""
            reasons.append(
                f"view change to {view}: waiting for NEW-VIEW from {primary}{gone} "
                f"({have} VIEW-CHANGE messages held)"
            )
    catching = core.get("catching_up")
    if catching:
        source = catching.get("from")
        who = f"from {names[int(source)]}" if source is not None else "(choosing a member)"
        reasons.append(f"behind by {int(catching['behind']):,} blocks, catching up {who}")
    else:
        executed = [int(x) for i, x in enumerate(core.get("peers_executed") or []) if i != me]
        last = int(core.get("last_executed") or 0)
        ahead = sorted(executed, reverse=True)
        # The f+1-th highest claim: at least one honest member has executed that far.
        f = (len(names) - 1) // 3
        target = ahead[f] if len(ahead) > f else 0
        if target - last > behind_max:
            reasons.append(f"behind by {target - last:,} blocks, catching up")
    return reasons


def _raft_blockers(
    core: dict[str, Any],
    names: Sequence[str],
    quorum: int,
    down: set[str],
    connected_quorum: bool,
    behind_max: int = 64,
) -> list[str]:
    reasons: list[str] = []
    election = core.get("election")
    role = core.get("role")
    behind = int(core.get("leader_commit") or 0) - int(core.get("applied_index") or 0)
    if role == "follower" and behind > behind_max and not core.get("installing_snapshot"):
        leader = core.get("leader")
        source = f"from {names[int(leader)]}" if leader is not None else "(no leader known)"
        reasons.append(f"behind by {behind:,} entries, catching up {source}")
    if election:
        kind = "pre-vote" if election["pre_vote"] else "election"
        why = f"; {election['reason']}" if election.get("reason") else ""
        reasons.append(
            f"no leader: {kind} in progress (term {election['term']}): {election['votes']} of "
            f"{election['needed']} votes{name_members(why, names)}"
        )
    elif core.get("leader") is None and role != "leader":
        reasons.append(f"no leader: waiting for an election (term {core.get('term')})")
    install = core.get("installing_snapshot")
    if install:
        leader = core.get("leader")
        source = f"from {names[int(leader)]}" if leader is not None else "(no leader known)"
        reasons.append(
            f"behind by {int(install['behind']):,} blocks, catching up {source} "
            f"(snapshot to height {int(install['height']):,})"
        )
    if role == "leader" and connected_quorum:
        silent = [names[int(p)] for p in core.get("unresponsive") or []]
        if 1 + len(names) - 1 - len(silent) < quorum:
            reasons.append(f"no quorum: {join_names(silent)} not responding to the leader")
    return reasons


def peer_rows(
    mode: str,
    core: dict[str, Any],
    links: Sequence[PeerLink],
    height: int,
    names: Sequence[str],
) -> dict[str, dict[str, Any]]:
    """Per peer: connection state and, where this member knows it, how far behind it is (pbft:
    the highest sequence it showed it executed by a CHECKPOINT, or committed by a COMMIT, since
    checkpoints come only every checkpoint_interval and a peer level with us would show a lag
    of up to that many blocks on an idle network; raft, on the leader: its match index)."""
    rows: dict[str, dict[str, Any]] = {}
    executed = core.get("peers_executed") or []
    committed = core.get("peers_committed") or []
    progress = core.get("progress") or {}
    for link in links:
        row: dict[str, Any] = {"state": link.state}
        if mode == "pbft" and link.index < len(executed):
            row["executed"] = int(executed[link.index])
            shown = int(executed[link.index])
            if link.index < len(committed):
                shown = max(shown, int(committed[link.index]))
            row["lag"] = max(0, height - shown)
        elif str(link.index) in progress:
            info = progress[str(link.index)]
            row["match_index"] = info.get("match")
            row["lag"] = info.get("lag")
        rows[link.name] = row
    return rows
