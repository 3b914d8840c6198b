"""The raft mode of a member: the Raft core (crashft/node.py) and what the shell does for it
alone (decoding peer frames, ReadIndex reads, leadership transfers, answering block fetches,
its status fields and log lines). Composed into runtime.Node, whose executor (node/executor.py)
carries out each Ready.

Its Ready is carried out by the executor (node/executor.py states the order of a step once):
a leader's appends leave before its write, committed entries (and transferred blocks) are
applied into blocks, one durable write, then persisted() (after which, never before, the leader
counts its own new entries), then the messages that waited for the write, fetch answers
(serve) and ReadIndex reads (reads: answered once the ledger has applied their index).

Between members nothing is signed in raft mode (docs/raft.md, "Trust model": the members trust
each other; the peer handshake still authenticates each connection with the member's key). The
leader signs each batch entry (the block certificate) and every member signs its block hashes
for client receipts, so receipts and the ledger stay attributable and auditable offline.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from consortium.crashft import messages as raft_messages
from consortium.crashft import reasons as drop
from consortium.crashft.messages import TransferredBlock
from consortium.crashft.node import (
    LEADER,
    READ_TIMEOUT_MS,
    RaftConfig,
    RaftNode,
    ReadState,
    RecoveredState,
    Serve,
)
from consortium.crashft.transfer import blocks_reply
from consortium.crypto.codec import WireFormatError
from consortium.ledger.state import CachedTable
from consortium.node.errors import ReadRefused
from consortium.node.events import ReadAbandoned, ReadRequest, TransferRequest
from consortium.node.parts import MemberParts

READ_TIMEOUT_S = READ_TIMEOUT_MS / 1_000
READS_WAITING_MAX = 10_000
# Signed transfer requests seen in the current term (carried out or refused), remembered to
# refuse replays: each request carries a nonce its client drew, so an operator asking again
# signs a new body, and the same bytes again are a replay. The term moves on only when a member
# campaigns (a transfer's target does on TimeoutNow), which clears them; a transfer abandoned
# leaves the term as it was. A body older than the last this many, replayed, could start one
# more transfer to the target it names: at most one per E (the core's rule).
TRANSFERS_REMEMBERED_MAX = 64


@dataclass(slots=True)
class _PendingRead:
    done: trio.Event
    index: int = -1  # the raft index to have applied before answering
    failure: str = ""


class RaftMode:
    """The raft side of a member (runtime.Node composes it in)."""

    name = "raft"

    def __init__(self, parts: MemberParts) -> None:
        self.parts = parts
        self.genesis = parts.genesis
        self.me = parts.me
        store = parts.store
        head = store.head
        cons = head.consensus
        point = (int(cons[1]), int(cons[2])) if cons and cons[0] == "raft" else None
        recovered = RecoveredState.from_records(
            store.load_records(b"raft/"),
            self.genesis.params,
            height=head.height,
            block_hash=head.hash,
            last_block_point=point,
        )
        self.core = RaftNode(
            RaftConfig.from_genesis(self.genesis, self.me, seed=os.urandom(16)),
            parts.signer,
            tx_ok=parts.tx_cache.check,
            recovered=recovered,
            executed=self._executed,
            recovering=parts.recovering_from is not None,
        )
        self.start_applied_index = recovered.applied_index  # the executor's from then on
        self._applied: Callable[[], int] = lambda: self.start_applied_index
        self._read_ids = itertools.count(1)
        self._pending_reads: dict[int, _PendingRead] = {}
        self._leader_logged: tuple[int, int | None] = (self.core.term, self.core.leader)
        # Signed bodies seen this term -> whether they were carried out (bounded, oldest out).
        self._transfers_seen: dict[bytes, bool] = {}
        self._transfers_term = self.core.term
        self._clock_handoffs_logged = 0
        self._clock_stuck_logged = ""

    def _executed(self, tx_ids: list[bytes]) -> set[bytes]:
        """Which of a batch's ids our ledger executed, its last blocks written or not (the
        application state has every block applied; the client port sees only the store)."""
        app = self.parts.app
        replay = app.replay
        if isinstance(replay, CachedTable):
            # One query for the batch; the block that executes these ids then finds them cached.
            replay.prefetch(tx_ids)
        # Unexpired at the head, as the in-memory replay set (pruned) holds them: the store
        # keeps an executed transaction's id past its expiry (ledger/store.py, format 4).
        now = app.last_timestamp_ms
        return {t for t in tx_ids if (e := replay.get(t)) is not None and e >= now}

    # --- inputs -----------------------------------------------------------------------------

    def core_ms(self, mono_ms: int) -> int:
        """Raft keeps the plain monotonic clock: its leader advances follower clock samples by
        it (pbft_mode.RunningClock says why pbft does not)."""
        return mono_ms

    async def decode(self, sender: int, frame: bytes) -> raft_messages.Message | None:
        """A peer frame decoded (None: malformed, counted)."""
        try:
            msg = raft_messages.decode(frame, self.genesis.params)
        except WireFormatError as exc:
            self.core.rejected[drop.MALFORMED] += 1
            self.parts.ratelog.warning(
                f"malformed:{sender}", f"malformed message from member {sender}: {exc}"
            )
            return None
        if isinstance(msg, raft_messages.Forward):
            # The member that took these from a client verified each signature before
            # forwarding (ClientService._submit), and raft members trust each other: one
            # verification per transaction, as the protocol needs, not one per hop.
            self.parts.tx_cache.trust(msg.txs)
        return msg

    def inputs(self) -> contextlib.AbstractContextManager[None]:
        """A drain of events as one input of the core (RaftNode.inputs)."""
        return self.core.inputs()

    def receive(self, sender: int, msg: Any) -> None:
        core = self.core
        if isinstance(msg, raft_messages.TimeoutNow):
            # Whether to campaign depends on how long ago our last entry arrived
            # (RaftNode._on_timeout_now); events are handled with the time of the last
            # tick, so after a pause (SIGSTOP, a stalled VM) one that waited in the queue
            # while the leader gave the transfer up would be judged as of before the pause.
            core.tick(*self.parts.now())
        core.receive(sender, msg)

    def propose(self, txs: list[Any]) -> None:
        refused = self.core.propose_all(txs).count(False)
        if refused:
            self.parts.count_rejected_submit("overloaded", refused)

    def read(self, read_id: int) -> None:
        self.core.read(read_id)

    def read_abandoned(self, read_id: int) -> None:
        self.core.read_abandoned(read_id)

    def transfer(self, target: int, term: int, body: bytes) -> str | None:
        """A member-signed transfer request (service._maintenance_refusal checked the key and
        signature), in the core task, so the term it is checked against is the core's now."""
        return self._transfer(target, term, body)

    def leader_hint(self) -> int | None:
        """The leader a client should submit to next, when it is another member."""
        leader = self.core.leader
        return leader if leader is not None and leader != self.core.me else None

    # --- what the executor asks ---------------------------------------------------------------

    def diverged(self) -> str | None:
        """None: raft trusts its members not to lie, and a follower's log is repaired by the
        leader's (a damaged store is found at open, ledger/store.py)."""
        return None

    def attach(self, applied_index: Callable[[], int]) -> None:
        """The executor's count of the raft index applied (reads wait for it)."""
        self._applied = applied_index

    @property
    def applied_index(self) -> int:
        """The last raft index our ledger applied (written or not)."""
        return self._applied()

    def after_step(self) -> None:
        self._release_reads()
        self._log_leader()

    def serve(self, request: Any) -> None:
        assert isinstance(request, Serve)
        self._serve_fetch(
            request.peer, request.term, request.from_height, request.to_height, request.count
        )

    def reads(self, released: list[ReadState], failed: list[tuple[int, str]]) -> None:
        for state in released:
            pending = self._pending_reads.get(state.read_id)
            if pending is not None:
                pending.index = state.index
        for read_id, why in failed:
            pending = self._pending_reads.get(read_id)
            if pending is not None:
                pending.failure = why
                pending.done.set()

    def _serve_fetch(
        self, peer: int, term: int, from_height: int, to_height: int, count: int
    ) -> None:
        def block_at(height: int) -> TransferredBlock | None:
            stored = self.parts.store.get_block(height)
            if stored is None or stored.certificate is None:
                return None
            return TransferredBlock(stored.block.header, stored.block.txs, stored.certificate)

        frame = blocks_reply(
            term, from_height, to_height, count, self.genesis.params.frame_bytes_max, block_at
        )
        self.parts.send_peer(peer, frame)

    def _log_leader(self) -> None:
        core = self.core
        if core.clock_handoff_count != self._clock_handoffs_logged:
            # A hand-off because our clock is off the majority's: what, to whom, and why.
            new = core.clock_handoff_count - self._clock_handoffs_logged
            for line in list(core.clock_handoffs)[-new:]:
                self.parts.log.warning("clock: %s", line)
            self._clock_handoffs_logged = core.clock_handoff_count
        if core.clock_stuck != self._clock_stuck_logged:
            self._clock_stuck_logged = core.clock_stuck
            if core.clock_stuck:
                self.parts.log.warning("clock: term %d: %s", core.term, core.clock_stuck)
        state = (core.term, core.leader)
        if state == self._leader_logged:
            return
        self._leader_logged = state
        if core.leader is None:
            self.parts.log.warning("term %d: no leader (%s)", core.term, core.last_election_reason)
        else:
            self.parts.log.warning(
                "term %d: leader %s%s",
                core.term,
                self.genesis.members[core.leader].name,
                " (this member)" if core.leader == self.me else "",
            )

    # --- reads and maintenance ----------------------------------------------------------------

    def _release_reads(self) -> None:
        for pending in self._pending_reads.values():
            if 0 <= pending.index <= self.applied_index and not pending.done.is_set():
                pending.done.set()

    async def read_value(self, key: bytes) -> list[Any]:
        """A linearizable read (ReadIndex): the leader confirms with a heartbeat quorum that it
        still leads, and we answer once our ledger has applied the index it returned."""
        if len(self._pending_reads) >= READS_WAITING_MAX:
            raise ReadRefused("overloaded: too many reads waiting")
        read_id = next(self._read_ids)
        pending = _PendingRead(trio.Event())
        self._pending_reads[read_id] = pending
        try:
            await self.parts.events.send(ReadRequest(read_id))
            with trio.move_on_after(READ_TIMEOUT_S):
                await pending.done.wait()
            if pending.failure:
                raise ReadRefused(pending.failure)
            if not pending.done.is_set():
                await self.parts.events.send(ReadAbandoned(read_id))
                raise ReadRefused(
                    f"leadership not confirmed by a quorum within {READ_TIMEOUT_S:g} s "
                    f"({self.core.status()['waiting_for'] or 'no quorum reachable'})"
                )
            return self.parts.signed_read(key, self.parts.app.kv.get(key))
        finally:
            del self._pending_reads[read_id]

    def _transfer(self, target: int, term: int, body: bytes) -> str | None:
        """A member-signed transfer request (service._maintenance_refusal checked the key and
        signature), in the event loop, so the term it is checked against is the core's now."""
        core = self.core
        if core.role != LEADER:
            return f"not the leader (leader: {core.leader})"
        if term != core.term:
            return f"signed for term {term}, but this member leads term {core.term}: sign it again"
        if self._transfers_term != core.term:
            self._transfers_seen.clear()  # requests for earlier terms are refused above
            self._transfers_term = core.term
        seen = self._transfers_seen.get(body)
        if seen is not None:
            # Refused ones too: replayed later, when the core's rules would take it, the same
            # bytes would move leadership without anyone asking again.
            return f"a replay of a request already {'carried out' if seen else 'refused'}"
        why = core.transfer_leadership(target)
        self._transfers_seen[body] = why is None
        while len(self._transfers_seen) > TRANSFERS_REMEMBERED_MAX:
            del self._transfers_seen[next(iter(self._transfers_seen))]
        return why

    async def transfer_leadership(self, target: int, term: int, body: bytes) -> str | None:
        request = TransferRequest(target, term, body)
        await self.parts.events.send(request)
        with trio.move_on_after(2.0):
            await request.answered.wait()
        return request.answer[0] if request.answer else "the node did not answer within 2 s"

    # --- status -------------------------------------------------------------------------------

    def log_fields(self) -> dict[str, object]:
        core = self.core
        return {
            "node": self.parts.member.name,
            "mode": "raft",
            "term": core.term,
            "index": core.commit,
            "height": self.parts.store.height,
        }

    def mode_status(self, core: dict[str, Any]) -> dict[str, Any]:
        names = [m.name for m in self.genesis.members]
        leader = core.get("leader")
        return {
            "term": core["term"],
            "role": core["role"],
            "leader": None if leader is None else names[leader],
            "commit_index": core["commit_index"],
            "applied_index": core["applied_index"],
            "last_index": core["last_index"],
            "snapshot_index": core["snapshot_index"],
            "followers": {names[int(p)]: info for p, info in core.get("progress", {}).items()},
            "stable_checkpoint": core["snapshot_index"],
            # Elections started here: raft's leader changes, shown where pbft shows its view
            # changes (consortium_view_changes_total, one name for both modes).
            "view_changes": core["elections"],
            "evidence": [],
        }
