"""What the PBFT and Raft simulated clusters share: the shell around n simulated members, with
its scheduled fault injections, trace lines, crashes that lose unsynced writes, the durable
record store, message sends into the seeded network, the one step loop (SimShell.step: member by
member, what is due now handed to its core as one drain, as the node runtime hands a drain of
its events, then the tick, then one Ready carried out), and each member's wall clock. Each
cluster names its core (_core), which submissions a member takes (_takes) and what its checkers
see of each effect.

Carrying out a core's Ready: every member runs the production executor (node/executor.py),
whose effects SimShell._carry_out carries out in its order: sends into the network, blocks
executed into the member's in-memory ledger (the checkers see each one), one write per step to
its simulated disk, then what waited for the write. The disk: a write that holds (records) is
durable at once, unless a crash was armed for it (crash_mid_write), which loses it and all
that would have followed it; a write of blocks alone is left in flight, as the runtime's
background write, and becomes durable at the member's next write or tick, or never, if it
crashes first. A crash rolls the member's ledger back to its durable blocks (its application
state re-executed from them), as a process restarting from its store would find it.
With broken_shell=True the member runs a broken executor (BrokenExecutor: every message leaves
before the write it depends on), and its disk makes writes durable only every BROKEN_FSYNC_MS,
so a crash loses what it said it had written: the checker-teeth tests show the checkers catch
that.

Clocks: real time is EPOCH_MS + now_ms; a member's wall clock reads it, plus an offset, or a
frozen reading, that set_clock changes (schedule it with at() to make a clock jump mid-run).
With a ClockChecker (the clock mixes), a member also judges each client copy it receives the
way the node's submit check does (ledger.clock.expiry_now_ms: the earlier of its clock and the
last block's time advanced since it executed), and refuses it as expired; the checker says
whether that refusal, and each block's time, is one the clock rules allow."""

from __future__ import annotations

import heapq
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import Generic, Protocol, TypeVar, assert_never

from consortium.ledger.block import Block, BlockHeader
from consortium.ledger.clock import expiry_now_ms
from consortium.ledger.store import RECOVERY_MARK_KEY
from consortium.ledger.tx import Transaction
from consortium.node.executor import (
    ConsensusCore,
    Durable,
    Effect,
    Executed,
    Executor,
    NoOpApplied,
    Reads,
    Refused,
    Send,
    Serve,
    Write,
)
from consortium.sim.checkers import ClockChecker, check_converged
from consortium.sim.network import SimNetwork

EPOCH_MS = 1_700_000_000_000  # simulated wall clock at simulated time 0
BROKEN_FSYNC_MS = 100  # broken_shell: how often its disk makes writes durable
IDLE_CHECK_EVERY = 8  # ticks: an idle member's fuller invariants are checked on every 8th


class BrokenExecutor(Executor):
    """TESTS ONLY: an executor that sends every message before the write it depends on is
    durable (a vote leaves before it is on disk): what the checker-teeth tests run, to show
    the checkers catch a member that forgets what it said after a crash."""

    def _order(self, write: Write, after: list[Effect]) -> tuple[list[Effect], list[Effect]]:
        return [*after, write], []


class ShellNode(Protocol):
    index: int
    up: bool
    crash_mid_write: bool
    crash_after_step: bool  # armed by a crash_mid_write that met a background write
    executor: Executor
    unsynced: list[Write]  # written and not yet durable (lost by a crash)
    records: dict[bytes, bytes]  # durable
    durable_height: int  # the last block durable on its disk
    head: BlockHeader  # the last block executed (durable or not)
    committed_ids: set[bytes]

    @property
    def name(self) -> str: ...

    @property
    def block_hashes(self) -> list[bytes]: ...

    def explain(self) -> str: ...


class Outgoing(Protocol):
    @property
    def dest(self) -> int | None: ...

    @property
    def frame(self) -> bytes: ...


N = TypeVar("N", bound=ShellNode)


