"""One PBFT replica per configuration (design docs/design/membership.md 3.2 and 3.3).

Theory of operation
-------------------
`PbftReplica` stays a single-epoch state machine with a fixed set of voters. `PbftEpochs` holds
the replica of the current epoch e and implements the same core interface (node/executor.py
`ConsensusCore`); whatever it does not define is the current replica's (`__getattr__`).

Routing, by the epoch every body names:
- epoch e: to the replica;
- epoch e+1, while a change is pending, from a voter of the pending configuration: buffered,
  bounded per sender (NEXT_MESSAGES_MAX, NEXT_BYTES_MAX), fed to replica e+1 when it starts;
- an older epoch: counted `stale_epoch`; a FETCH of epoch e-1 is served up to E_{e-1} (its
  blocks only: an answer never spans two configurations, and one ending at the boundary carries
  the E certificate); an epoch-(e-1) CHECKPOINT or VIEW-CHANGE gets one certificate-only BLOCKS
  per peer per retransmission interval, so a member that missed the E certificate enters too;
- anything else: `unknown_epoch`.

`config_pending(end, next_config)` (the executor, once the block accepting a member change
executed; a restart passes the store's pending change to the constructor) sets E_e in the
replica, which then never votes above E, proposes empty batches up to E when its pool is empty,
and counts the pending change as work for its view-change timer (pbft/replica.py).

Entering epoch e+1 happens in the step where the replica has executed E and holds the stable
certificate for E (Q_e voters of e, CHECKPOINTs naming e): replica e is discarded (its
stabilisation at E collected its log; the rest of its records are deleted in this step's
write), replica e+1 starts in view 0 with start and low watermark E and the E certificate as
its stable certificate, `pbft/view` is written as [e+1, 0, 1, 0], the buffered messages are fed
in, and take_epoch_changes() tells the shell (after that step's Ready) to store the E
certificate (`checkpoints`, the config chain) and that the epoch changed. A member not in the
next configuration (removed) starts no replica: it sends no ordering message, keeps answering
as above for 4 timeouts, and `removed_at` (E, also an EpochChange to an epoch without us)
tells the shell to exit 0.

Why no sequence number is ordered by two configurations: design 3.3 (docs/protocol.md).
"""

from __future__ import annotations

import contextlib
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from consortium.crypto.codec import WireFormatError
from consortium.crypto.signing import Signer
from consortium.ledger.certificates import CheckpointCertificate
from consortium.ledger.clock import ClockOffset
from consortium.ledger.genesis import Params
from consortium.ledger.membership import Configuration
from consortium.ledger.tx import Transaction
from consortium.pbft import reasons as drop
from consortium.pbft import records
from consortium.pbft.effects import Outbound, Ready, Serve
from consortium.pbft.messages import (
    Blocks,
    Checkpoint,
    Fetch,
    Message,
    ViewChange,
    ViewReport,
    decode,
    encode,
    frame_bytes_limit,
)
from consortium.pbft.replica import PbftConfig, PbftReplica, RecoveredState

__all__ = ["EpochChange", "PbftEpochs"]

# Next-epoch messages kept per sender until we enter that epoch (like log.FutureBuffer).
NEXT_MESSAGES_MAX_PER_WINDOW = 3
NEXT_BYTES_MAX = 4 * 1024 * 1024
# A removed member keeps answering for this many view-change timeouts after its boundary.
REMOVED_LINGER_TIMEOUTS = 4

Make = Callable[[PbftConfig, Signer, RecoveredState], PbftReplica]


@dataclass(frozen=True, slots=True)
class EpochChange:
    """For the shell, in the step the replica entered `epoch`: store `certificate` (the E
    certificate of the previous configuration) in `checkpoints` and the config chain."""

    epoch: int
    end: int  # E of the previous epoch
    certificate: CheckpointCertificate


@dataclass(slots=True)
class _NextBuffer:
    messages_max: int
    bytes_max: int
    queues: dict[int, deque[tuple[Message, int]]] = field(default_factory=dict)
    sizes: Counter[int] = field(default_factory=Counter)

    def add(self, sender: int, msg: Message) -> bool:
        size = len(encode(msg))
        queue = self.queues.setdefault(sender, deque())
        if len(queue) >= self.messages_max or self.sizes[sender] + size > self.bytes_max:
            return False
        queue.append((msg, size))
        self.sizes[sender] += size
        return True

    def drain(self) -> list[tuple[int, Message]]:
        out = [(s, m) for s, q in sorted(self.queues.items()) for m, _ in q]
        self.queues.clear()
        self.sizes.clear()
        return out

    def __len__(self) -> int:
        return sum(len(q) for q in self.queues.values())


