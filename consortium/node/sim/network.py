"""The simulated network: delivery events ordered by (time, sequence number), with delay,
loss, duplication, reordering (through random delays) and partitions, all drawn from one seeded
random.Random, so one seed always gives one trace."""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class NetworkFaults:
    delay_ms: tuple[int, int] = (1, 5)
    drop: float = 0.0
    duplicate: float = 0.0


@dataclass(order=True, slots=True)
class _Event:
    at_ms: int
    seq: int
    src: int = field(compare=False)
    dst: int = field(compare=False)
    frame: bytes = field(compare=False)


class SimNetwork:
    def __init__(
        self, rng: random.Random, faults: NetworkFaults, in_flight_max: int = 200_000
    ) -> None:
        self.rng = rng
        self.faults = faults
        self._queue: list[_Event] = []
        self._seq = 0
        self._cut: set[tuple[int, int]] = set()
        self.in_flight_max = in_flight_max
        self.sent = 0
        self.dropped = 0

    def cut(self, a: int, b: int) -> None:
        self._cut.add((a, b))
        self._cut.add((b, a))

    def isolate(self, node: int, n: int) -> None:
        for other in range(n):
            if other != node:
                self.cut(node, other)

    def heal(self) -> None:
        self._cut.clear()

    def send(self, now_ms: int, src: int, dst: int, frame: bytes) -> None:
        self.sent += 1
        f = self.faults
        if (
            (src, dst) in self._cut
            or self.rng.random() < f.drop
            or len(self._queue) >= self.in_flight_max
        ):
            self.dropped += 1
            return
        copies = 2 if self.rng.random() < f.duplicate else 1
        for _ in range(copies):
            self._seq += 1
            at = now_ms + self.rng.randint(*f.delay_ms)
            heapq.heappush(self._queue, _Event(at, self._seq, src, dst, frame))

    def next_time(self) -> int | None:
        return self._queue[0].at_ms if self._queue else None

    def pop_due(self, now_ms: int) -> list[tuple[int, int, bytes]]:
        out: list[tuple[int, int, bytes]] = []
        while self._queue and self._queue[0].at_ms <= now_ms:
            e = heapq.heappop(self._queue)
            if (e.src, e.dst) in self._cut:
                self.dropped += 1
                continue
            out.append((e.src, e.dst, e.frame))
        return out
