"""The rules of the PBFT papers that decide agreement, as named pure functions (Castro & Liskov,
OSDI 1999 §4; TOCS 2002 §2.3), so that a reader looking for "the prepared predicate" finds it
here and not inside the replica's message handling (pbft/replica.py calls these).

    prepared(...)          pre-prepare + Q-1 (2f) matching PREPAREs from distinct backups (§4.2)
    committed_local(...)   prepared + Q (2f+1) matching COMMITs from distinct members (§4.2)
    view_to_join(...)      f+1 members asked for views above ours: join the smallest (§4.5.2)

Q is the quorum, ceil((n+f+1)/2) (PbftConfig.quorum): 2f+1 when n = 3f+1, and in general the
size at which any two quorums share f+1 members, one of them honest. The papers' other rules
are functions already, where their data lives:

    the NEW-VIEW's O (which batch each seq is re-issued with, §4.4)   viewchange.plan_new_view
    a valid prepared certificate in a VIEW-CHANGE (§4.4)               viewchange.check_proof
    a stable checkpoint: Q matching CHECKPOINTs (§4.3)                 CheckpointVotes.quorum_hash
    the window h < seq <= h + L (§4.3)                                 MessageLog.in_window

Each function takes what the replica holds (votes keyed by their authenticated sender, one per
member: the first it received) and returns the members whose votes make the certificate, lowest
index first, so the caller builds the certificate from exactly those; None while the predicate
does not hold.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from consortium.pbft.messages import Commit, Prepare, PrePrepare

__all__ = ["committed_local", "matching", "prepared", "view_to_join"]


def matching(
    preprepare: PrePrepare, votes: Mapping[int, Prepare] | Mapping[int, Commit]
) -> list[int]:
    """The members whose vote (PREPARE or COMMIT, keyed by sender) matches the PRE-PREPARE:
    same view, sequence number and digest. In member order."""
    pp = preprepare
    return sorted(
        s
        for s, v in votes.items()
        if v.digest == pp.digest and v.view == pp.view and v.seq == pp.seq
    )


def prepared(
    preprepare: PrePrepare, prepares: Mapping[int, Prepare], quorum: int
) -> list[int] | None:
    """prepared(m, v, n, i) (OSDI'99 §4.2; TOCS'02 §2.3.3): the replica holds the PRE-PREPARE
    for m in view v with sequence number n and Q-1 PREPAREs (2f when n = 3f+1) from distinct
    backups that match it. The primary's PRE-PREPARE stands for its vote: a PREPARE from it
    never counts (the replica drops one on arrival, prepare_from_primary).

    Together with Q-1 backups the primary makes Q members, so two batches cannot prepare at
    one (v, n): the quorums would share an honest member that prepared both.

    Returns the Q-1 backups whose PREPAREs form the prepared certificate (lowest index first:
    exactly Q-1, what a VIEW-CHANGE carries and viewchange.check_proof admits), or None."""
    backups = [s for s in matching(preprepare, prepares) if s != preprepare.sender]
    if len(backups) < quorum - 1:
        return None
    return backups[: quorum - 1]


def committed_local(
    preprepare: PrePrepare, is_prepared: bool, commits: Mapping[int, Commit], quorum: int
) -> list[int] | None:
    """committed-local(m, v, n, i) (OSDI'99 §4.2; TOCS'02 §2.3.3): prepared(m, v, n, i) holds
    and the replica holds Q COMMITs (2f+1 when n = 3f+1) from distinct members, its own
    possibly among them, that match the PRE-PREPARE. Then Q members prepared m at (v, n), f+1
    of them honest, so every later view re-issues m at n (§4.4): the batch may execute.

    Returns the Q members whose COMMITs form the commit certificate (lowest index first), or
    None."""
    if not is_prepared:
        return None
    senders = matching(preprepare, commits)
    if len(senders) < quorum:
        return None
    return senders[:quorum]


def view_to_join(own_view: int, latest_views: Iterable[int], f: int) -> int | None:
    """OSDI'99 §4.5.2 (liveness): a replica holding valid VIEW-CHANGEs from f+1 other members
    for views above its own moves to the smallest view in that set, even if its own timer has
    not expired: one of them is honest, so the view change is real, while f faulty members
    alone can never make it move.

    `latest_views`: the view of each other member's latest valid VIEW-CHANGE. Of the views
    above ours, the set taken is the f+1 highest, so the view joined is the (f+1)-th highest:
    the highest view that f+1 members asked for (or a later one). None with fewer than f+1."""
    above = sorted((v for v in latest_views if v > own_view), reverse=True)
    if len(above) < f + 1:
        return None
    return above[f]
