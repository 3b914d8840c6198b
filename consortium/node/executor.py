"""The Ready executor: the one way a consensus core's Ready is carried out, by the node's Trio
shell (node/runtime.py) and by the simulator (consortium/sim) alike.

It holds no Trio and does no I/O of its own: it turns each Ready into an ordered list of
effects, executes committed batches (raft: entries, transferred blocks) into blocks on the
application state it is given, signs them, reports them to the core, and takes completions
as inputs (`write_done(n)`). Whoever runs it carries the effects out in list order: the Trio
shell on sockets and SQLite (fsync on a worker thread under load), the simulator on its
network and in-memory disks, where a completion may come late, or never (a crash).

The order of a step (`Executor.step`), for both modes:

1. `Send(early)`: a raft leader's appends and heartbeats, which may leave before its own write
   (Raft thesis 10.2.1: it counts itself only for entries reported durable with persisted()).
   pbft has none: every message a replica sends is logged first.
2. Committed work executes: each committed batch or entry (or block transferred to a raft
   member installing a snapshot) is built into a block on the state (ledger.state.build_block),
   applied, signed with our block signature, and reported to the core (executed(),
   entry_applied(), installed()). What that produces (a pbft CHECKPOINT vote and stable
   checkpoint, a raft compaction point) joins this step: it goes in the same write as the
   blocks, so a crash never leaves the ledger ahead of the core's records or the reverse.
3. `Executed(block)` for each block: the shell pushes the receipts clients watch now, before the
   block's write. Sound: the transaction is committed and its block fixed (pbft: 2f+1 members
   prepared it durably before any COMMIT left, so it commits at that sequence number in every
   later view and re-executes to the same block, whose timestamp is the proposal's; raft: the
   entry is durable on a majority, counting this member only once persisted() reported its own
   write). A member that loses power before writing the block rebuilds the same one.
4. `Write(n)`: ONE durable write (one fsync) of the core's records, the blocks with their
   certificates, our block signatures and stable checkpoints; and, in the first step that
   finds the core past its recovery gate, the deletion of the store's recovery mark (with the
   records that took the core there, so a crash keeps both or neither).
5. If the write holds records or checkpoints (`Write.holds`), what depends on them waits for
   `write_done(n)`: `Send(messages)` (a vote or an acknowledgement is on disk before it leaves),
   `Serve` (fetches answered from the store), `Reads`. A write of blocks alone holds nothing:
   no message depends on a block being on disk, so they follow the Write at once and the shell
   may run that write in the background while the core goes on (writes still complete in
   order: the shell starts write n+1 only after write n).
6. `write_done(n)`: the core learns its records are durable (raft: persisted(), after which a
   leader counts itself for those entries), then `Durable(n)`: what needs the blocks stored
   (receipts of duplicates answered from the store, followers, metrics).

`write_failed(n)` poisons the executor: nothing after a failed write is ever written (its
blocks were rolled back; what followed them would leave the disk in a state no crash
produces).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from consortium.crashft import node as raft
from consortium.crashft.messages import Entry
from consortium.crashft.messages import TransferredBlock as RaftTransferredBlock
from consortium.crashft.transfer import replay_block
from consortium.crypto.signing import Domain, Signer
from consortium.ledger.block import Block, BlockHeader
from consortium.ledger.certificates import CheckpointCertificate, SignedVote, block_signature_body
from consortium.ledger.clock import ClockOffset
from consortium.ledger.state import Execution, KeyValueState, build_block
from consortium.ledger.store import RECOVERY_MARK_KEY
from consortium.ledger.tx import Transaction
from consortium.pbft import effects as pbft
from consortium.pbft.epochs import PbftEpochs
from consortium.pbft.replica import PbftReplica

StagedBlock = tuple[Block, Execution, bytes | None]  # block, its execution, its certificate


class Outgoing(Protocol):
    @property
    def dest(self) -> int | None: ...

    @property
    def frame(self) -> bytes: ...


class ConsensusCore(Protocol):
    """What the shell and the executor need of a core (pbft.replica.PbftReplica and
    crashft.node.RaftNode both satisfy it): inputs, and a Ready that take_ready() drains
    (a drain only: the inputs did the work)."""

    rejected: Counter[str]  # peer messages dropped, by reason (pbft/reasons.py, crashft/reasons.py)
    clock: ClockOffset  # our wall clock against the network's time

    @property
    def recovering(self) -> bool: ...

    @property
    def pending_count(self) -> int: ...

    def tick(self, mono_ms: int, wall_ms: int) -> None: ...

    def inputs(self) -> contextlib.AbstractContextManager[None]: ...

    def receive(self, sender: int, msg: Any) -> None: ...

    def propose_all(self, txs: Sequence[Transaction]) -> Any: ...

    def take_ready(self) -> pbft.Ready | raft.Ready: ...

    def status(self) -> dict[str, Any]: ...

    def check_invariants(self) -> None: ...


# --- effects ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Send these frames now (dest None: to every other member)."""

    messages: Sequence[Outgoing]


