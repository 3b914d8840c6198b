"""Named simulation scenarios, for `consortium sim` (and anyone replaying a seed): a workload of
client transactions in random bursts over a chosen network, optionally a partition without a
quorum, a crash and restart of the primary, and a Byzantine behaviour in up to f members. Then
run until everything committed and check; the outcome says what failed, if anything."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from consortium.node.sim.byzantine import byzantine
from consortium.node.sim.checkers import LivenessViolation, SafetyViolation
from consortium.node.sim.cluster import SimCluster, workload
from consortium.node.sim.network import NetworkFaults

FAULTS = {
    "clean": NetworkFaults(),
    "lossy": NetworkFaults(delay_ms=(1, 30), drop=0.05, duplicate=0.05),
    "heavy": NetworkFaults(delay_ms=(1, 80), drop=0.3, duplicate=0.2),
}
DEADLINE_MS = 120_000


@dataclass(frozen=True, slots=True)
class Scenario:
    n: int = 4
    txs: int = 60
    faults: str = "lossy"
    partition: bool = False
    crash: bool = False
    behaviour: str | None = None
    liars: tuple[int, ...] = (0,)


@dataclass(slots=True)
class Outcome:
    seed: int
    ok: bool
    failure: str = ""  # "safety" or "liveness" or "error"
    message: str = ""
    simulated_ms: int = 0
    steps: int = 0
    sent: int = 0
    dropped: int = 0
    heights: list[int] = field(default_factory=list)
    views: list[int] = field(default_factory=list)


def run_seed(scenario: Scenario, seed: int, trace: Callable[[str], None] | None = None) -> Outcome:
    liars = set(scenario.liars) if scenario.behaviour else set()
    factories = (
        {m: byzantine(scenario.behaviour, seed, liars) for m in liars} if scenario.behaviour else {}
    )
    cluster = SimCluster(
        seed, scenario.n, faults=FAULTS[scenario.faults], factories=factories, byzantine=liars
    )
    cluster.trace = trace
    outcome = Outcome(seed, ok=False)
    try:
        _drive(cluster, scenario)
        outcome.ok = True
    except SafetyViolation as exc:
        outcome.failure, outcome.message = "safety", str(exc)
    except LivenessViolation as exc:
        outcome.failure, outcome.message = "liveness", str(exc)
    except AssertionError as exc:  # a core's own invariant
        outcome.failure, outcome.message = "error", f"assertion failed: {exc}"
    outcome.simulated_ms, outcome.steps = cluster.now_ms, cluster.steps
    outcome.sent, outcome.dropped = cluster.net.sent, cluster.net.dropped
    outcome.heights = [node.head.height for node in cluster.nodes]
    outcome.views = [node.replica.view for node in cluster.nodes]
    return outcome


def _restarter(cluster: SimCluster, victim: int) -> Callable[[], None]:
    return lambda: cluster.restart(victim)


def _drive(cluster: SimCluster, scenario: Scenario) -> None:
    rng, n, total = cluster.rng, cluster.n, scenario.txs
    pool = workload(cluster.chain_id, total)
    i = 0
    crashed = False
    while i < total:
        k = rng.randint(1, 8)
        cluster.submit(pool[i : i + k])
        i += k
        cluster.run_until(cluster.now_ms + rng.randint(0, 20))
        if scenario.partition and i - k < total // 3 <= i:
            members = list(range(n))
            rng.shuffle(members)
            cluster.net.partition([members[: n // 2], members[n // 2 :]])
            cluster.at(cluster.now_ms + rng.randint(300, 1_500), cluster.net.heal)
        if scenario.crash and not crashed and i >= total // 2:
            crashed = True
            victim = cluster.nodes[-1].replica.primary
            cluster.crash(victim)
            cluster.at(cluster.now_ms + rng.randint(300, 1_500), _restarter(cluster, victim))
    if not cluster.run_until_committed(cluster.now_ms + DEADLINE_MS):
        explain = "; ".join(f"{node.name}: {node.explain()}" for node in cluster.honest())
        raise LivenessViolation(f"not everything committed ({explain})")
    cluster.run_until(cluster.now_ms + 1_000)
    cluster.check_converged()
