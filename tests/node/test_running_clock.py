"""The pbft core's monotonic clock counts only the time the process ran (pbft_mode.RunningClock):
a stopped process (SIGSTOP, a suspended host) or a held-up core loop watched nothing, so the
time beyond one stall does not count towards the core's view-change timers."""

from __future__ import annotations

from consortium.node.pbft_mode import RunningClock


def test_the_clock_follows_real_time_while_the_loop_runs() -> None:
    clock = RunningClock(100)
    assert clock.advance(5_000) == 5_000  # starts at the real clock
    for t in range(5_002, 6_000, 16):
        assert clock.advance(t) == t
    assert clock.stalls == 0 and clock.skipped_ms == 0


def test_a_stall_counts_for_one_stall_only() -> None:
    clock = RunningClock(100)
    clock.advance(1_000)
    clock.advance(1_010)
    assert clock.advance(11_010) == 1_110  # stopped for 10 s: 100 ms counted
    assert clock.advance(11_020) == 1_120  # and on at the real pace
    assert (clock.stalls, clock.skipped_ms) == (1, 9_900)
    assert clock.advance(11_020) == 1_120  # never backwards
