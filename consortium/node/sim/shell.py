"""What the PBFT and Raft simulated clusters share: the shell around n simulated members, with
its scheduled fault injections, trace lines, crashes that lose unsynced writes, the durable
record store, message sends into the seeded network, and the loops that run the clock. Each
cluster keeps its own step (what a delivery or tick does to its core) and its own Ready."""

from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import Generic, Protocol, TypeVar

from consortium.ledger.tx import Transaction
from consortium.node.sim.checkers import check_converged
from consortium.node.sim.network import SimNetwork


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
    _client_queue: list[tuple[int, int, int, Transaction]]

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

    def crash(self, i: int) -> None:
        self._log(f"n{i + 1} CRASH")
        node = self.nodes[i]
        node.up = False
        if node.unsynced:
            self.lost_writes += 1
            node.unsynced.clear()  # never reached the disk

    def crash_mid_write(self, i: int) -> None:
        """Crash node i inside its next Ready that writes: after the write, before the fsync."""
        self.nodes[i].crash_mid_write = True

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
