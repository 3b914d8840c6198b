"""How far a member's wall clock is from the time its network agrees on.

Block time is one proposer's clock: the pbft primary's proposed_ms, which backups prepare only
within params.timestamp_skew_ms of their own clocks, or the raft leader's, which proposes only
within that skew of the median clock of a majority (consortium.pbft.replica,
consortium.crashft.node). So the proposed time of a batch a quorum accepted is within one skew
of honest clocks, whoever proposed it, and a member can measure its own clock against it:

    offset = own clock when the batch arrived - the batch's proposed time

ClockOffset keeps the last OFFSET_SAMPLES_MAX offsets and reports their median, so a few late
batches (a retransmission, a backlog after a partition) do not move it. It says the member's
own clock disagrees only beyond 2 x timestamp_skew_ms: a proposer may stamp anything within
one skew of the clocks that accepted it, so an offset beyond two skews, for a batch that
reached the member about when it reached those clocks, shows the member's clock more than a
skew from theirs, and such a member fails the skew check on every batch. Between one and two
skews the member may withhold a vote now and then; `timestamp_skew` in the core's counters
shows it.

When a batch arrives is the proposer's choice, though: a lying pbft primary sending it to one
backup two skews after the others made that backup's exact clock read as ahead, and sending
it long before them, as behind (review). So pbft samples only a batch whose PRE-PREPARE came
before any other member's vote for it and that prepared within a retransmission interval
after (pbft/replica.py, _sample_clock): an honest backup checked its time between the network
delay d before the arrival and an interval after, so one lying primary moves a sample by at
most max(interval, d) beyond the skew, and an honest member's median beyond 2 skews means its
clock is more than skew - max(interval, d) from honest members' clocks (29.5 s at the
default 30 s skew and 500 ms interval, on a network faster than that). A network delaying
messages by more than a skew (a partition healing) can still make samples late: the median
takes more than half of the last 16, and fresh batches replace them. In raft (crash faults
only) the leader sends at once and only the network delays.

median_band: the middle of a list of clocks (one value when odd, the two middle ones when
even). A raft leader proposes only while its clock is within the skew of both ends of the band
of a majority's clocks, its own included: with three or more clocks one wrong clock cannot
move the band outside the others' range; with two it cannot be told which is wrong, and the
leader does not propose.

Pure: no clock is read here; times come in as integers (ms).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

OFFSET_SAMPLES_MAX = 16  # batches the offset is the median of
OFFSET_SAMPLES_MIN = 4  # before that, an offset is shown but never called a disagreement


def expiry_now_ms(own_wall_ms: int, block_time_ms: int, since_block_ms: int) -> int:
    """The time a member judges a submitted transaction's expiry against: the earlier of its
    own wall clock and the network's agreed time, the last executed block's time advanced by
    the member's monotonic clock since it executed (`since_block_ms`). The transaction will
    execute against block time, which a quorum keeps within the skew of its clocks: a member
    whose clock is far ahead must not refuse it as expired, and a stale ledger (a restart, a
    member behind, an idle network seen from a fresh process) only makes the agreed time
    early, which refuses nothing. A member whose clock is behind lets through what block time
    will then reject (an `expired` receipt), as any member may."""
    return min(own_wall_ms, block_time_ms + max(0, since_block_ms))


def median_band(values: Sequence[int]) -> tuple[int, int]:
    """The middle value of `values`, twice when their number is odd; the two middle ones when
    it is even (lower first)."""
    assert values, "the median of no clocks"
    ordered = sorted(values)
    k = len(ordered)
    return ordered[(k - 1) // 2], ordered[k // 2]


def off_band_ms(own_ms: int, band: tuple[int, int]) -> int:
    """How far `own_ms` is from the farther end of `band` (positive: ahead of it)."""
    low, high = band
    return own_ms - low if abs(own_ms - low) >= abs(own_ms - high) else own_ms - high


class ClockOffset:
    """The member's own clock minus the proposed times of batches a quorum accepted: the median
    of the last OFFSET_SAMPLES_MAX (bounded)."""

    def __init__(self, limit_ms: int, samples_max: int = OFFSET_SAMPLES_MAX) -> None:
        self.limit_ms = limit_ms  # 2 x timestamp_skew_ms: beyond it, our clock is wrong
        self._samples: deque[int] = deque(maxlen=samples_max)

    def add(self, offset_ms: int) -> None:
        self._samples.append(offset_ms)

    def __len__(self) -> int:
        return len(self._samples)

    @property
    def offset_ms(self) -> int | None:
        """The median offset (the mean of the two middle ones for an even count), or None."""
        if not self._samples:
            return None
        low, high = median_band(list(self._samples))
        return (low + high) // 2

    @property
    def disagrees(self) -> bool:
        offset = self.offset_ms
        return (
            offset is not None
            and len(self._samples) >= OFFSET_SAMPLES_MIN
            and abs(offset) > self.limit_ms
        )

    def status(self, basis: str) -> dict[str, Any]:
        """For the core's status(): the estimate, what it was measured against, the limit."""
        return {
            "offset_ms": self.offset_ms,
            "samples": len(self._samples),
            "limit_ms": self.limit_ms,
            "disagrees": self.disagrees,
            "basis": basis,
        }
