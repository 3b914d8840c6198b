"""Named simulation scenarios, for `consortium sim` (and anyone replaying a seed): a workload of
client transactions in random bursts over a chosen network, optionally a partition without a
quorum, a crash and restart of the primary, and a Byzantine behaviour in up to f members. Then
run until everything committed and check; the outcome says what failed, if anything.
run_restore: a member restored from a backup two blocks old, with or without recovery."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from consortium.node.sim.byzantine import byzantine
from consortium.node.sim.checkers import LivenessViolation, SafetyViolation
from consortium.node.sim.cluster import SimBackup, SimCluster, workload
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


def run_restore(
    seed: int,
    n: int = 4,
    *,
    victim: str = "primary",
    recovery: bool = True,
    txs: int = 60,
    trace: Callable[[str], None] | None = None,
) -> SimCluster:
    """Restore from a backup: a quarter into the workload the primary (victim="backup": the
    member after it) is backed up; once it has executed two blocks more it stops, and 20-200 ms
    later it starts from the backup (docs/operations.md, Restoring), marked as a restored backup
    (recovery=False: today's start without the mark, which the equivocation checker catches
    signing again what it signed after the backup). Then everything must commit into
    identical ledgers; the checkers run after every step."""
    assert victim in ("primary", "backup"), victim
    cluster = SimCluster(seed, n, faults=FAULTS["lossy"])
    cluster.trace = trace
    rng = cluster.rng
    pool = workload(cluster.chain_id, txs)
    copy: SimBackup | None = None
    restoring = False

    def maybe_restore() -> None:
        nonlocal restoring
        if copy is None or restoring or cluster.nodes[copy.index].head.height < copy.height + 2:
            return
        restoring = True
        member, backup = copy.index, copy
        cluster.crash(member)
        cluster.at(
            cluster.now_ms + rng.randint(20, 200),
            lambda: cluster.restore(member, backup, recovery=recovery),
        )

    i = 0
    while i < txs or not restoring:
        if i < txs:
            k = rng.randint(1, 8)
            cluster.submit(pool[i : i + k])
            i += k
        cluster.run_until(cluster.now_ms + rng.randint(0, 20))
        if copy is None and i >= txs // 4:
            view = sorted(node.replica.view for node in cluster.nodes)[n // 2]  # most are in
            primary = view % n
            copy = cluster.backup(primary if victim == "primary" else (primary + 1) % n)
        maybe_restore()
        if cluster.now_ms > DEADLINE_MS:
            raise LivenessViolation(f"seed {seed}: the backed-up member never got 2 blocks ahead")
    if not cluster.run_until_committed(cluster.now_ms + DEADLINE_MS):
        explain = "; ".join(f"{node.name}: {node.explain()}" for node in cluster.honest())
        raise LivenessViolation(f"seed {seed}: not everything committed ({explain})")
    cluster.run_until(cluster.now_ms + 1_000)
    cluster.check_converged()
    return cluster
