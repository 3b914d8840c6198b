"""Raft liveness after the network stabilises with at most f = (n - 1) // 2 members faulty: the
flapping mixes of sim.raft_scenarios (run_raft_flapping) keep f members faulty for the
whole run (crashed from the start, or mute: hearing everything, heard by no one) while
partitions of the others, each held 1.1 to 3 times the upper end 2E of the election timeout
range and each with its own split (no side a majority), come and go with short heals of up to
E; then the network heals for good and every transaction submitted must commit at every other
member, into identical ledgers, within 4 x 2E of simulated time from the end of the last
partition, plus a client retransmission interval per mute member in flap-mute
(raft_scenarios.flapping_deadline_ms), and then a read at every live member must be released
(raft_scenarios.final_reads). Safety (RaftChecker, one vote per term) is checked after every
step, and linearizable reads are issued now and then.

Seed counts: 200 per mix at n = 3 and 50 per mix at n = 5; CONSORTIUM_SOAK=N multiplies them.
A failing seed is named with the line that replays it with a readable trace:

    consortium sim --mode raft --mix flap-down --n 3 --txs 8 --trace SEED

The mixes' teeth (an election timer that backs off fails them) are in
tests/sim/test_raft_checker_teeth.py.
"""

from __future__ import annotations

import os

import pytest

from consortium.sim.flapping import FLAPPING, Flaps
from consortium.sim.raft_scenarios import run_raft_flapping

SOAK = int(os.environ.get("CONSORTIUM_SOAK", "1"))
SEEDS = {3: 200 * SOAK, 5: 50 * SOAK}
FIRST_SEED = {3: 0, 5: 1_000}
CHUNK = 50
TXS = 8  # few: the subject is elections, and each transaction must commit after healing


def run_chunk(mix: str, n: int, seeds: range) -> tuple[list[Flaps], int]:
    """The flaps of each run, and how many reads the checker verified."""
    flaps: list[Flaps] = []
    reads = 0
    failed: list[str] = []
    for seed in seeds:
        try:
            cluster, flapped = run_raft_flapping(seed, n, mix, txs=TXS)
        except AssertionError as exc:  # SafetyViolation, LivenessViolation, a core invariant
            failed.append(
                f"seed {seed}: {type(exc).__name__}: {exc}\n"
                f"replay: consortium sim --mode raft --mix {mix} --n {n} --txs {TXS} --trace {seed}"
            )
            continue
        flaps.append(flapped)
        reads += cluster.check.reads_checked
    assert not failed, "\n".join(failed[:5])
    return flaps, reads


CHUNKS = [
    pytest.param(mix, n, first, id=f"n{n}-{mix}-{first}-{first + CHUNK - 1}")
    for n, count in SEEDS.items()
    for mix in FLAPPING
    for first in range(FIRST_SEED[n], FIRST_SEED[n] + count, CHUNK)
]


@pytest.mark.parametrize(("mix", "n", "first"), CHUNKS)
def test_flapping_partitions_with_f_faulty_all_along_commit_everything_after_healing(
    mix: str, n: int, first: int
) -> None:
    flaps, reads = run_chunk(mix, n, range(first, first + CHUNK))
    # The mix exercised what it is about: every partition outlasted 2E (every live member's
    # election timer fired in it, and no side could elect), terms moved on during the
    # flapping in most runs (elections were won in the short heals), and in some runs a
    # member knew no leader when the network healed; reads were verified (final_reads fails
    # a run in which one was not).
    assert len(flaps) == CHUNK
    f = (n - 1) // 2
    assert all(len(x.faulty) == f and x.partitions >= 3 for x in flaps)
    assert all(h > t for x in flaps for h, t in zip(x.held_ms, x.timeouts_ms, strict=True))
    moved = sum(max(t for t, _ in x.at_heal) > max(t for t, _ in x.at_start) for x in flaps)
    leaderless = sum(any(not known for _, known in x.at_heal) for x in flaps)
    assert moved > CHUNK // 2 and leaderless > CHUNK // 4, (moved, leaderless)
    assert reads > CHUNK, reads


@pytest.mark.parametrize("seed", [2266])
def test_regression_a_candidate_asks_again_for_votes_the_network_lost(seed: int) -> None:
    # flap-down, n = 5 (n1 and n3 down): n5, the only member with the longest log, needed
    # both others' votes in every election, and the lossy network lost one request or answer
    # in each of six elections in a row; asked once, each loss cost an election timeout, and
    # nothing committed until 4.7 s after the heal. A candidate now asks again every
    # heartbeat interval those that have not answered (crashft/node.py, _ask_again).
    flaps, _ = run_chunk("flap-down", 5, range(seed, seed + 1))
    assert flaps[0].recovered_ms < 1_000
