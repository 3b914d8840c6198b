"""Seeded simulations of unmodified PBFT cores over a lossy network.

Each seed: clients submit transactions to every replica over time while the network delays,
reorders, duplicates and drops messages; after every step the safety checker runs; at the end
every transaction must have committed and all ledgers must be identical.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from consortium.crypto.signing import Signer, Verifier
from consortium.ledger.block import batch_digest
from consortium.ledger.tx import Transaction
from consortium.node.sim.checkers import SafetyViolation
from consortium.node.sim.cluster import HmacSigner, SimCluster, member_keys, workload
from consortium.node.sim.network import NetworkFaults
from consortium.pbft.messages import Commit, PrePrepare, encode
from consortium.pbft.replica import PbftConfig, PbftReplica, RecoveredState

FAULTS = NetworkFaults(delay_ms=(1, 40), drop=0.08, duplicate=0.08)


def run_seed(
    seed: int,
    n: int,
    *,
    txs: int = 40,
    faults: NetworkFaults = FAULTS,
    real_signatures: bool = False,
) -> SimCluster:
    cluster = SimCluster(seed, n, faults=faults, real_signatures=real_signatures)
    pool = workload(cluster.chain_id, txs)
    i = 0
    while i < txs:
        k = cluster.rng.randint(1, 8)
        cluster.submit(pool[i : i + k])
        i += k
        cluster.run_until(cluster.now_ms + cluster.rng.randint(0, 30))
    assert cluster.run_until_committed(120_000), f"seed {seed}: not all committed"
    cluster.check_liveness()
    return cluster


@pytest.mark.parametrize("block", range(4))
def test_four_replicas_reach_the_same_ledger_under_delay_reorder_duplication_and_loss(
    block: int,
) -> None:
    for seed in range(block * 50, block * 50 + 50):
        run_seed(seed, 4)


def test_seven_replicas_reach_the_same_ledger_across_seeds() -> None:
    for seed in range(1000, 1030):
        run_seed(seed, 7)


def test_heavy_loss_still_commits_everything() -> None:
    for seed in range(2000, 2020):
        run_seed(seed, 4, faults=NetworkFaults(delay_ms=(1, 80), drop=0.3, duplicate=0.2))


def test_with_real_ed25519_signatures() -> None:
    for seed in range(3000, 3003):
        run_seed(seed, 4, txs=20, real_signatures=True)


def test_the_same_seed_gives_the_same_trace() -> None:
    a = run_seed(77, 4)
    b = run_seed(77, 4)
    assert a.now_ms == b.now_ms
    assert a.net.sent == b.net.sent
    assert [n.block_hashes for n in a.nodes] == [n.block_hashes for n in b.nodes]


class CommitsAtQuorumMinusOne(PbftReplica):
    """A deliberately broken replica: its quorum is one short."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.quorum -= 1


def broken(
    config: PbftConfig,
    signer: Signer,
    verifier: Verifier,
    tx_ok: Callable[[Transaction], bool],
    recovered: RecoveredState,
) -> PbftReplica:
    return CommitsAtQuorumMinusOne(config, signer, verifier, tx_ok=tx_ok, recovered=recovered)


def equivocate(cluster: SimCluster) -> None:
    """Primary 0 (Byzantine) sends batch A to n2 and batch B to n3 and n4, with its COMMITs."""
    key = member_keys(cluster.n)[0]
    signer = HmacSigner(key.public, key.seed())
    pool = workload(cluster.chain_id, 2)
    for tx in pool:
        cluster._valid_txs.add(tx.id + tx.signature)
    for batch, dests in (((pool[0],), [1]), ((pool[1],), [2, 3])):
        digest = batch_digest(cluster.wall_offset_ms, [t.id for t in batch])
        pp = PrePrepare.create(
            signer,
            cluster.chain_id,
            view=0,
            seq=1,
            digest=digest,
            proposed_ms=cluster.wall_offset_ms,
            sender=0,
            txs=batch,
        )
        commit = Commit.create(signer, cluster.chain_id, view=0, seq=1, digest=digest, sender=0)
        for d in dests:
            cluster.net.send(cluster.now_ms, 0, d, encode(pp))
            cluster.net.send(cluster.now_ms, 0, d, encode(commit))


def test_the_safety_checker_catches_replicas_that_commit_one_vote_short() -> None:
    cluster = SimCluster(5, 4, factories={i: broken for i in (1, 2, 3)})
    cluster.byzantine = {0}
    cluster.run_until(10)
    equivocate(cluster)
    with pytest.raises(SafetyViolation, match="seq 1"):
        cluster.run_until(2_000)


def test_correct_replicas_survive_the_same_equivocating_primary() -> None:
    cluster = SimCluster(5, 4)
    cluster.byzantine = {0}
    cluster.run_until(10)
    equivocate(cluster)
    cluster.run_until(2_000)  # the checker runs after every step
    # n3 and n4 got batch B and a quorum (themselves and the primary) commits it; n2 got A and
    # can never gather a quorum for it. One digest at seq 1, never two.
    committed = {n.name: n.digests.get(1) for n in cluster.honest()}
    assert committed["n2"] is None
    assert committed["n3"] is not None and committed["n3"] == committed["n4"]


def test_regression_seed_2009_a_replica_that_missed_checkpoint_votes_gets_the_certificate() -> None:
    """Found by the heavy-loss run: n2 executed seq 8 but every CHECKPOINT(8) to it was lost,
    so its window stayed at (0, 8] while the others moved on. Peers now answer a stale
    checkpoint vote with the stable certificate."""
    cluster = run_seed(2009, 4, faults=NetworkFaults(delay_ms=(1, 80), drop=0.3, duplicate=0.2))
    assert {n.replica.low_watermark for n in cluster.nodes} == {8}
