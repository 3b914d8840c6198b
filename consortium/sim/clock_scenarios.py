"""Clock mixes, shared by the simulation tests and `consortium sim --clock`: one member's wall
clock is wrong, or jumps, while clients submit; block time must stay within the bounds the clock
rules promise and no honest transaction may be refused or executed as expired (or too far in
the future) while the network's time says otherwise (checkers.ClockChecker, after every step);
at the end every transaction commits into identical ledgers, as in every mix.

    pbft  clock-primary   the primary of view 0 (n1), from a random moment before 0.8 s,
                          one of: its clock 10 minutes ahead; 10 minutes behind; stopped at 0;
                          stopped where it stood. (Ahead, it was already withheld; behind or
                          stopped, its batches froze block time until every transaction
                          committed as expiry_too_far.)
          clock-backup    a backup 10 minutes ahead from the start (it refused every
                          submission as expired)
    raft  clock-leader    the leader of the moment (the first elected, if none yet), from a
                          random moment before 0.8 s, one of: 10 minutes ahead for
                          0.5 to 2 s, then right again; a jump of 10 minutes ahead; a jump of
                          10 minutes behind; stopped at 0; stopped where it stood, the last
                          four for good (a stopped clock agrees with the others for a skew's
                          time, then falls behind: the leader's gate must see it go)

Clients submit `txs` transactions (the workload's: they expire 5 minutes after the epoch) in
bursts over about 2.5 s, to every member (pbft) or a random one (raft), retransmitting until they
commit. The parameters are the simulators' with timestamp_skew_ms = 500 ms, so a clock stopped
at one instant leaves the allowed band within a run, and ticks every 10 ms. The checker allows
a batch `lag_ms` = 2 x request_timeout_ms from its proposal to its first execution (a view
change, or an election and its first commit), and 200 ms of slack ahead (a raft leader
estimates its followers' clocks up to a network delay late).

TESTS ONLY: `own_clock_expiry=True` judges submissions by the member's own clock alone, and
the tests run the same mixes with cores that keep today's timestamp rules (pbft: refusing only
future timestamps; raft: no check) to show that the checker catches them (the checker's teeth).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace

from consortium.sim.checkers import ClockChecker, LivenessViolation
from consortium.sim.cluster import SIM_PARAMS, ReplicaFactory, SimCluster, workload
from consortium.sim.network import NetworkFaults
from consortium.sim.raft_cluster import RAFT_SIM_PARAMS, RaftSimCluster

LOSSY = NetworkFaults(delay_ms=(1, 30), drop=0.05, duplicate=0.05)
CLOCK_MIXES = {"pbft": ("clock-primary", "clock-backup"), "raft": ("clock-leader",)}
PRIMARY_VARIANTS = ("ahead", "behind", "zero", "frozen")
LEADER_VARIANTS = ("ahead-then-back", "jump-ahead", "jump-behind", "zero", "frozen")
OFF_MS = 10 * 60 * 1000  # far: twice the workload's time to expiry
CLOCK_PBFT_PARAMS = replace(SIM_PARAMS, timestamp_skew_ms=500)
CLOCK_RAFT_PARAMS = replace(RAFT_SIM_PARAMS, timestamp_skew_ms=500)
TICK_MS = 10
DEADLINE_MS = 120_000

AnyCluster = SimCluster | RaftSimCluster


@dataclass(frozen=True, slots=True)
class ClockPlan:
    """What goes wrong with whose clock, and when: drawn from a generator of the seed's own,
    so the cluster's draws (and so the traces of every other mix) are unchanged."""

    variant: str
    at_ms: int
    member: int | None = None  # None: the raft leader of that moment
    back_after_ms: int | None = None  # ahead-then-back: right again this long after


def plan(mix: str, seed: int) -> ClockPlan:
    rng = random.Random(f"clock/{mix}/{seed}")
    if mix == "clock-backup":
        return ClockPlan("ahead", 0, member=rng.randint(1, 3))
    if mix == "clock-primary":
        return ClockPlan(rng.choice(PRIMARY_VARIANTS), rng.randint(100, 800), member=0)
    if mix == "clock-leader":
        variant = rng.choice(LEADER_VARIANTS)
        at_ms, back_ms = rng.randint(300, 800), rng.randint(500, 2_000)
        return ClockPlan(
            variant, at_ms, back_after_ms=back_ms if variant.endswith("back") else None
        )
    raise ValueError(f"no clock mix {mix!r}")


def run_clock(
    seed: int,
    mix: str,
    n: int | None = None,
    *,
    txs: int = 32,
    trace: Callable[[str], None] | None = None,
    own_clock_expiry: bool = False,
    factories: dict[int, ReplicaFactory] | None = None,
) -> AnyCluster:
    """One run of a clock mix; raises SafetyViolation (ClockViolation among them) or
    LivenessViolation when a check fails."""
    cluster: AnyCluster
    plan(mix, seed)  # (an unknown mix raises here)
    if mix in CLOCK_MIXES["pbft"]:
        cluster = SimCluster(
            seed,
            n or 4,
            faults=LOSSY,
            params=CLOCK_PBFT_PARAMS,
            factories=factories,
            tick_ms=TICK_MS,
        )
    else:
        cluster = RaftSimCluster(
            seed, n or 3, faults=LOSSY, params=CLOCK_RAFT_PARAMS, tick_ms=TICK_MS
        )
    cluster.trace = trace
    params = cluster.params
    cluster.clock_check = ClockChecker(
        params,
        (node.index for node in cluster.honest()),
        cluster.genesis.client_keys(),
        lag_ms=2 * params.request_timeout_ms,
    )
    cluster.own_clock_expiry = own_clock_expiry
    how = plan(mix, seed)
    cluster.at(how.at_ms, lambda: _wrong_clock(cluster, how))
    rng = cluster.rng
    pool = workload(cluster.chain_id, txs)
    i = 0
    while i < txs:
        k = rng.randint(1, 4)
        cluster.submit(pool[i : i + k])
        i += k
        cluster.run_until(cluster.now_ms + rng.randint(100, 300))
    if not cluster.run_until_committed(cluster.now_ms + DEADLINE_MS):
        explain = "; ".join(f"{node.name}: {node.explain()}" for node in cluster.honest())
        raise LivenessViolation(f"seed {seed} ({mix}): not everything committed ({explain})")
    cluster.run_until(cluster.now_ms + 300)
    cluster.check_converged()
    return cluster


def _wrong_clock(cluster: AnyCluster, how: ClockPlan) -> None:
    """Set the planned member's clock wrong (now), and schedule it right again if planned."""
    member = how.member
    if member is None:
        assert isinstance(cluster, RaftSimCluster)
        leaders = cluster.leaders()
        if not leaders:  # an election runs: the leader it makes is the one
            cluster.at(cluster.now_ms + 50, lambda: _wrong_clock(cluster, how))
            return
        member = leaders[0].index
    if how.variant == "zero":
        cluster.set_clock(member, frozen_ms=0)
    elif how.variant == "frozen":
        cluster.set_clock(member, frozen_ms=cluster.wall_ms(member))
    else:
        cluster.set_clock(member, -OFF_MS if how.variant in ("behind", "jump-behind") else OFF_MS)
    if how.back_after_ms is not None:
        cluster.at(cluster.now_ms + how.back_after_ms, lambda: cluster.set_clock(member, 0))
