"""The simulated network: delivery events ordered by (time, sequence number), with a delay drawn
from a range (which also reorders), loss, duplication and partitions, every draw from the one
seeded random.Random of the simulation, so one seed always gives one trace.

A partition is a set of cut directed links; a message whose link is cut when it is sent or when
it is due is lost, as on a real network. heal() restores every link. A muted member (mute())
hears everything and is heard by no one, whatever partitions come and go: heal() leaves it so.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class NetworkFaults:
    delay_ms: tuple[int, int] = (1, 5)  # uniform, inclusive; a range > 0 reorders
    drop: float = 0.0  # probability a message is lost
    duplicate: float = 0.0  # probability a message is delivered twice (independent delays)


@dataclass(order=True, slots=True)
class _Delivery:
    at_ms: int
    seq: int
    src: int = field(compare=False)
    dst: int = field(compare=False)
    frame: bytes = field(compare=False)


class SimNetwork:
    def __init__(
        self, rng: random.Random, faults: NetworkFaults, in_flight_max: int = 500_000
    ) -> None:
        assert 0 <= faults.delay_ms[0] <= faults.delay_ms[1]
        self.rng = rng
        self.faults = faults
        self.in_flight_max = in_flight_max
        self._queue: list[_Delivery] = []
        self._seq = 0
        self._cut: set[tuple[int, int]] = set()
        self._muted: set[int] = set()
        # Tests only: drop a message when this returns True (src, dst, frame).
        self.drop_if: Callable[[int, int, bytes], bool] | None = None
        self.sent = 0
        self.dropped = 0
        self.duplicated = 0

    # --- partitions -------------------------------------------------------------------------

    def cut(self, a: int, b: int) -> None:
        self._cut.add((a, b))
        self._cut.add((b, a))

    def isolate(self, node: int, n: int) -> None:
        for other in range(n):
            if other != node:
                self.cut(node, other)

    def partition(self, groups: Iterable[Iterable[int]]) -> None:
        """Cut every link between members of different groups."""
        sides = [sorted(g) for g in groups]
        for i, side in enumerate(sides):
            for other in sides[i + 1 :]:
                for a in side:
                    for b in other:
                        self.cut(a, b)

    def heal(self) -> None:
        self._cut.clear()

    def mute(self, node: int) -> None:
        """Lose everything `node` sends from now on, for good (a silent member)."""
        self._muted.add(node)

    # --- traffic ----------------------------------------------------------------------------

    def send(self, now_ms: int, src: int, dst: int, frame: bytes) -> None:
        self.sent += 1
        faults = self.faults
        if (
            (src, dst) in self._cut
            or (self.drop_if is not None and self.drop_if(src, dst, frame))
            or self.rng.random() < faults.drop
            or src in self._muted  # (lost like any other: one draw per message, as before)
            or len(self._queue) >= self.in_flight_max
        ):
            self.dropped += 1
            return
        copies = 1
        if self.rng.random() < faults.duplicate:
            copies = 2
            self.duplicated += 1
        for _ in range(copies):
            self._seq += 1
            at_ms = now_ms + self.rng.randint(*faults.delay_ms)
            heapq.heappush(self._queue, _Delivery(at_ms, self._seq, src, dst, frame))

    def next_time(self) -> int | None:
        return self._queue[0].at_ms if self._queue else None

    def pop_due(self, now_ms: int) -> list[tuple[int, int, bytes]]:
        out: list[tuple[int, int, bytes]] = []
        while self._queue and self._queue[0].at_ms <= now_ms:
            d = heapq.heappop(self._queue)
            if (d.src, d.dst) in self._cut:
                self.dropped += 1
                continue
            out.append((d.src, d.dst, d.frame))
        return out

    def __len__(self) -> int:
        return len(self._queue)