class PbftEpochs:
    def __init__(
        self,
        configuration: Configuration,
        me: int,
        params: Params,
        signer: Signer,
        *,
        make: Make,
        recovered: RecoveredState,
        start: int = 0,
        pending: tuple[int, Configuration] | None = None,
        previous: tuple[int, Configuration, CheckpointCertificate] | None = None,
        seed: bytes = b"",
    ) -> None:
        """`configuration` is the one in force (epoch e, ordering from `start` = S_e);
        `pending` the store's pending change (E, next configuration) at a restart; `previous`
        (E_{e-1}, configuration e-1, its E certificate) lets us answer members finishing it."""
        assert configuration.mode == "pbft"
        self.params = params
        self.me = me
        self.configuration = configuration
        self.start = start
        self.pending: tuple[int, Configuration] | None = None
        self.previous = previous
        self.removed_at: int | None = None  # E, once we left (not in the next configuration)
        self._make = make
        self._seed = seed
        self._signer = signer
        self._old_signer = signer  # ours in the previous epoch (a rotated key stays its)
        self._next_signer: Signer | None = None
        self._next = self._new_buffer()
        self._extra: list[Outbound] = []
        self._extra_records: list[tuple[bytes, bytes | None]] = []
        self._serve: list[Serve] = []
        self._stable: list[CheckpointCertificate] = []  # replica e's last, for the shell
        self._changes: list[EpochChange] = []
        self._answered_ms: dict[int, int] = {}
        self._claims: dict[int, int] = {}  # voters of ours speaking in a later epoch: their seq
        self._removed_since_ms: int | None = None
        self._mono_ms = 0
        self._wall_ms = 0
        self.replica: PbftReplica | None = self._make(
            PbftConfig.from_configuration(configuration, me, params, start=start, seed=seed),
            signer,
            recovered,
        )
        self.rejected: Counter[str]
        object.__setattr__(self, "rejected", self.replica.rejected)  # one count for all epochs
        if pending is not None:
            self.config_pending(*pending)

    def __setattr__(self, name: str, value: Any) -> None:
        # A name the current replica has (and this class does not define) is the replica's:
        # tests and the simulator's fault scripts set replica fields through the core.
        replica = self.__dict__.get("replica")
        if (
            name not in self.__dict__
            and replica is not None
            and hasattr(replica, name)
            and not hasattr(type(self), name)
        ):
            setattr(replica, name, value)
            return
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        replica = self.__dict__.get("replica")
        if name not in self.__dict__ and replica is not None:
            delattr(replica, name)
            return
        object.__delattr__(self, name)

    def __getattr__(self, name: str) -> Any:
        # Everything else is the current replica's (view, primary, stable_certificate, ...).
        replica = self.__dict__.get("replica")
        if replica is None:
            raise AttributeError(name)
        return getattr(replica, name)

    def _new_buffer(self) -> _NextBuffer:
        return _NextBuffer(NEXT_MESSAGES_MAX_PER_WINDOW * self.params.window, NEXT_BYTES_MAX)

    @property
    def epoch(self) -> int:
        return self.configuration.epoch

    @property
    def end(self) -> int | None:
        return None if self.pending is None else self.pending[0]

    # --- inputs -----------------------------------------------------------------------------

    def config_pending(
        self, end: int, next_config: Configuration, next_signer: Signer | None = None
    ) -> None:
        """A member change is pending: epoch e ends at `end` (E) and `next_config` orders
        from E+1. `next_signer`: this member's signer in it (a rotated key), if not ours."""
        assert next_config.epoch == self.epoch + 1 and next_config.mode == "pbft"
        assert self.pending is None or self.pending == (end, next_config)
        self.pending = (end, next_config)
        self._next_signer = next_signer
        if self.replica is not None:
            self.replica.set_end(end)
            self._maybe_enter()

    def tick(self, mono_ms: int, wall_ms: int) -> None:
        self._mono_ms, self._wall_ms = max(self._mono_ms, mono_ms), wall_ms
        if self.replica is not None:
            self.replica.tick(mono_ms, wall_ms)
            self._maybe_enter()

    def receive(self, sender: int, msg: bytes | Message) -> None:
        if isinstance(msg, bytes):
            try:
                msg = decode(msg, self.params)
            except WireFormatError:
                self.rejected[drop.MALFORMED] += 1
                return
        epoch = msg.epoch
        if epoch == self.epoch and self.replica is not None:
            self.replica.receive(sender, msg)
            self._maybe_enter()
        elif epoch == self.epoch + 1 and self.pending is not None:
            member = self.pending[1].member(sender)
            if member is None or msg.sender != sender:
                self.rejected[drop.UNKNOWN_EPOCH] += 1
            elif not self._next.add(sender, msg):
                self.rejected[drop.NEXT_EPOCH_FULL] += 1
        elif epoch < self.epoch:
            self.rejected[drop.STALE_EPOCH] += 1
            if self.previous is not None and epoch == self.epoch - 1:
                self._answer_previous(sender, msg, self.previous[0], self.previous[1])
        else:
            self.rejected[drop.UNKNOWN_EPOCH] += 1
        if epoch > self.epoch:
            self._later_epoch(sender, msg)

    def _later_epoch(self, sender: int, msg: Message) -> None:
        """A voter of our epoch speaking in a later one claims to be past our end: its seq
        (a CHECKPOINT's, a FETCH's from_seq - 1, ...) counts as a claim of how far it executed.
        f+1 such claims start a FETCH, as CHECKPOINTs above the window do (the replica takes the
        (f+1)-th highest claim, so f liars cannot move it). Nothing is adopted from them: the
        blocks fetched are checked against their certificates. Without this an idle member cut
        off across a boundary never catches up (tests/pbft/test_epoch_changes.py)."""
        replica = self.replica
        if replica is None or msg.sender != sender or self.configuration.member(sender) is None:
            return
        if isinstance(msg, Blocks):
            seq = msg.height
        elif isinstance(msg, ViewReport):
            seq = msg.last_executed
        elif isinstance(msg, Fetch):
            seq = msg.from_seq - 1
        else:
            seq = getattr(msg, "seq", 0)
        if isinstance(seq, int) and seq > 0:
            self._claims[sender] = max(self._claims.get(sender, 0), seq)
            replica.claim_executed(sender, seq)

    def inputs(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext() if self.replica is None else self.replica.inputs()

    @property
    def clock(self) -> ClockOffset:
        assert self.replica is not None
        return self.replica.clock

    @clock.setter
    def clock(self, value: ClockOffset) -> None:
        assert self.replica is not None
        self.replica.clock = value

    def propose(self, tx: Transaction) -> None:
        self.propose_all((tx,))

    def propose_all(self, txs: Sequence[Transaction]) -> None:
        if self.replica is not None:
            self.replica.propose_all(txs)

    def executed(self, seq: int, block_hash: bytes) -> None:
        assert self.replica is not None, "a removed member executes nothing more"
        self.replica.executed(seq, block_hash)
        self._maybe_enter()

    def served(self, serve: Serve, frame_bytes: int) -> None:
        if serve.epoch == self.epoch and self.replica is not None:
            self.replica.served(serve, frame_bytes)

    def take_ready(self) -> Ready:
        if self.replica is not None:
            ready = self.replica.take_ready()
        else:
            ready = Ready([], [], [], [], [], [])
        ready.records[:0] = self._extra_records
        ready.messages.extend(self._extra)
        ready.serve.extend(self._serve)
        ready.stable_checkpoints[:0] = self._stable
        self._extra_records, self._extra, self._serve, self._stable = [], [], [], []
        return ready

    def take_epoch_changes(self) -> list[EpochChange]:
        """The epochs entered since the last call, for the shell (with that step's Ready)."""
        changes, self._changes = self._changes, []
        return changes

    @property
    def recovering(self) -> bool:
        return self.replica is not None and self.replica.recovering

    @property
    def pending_count(self) -> int:
        return 0 if self.replica is None else self.replica.pending_count

    def check_invariants(self) -> None:
        if self.replica is not None:
            self.replica.check_invariants()
            assert self.replica.epoch == self.epoch
            assert self.replica.config.end == self.end
        assert len(self._next) <= NEXT_MESSAGES_MAX_PER_WINDOW * self.params.window * 1024

    def status(self) -> dict[str, Any]:
        out = self.replica.status() if self.replica is not None else {}
        if self.epoch or self.pending is not None or self.removed_at is not None:
            # (a network that never changed members reports what it always did)
            out["epoch"] = self.epoch
            out["epoch_start"] = self.start
            out["epoch_end"] = self.end
            out["removed_at"] = self.removed_at
            out["next_epoch_buffered"] = len(self._next)
        return out

    # --- entering the next epoch --------------------------------------------------------------

    def _maybe_enter(self) -> None:
        replica = self.replica
        if replica is None or self.pending is None:
            return
        end, nxt = self.pending
        cert = replica.stable_certificate
        if replica.last_executed < end or cert is None or cert.seq != end:
            return
        # Executed E and hold its certificate by Q_e voters of e (the replica stabilised it:
        # from Q CHECKPOINTs of epoch e, or a verified certificate).
        old_records = self._retire(replica, end)
        previous_config = self.configuration
        self.previous = (end, previous_config, cert)
        self.configuration = nxt
        self.start = end
        self.pending = None
        self._changes.append(EpochChange(nxt.epoch, end, cert))
        self._old_signer = self._signer
        if nxt.member(self.me) is None:
            self.replica = None
            self.removed_at = end
            self._removed_since_ms = self._mono_ms
            self._extra_records.extend(old_records)
            self._next = self._new_buffer()
            return
        signer = self._next_signer or self._signer
        self._signer, self._next_signer = signer, None
        view_record = (records.VIEW_KEY, records.view_value(0, True, 0, epoch=nxt.epoch))
        new = self._make(
            PbftConfig.from_configuration(nxt, self.me, self.params, start=end, seed=self._seed),
            signer,
            RecoveredState(end, replica._last_block_hash, cert, []),
        )
        new.rejected = self.rejected
        new.clock = replica.clock  # (our wall clock's offset does not change with the epoch)
        self.replica = new
        self._extra_records.extend(old_records)
        self._extra_records.append(view_record)
        # Its first tick (the clock is known) and the messages buffered for this epoch.
        if self._wall_ms:
            new.tick(self._mono_ms, self._wall_ms)
        for sender, msg in self._next.drain():
            new.receive(sender, msg)
        # Claims heard from the later epoch: how far its members are, for our catch-up there.
        for sender, seq in sorted(self._claims.items()):
            new.claim_executed(sender, seq)
        self._claims = {}
        # What replica e still had to send (its last CHECKPOINT, answers) goes out too.
        self._next = self._new_buffer()

    def _retire(self, replica: PbftReplica, end: int) -> list[tuple[bytes, bytes | None]]:
        """Replica e's remaining records, deleted in the step that enters e+1 (its messages of
        this step are still sent: its CHECKPOINT for E may be what others need)."""
        ready = replica.take_ready()
        self._extra.extend(ready.messages)
        self._serve.extend(ready.serve)
        self._stable.extend(ready.stable_checkpoints)  # (E's, when it formed in this step)
        out: list[tuple[bytes, bytes | None]] = list(ready.records)
        for seq in range(max(end - self.params.window, 0) + 1, end + 1):
            if seq % self.params.checkpoint_interval == 0:
                out.append((records.checkpoint_key(seq), None))
        out.append((records.VIEW_CHANGE_KEY, None))
        out.append((records.NEW_VIEW_KEY, None))
        assert not ready.committed, "E executed: nothing above it committed in epoch e"
        return out

    # --- members finishing the previous epoch ---------------------------------------------------

    def _answer_previous(self, sender: int, msg: Message, end: int, config: Configuration) -> None:
        """An epoch we left at `end`: serve its blocks up to E (FETCH), and answer a
        CHECKPOINT or VIEW-CHANGE with the E certificate, once per interval per peer."""
        member = config.member(sender)
        if member is None or msg.sender != sender:
            return
        cert = self.previous[2] if self.previous is not None else None
        if cert is None or cert.seq != end:
            return
        if (
            self.removed_at is not None
            and self._removed_since_ms is not None
            and self._mono_ms - self._removed_since_ms
            > REMOVED_LINGER_TIMEOUTS * self.params.request_timeout_ms
        ):
            return
        interval = max(1, self.params.request_timeout_ms // 4)
        if self._mono_ms - self._answered_ms.get(sender, -(2**62)) < interval:
            return
        if isinstance(msg, Fetch):
            if msg.from_seq > end:
                return
            self._answered_ms[sender] = self._mono_ms
            self._serve.append(
                Serve(
                    sender,
                    max(1, msg.from_seq),
                    frame_bytes_limit(self.params),
                    epoch=config.epoch,
                    last_seq=end,
                    stable=cert,
                )
            )
        elif isinstance(msg, (Checkpoint, ViewChange)):
            self._answered_ms[sender] = self._mono_ms
            frame = encode(
                Blocks.create(
                    self._previous_signer(),
                    config.chain_id,
                    end + 1,
                    end,
                    cert,
                    (),
                    self.me,
                    epoch=config.epoch,
                )
            )
            self._extra.append(Outbound(sender, frame))

    def _previous_signer(self) -> Signer:
        return self._old_signer
