"""Seeded clock mixes (consortium.sim.clock_scenarios): one member's wall clock far ahead,
far behind, stopped at 0 or where it stood (a pbft primary), far ahead (a pbft backup), ahead for
a while, jumping or stopped (at 0 or where it stood) for good (a raft leader). The clock
checker (checkers.ClockChecker) runs after every step: block time within the skew of real time
(plus the lag a batch may take to its first execution), no honest transaction executed as
`expired` or `expiry_too_far` while real time says otherwise, no honest submission refused as
expired; liveness at the end as in every mix.

200 seeds per mix by default (n = 4 pbft, n = 3 raft); CONSORTIUM_SOAK=N multiplies them.
The checker's teeth: the same mixes with today's timestamp rules (pbft backups refusing only
future timestamps, a raft leader stamping its own clock unchecked, a member judging expiry at
submit by its own clock) fail."""

from __future__ import annotations

import os
from typing import Any

import pytest

from consortium.crashft.node import RaftNode
from consortium.ledger.block import Block, BlockHeader, Receipt
from consortium.ledger.genesis import Params
from consortium.pbft.replica import PbftReplica
from consortium.sim import raft_cluster
from consortium.sim.checkers import ClockChecker, ClockViolation
from consortium.sim.clock_scenarios import (
    CLOCK_MIXES,
    LEADER_VARIANTS,
    PRIMARY_VARIANTS,
    plan,
    run_clock,
)
from consortium.sim.cluster import EPOCH_MS, workload

SOAK = int(os.environ.get("CONSORTIUM_SOAK", "1"))
SEEDS = 200 * SOAK
CHUNK = 25  # seeds per test, so xdist spreads a mix over its workers
MIXES = [*CLOCK_MIXES["pbft"], *CLOCK_MIXES["raft"]]
TEETH_SEEDS = range(16)


@pytest.mark.parametrize(
    ("mix", "first"), [(mix, first) for mix in MIXES for first in range(0, SEEDS, CHUNK)]
)
def test_no_single_clock_moves_block_time_or_gets_honest_transactions_refused(
    mix: str, first: int
) -> None:
    for seed in range(first, min(first + CHUNK, SEEDS)):
        run_clock(seed, mix)


def test_every_wrong_clock_is_among_the_default_seeds() -> None:
    seeds = range(min(SEEDS, 200))
    assert {plan("clock-primary", s).variant for s in seeds} == set(PRIMARY_VARIANTS)
    assert {plan("clock-leader", s).variant for s in seeds} == set(LEADER_VARIANTS)
    assert {plan("clock-backup", s).member for s in seeds} == {1, 2, 3}


# --- the checker's teeth: today's rules ------------------------------------------------------


class TodaysPbft(PbftReplica):
    """Today's rule: a backup withholds its PREPARE only for a timestamp in its future."""

    def _timestamp_skewed(self, proposed_ms: int) -> bool:
        return self._clock_known and proposed_ms - self._wall_ms > self.params.timestamp_skew_ms


def todays_pbft(*args: Any) -> PbftReplica:
    config, signer, verifier, tx_ok, recovered, ever_admitted = args
    return TodaysPbft(
        config, signer, verifier, tx_ok=tx_ok, recovered=recovered, ever_admitted=ever_admitted
    )


class TodaysRaft(RaftNode):
    """Today's rule: the leader stamps its own clock, checked against nothing."""

    def _clock_agrees(self) -> bool:
        return True

    def _maybe_hand_off_for_clock(self) -> None:
        pass


def test_the_checker_catches_a_primary_stamping_the_past_under_todays_rule() -> None:
    todays = {i: todays_pbft for i in range(4)}
    # (Seeds 13 and 14 are left out: their primary's clock stops (at 648 ms; at zero) and the
    # run's last block comes before the stopped clock falls further behind real time than the
    # checker's bound: seed 14 since the simulator runs the node's executor, whose order of a
    # step moved the schedule. Stopped clocks of both kinds are caught in seeds 0, 4, 9-12.)
    for seed in (s for s in TEETH_SEEDS if s not in (13, 14)):
        variant = plan("clock-primary", seed).variant
        if variant == "ahead":
            run_clock(seed, "clock-primary", factories=todays)  # today's rule caught the future
            continue
        with pytest.raises(ClockViolation, match=r"s behind real time"):
            run_clock(seed, "clock-primary", factories=todays)


def test_the_checker_catches_a_member_judging_submissions_by_its_own_clock() -> None:
    for seed in TEETH_SEEDS:
        with pytest.raises(ClockViolation, match=r"refused honest transaction .* as expired"):
            run_clock(seed, "clock-backup", own_clock_expiry=True)


def test_the_checker_catches_a_raft_leader_stamping_its_clock_unchecked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(raft_cluster, "RaftNode", TodaysRaft)
    # (The first 16 seeds hold one stopped clock: four more of each stopped kind.)
    stopped = [
        [s for s in range(16, 200) if plan("clock-leader", s).variant == kind][:4]
        for kind in ("zero", "frozen")
    ]
    for seed in [*TEETH_SEEDS, *stopped[0], *stopped[1]]:
        variant = plan("clock-leader", seed).variant
        side = "behind" if variant in ("jump-behind", "zero", "frozen") else "ahead of"
        with pytest.raises(ClockViolation, match=f"s {side} real time"):
            run_clock(seed, "clock-leader")


def test_the_clock_checker_allows_exactly_the_skew_and_the_lag() -> None:
    params = Params(timestamp_skew_ms=500)
    tx = workload(b"c" * 32, 1)[0]  # expires at EPOCH_MS + 5 min

    def block(height: int, time_ms: int, reason: str = "") -> Block:
        header = BlockHeader(b"c" * 32, height, b"p" * 32, time_ms, b"", b"", b"", ())
        receipt = Receipt(tx.id, "rejected" if reason else "ok", reason, (), height, 0)
        return Block(header, (tx,), (receipt,))

    check = ClockChecker(params, range(3), {tx.client_key}, lag_ms=600, slack_ms=100)
    real = EPOCH_MS + 10_000
    check.executed(0, real, block(1, real + 600))  # skew + slack ahead: allowed
    check.executed(0, real, block(2, real - 1_100))  # skew + lag behind: allowed
    check.executed(1, real, block(2, 0))  # not its first execution: not judged again
    with pytest.raises(ClockViolation, match=r"0\.601 s ahead of real time"):
        check.executed(0, real, block(3, real + 601))
    with pytest.raises(ClockViolation, match=r"1\.101 s behind real time"):
        ClockChecker(params, range(3), {tx.client_key}, lag_ms=600).executed(
            0, real, block(1, real - 1_101)
        )
    with pytest.raises(ClockViolation, match="executed as expired"):
        ClockChecker(params, range(3), {tx.client_key}, lag_ms=600).executed(
            0, real, block(1, real, "expired")
        )
    late = tx.expiry_ms - 500
    ClockChecker(params, range(3), {tx.client_key}, lag_ms=600).refused(0, late, tx)
    with pytest.raises(ClockViolation, match="refused honest transaction"):
        ClockChecker(params, range(3), {tx.client_key}, lag_ms=600).refused(0, late - 300, tx)