class SimShell(ABC, Generic[N]):
    n: int
    nodes: list[N]
    net: SimNetwork
    now_ms: int
    lost_writes: int
    submitted: list[bytes]
    trace: Callable[[str], None] | None
    _scheduled: list[tuple[int, int, Callable[[], None]]]
    _scheduled_seq: int
    steps: int
    tick_ms: int
    _next_retry_ms: int
    _restart_after_armed_ms: dict[int, int]  # node -> restart delay of its armed crash
    _client_queue: list[tuple[int, int, int, Transaction]]
    _client_seq: int
    client_delay_ms: tuple[int, int]
    rng: random.Random
    clock_offset_ms: dict[int, int]  # member -> how far its wall clock is off real time
    clock_frozen_ms: dict[int, int]  # member -> the one reading its stopped clock gives
    clock_check: ClockChecker | None
    own_clock_expiry: bool  # TESTS ONLY: submissions judged by the member's clock alone
    _agreed: dict[int, tuple[int, int]]  # member -> (last block's time, now_ms it executed)
    _touched: set[int]  # members given input since their last full invariant check
    broken_shell: bool

    # --- carrying out a Ready: the production executor's effects -------------------------------

    def _carry_out(self, node: N) -> bool:
        """Carry out what member `node`'s core asks for, step by step, in the executor's order
        (node/executor.py), as the node runtime does; then the cluster's own bookkeeping.
        Whether the core asked for anything."""
        worked = False
        while node.up and (effects := node.executor.step()):
            worked = True
            self._effects(node, effects)
            if node.crash_after_step:
                node.crash_after_step = False
                self.crash(node.index)
        if node.up:
            self._carried_out(node)
        return worked

    def _effects(self, node: N, effects: list[Effect]) -> None:
        for effect in effects:
            if not node.up:
                return  # a crash in the middle of the step: nothing after it happened
            match effect:
                case Send(messages=messages):
                    self._send(node, messages)
                case Executed():
                    self._executed(node, effect)
                case NoOpApplied(entry=entry):
                    self._noop_applied(node, entry)
                case Refused(reason=reason):
                    self._log(f"{node.name} REFUSED {reason}")
                case Write():
                    self._write(node, effect)
                case Serve(request=request):
                    self._serve(node, request)
                case Reads(released=released, failed=failed):
                    self._reads(node, released, failed)
                case Durable():
                    pass  # (the disk model recorded it: _make_durable)
                case _:
                    assert_never(effect)

    def _write(self, node: N, write: Write) -> None:
        """The step's write reaches the simulated disk (see the module docstring)."""
        if not self.broken_shell:
            self._settle(node)  # the runtime starts a write once the one before is durable
        if node.crash_mid_write:
            # Power lost between the write and its fsync: the write never happened, nor
            # anything that waited for it. A write that holds nothing ran in the background
            # while the member went on (its step's messages left): the power goes once the
            # step is carried out, the write still in flight.
            node.crash_mid_write = False
            if write.holds or self.broken_shell:
                self.lost_writes += 1
                self.crash(node.index)
            else:
                node.unsynced.append(write)  # (lost, and counted, by the crash)
                node.crash_after_step = True
            return
        if write.holds and not self.broken_shell:
            self._make_durable(node, write)
            self._effects(node, node.executor.write_done(write.n, self._clock(node.index)))
        else:
            node.unsynced.append(write)

    def _settle(self, node: N) -> None:
        """Member `node`'s writes in flight become durable, in order."""
        while node.up and node.unsynced:
            write = node.unsynced.pop(0)
            self._make_durable(node, write)
            self._effects(node, node.executor.write_done(write.n, self._clock(node.index)))

    def _settle_all(self) -> None:
        """At a tick: writes in flight are durable by now (broken: only every
        BROKEN_FSYNC_MS)."""
        if self.broken_shell and self.now_ms % BROKEN_FSYNC_MS != 0:
            return
        for node in self.nodes:
            if node.unsynced:
                self._settle(node)
                self._carry_out(node)

    def _make_durable(self, node: N, write: Write) -> None:
        self._persisting(node, write)
        if (RECOVERY_MARK_KEY, None) in write.records:
            self._log(f"{node.name} RECOVERED (its recovery mark deleted)")
        self._fsync(node, write.records)
        if write.blocks:
            node.durable_height = write.blocks[-1][0].height

    def _clock(self, i: int) -> tuple[int, int]:
        return self.now_ms, self.wall_ms(i)

    def _persisting(self, node: N, write: Write) -> None:
        """What a checker sees of a write as it becomes durable (raft: log entries)."""

    @abstractmethod
    def _executed(self, node: N, effect: Executed) -> None:
        """A block executed on member `node` (before its write): the checkers see it."""

    def _noop_applied(self, node: N, entry: object) -> None:
        raise AssertionError("only raft applies no-op entries")

    @abstractmethod
    def _serve(self, node: N, request: object) -> None:
        """Answer a peer's fetch from member `node`'s durable ledger."""

    def _reads(self, node: N, released: Sequence[object], failed: list[tuple[int, str]]) -> None:
        raise AssertionError("only raft releases reads")

    @abstractmethod
    def _carried_out(self, node: N) -> None:
        """After member `node` carried out all it had to (recovery mark, traces, checks)."""

    @abstractmethod
    def _roll_back(self, node: N) -> None:
        """Member `node` crashed with blocks executed and not durable: its ledger and state
        back to its durable blocks."""

    def _init_clocks(self, offsets: dict[int, int] | None = None) -> None:
        self.clock_offset_ms = dict(offsets or {})
        self.clock_frozen_ms = {}
        self.clock_check = None
        self.own_clock_expiry = False
        self._agreed = {}

    def wall_ms(self, i: int) -> int:
        """Member i's wall clock now."""
        frozen = self.clock_frozen_ms.get(i)
        if frozen is not None:
            return frozen
        return EPOCH_MS + self.now_ms + self.clock_offset_ms.get(i, 0)

    def set_clock(self, i: int, offset_ms: int = 0, *, frozen_ms: int | None = None) -> None:
        """Set member i's wall clock `offset_ms` off real time, or stopped at `frozen_ms`."""
        self._log(
            f"n{i + 1} CLOCK "
            + (f"frozen at {frozen_ms}" if frozen_ms is not None else f"{offset_ms:+d} ms")
        )
        self.clock_offset_ms[i] = offset_ms
        if frozen_ms is None:
            self.clock_frozen_ms.pop(i, None)
        else:
            self.clock_frozen_ms[i] = frozen_ms

    def _refuses(self, i: int, tx: Transaction) -> bool:
        """Whether member i refuses a client's copy of `tx` as expired at submit, as the node
        does (only modelled with a ClockChecker, which judges the refusal)."""
        if self.clock_check is None:
            return False
        wall = self.wall_ms(i)
        block_ms, at_ms = self._agreed.get(i, (EPOCH_MS, 0))
        now_ms = (
            wall if self.own_clock_expiry else expiry_now_ms(wall, block_ms, self.now_ms - at_ms)
        )
        if tx.expiry_ms >= now_ms:
            return False
        self._log(f"n{i + 1} REFUSES {tx.id.hex()[:8]} as expired")
        self.clock_check.refused(i, EPOCH_MS + self.now_ms, tx)
        return True

    def _block_executed(self, i: int, block: Block) -> None:
        self._agreed[i] = (block.header.timestamp_ms, self.now_ms)
        if self.clock_check is not None:
            self.clock_check.executed(i, EPOCH_MS + self.now_ms, block)

    @abstractmethod
    def _full_check(self, i: int) -> None:
        """Member i's core: its fuller (window-long) invariants (check_invariants)."""

    def _idle_tick_unchecked(self) -> bool:
        """Whether this step's tick skips the fuller invariants of members it left idle."""
        return (self.now_ms // self.tick_ms) % IDLE_CHECK_EVERY != 0

    def _check_touched(self) -> None:
        """At the end of a step: the fuller invariants once for each member given input since
        its last check (the core's constant-time ones run after each input; the fuller ones
        after each input cost a third of a run's time)."""
        for i in sorted(self._touched):
            if self.nodes[i].up:
                self._full_check(i)
        self._touched.clear()

    def _last_check(self, i: int) -> None:
        """Member i goes down (a crash, a restore): its last state checked fully now, which
        the end of the step would skip."""
        if self.nodes[i].up:
            self._full_check(i)
        self._touched.discard(i)

    def step(self) -> None:
        """Advance the clock to the earliest of the next tick, network delivery, client
        submission and scheduled fault; run what is due (faults, client retries); then, member
        by member, as the node runtime does with a drain of its events (runtime.Node
        ._core_loop): its submissions and deliveries due now as one drain (core.inputs()), the
        tick when one is due, and one Ready carried out; then the fuller invariant checks. One
        loop for both clusters: what differs is the core (_core) and which submissions a member
        takes (_takes)."""
        next_tick = (self.now_ms // self.tick_ms + 1) * self.tick_ms
        candidates = [next_tick]
        if (t := self.net.next_time()) is not None:
            candidates.append(t)
        if self._client_queue:
            candidates.append(self._client_queue[0][0])
        if self._scheduled:
            candidates.append(self._scheduled[0][0])
        self.now_ms = max(self.now_ms, min(candidates))
        self.steps += 1
        self._count_step()
        while self._scheduled and self._scheduled[0][0] <= self.now_ms:
            _, _, action = heapq.heappop(self._scheduled)
            action()
        if self.now_ms >= self._next_retry_ms:
            self._client_retries()
        due: dict[int, list[tuple[int, bytes] | Transaction]] = {}
        while self._client_queue and self._client_queue[0][0] <= self.now_ms:
            _, _, i, tx = heapq.heappop(self._client_queue)
            if self.nodes[i].up and self._takes(tx) and not self._refuses(i, tx):
                due.setdefault(i, []).append(tx)
        for src, dst, frame in self.net.pop_due(self.now_ms):
            if self.nodes[dst].up:
                due.setdefault(dst, []).append((src, frame))
        tick = self.now_ms % self.tick_ms == 0
        if tick:
            self._settle_all()
        for node in self.nodes:
            inputs = due.get(node.index, ())
            if not node.up or not (inputs or tick):
                continue
            core = self._core(node)
            with core.inputs():
                for item in inputs:
                    if isinstance(item, Transaction):
                        core.propose_all([item])
                        continue
                    src, frame = item
                    if self.trace is not None:
                        self._log(f"n{src + 1} -> {node.name}  {self._describe(frame)}")
                    core.receive(src, frame)
            if tick:
                core.tick(self.now_ms, self.wall_ms(node.index))
            checked = node.index not in self._touched
            if not self._carry_out(node) and not inputs and checked and self._idle_tick_unchecked():
                # A tick with no input that asked for nothing (most ticks, between timers):
                # the fuller invariants were checked after the last change, so they are
                # checked again only every IDLE_CHECK_EVERY ticks (the core's constant-time
                # ones still ran). They cost two fifths of a run's time when checked after
                # every idle tick.
                self._touched.discard(node.index)
        self._check_touched()

    @abstractmethod
    def _core(self, node: N) -> ConsensusCore:
        """Member `node`'s consensus core."""

    def _takes(self, tx: Transaction) -> bool:
        """Whether a member takes a client's copy of `tx` (raft: only while it is awaited)."""
        return True

    def _count_step(self) -> None:
        """After each step is counted (raft: a message storm stops the run)."""

    @abstractmethod
    def _describe(self, frame: bytes) -> str:
        """One message in a few words, for traces."""

    @abstractmethod
    def _client_retries(self) -> None:
        """Clients retransmit what has not committed."""

    def _send_to(self, tx: Transaction, i: int) -> None:
        """A client's copy of `tx` reaches member i after a random client delay."""
        self._client_seq += 1
        at_ms = self.now_ms + self.rng.randint(*self.client_delay_ms)
        heapq.heappush(self._client_queue, (at_ms, self._client_seq, i, tx))

    def honest(self) -> Sequence[N]:
        return self.nodes

    def at(self, at_ms: int, action: Callable[[], None]) -> None:
        """Run `action` (a crash, a restart, a partition...) at simulated time at_ms."""
        self._scheduled_seq += 1
        heapq.heappush(self._scheduled, (at_ms, self._scheduled_seq, action))

    def _log(self, text: str) -> None:
        if self.trace is not None:
            self.trace(f"{self.now_ms:>7} ms  {text}")

    def crash(self, i: int, restart_after_ms: int | None = None) -> None:
        """Crash node i now, losing what it did not fsync; with restart_after_ms, restart it
        that long after. A crash armed by crash_mid_write and not fired yet was meant for the
        process that just died: it is disarmed, never left for the next one (which would die
        at its first write, with no restart planned: a race the tests once had)."""
        self._log(f"n{i + 1} CRASH")
        self._last_check(i)
        node = self.nodes[i]
        armed_restart_ms = self._restart_after_armed_ms.pop(i, None)
        if node.crash_mid_write:  # down before its armed crash fired: that crash is void
            node.crash_mid_write = False
            armed_restart_ms = None
        node.up = False
        node.crash_after_step = False
        if node.unsynced:
            self.lost_writes += 1
            node.unsynced.clear()  # never reached the disk
        if node.head.height > node.durable_height:
            self._roll_back(node)
        if restart_after_ms is None:
            restart_after_ms = armed_restart_ms
        if restart_after_ms is not None:
            self.at(self.now_ms + restart_after_ms, lambda: self.restart(i))

    def crash_mid_write(self, i: int, restart_after_ms: int | None = None) -> None:
        """Crash node i inside its next Ready that writes: after the write, before the fsync.
        With restart_after_ms, restart it that long after the crash (whenever it writes next),
        not after the arming: a restart planned by the clock could come before the crash."""
        node = self.nodes[i]
        assert node.up, f"{node.name} is down: arming a crash would kill its next process"
        node.crash_mid_write = True
        if restart_after_ms is not None:
            self._restart_after_armed_ms[i] = restart_after_ms

    def disarm(self, i: int) -> None:
        """Call off node i's armed crash, and the restart planned after it."""
        self.nodes[i].crash_mid_write = False
        self._restart_after_armed_ms.pop(i, None)

    @abstractmethod
    def restart(self, i: int) -> None:
        """Rebuild node i from what it persisted (each cluster's own)."""

    @staticmethod
    def _fsync(node: N, records: Iterable[tuple[bytes, bytes | None]]) -> None:
        for key, value in records:
            if value is None:
                node.records.pop(key, None)
            else:
                node.records[key] = value

    def _observe(self, node: N, dest: int | None, frame: bytes) -> None:
        """Each message a member sends, once, before the network has it (the checkers)."""

    def _send(self, node: N, messages: Iterable[Outgoing]) -> None:
        for out in messages:
            self._observe(node, out.dest, out.frame)
            dests = range(self.n) if out.dest is None else (out.dest,)
            for dst in dests:
                if dst != node.index:
                    self.net.send(self.now_ms, node.index, dst, out.frame)

    def run_until(self, end_ms: int) -> None:
        while self.now_ms < end_ms:
            self.step()

    def all_committed(self) -> bool:
        ids = set(self.submitted)
        return all(ids <= node.committed_ids for node in self.honest())

    def run_until_committed(self, deadline_ms: int) -> bool:
        while self.now_ms < deadline_ms:
            self.step()
            if not self._client_queue and not self._scheduled and self.all_committed():
                return True
        return False

    def check_converged(self) -> None:
        check_converged(self.honest(), self.submitted)
