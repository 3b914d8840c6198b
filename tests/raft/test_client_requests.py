"""Client requests (Ongaro's thesis §6.2 and §6.3): a follower forwards what clients give it to
the leader, in frames that fit; a transaction is ordered once, whatever the elections and
resubmissions (the ledger's replay protection stands in for the thesis's client sessions); the
pool that holds them is bounded."""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise

from raft_harness import HEARTBEAT, E, Msg, entries_holding, ids, started

from consortium.crashft import messages as m
from consortium.crashft import reasons as drop
from consortium.crashft.node import FOLLOWER


def test_a_leader_elected_again_does_not_order_its_own_uncommitted_transactions_twice() -> None:
    """Stepping down puts the transactions of the uncommitted entries back in the pool (in
    case the next leader's log lacks them); winning again, the leader ordered them a second
    time although its log holds them and commits them with its new term. (No lease, so the
    others vote for n1 at once.)"""
    g = started(check_quorum=False)
    tx = g.txs[0]
    g.propose(0, tx)
    g.drop()  # nobody acknowledges entry 2
    assert entries_holding(g.node(0), tx.id) == [2] and g.node(0).commit == 1
    g.receive(0, 1, m.AppendReply(2, False, 0, 0, g.node(1)._wall))  # a higher term: n1 steps down
    assert g.node(0).role == FOLLOWER
    g.drop()
    g.elect(0)  # its log is the most up to date: it wins again, term 3
    g.settle()
    g.heartbeat(0)
    for i in range(3):
        assert entries_holding(g.node(i), tx.id) == [2], f"n{i + 1}"
        assert tx.id in g.members[i].committed_ids
    assert [len(block.txs) for block in g.members[0].blocks] == [1]


def test_a_resubmission_of_a_committed_transaction_is_not_ordered_again() -> None:
    """An id leaves the leader's uncommitted set when its entry commits, in the Ready whose
    block the shell then writes; the client port sees only the store, so a resubmission that
    met the block still being written (or a follower's late forward) reached the core as new
    and was ordered again. The leader asks its ledger (executed) before it orders a batch."""
    g = started()
    tx = g.txs[0]
    g.propose(0, tx)
    g.settle()
    assert g.node(0).commit == 2 and tx.id in g.members[0].committed_ids
    last = g.node(0).log.last_index
    g.propose(0, tx, g.txs[1])  # the resubmission, with a new transaction
    g.settle()
    g.heartbeat(0)
    assert entries_holding(g.node(0), tx.id) == [2]
    assert g.node(0).log.last_index == last + 1 and ids(g.node(0).log.entry(last + 1)) == {
        g.txs[1].id
    }
    assert g.node(0).rejected["tx_executed"] == 1
    assert [len(block.txs) for block in g.members[1].blocks] == [1, 1]


def test_a_forward_is_cut_by_bytes_so_every_frame_fits() -> None:
    """Found in review: 512 large transactions in one FORWARD exceeded the frame limit and the
    transport dropped it, every retry."""
    g = started()
    follower = 1
    raft = g.node(follower)
    big = [g.txs[i] for i in range(8)]
    limit = sum(t.size for t in big[:3]) * 2 + 64  # frame_bytes_max // 2 ~ three of them
    raft.config = replace(raft.config, params=replace(raft.config.params, frame_bytes_max=limit))
    for tx in big:
        raft.propose(tx)
    frames = [
        o.frame
        for o in raft.take_ready().messages
        if m.decode(o.frame, g.params).__class__ is m.Forward
    ]
    assert len(frames) >= 2
    assert all(len(f) <= limit for f in frames)
    forwarded = [t.id for f in frames for t in m.decode(f, g.params).txs]  # type: ignore[union-attr]
    assert forwarded == [t.id for t in big]


def test_the_transaction_pool_is_bounded() -> None:
    g = started(pool_max=3)
    n1 = g.node(0)
    assert n1.propose_all(g.txs[:4]) == [True, True, True, False]
    assert n1.rejected["pool_full"] == 1
    assert n1.propose(g.txs[0]) is True and n1.rejected["duplicate_tx"] == 1
    g.flush(0)  # batched: the pool has room again
    assert g.propose(0, g.txs[3]) == [True]
    n3 = g.node(2)  # a follower's forwarding pool is bounded the same way
    assert [n3.propose(tx) for tx in g.txs[10:14]] == [True, True, True, False]


def test_a_drain_of_inputs_is_one_input_one_batch_one_forward() -> None:
    """RaftNode.inputs(): the shell hands a drain of events as one input, so an idle leader
    cuts one batch for all the submissions in it (not the first alone, the rest waiting for
    the batch delay), and a follower forwards them in one message."""
    g = started()
    leader, follower = g.node(0), g.node(2)
    g.heartbeat(0)
    with leader.inputs():
        for tx in g.txs[:3]:
            leader.propose(tx)
    g.flush(0)
    (entry,) = [i for i in range(1, leader.log.last_index + 1) if ids(leader.log.entry(i))]
    assert ids(leader.log.entry(entry)) == {tx.id for tx in g.txs[:3]}
    with follower.inputs():
        for tx in g.txs[3:6]:
            follower.propose(tx)
    g.flush(2)
    forwards = g.pending(m.Forward, src=2)
    assert len(forwards) == 1 and len(forwards[0].msg.txs) == 3  # type: ignore[union-attr]


def test_inside_a_drain_the_invariants_are_checked_after_each_input() -> None:
    """A drain is one input for what it makes due (RaftNode._advance, once at its end), but
    the core's constant-time invariants are checked after each of its inputs, and at its end."""
    g = started()
    leader = g.node(0)
    checked = 0
    check = leader._check_invariants

    def counting() -> None:
        nonlocal checked
        checked += 1
        check()

    leader._check_invariants = counting  # type: ignore[method-assign]
    with leader.inputs():
        for tx in g.txs[:3]:
            leader.propose(tx)
        assert checked == 3
    assert checked == 4


def test_a_follower_forwards_again_every_two_election_timeouts_and_gives_up_after_four() -> None:
    """What a follower forwarded and did not see committed goes again once 2E have passed (its
    pool is scanned every E/2, not every tick), four times in all; then the client has long
    since retried elsewhere and the transaction leaves the pool, counted."""
    g = started()
    follower = g.node(2)
    sent_ms: list[int] = []

    def lose_forwards(q: Msg) -> bool:
        if isinstance(q.msg, m.Forward) and q.src == 2:
            sent_ms.append(g.now)
            return False  # lost on the way: the leader never orders it
        return True

    g.tick(2)  # (the core's clock is its last tick)
    g.propose(2, g.txs[0])
    assert len(g.pending(m.Forward, src=2)) == 1
    sent_ms.append(g.now)
    g.drop()
    g.run(2 * E - HEARTBEAT, pred=lose_forwards)
    assert len(sent_ms) == 1  # nothing again before 2E
    g.run(10 * E, pred=lose_forwards)
    assert len(sent_ms) == 4
    gaps = [b - a for a, b in pairwise(sent_ms)]
    assert all(2 * E <= gap <= 2 * E + E // 2 + HEARTBEAT for gap in gaps), gaps
    assert follower.pending_count == 0 and follower.rejected[drop.FORWARD_GAVE_UP] == 1
