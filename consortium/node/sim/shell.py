"""What the PBFT and Raft simulated clusters share: the shell around n simulated members, with
its scheduled fault injections, trace lines, crashes that lose unsynced writes, the durable
record store, message sends into the seeded network, the loops that run the clock, and each
member's wall clock. Each cluster keeps its own step (what a delivery or tick does to its core)
and its own Ready.

Clocks: real time is EPOCH_MS + now_ms; a member's wall clock reads it, plus an offset, or a
frozen reading, that set_clock changes (schedule it with at() to make a clock jump mid-run).
With a ClockChecker (the clock mixes), a member also judges each client copy it receives the
way the node's submit check does (ledger.clock.expiry_now_ms: the earlier of its clock and the
last block's time advanced since it executed), and refuses it as expired; the checker says
whether that refusal, and each block's time, is one the clock rules allow."""

from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import Generic, Protocol, TypeVar

from consortium.ledger.block import Block
from consortium.ledger.clock import expiry_now_ms
from consortium.ledger.tx import Transaction
from consortium.node.sim.checkers import ClockChecker, check_converged
from consortium.node.sim.network import SimNetwork

EPOCH_MS = 1_700_000_000_000  # simulated wall clock at simulated time 0


class ShellNode(Protocol):
    index: int
    up: bool
    crash_mid_write: bool
    unsynced: list[tuple[bytes, bytes | None]]
    records: dict[bytes, bytes]
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
    _restart_after_armed_ms: dict[int, int]  # node -> restart delay of its armed crash
    _client_queue: list[tuple[int, int, int, Transaction]]
    clock_offset_ms: dict[int, int]  # member -> how far its wall clock is off real time
    clock_frozen_ms: dict[int, int]  # member -> the one reading its stopped clock gives
    clock_check: ClockChecker | None
    own_clock_expiry: bool  # TESTS ONLY: submissions judged by the member's clock alone
    _agreed: dict[int, tuple[int, int]]  # member -> (last block's time, now_ms it executed)
    _touched: set[int]  # members given input since their last full invariant check

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

    @abstractmethod
    def step(self) -> None:
        """Advance the clock to the next event and handle it (each cluster's own)."""

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
        if node.unsynced:
            self.lost_writes += 1
            node.unsynced.clear()  # never reached the disk
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
