"""Named simulation scenarios, for `consortium sim` (and anyone replaying a seed): a workload of
client transactions in random bursts over a chosen network, optionally a partition without a
quorum, a crash and restart of the primary, and a Byzantine behaviour in up to f members. Then
run until everything committed and check; the outcome says what failed, if anything.

run_restore: a member restored from a backup two blocks old, with or without recovery.

The flapping mixes (FLAPPING, their course in flapping.py, shared with raft's) are PBFT
liveness as the paper states it: after the network stabilises with at most f faulty members,
correct members order new requests. f members are faulty for the whole run ("flap-down":
crashed from the start; "flap-mute": running, hearing everything, heard by no one), and
partitions of the others, each held 1.1 to 2 times the current (doubled) view-change timeout
and each with its own split, come and go with short heals of up to half of it in between, so
the members drift apart by views. Then the network heals for good, and every transaction
submitted must commit at every other member, in identical ledgers, within 4 x the capped
view-change timeout (params.request_timeout_ms << TIMEOUT_DOUBLINGS_MAX) of simulated time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from consortium.pbft.replica import TIMEOUT_DOUBLINGS_MAX
from consortium.sim.byzantine import byzantine
from consortium.sim.checkers import LivenessViolation, SafetyViolation
from consortium.sim.cluster import ReplicaFactory, SimBackup, SimCluster, workload
from consortium.sim.flapping import (
    FLAPPING,
    Flaps,
    Submitter,
    flap,
    make_faulty,
    settle,
)
from consortium.sim.network import NetworkFaults

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
    mix: str | None = None  # one of FLAPPING (then no partition, crash or behaviour)


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
    flaps: Flaps | None = None  # what a flapping mix did


def run_seed(
    scenario: Scenario,
    seed: int,
    trace: Callable[[str], None] | None = None,
    *,
    replica: ReplicaFactory | None = None,
) -> Outcome:
    """Run one seed. `replica` builds every member that runs no Byzantine behaviour (tests
    use it to run the mixes against a deliberately broken core)."""
    liars = set(scenario.liars) if scenario.behaviour else set()
    factories = {m: replica for m in range(scenario.n)} if replica is not None else {}
    if scenario.behaviour:
        factories.update({m: byzantine(scenario.behaviour, seed, liars) for m in liars})
    cluster = SimCluster(
        seed, scenario.n, faults=FAULTS[scenario.faults], factories=factories, byzantine=liars
    )
    cluster.trace = trace
    outcome = Outcome(seed, ok=False)
    try:
        if scenario.mix is not None:
            outcome.flaps = Flaps()
            _drive_flapping(cluster, scenario, outcome.flaps)
        else:
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


def flapping_deadline_ms(cluster: SimCluster) -> int:
    """How long after the last heal everything must have committed (simulated time)."""
    return 4 * (cluster.params.request_timeout_ms << TIMEOUT_DOUBLINGS_MAX)


def _drive_flapping(cluster: SimCluster, scenario: Scenario, flaps: Flaps) -> None:
    assert scenario.mix in FLAPPING, scenario.mix
    faulty = make_faulty(cluster, scenario.mix, cluster.genesis.f)
    flaps.faulty = faulty
    live = [node for node in cluster.nodes if node.index not in faulty]

    def views() -> list[tuple[int, bool]]:
        return [(node.replica.view, node.replica.active) for node in live]

    # Each partition held longer than the current timeout (it doubles with each view change,
    # so read when the partition begins): every member's timer fires in it. A backup suspects
    # the primary only while it holds a request: work comes before and during each.
    flap(
        cluster,
        [node.index for node in live],
        flaps,
        Submitter(cluster, scenario.txs),
        timeout_ms=lambda: max(node.replica.timeout_ms for node in live),
        hold_max=2,
        lead_in_ms=300,
        state=views,
    )
    settle(cluster, live, flaps, flapping_deadline_ms(cluster))
