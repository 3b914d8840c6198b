"""What the flapping mixes of both modes share (PBFT's in scenarios.py, Raft's in
raft_scenarios.py): progress after the network stabilises with at most f faulty members.

f members are faulty for the whole run ("flap-down": crashed from the start and never back;
"flap-mute": running, hearing everything, heard by no one), while partitions of the other
members come and go: three to five, each with a new split (no side holds a quorum: the f faulty
members leave exactly one, and every split divides it), each held longer than the timeout that
must fire in it (each mode says which, and how much longer), with a short heal of up to half
that timeout after each, so some votes and appends get through and most do not. A few
transactions are submitted before and during the partitions, the rest at the end of the last
heal. The network stays healed from the end of the last partition, and every transaction
submitted must commit at every member that is not faulty, into ledgers of one height, within a
deadline each mode derives from its timers, counted from the end of the last partition. The
safety checkers run after every step, as in every run of the simulator.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from consortium.ledger.tx import Transaction
from consortium.sim.checkers import LivenessViolation, Observed, check_converged
from consortium.sim.cluster import workload
from consortium.sim.network import SimNetwork

FLAPPING = ("flap-down", "flap-mute")
FLAPS = (3, 5)  # partitions per run, inclusive


@dataclass(slots=True)
class Flaps:
    """What one run of a flapping mix did, so tests can check the mix exercised its subject."""

    faulty: list[int] = field(default_factory=list)
    partitions: int = 0
    held_ms: list[int] = field(default_factory=list)  # how long each partition was held
    timeouts_ms: list[int] = field(default_factory=list)  # the timeout when each began
    # The members that are not faulty, each as (view or term, settled): pbft (view, active
    # in it); raft (term, knows a leader of it). At the first partition and at the last heal.
    at_start: list[tuple[int, bool]] = field(default_factory=list)
    at_heal: list[tuple[int, bool]] = field(default_factory=list)
    healed_ms: int = 0  # when the network healed for good (the last partition ended)
    recovered_ms: int = 0  # simulated time from the last heal until everything committed


class FlappingCluster(Protocol):
    """What the mixes drive: either simulated cluster (cluster.SimCluster, RaftSimCluster)."""

    rng: random.Random
    net: SimNetwork
    n: int
    now_ms: int
    chain_id: bytes
    submitted: list[bytes]
    trace: Callable[[str], None] | None

    def submit(self, txs: tuple[Transaction, ...]) -> None: ...

    def crash(self, i: int, restart_after_ms: int | None = None) -> None: ...

    def run_until(self, end_ms: int) -> None: ...

    def step(self) -> None: ...


def make_faulty(cluster: FlappingCluster, mix: str, f: int) -> list[int]:
    """Choose f members and make them faulty for the whole run, as the mix says."""
    assert mix in FLAPPING, mix
    faulty = sorted(cluster.rng.sample(range(cluster.n), f))
    for i in faulty:
        if mix == "flap-down":
            cluster.crash(i)
        else:
            _note(cluster, f"n{i + 1} MUTE for the whole run")
            cluster.net.mute(i)
    return faulty


def _note(cluster: FlappingCluster, text: str) -> None:
    if cluster.trace is not None:
        cluster.trace(f"{cluster.now_ms:>7} ms  {text}")


class Submitter:
    """The run's `txs` transactions, submitted a few at a time, never more than there are."""

    def __init__(self, cluster: FlappingCluster, txs: int) -> None:
        self.cluster = cluster
        self.pool = workload(cluster.chain_id, txs)
        self.sent = 0

    def __call__(self, k: int) -> None:
        k = min(k, len(self.pool) - self.sent)
        self.cluster.submit(self.pool[self.sent : self.sent + k])
        self.sent += k

    def rest(self) -> None:
        self(len(self.pool) - self.sent)


def flap(
    cluster: FlappingCluster,
    live: Sequence[int],
    flaps: Flaps,
    submit: Submitter,
    *,
    timeout_ms: Callable[[], int],
    hold_max: int,
    lead_in_ms: int,
    state: Callable[[], list[tuple[int, bool]]],
    now_and_then: Callable[[], None] | None = None,
) -> None:
    """Partition the `live` members again and again, as the module says: each partition is
    held for timeout_ms() x (1.1 to hold_max), timeout_ms() read when it begins, and followed
    by a heal of up to half of it; `now_and_then` (reads, say) runs as each partition begins
    and ends. Work before the first partition (it may commit, or be caught in it), after up to
    lead_in_ms, and during each; the rest at the end, when the network heals for good."""
    rng = cluster.rng
    submit(rng.randint(1, 3))
    cluster.run_until(cluster.now_ms + rng.randint(0, lead_in_ms))
    flaps.at_start = state()
    for _ in range(rng.randint(*FLAPS)):
        timeout = timeout_ms()
        members = list(live)
        rng.shuffle(members)
        cut = rng.randint(1, len(members) - 1)
        cluster.net.partition([members[:cut], members[cut:]])
        submit(rng.randint(1, 2))
        if now_and_then is not None:
            now_and_then()
        held_ms = timeout + rng.randint(timeout // 10, (hold_max - 1) * timeout)
        sides = [
            " ".join(f"n{i + 1}" for i in sorted(side)) for side in (members[:cut], members[cut:])
        ]
        _note(cluster, f"PARTITION {' | '.join(sides)} for {held_ms} ms (timeout {timeout} ms)")
        cluster.run_until(cluster.now_ms + held_ms)
        cluster.net.heal()
        _note(cluster, "HEAL")
        flaps.healed_ms = cluster.now_ms  # the last one holds: the deadline counts from it
        flaps.partitions += 1
        flaps.held_ms.append(held_ms)
        flaps.timeouts_ms.append(timeout)
        if now_and_then is not None:
            now_and_then()
        cluster.run_until(cluster.now_ms + rng.randint(0, timeout // 2))
    submit.rest()
    _note(cluster, f"HEALED for good (since {flaps.healed_ms} ms): the rest submitted")
    flaps.at_heal = state()


def settle(
    cluster: FlappingCluster,
    live: Sequence[Observed],
    flaps: Flaps,
    deadline_ms: int,
    *,
    what: str = "",
) -> None:
    """Run until every submitted transaction committed at every `live` member, into ledgers
    of one height; LivenessViolation if that takes more than deadline_ms (simulated)."""
    ids = set(cluster.submitted)
    end_ms = flaps.healed_ms + deadline_ms
    while not (
        len({len(node.block_hashes) for node in live}) == 1
        and all(ids <= node.committed_ids for node in live)
    ):
        if cluster.now_ms >= end_ms:
            explain = "; ".join(f"{node.name}: {node.explain()}" for node in live)
            raise LivenessViolation(
                f"{what}not everything committed {deadline_ms / 1000:.1f} s after the last heal "
                f"({explain})"
            )
        cluster.step()
    flaps.recovered_ms = cluster.now_ms - flaps.healed_ms
    check_converged(live, cluster.submitted)
