"""Batching at the primary and the request pool (Castro & Liskov, OSDI'99 §4.6; TOCS'02
§5.1.4): no waiting when idle, a bounded wait to fill a batch when busy, limits on everything."""

from __future__ import annotations

from dataclasses import replace

from pbft_harness import PARAMS, Group, drive, frames

from consortium.pbft.messages import PrePrepare, decode
from consortium.sim.cluster import workload


def proposals(group: Group) -> list[PrePrepare]:
    out = [decode(f, group.params) for f in frames(group.take(0))]
    return [m for m in out if isinstance(m, PrePrepare)]


def test_an_idle_primary_proposes_at_once() -> None:
    group = Group()
    group.replicas[0].propose(group.txs[0])
    (pp,) = proposals(group)
    assert (pp.seq, pp.txs) == (1, (group.txs[0],))


def test_a_busy_primary_waits_at_most_batch_delay_ms_to_fill_a_batch() -> None:
    group = Group()  # batch_delay_ms = 10
    primary = group.replicas[0]
    primary.propose(group.txs[0])
    assert len(proposals(group)) == 1  # seq 1 is now in flight
    primary.propose(group.txs[1])
    group.tick_all(5)
    primary.propose(group.txs[2])
    group.tick_all(4)
    assert proposals(group) == []
    group.tick_all(1)  # 10 ms after the first pending transaction arrived
    (pp,) = proposals(group)
    assert (pp.seq, pp.txs) == (2, (group.txs[1], group.txs[2]))


def test_a_busy_primary_cuts_a_full_batch_at_once() -> None:
    group = Group()  # batch_txs_max = 4
    primary = group.replicas[0]
    for tx in group.txs[:5]:
        primary.propose(tx)
    assert [pp.txs for pp in proposals(group)] == [group.txs[:1], group.txs[1:5]]


def test_batches_respect_batch_bytes_max() -> None:
    size = workload(Group().chain_id, 1)[0].size
    group = Group(params=replace(PARAMS, batch_bytes_max=2 * size + 1, batch_txs_max=64))
    primary = group.replicas[0]
    for tx in group.txs[:6]:
        primary.propose(tx)
    batches = [pp.txs for pp in proposals(group)]
    assert batches == [group.txs[:1], group.txs[1:3], group.txs[3:5]]  # cut when bytes are full
    assert all(sum(t.size for t in b) <= 2 * size + 1 for b in batches)


def test_a_transaction_larger_than_a_batch_is_refused() -> None:
    size = workload(Group().chain_id, 1)[0].size
    group = Group(params=replace(PARAMS, batch_bytes_max=size - 1))
    group.replicas[0].propose(group.txs[0])
    assert group.replicas[0].rejected["tx_too_large"] == 1 and proposals(group) == []


def test_a_transaction_of_another_chain_is_never_proposed() -> None:
    group = Group()
    group.replicas[0].propose(workload(b"\x01" * 32, 1)[0])
    assert group.replicas[0].rejected["wrong_chain"] == 1 and proposals(group) == []


def test_a_transaction_is_batched_once_whatever_the_number_of_copies() -> None:
    group = Group()
    primary = group.replicas[0]
    primary.propose(group.txs[0])  # in flight
    primary.propose(group.txs[1])
    primary.propose(group.txs[0])
    primary.propose(group.txs[1])
    assert primary.rejected["tx_duplicate"] == 2
    group.tick_all(PARAMS.batch_delay_ms)
    assert [pp.txs for pp in proposals(group)] == [group.txs[:1], group.txs[1:2]]
    group.pump()
    primary.propose(group.txs[0])  # a late copy of a committed transaction
    assert primary.rejected["tx_duplicate"] == 3 and primary.status()["pending_txs"] == 0


def test_the_pool_is_bounded() -> None:
    group = Group()
    backup = group.make(1, pending_txs_max=3)
    for tx in group.txs[:5]:
        backup.propose(tx)
    assert backup.rejected["pool_full"] == 2 and backup.status()["pending_txs"] == 3


def test_a_backup_keeps_client_transactions_until_they_commit_and_does_not_forward() -> None:
    group = Group()
    backup = group.replicas[1]
    group.take(1)  # its start-up probe (FETCH) of a peer
    backup.propose(group.txs[0])
    backup.propose(group.txs[1])
    assert not group.take(1)  # clients send to every replica: nothing to forward yet
    assert backup.status()["pending_txs"] == 2
    assert backup.status()["waiting_for"] == "pre-prepare from primary 0 for 2 pending transactions"
    drive(group, 1, group.preprepare(1, group.txs[:1]))
    assert backup.status()["pending_txs"] == 1


def test_the_primary_proposes_only_once_it_knows_the_time() -> None:
    group = Group(tick=False)
    primary = group.replicas[0]
    primary.propose(group.txs[0])
    assert proposals(group) == []
    group.tick_all(0)
    assert [pp.txs for pp in proposals(group)] == [group.txs[:1]]
