"""PBFT liveness as the paper states it: after the network stabilises with at most f faulty
members, correct members order new requests. The flapping mixes of sim.scenarios keep f
members faulty for the whole run (crashed from the start, or mute: hearing everything, heard by
no one) while partitions of the others, each held longer than the current (doubled)
view-change timeout and each with its own split, come and go; then the network heals for good
and every transaction submitted must commit at every other member, into identical ledgers,
within 4 x the capped view-change timeout of simulated time. Safety is checked after every
step, as everywhere in the simulator.

Seed counts: 200 per mix at n = 4 and 50 per mix at n = 7; CONSORTIUM_SOAK=N multiplies them.
A failing seed is named with the line that replays it with a readable trace:

    consortium sim --mix flap-down --n 4 --txs 8 --trace SEED

The checker's teeth (the same mixes catch the NEW-VIEW timer rule this repository had) are in
tests/sim/test_checker_teeth.py.
"""

from __future__ import annotations

import os

import pytest

from consortium.sim.flapping import FLAPPING
from consortium.sim.scenarios import Outcome, Scenario, run_seed

SOAK = int(os.environ.get("CONSORTIUM_SOAK", "1"))
SEEDS = {4: 200 * SOAK, 7: 50 * SOAK}
FIRST_SEED = {4: 0, 7: 1_000}
CHUNK = 50
TXS = 8  # few: the subject is view changes, and each one must commit after healing


def run_chunk(mix: str, n: int, seeds: range) -> list[Outcome]:
    outcomes = [run_seed(Scenario(n, TXS, "lossy", mix=mix), seed) for seed in seeds]
    failed = [o for o in outcomes if not o.ok]
    assert not failed, "\n".join(
        f"seed {o.seed}: {o.failure}: {o.message}\n"
        f"replay: consortium sim --mix {mix} --n {n} --txs {TXS} --trace {o.seed}"
        for o in failed[:5]
    )
    return outcomes


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
    outcomes = run_chunk(mix, n, range(first, first + CHUNK))
    # The mix exercised what it is about: every partition outlasted the timeout current when
    # it began, the timeouts grew (view changes happened), and in some runs the members were
    # in different views, or still changing views, when the network healed.
    flaps = [o.flaps for o in outcomes if o.flaps is not None]
    assert len(flaps) == CHUNK
    f = (n - 1) // 3
    assert all(len(x.faulty) == f and x.partitions >= 3 for x in flaps)
    assert all(h > t for x in flaps for h, t in zip(x.held_ms, x.timeouts_ms, strict=True))
    assert sum(max(x.timeouts_ms) > x.timeouts_ms[0] for x in flaps) > CHUNK // 2
    drifted = sum(len(set(x.at_heal)) > 1 for x in flaps)
    unsettled = sum(any(not active for _, active in x.at_heal) for x in flaps)
    assert drifted > 0 and unsettled > CHUNK // 4, (drifted, unsettled)


@pytest.mark.parametrize("seed", [133])
def test_regression_a_primary_one_commit_short_of_an_executed_block_fetches_it(seed: int) -> None:
    # flap-mute, n = 4: the COMMIT of n1 for seq 3 never reached the primary n2, and n1 then
    # moved on to view 2 alone; n3 executed seq 3, the clients had their f+1 replies, and the
    # primary, which never suspects itself, waited for that COMMIT for good (seq 3 is no
    # checkpoint). A member holding an accepted batch that saw nothing commit for a whole
    # timeout now fetches blocks from a peer (pbft/replica.py, _maybe_fetch).
    run_chunk("flap-mute", 4, range(seed, seed + 1))