@dataclass(frozen=True, slots=True)
class Executed:
    """A block executed (applied to the state, not yet written): push its watched receipts.
    `origin` is what it was built from (a pbft CommittedBatch, a raft Entry or a raft
    TransferredBlock)."""

    block: Block
    vote: SignedVote  # our signature over it
    origin: pbft.CommittedBatch | Entry | RaftTransferredBlock


@dataclass(frozen=True, slots=True)
class NoOpApplied:
    """A raft no-op entry applied (a new leader's first entry): no block."""

    entry: Entry


@dataclass(frozen=True, slots=True)
class Refused:
    """A transferred block did not reproduce the header it came with (the core was told)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Write:
    """Write these durably, in one transaction and one fsync, then report write_done(n) (or
    write_failed(n)). Writes complete in order."""

    n: int
    records: list[tuple[bytes, bytes | None]]
    blocks: list[StagedBlock]
    signatures: list[tuple[int, SignedVote]]
    checkpoints: list[CheckpointCertificate]
    holds: bool  # records or checkpoints: the step's messages wait for write_done(n)


@dataclass(frozen=True, slots=True)
class Serve:
    """Answer a peer's fetch from the block store (pbft: pbft.transfer.blocks_reply and then
    PbftReplica.served(); raft: crashft.transfer.blocks_reply)."""

    request: pbft.Serve | raft.Serve


@dataclass(frozen=True, slots=True)
class Reads:
    """Raft ReadIndex: reads released (answer once the ledger applied their index) or failed."""

    released: list[raft.ReadState]
    failed: list[tuple[int, str]]


@dataclass(frozen=True, slots=True)
class Durable:
    """Write n is durable, with these blocks and our signatures over them."""

    n: int
    blocks: list[tuple[Block, SignedVote]]


Effect = Send | Executed | NoOpApplied | Refused | Write | Serve | Reads | Durable


@dataclass(slots=True)
class _Pending:
    write: Write
    after: list[Effect]  # what waits for the write
    log_end: tuple[int, int] | None
    blocks: list[tuple[Block, SignedVote]] = field(default_factory=list)


class Executor:
    """Carries out one core's Readies as effects (see the module docstring for the order)."""

    def __init__(
        self,
        core: PbftReplica | PbftEpochs | raft.RaftNode,
        app: KeyValueState,
        head: BlockHeader,
        signer: Signer,
        chain_id: bytes,
        me: int,
        *,
        durable_head: Callable[[], BlockHeader] | None = None,
        applied_index: int = 0,
        recovery_mark: bool = False,
    ) -> None:
        self.core = core
        self.app = app
        self.signer = signer
        self.chain_id = chain_id
        self.me = me
        self._applied = head  # the last block applied to `app` (written or not)
        self._durable_head = durable_head
        self.applied_index = applied_index  # raft: the last entry applied
        self._next_write = 1
        self._pending: dict[int, _Pending] = {}  # writes started and not yet durable
        self._certs_above: list[CheckpointCertificate] = []  # pbft: stable, above our ledger
        self.failed = False
        # The store holds a recovery mark (ledger.store.RECOVERY_MARK_KEY: restored from a
        # backup, or its data lost); deleted in the write of the first step past the gate.
        self.recovery_mark = recovery_mark

    # --- the head -----------------------------------------------------------------------------

    @property
    def head(self) -> BlockHeader:
        """The head the next block executes on, and that `app` reflects: the last one executed,
        written or not (the store's head is the last durable one; above ours only if something
        wrote the store directly)."""
        if self._durable_head is not None:
            durable = self._durable_head()
            if durable.height > self._applied.height:
                return durable
        return self._applied

    @property
    def writes_pending(self) -> int:
        return len(self._pending)

    # --- a step -------------------------------------------------------------------------------

    def step(self) -> list[Effect]:
        """The effects of the core's next Ready, in order ([] when it asked for nothing)."""
        assert not self.failed, "nothing is carried out after a failed write"
        core = self.core
        ready = core.take_ready()
        forget_mark = self.recovery_mark and not core.recovering
        if not ready and not forget_mark:
            return []
        effects: list[Effect] = []
        staged: list[StagedBlock] = []
        votes: list[tuple[int, SignedVote]] = []
        executed: list[Effect] = []
        records = list(ready.records)
        messages: list[Outgoing] = list(ready.messages)
        serve: list[Effect] = []
        reads_ok: list[raft.ReadState] = []
        reads_failed: list[tuple[int, str]] = []
        checkpoints: list[CheckpointCertificate] = []
        log_end: tuple[int, int] | None = None
        while True:
            if ready.early:
                effects.append(Send(list(ready.early)))
            serve += [Serve(s) for s in ready.serve]
            if isinstance(ready, raft.Ready):
                log_end = ready.log_end or log_end
                reads_ok += ready.reads
                reads_failed += ready.read_failures
                work = bool(ready.committed or ready.install)
                for entry in ready.committed:
                    executed.append(self._apply_entry(entry, staged, votes))
                for transferred in ready.install:
                    executed.append(self._install(transferred, staged, votes))
            else:
                checkpoints += ready.stable_checkpoints
                work = bool(ready.committed)
                for batch in ready.committed:
                    executed.append(self._execute(batch, staged, votes))
            if not work:
                break
            # What executing produced (a CHECKPOINT vote, a compaction point) joins this
            # step's write; its messages still wait for it.
            ready = core.take_ready()
            records += ready.records
            messages += ready.messages
        if not isinstance(ready, raft.Ready):
            checkpoints = self._certified(checkpoints, staged)
        if forget_mark:
            records.append((RECOVERY_MARK_KEY, None))
            self.recovery_mark = False
        effects += executed
        after: list[Effect] = []
        if messages:
            after.append(Send(messages))
        after += serve
        if reads_ok or reads_failed:
            after.append(Reads(reads_ok, reads_failed))
        if not (records or staged or checkpoints):
            return effects + after
        write = Write(
            self._next_write,
            records,
            staged,
            votes,
            checkpoints,
            holds=self._holds(records, checkpoints),
        )
        self._next_write += 1
        blocks = [(b, v) for (b, _, _), (_, v) in zip(staged, votes, strict=True)]
        now, later = self._order(write, after)
        self._pending[write.n] = _Pending(write, later, log_end, blocks)
        return effects + now

    def _holds(
        self,
        records: list[tuple[bytes, bytes | None]],
        checkpoints: list[CheckpointCertificate],
    ) -> bool:
        """Whether the step's messages depend on its write: they do on the core's records
        (votes, acknowledgements, log entries) and stable checkpoints, never on blocks alone.
        (The simulator's checker-teeth tests override this to show a mislabelled write is
        caught.)"""
        return bool(records or checkpoints)

    def _order(self, write: Write, after: list[Effect]) -> tuple[list[Effect], list[Effect]]:
        """The write, then what goes now; and what waits for write_done. (The simulator's
        checker-teeth tests override this with a shell that sends before the write.)"""
        if write.holds:
            return [write], after
        return [write, *after], []

    def write_done(self, n: int, now: tuple[int, int] | None = None) -> list[Effect]:
        """Write n is durable: the core learns it (raft: persisted(), then a tick at `now`, the
        time it became durable); returns what waited for it, then Durable(n)."""
        assert not self.failed
        assert n == min(self._pending), f"writes complete in order ({n}, {sorted(self._pending)})"
        pending = self._pending.pop(n)
        if pending.log_end is not None:
            assert isinstance(self.core, raft.RaftNode)
            self.core.persisted(*pending.log_end)
            if now is not None:
                # The core learns time only from ticks: a transfer target's TimeoutNow window
                # counts from when the write became durable, before the acknowledgements it
                # released leave.
                self.core.tick(*now)
        return [*pending.after, Durable(n, pending.blocks)]

    def write_failed(self, n: int) -> None:
        """Write n failed: its blocks were rolled back; nothing is written after it."""
        self.failed = True
        self._pending.clear()

    # --- executing ----------------------------------------------------------------------------

    def _sign(self, block: Block) -> SignedVote:
        body = block_signature_body(block.height, block.hash, self.me)
        return SignedVote(body, self.signer.sign(Domain.BLOCK, self.chain_id, body))

    def _stage(
        self,
        block: Block,
        execution: Execution,
        certificate: bytes,
        staged: list[StagedBlock],
        votes: list[tuple[int, SignedVote]],
    ) -> SignedVote:
        # Applied now, so the next block executes on top of it; the write stores the same
        # execution durably.
        self.app.apply(execution)
        self._applied = block.header
        staged.append((block, execution, certificate))
        vote = self._sign(block)
        votes.append((block.height, vote))
        return vote

    def _next_head(self, staged: list[StagedBlock]) -> BlockHeader:
        return staged[-1][0].header if staged else self.head

    def _execute(
        self,
        batch: pbft.CommittedBatch,
        staged: list[StagedBlock],
        votes: list[tuple[int, SignedVote]],
    ) -> Effect:
        block, execution = build_block(
            self._next_head(staged),
            ("pbft", batch.seq, batch.proposed_ms),
            batch.proposed_ms,
            batch.txs,
            self.app,
        )
        assert block.height == batch.seq, "in pbft, height equals sequence number"
        vote = self._stage(block, execution, batch.certificate.encode(), staged, votes)
        core = self.core
        assert not isinstance(core, raft.RaftNode)
        core.executed(block.height, block.hash)
        return Executed(block, vote, batch)

    def _certified(
        self, stable: list[CheckpointCertificate], staged: list[StagedBlock]
    ) -> list[CheckpointCertificate]:
        """pbft: the stable checkpoints the ledger may record now. One above our ledger (we are
        catching up by state transfer) is in the core's records; the ledger's table gets it
        once its block is stored, so the ledger never certifies a block it does not hold."""
        height = staged[-1][0].height if staged else self.head.height
        self._certs_above += stable
        now = [c for c in self._certs_above if c.seq <= height]
        self._certs_above = [c for c in self._certs_above if c.seq > height][-4:]
        return now

    def _apply_entry(
        self, entry: Entry, staged: list[StagedBlock], votes: list[tuple[int, SignedVote]]
    ) -> Effect:
        core = self.core
        assert isinstance(core, raft.RaftNode)
        head = self._next_head(staged)
        self.applied_index = entry.index
        if entry.is_noop:
            core.entry_applied(entry.index, head.height, head.hash)
            return NoOpApplied(entry)
        block, execution = build_block(
            head,
            ("raft", entry.term, entry.index, entry.proposed_ms),
            entry.proposed_ms,
            entry.txs,
            self.app,
        )
        vote = self._stage(block, execution, entry.certificate.encode(), staged, votes)
        core.entry_applied(entry.index, block.height, block.hash)
        return Executed(block, vote, entry)

    def _install(
        self,
        transferred: RaftTransferredBlock,
        staged: list[StagedBlock],
        votes: list[tuple[int, SignedVote]],
    ) -> Effect:
        core = self.core
        assert isinstance(core, raft.RaftNode)
        result = replay_block(self._next_head(staged), transferred, self.app)
        if isinstance(result, str):
            core.install_failed(result)
            return Refused(f"snapshot install: {result}")
        block, execution, (term, index) = result
        vote = self._stage(block, execution, transferred.certificate, staged, votes)
        self.applied_index = max(self.applied_index, index)
        core.installed(block.height, block.hash, term, index)
        return Executed(block, vote, transferred)
