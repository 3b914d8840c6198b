"""The Raft core (consortium.crashft.node) driven by hand: elections, replication, the log
consistency check, the vote rules, PreVote, CheckQuorum, leadership transfer, ReadIndex, input
validation, bounds, compaction with snapshot install, and recovery from records. The harness
(raft_harness.py) runs the simulator's RaftChecker on everything, so each test is also checked
for election safety, log matching, leader completeness and state machine safety."""

from __future__ import annotations

from dataclasses import replace

import pytest
from raft_harness import HEARTBEAT, PARAMS, E, Msg, RaftGroup, log_terms

from consortium.crashft import messages as m
from consortium.crashft.node import (
    CANDIDATE,
    FOLLOWER,
    HARD_KEY,
    LEADER,
    LOG_PREFIX,
    PRE_CANDIDATE,
    SNAP_KEY,
    RaftNode,
    ReadState,
    RecoveredState,
    RecoveryError,
    log_key,
)
from consortium.crypto.codec import pack
from consortium.node.sim.cluster import EPOCH_MS


def started(n: int = 3, **overrides: object) -> RaftGroup:
    """n1 leads term 1; its no-op is committed and known committed everywhere."""
    g = RaftGroup(n, **overrides)  # type: ignore[arg-type]
    g.elect(0)
    g.settle()
    g.heartbeat(0)
    assert [g.node(i).commit for i in range(n)] == [1] * n
    return g


def replies(ready_msgs: list[Msg] | None = None, *, g: RaftGroup, src: int) -> list[m.Message]:
    return [q.msg for q in (g.queue if ready_msgs is None else ready_msgs) if q.src == src]


def without(*nodes: int):  # type: ignore[no-untyped-def]
    """A filter: nothing to or from `nodes`."""
    return lambda q: q.src not in nodes and q.dst not in nodes


# --- elections ----------------------------------------------------------------------------------


def test_a_member_whose_timer_fires_pre_votes_then_votes_and_is_elected() -> None:
    g = RaftGroup(3)
    g.timeout(0)
    n1 = g.node(0)
    assert n1.role == PRE_CANDIDATE and n1.term == 0  # a pre-vote does not change the term
    assert [q.msg for q in g.queue] == [m.Vote(1, 0, 0, True, False)] * 2
    g.deliver(lambda q: isinstance(q.msg, m.Vote | m.VoteReply), keep=True)
    assert n1.role == LEADER and n1.term == 1 and n1.voted_for == 0
    g.settle()
    for i in (1, 2):
        assert g.node(i).role == FOLLOWER
        assert (g.node(i).term, g.node(i).voted_for, g.node(i).leader) == (1, 0, 0)
    assert n1.elections == 2  # the pre-vote round and the real one


def test_a_candidate_asks_again_every_heartbeat_interval_those_that_did_not_answer() -> None:
    # n = 5: every vote counts when only a majority is up. Asked once, a lost request or answer
    # cost the whole election (E to 2E until the next one).
    g = RaftGroup(5)
    g.timeout(0)
    fired_ms = g.now
    prevote = m.Vote(1, 0, 0, True, False)
    assert [(q.dst, q.msg) for q in g.queue] == [(i, prevote) for i in range(1, 5)]
    g.deliver(lambda q: 1 in (q.src, q.dst))  # only n2 hears it and answers: 2 of 3
    assert g.node(0).role == PRE_CANDIDATE
    g.advance(HEARTBEAT - 1, [0])
    assert g.queue == []
    g.advance(1, [0])  # one heartbeat interval later: n3, n4, n5 again, not n2
    assert [(q.dst, q.msg) for q in g.queue] == [(i, prevote) for i in range(2, 5)]
    g.deliver(lambda q: 2 in (q.src, q.dst) and getattr(q.msg, "prevote", False), keep=True)
    assert g.node(0).role == CANDIDATE  # n3 answered: a candidate for term 1
    g.drop()  # its vote requests are lost, and what was left of the pre-vote
    vote = m.Vote(1, 0, 0, False, False)
    g.advance(HEARTBEAT, [0])
    assert [(q.dst, q.msg) for q in g.queue] == [(i, vote) for i in range(1, 5)]
    g.deliver(lambda q: q.src in (0, 1, 3) and q.dst in (0, 1, 3))  # n2 and n4 grant
    assert g.node(0).role == LEADER and g.node(0).term == 1
    assert g.now - fired_ms == 2 * HEARTBEAT  # not E or more, for its next election


def test_a_new_leader_appends_a_noop_of_its_term_which_commits_and_makes_no_block() -> None:
    g = RaftGroup(3)
    leader = g.elect(0)
    assert log_terms(leader) == [(1, 1)] and leader.log.entry(1).is_noop
    g.settle()
    g.heartbeat(0)
    for i in range(3):
        assert log_terms(g.node(i)) == [(1, 1)]
        assert [(e.index, e.term, e.is_noop) for e in g.members[i].applied] == [(1, 1, True)]
        assert g.members[i].head.height == 0  # a no-op makes no block
    assert leader.status()["waiting_for"] == ""


def test_a_proposal_is_replicated_committed_and_applied_into_identical_ledgers() -> None:
    g = started()
    assert g.propose(0, *g.txs[:3]) == [True] * 3
    appends = g.pending(m.Append, src=0)
    assert {q.dst for q in appends} == {1, 2}
    assert all(len(q.msg.entries) == 1 for q in appends)  # type: ignore[union-attr]
    assert g.node(0).commit == 1  # not before a majority acknowledged
    g.settle()
    assert g.node(0).commit == 2
    g.heartbeat(0)
    for i in range(3):
        assert g.node(i).commit == 2 and g.members[i].head.height == 1
        assert {tx.id for tx in g.txs[:3]} <= g.members[i].committed_ids
    assert len({tuple(x.block_hashes) for x in g.members}) == 1
    # A follower forwards what clients give it to the leader.
    g.propose(2, g.txs[3])
    assert [type(q.msg) for q in g.pending(src=2)] == [m.Forward]
    g.settle()
    g.heartbeat(0)
    assert all(g.txs[3].id in x.committed_ids for x in g.members)


def entries_holding(raft: RaftNode, tx_id: bytes) -> list[int]:
    log = raft.log
    return [i for i in range(log.first_index, log.last_index + 1) if tx_id in ids(log.entry(i))]


def ids(entry: object) -> set[bytes]:
    return {tx.id for tx in entry.txs}  # type: ignore[attr-defined]


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


def test_only_a_leaders_appends_and_heartbeats_may_leave_before_its_write() -> None:
    """Ready.early: the leader replicates while it writes its own log (it counts itself only
    for what it handed to its write); votes and acknowledgements wait for the write."""
    g = started()
    g.propose(0, g.txs[0])
    proposal = g.members[0].readys[-1]
    assert any(k.startswith(LOG_PREFIX) for k, _ in proposal.records)
    appends = [o for o in proposal.early if isinstance(m.decode(o.frame, g.params), m.Append)]
    assert appends
    assert not any(isinstance(m.decode(o.frame, g.params), m.Append) for o in proposal.messages)
    ack = g.receive(1, 0, g.pending(m.Append, src=0)[0].msg)
    assert ack.records and ack.messages and not ack.early
    g.heartbeat(0)
    beats = [o for r in g.members[0].readys[-2:] for o in r.early]
    assert any(isinstance(m.decode(o.frame, g.params), m.Heartbeat) for o in beats)
    vote = RaftGroup(3, pre_vote=False)
    vote.timeout(0)
    assert not vote.members[0].readys[-1].early


def test_a_single_member_commits_an_entry_only_after_its_write_is_reported_durable() -> None:
    """n = 1: the entry used to commit in the Ready that first wrote it, so the shell applied
    it and pushed its receipts before the fsync a power cut could lose. The core counts its
    own entries only once the shell calls persisted() with that Ready's log_end."""
    g = RaftGroup(1)
    solo = g.node(0)
    assert solo.role == LEADER and solo.commit == 1  # its no-op, persisted by the harness
    solo.propose(g.txs[0])
    written = solo.take_ready()
    assert [k for k, _ in written.records if k.startswith(LOG_PREFIX)] == [log_key(2)]
    assert written.committed == [] and solo.commit == 1  # not before the write is durable
    assert written.log_end == (2, 1)
    assert not solo.take_ready().committed  # nothing happens until the shell reports it
    solo.persisted(1, 1)  # an older write: still not the entry
    assert solo.commit == 1
    solo.persisted(*written.log_end)
    applied = solo.take_ready()
    assert [e.index for e in applied.committed] == [2] and solo.commit == 2
    assert applied.records == [] and applied.log_end is None


def test_a_commit_index_waits_for_the_next_append_or_goes_alone_after_the_delay() -> None:
    """commit_notice_ms: a new commit index rides on the next append when one comes soon (one
    message and one follower write fewer per entry); otherwise it goes alone once the delay
    passed, to followers whose log matches."""
    g = started(commit_notice_ms=5)
    g.propose(0, g.txs[0])
    g.settle()
    assert g.node(0).commit == 2 and g.node(1).commit == 1  # nothing carried it yet
    assert not g.pending(m.Append, src=0)
    g.propose(0, g.txs[1])  # the next append carries commit 2
    [carrier] = [q.msg for q in g.pending(m.Append, src=0) if q.dst == 1]
    assert carrier.commit == 2 and len(carrier.entries) == 1  # type: ignore[union-attr]
    g.settle()
    assert g.node(1).commit == 2 and g.node(0).commit == 3
    g.advance(4, [0])
    assert not g.pending(m.Append, src=0)  # not yet due
    g.advance(1, [0])
    notices = g.pending(m.Append, src=0)
    assert {q.dst for q in notices} == {1, 2}
    assert all(q.msg.commit == 3 and not q.msg.entries for q in notices)  # type: ignore[union-attr]
    g.settle()
    assert [g.node(i).commit for i in range(3)] == [3, 3, 3]


def test_a_leader_that_loses_its_write_after_its_appends_left_stays_safe() -> None:
    """The early appends reach both followers; the leader's own write of the entry is lost
    (power cut). The entry is on a majority, so the next leader commits it; the old leader
    rejoins and catches up. The checker (log matching, leader completeness, state machine
    safety) runs throughout. (No lease, so n3 votes at once after the crash.)"""
    g = started(check_quorum=False)
    g.propose(0, g.txs[0])
    lost = [k for k, _ in g.members[0].readys[-1].records if k.startswith(LOG_PREFIX)]
    assert lost
    for q in g.pending(m.Append, src=0):
        g.queue.remove(q)
        g.receive(q.dst, 0, q.msg)
    g.crash(0)
    for k in lost:
        del g.members[0].records[k]  # the write that never reached the disk
    g.queue.clear()
    g.elect(1, voters=[1, 2])
    g.settle([1, 2])
    g.heartbeat(1, [1, 2])
    assert all(g.txs[0].id in g.members[i].committed_ids for i in (1, 2))
    g.restart(0)
    g.heartbeat(1)
    g.settle()
    g.heartbeat(1)
    assert g.txs[0].id in g.members[0].committed_ids
    assert len({tuple(x.block_hashes) for x in g.members}) == 1


def test_a_follower_refuses_an_append_whose_previous_entry_it_does_not_hold() -> None:
    g = started()
    ready = g.receive(1, 0, m.Append(1, 5, 1, 1, ()))  # n2 has nothing at index 5
    assert [o.frame for o in ready.messages] == [
        m.encode(m.AppendReply(1, False, 5, 1, g.node(1)._wall))
    ]
    ready = g.receive(1, 0, m.Append(1, 1, 7, 1, ()))  # index 1 is there, in term 1, not 7
    # refused at index 1; the hint (etcd's findConflictByTerm) points before it
    assert [o.frame for o in ready.messages] == [
        m.encode(m.AppendReply(1, False, 1, 0, g.node(1)._wall))
    ]
    assert g.node(1).rejected["append_mismatch"] == 2
    assert log_terms(g.node(1)) == [(1, 1)]


def test_the_leader_backs_up_past_a_conflicting_suffix_and_repairs_the_follower() -> None:
    g = started(pre_vote=False, check_quorum=False)
    # n1 appends two batches of term 1 that reach nobody, then is cut off.
    g.propose(0, *g.txs[0:4])
    g.propose(0, *g.txs[4:8])
    g.drop()
    assert log_terms(g.node(0)) == [(1, 1), (2, 1), (3, 1)]
    # n2 is elected for term 2 by n3 and commits its no-op and a batch there.
    g.elect(1, voters=(2,))
    g.settle((1, 2))
    g.propose(1, *g.txs[8:12])
    g.settle((1, 2))
    g.queue.clear()
    assert log_terms(g.node(1)) == [(1, 1), (2, 2), (3, 2)] and g.node(1).commit == 3
    # n3 (same log) takes over in term 3: it starts by guessing n1 matches up to index 3.
    g.elect(2, voters=(1,))
    g.settle((1, 2))
    assert log_terms(g.node(2)) == [(1, 1), (2, 2), (3, 2), (4, 3)]
    # Healed: n1 refuses n3's appends until n3 backs up to index 1, then takes n3's suffix.
    g.heartbeat(2)
    refusals = [
        q.msg
        for q in g.delivered
        if q.src == 0 and isinstance(q.msg, m.AppendReply) and not q.msg.success
    ]
    assert [(r.index, r.hint) for r in refusals] == [(3, 2), (2, 1)]
    assert g.node(0).rejected["append_mismatch"] == 2
    assert g.node(0).role == FOLLOWER and g.node(0).term == 3
    assert log_terms(g.node(0)) == [(1, 1), (2, 2), (3, 2), (4, 3)]
    assert g.node(2).status()["progress"]["0"]["match"] == 4
    g.heartbeat(2)
    assert len({tuple(x.block_hashes) for x in g.members}) == 1
    assert g.txs[0].id not in g.members[0].committed_ids  # never committed: lost


def test_a_vote_is_refused_to_a_candidate_whose_log_is_not_up_to_date() -> None:
    g = started(check_quorum=False)  # no lease: the vote rule alone decides
    g.propose(0, *g.txs[:2])
    g.settle((0, 1))  # n3 misses entry 2
    g.heartbeat(0, (0, 1))
    n2 = g.node(1)
    assert n2.log.last_index == 2
    stale = (1, 1)  # n3's (last index, last term)
    ready = g.receive(1, 2, m.Vote(2, *stale, True, False))  # pre-vote
    assert [o.frame for o in ready.messages] == [m.encode(m.VoteReply(1, False, True))]
    assert n2.term == 1
    ready = g.receive(1, 2, m.Vote(2, *stale, False, False))  # vote: the term moves, no grant
    assert [o.frame for o in ready.messages] == [m.encode(m.VoteReply(2, False, False))]
    assert (n2.term, n2.voted_for) == (2, None)
    # Same last term, longer or equal log: granted. (A higher last term beats any length.)
    ready = g.receive(1, 2, m.Vote(3, 1, 2, False, False))
    assert [o.frame for o in ready.messages] == [m.encode(m.VoteReply(3, True, False))]
    assert n2.voted_for == 2
    # And in the cluster: n3 never wins, n2 can.
    g2 = started(check_quorum=False)
    g2.propose(0, *g2.txs[:2])
    g2.settle((0, 1))
    g2.crash(0)
    with pytest.raises(AssertionError, match="was not elected"):
        g2.elect(2, voters=(1,))
    assert g2.node(1).rejected["vote_in_lease"] == 0
    g2.elect(1, voters=(2,))


def test_a_vote_is_made_durable_in_the_same_ready_as_the_grant() -> None:
    g = RaftGroup(3, pre_vote=False)
    g.timeout(0)
    campaign = g.members[0].readys[-1]
    assert (HARD_KEY, pack([1, 0])) in campaign.records  # its own vote, before the requests
    assert [o.frame for o in campaign.messages] == [m.encode(m.Vote(1, 0, 0, False, False))]
    g.queue.clear()
    g.receive(1, 0, m.Vote(1, 0, 0, False, False))
    grant = g.members[1].readys[-1]  # one Ready: the shell persists it, then sends
    assert grant.records == [(HARD_KEY, pack([1, 0]))]
    assert [o.frame for o in grant.messages] == [m.encode(m.VoteReply(1, True, False))]
    # After a crash, the vote is remembered: n2 refuses n3 in term 1.
    g.crash(1)
    n2 = g.restart(1)
    assert (n2.term, n2.voted_for) == (1, 0)
    g.receive(1, 2, m.Vote(1, 0, 0, False, False))
    assert g.members[1].readys[-1].messages[0].frame == m.encode(m.VoteReply(1, False, False))


# --- PreVote and CheckQuorum --------------------------------------------------------------------


def test_a_partitioned_member_that_rejoins_neither_bumps_the_term_nor_deposes_the_leader() -> None:
    g = started()
    g.run(4 * E, pred=without(2))  # n3 is cut off for several election timeouts
    n3 = g.node(2)
    assert n3.elections >= 2 and n3.role == PRE_CANDIDATE
    assert n3.term == 1  # pre-votes never move the term
    g.propose(0, *g.txs[:2])
    g.run(E, pred=without(2))
    # Healed: its next pre-vote reaches n1 (the leader) and n2 (in its lease): both ignore it.
    g.timeout(2)
    g.deliver()
    assert g.node(0).rejected["vote_in_lease"] == 1 and g.node(1).rejected["vote_in_lease"] == 1
    g.run(E)
    assert g.leaders() == [0] and {g.node(i).term for i in range(3)} == {1}
    assert n3.role == FOLLOWER and n3.leader == 0
    assert g.members[2].head.height == 1


def test_without_pre_vote_a_rejoining_member_does_depose_the_leader() -> None:
    g = started(pre_vote=False, check_quorum=False)  # the contrast: what PreVote prevents
    g.run(3 * E, pred=without(2))
    assert g.node(2).term >= 2 and g.node(2).role == CANDIDATE
    g.run(3 * E)
    assert g.node(0).term >= 2
    assert g.node(0).status()["step_downs"] == [] and g.node(0).leader_changes >= 2


def test_a_leader_cut_off_from_the_majority_steps_down_within_two_election_timeouts() -> None:
    g = started()
    cut_at = g.now
    stepped_down_at = None
    while g.now < cut_at + 3 * E:
        g.advance(HEARTBEAT)
        g.deliver(without(0))
        if stepped_down_at is None and g.node(0).role != LEADER:
            stepped_down_at = g.now
    assert stepped_down_at is not None and stepped_down_at - cut_at <= 2 * E
    assert "check quorum" in g.node(0).step_downs[-1]
    assert g.node(0).term == 1  # stepping down does not bump its term
    new = g.leaders()
    assert len(new) == 1 and new[0] in (1, 2) and g.node(new[0]).term == 2


def test_a_follower_in_its_leader_lease_ignores_vote_requests_but_not_a_transfer() -> None:
    g = started()
    n2 = g.node(1)
    for prevote in (True, False):
        ready = g.receive(1, 2, m.Vote(5, 9, 1, prevote, False))  # better log, higher term
        assert ready.messages == [] and n2.term == 1 and n2.leader == 0
    assert n2.rejected["vote_in_lease"] == 2
    ready = g.receive(1, 2, m.Vote(2, 1, 1, False, True))  # a leadership transfer's vote
    assert [o.frame for o in ready.messages] == [m.encode(m.VoteReply(2, True, False))]
    assert (n2.term, n2.voted_for) == (2, 2)


def test_leadership_transfer_with_check_quorum_on() -> None:
    g = started()
    g.run(E)  # a leader accepts no transfer within an election timeout of its election
    g.propose(0, *g.txs[:2])
    g.settle((0, 1))  # n3 lags: the transfer must bring it up to date first
    assert g.node(1).transfer_leadership(2) is not None  # not the leader
    assert g.transfer(0, 0) == "already the leader"
    last = g.node(0).log.last_index
    assert g.transfer(0, 2) is None
    marker = g.node(0).log.entry(last + 1)  # the transfer's no-op: what TimeoutNow names
    assert marker.is_noop and marker.term == 1 and g.node(0).log.last_index == last + 1
    assert g.pending(m.TimeoutNow) == []  # not before n3 has n1's whole log
    g.run(E // 2)  # (its lost append is found out at the next heartbeat)
    n3 = g.node(2)
    assert n3.role == LEADER and n3.term == 2
    assert n3.last_election_reason == "leadership transferred by 0"
    assert g.node(0).role == FOLLOWER and g.node(0).leader == 2
    timeout_now = [q for q in g.delivered if isinstance(q.msg, m.TimeoutNow)]
    assert [(q.src, q.dst, q.msg) for q in timeout_now] == [(0, 2, m.TimeoutNow(1, last + 1))]
    g.heartbeat(2)
    assert all(g.node(i).commit == g.node(2).log.last_index for i in range(3))


def test_a_transfer_to_a_member_that_acknowledged_nothing_for_an_election_timeout_is_refused() -> (
    None
):
    """A transfer stops the leader's proposals until it completes or is abandoned (E): one to
    a crashed member could only stall the network, and re-sent every 300 ms it cut a healthy
    cluster to a tenth of its commits. It is refused at once, and the leader leads on."""
    g = started()
    g.crash(2)
    g.run(E)
    why = g.transfer(0, 2)
    assert why is not None and "member 2 acknowledged nothing within the last election" in why
    assert g.node(0).status()["transferring_to"] is None
    g.propose(0, g.txs[0])
    g.settle()
    assert g.node(0).commit == g.node(0).log.last_index  # it proposes and commits at once
    assert g.transfer(0, 1) is None  # a live member is a target


def test_a_transfer_request_while_one_is_under_way_is_refused_and_one_per_election_timeout() -> (
    None
):
    """Each request used to restart the transfer (and its deadline): a stream of them kept
    the leader from proposing for good. Now a request while one is under way is refused, it
    is abandoned at its first deadline, and the next is accepted an election timeout after the
    last one started (and not within one of the leader's election)."""
    g = started()
    assert "at most one transfer per election timeout" in (g.transfer(0, 1) or "")
    g.run(E)
    assert g.transfer(0, 1) is None
    started_at = g.now
    deadline = g.node(0)._transfer_deadline
    g.drop()  # n2 never gets the marker: the transfer cannot complete
    g.advance(HEARTBEAT, [0])
    g.deliver(lambda q: q.dst != 1)
    for target in (1, 2):
        why = g.transfer(0, target)
        assert why is not None and "a transfer to member 1 is under way" in why
    assert g.node(0)._transfer_deadline == deadline  # not restarted
    g.propose(0, g.txs[0])
    assert g.node(0).pending_count == 1  # held while the transfer runs
    g.run(deadline - g.now, pred=lambda q: q.dst != 1)
    assert g.now == started_at + E and g.node(0).role == LEADER
    assert "transfer to member 1 abandoned after 1000 ms (it did not catch up" in (
        g.node(0).last_transfer
    )
    assert g.node(0).status()["transferring_to"] is None
    g.settle((0, 2))
    g.heartbeat(0, (0, 2))
    assert g.txs[0].id in g.members[0].committed_ids  # proposing again
    assert g.transfer(0, 2) is None  # an election timeout after the last one started


def test_a_timeout_now_that_arrives_after_the_leader_gave_up_the_transfer_deposes_nobody() -> None:
    """The leader abandons a transfer after E and leads on; its TimeoutNow, delayed in the
    network (or a copy of it), then made the target campaign, and voters ignore their lease
    for a transfer: a healthy leader deposed. The target now acts on a TimeoutNow only if its
    log ends at the entry it names and that entry reached it at most E/4 before (the leader
    sends it only while E/2 is left of its deadline)."""
    g = started()
    g.run(E)
    assert g.transfer(0, 1) is None
    g.deliver(lambda q: not isinstance(q.msg, m.TimeoutNow), keep=True)  # n2 gets the marker
    [late] = g.pending(m.TimeoutNow)
    g.queue.remove(late)  # held up in the network
    g.run(E)  # the leader gives up at its deadline; heartbeats flow
    n1, n2 = g.node(0), g.node(1)
    assert "abandoned after 1000 ms (it did not campaign)" in n1.last_transfer
    assert late.msg.index == n2.log.last_index  # type: ignore[union-attr]
    for _ in range(2):  # delayed, and duplicated
        g.receive(1, 0, late.msg)
    assert n2.role == FOLLOWER and n2.term == 1 and n2.rejected["timeout_now_stale"] == 2
    g.run(E)
    assert g.leaders() == [0] and n1.term == 1 and n1.status()["transferring_to"] is None
    # A TimeoutNow that reaches the target while the leader still waits is honoured.
    assert g.transfer(0, 1) is None
    g.deliver()
    assert n2.role == LEADER and n2.term == 2


# --- clocks (block time is the leader's clock, checked against a majority's) -------------------


def clocked(n: int = 3, **overrides: object) -> RaftGroup:
    """As started(), with every member's wall clock read at the election (the harness ticks
    only the members a test names: a follower's wall clock is the one it read last)."""
    g = RaftGroup(n, **overrides)  # type: ignore[arg-type]
    g.elect(0)
    g.tick_all()
    g.settle()
    g.heartbeat(0)
    assert [g.node(i).commit for i in range(n)] == [1] * n
    return g


def test_followers_tell_the_leader_their_wall_clock_in_every_reply() -> None:
    g = started()
    g.wall_offset_ms[1] = 7_000
    g.tick(1)
    wall = EPOCH_MS + g.now + 7_000  # what n2 read (it is ticked no more below)
    seen = len(g.delivered)
    g.heartbeat(0)
    g.propose(0, g.txs[0])
    g.settle()
    from_n2 = [q.msg for q in g.delivered[seen:] if q.src == 1]
    assert {type(msg) for msg in from_n2} == {m.HeartbeatReply, m.AppendReply}
    assert all(msg.wall_ms == wall for msg in from_n2)  # type: ignore[union-attr]


def test_a_follower_appends_an_entry_whatever_its_time() -> None:
    # Refusing would stall commits while heartbeats keep the leader in office: the leader
    # checks its own clock instead.
    g = started()
    for index, proposed_ms in ((2, 0), (3, 2**62)):
        entry = m.Entry(1, index, proposed_ms, 0, b"\0" * 64, g.txs[index : index + 1])
        ready = g.receive(1, 0, m.Append(1, index - 1, 1, 1, (entry,)))
        (reply,) = [m.decode(o.frame, g.params) for o in ready.messages]
        assert isinstance(reply, m.AppendReply) and reply.success and reply.index == index


def test_a_new_leader_proposes_no_batch_before_it_holds_a_majority_of_clocks() -> None:
    g = RaftGroup(3)
    n1 = g.elect(0)  # its no-op's appends are queued, not yet answered
    g.propose(0, g.txs[0])
    assert n1.log.last_index == 1 and n1.log.entry(1).is_noop
    clock = n1.status()["clock"]
    assert (clock["offset_ms"], clock["samples"], clock["needed"]) == (None, 1, 2)
    g.settle()  # the answers to its no-op carry the followers' clocks
    assert [e.txs for e in (n1.log.entry(i) for i in (1, 2))] == [(), g.txs[:1]]
    g.heartbeat(0)
    assert all(g.txs[0].id in g.members[i].committed_ids for i in range(3))


def test_a_leader_whose_clock_is_far_ahead_hands_leadership_to_one_whose_clock_agrees() -> None:
    g = clocked()
    g.wall_offset_ms[0] = 600_000  # n1's clock jumps ten minutes ahead
    g.advance(1, [0])
    n1 = g.node(0)
    clock = n1.status()["clock"]
    assert clock["disagrees"] and clock["samples"] == 3 and clock["handing_to"] == 1
    assert 600_000 <= clock["offset_ms"] <= 600_000 + HEARTBEAT
    (handoff,) = n1.clock_handoffs
    assert handoff.startswith(f"term 1: own clock +{clock['offset_ms']} ms off the median of 3 ")
    assert handoff.endswith("(timestamp_skew_ms 30000): handing leadership to member 1")
    g.propose(0, g.txs[0])  # nothing is stamped with n1's clock meanwhile
    assert entries_holding(n1, g.txs[0].id) == []
    assert n1.log.entry(n1.log.last_index).is_noop  # (the transfer's marker, no block)
    g.settle()
    n2 = g.node(1)
    assert n2.role == LEADER and n1.role == FOLLOWER
    assert n2.last_election_reason == "leadership transferred by 0"
    g.settle()
    g.heartbeat(1)
    (block,) = [b for b in g.members[1].blocks if g.txs[0] in b.txs]
    assert abs(block.header.timestamp_ms - (EPOCH_MS + g.now)) < g.params.timestamp_skew_ms
    assert all(g.txs[0].id in g.members[i].committed_ids for i in range(3))


def test_a_jump_of_the_leaders_own_wall_clock_is_seen_before_its_next_batch() -> None:
    # Followers' clocks are advanced by the leader's monotonic clock since their replies came:
    # half an election timeout without a reply still agrees (the skew is shorter), and a jump
    # of its own clock disagrees at once.
    g = clocked(params=replace(PARAMS, timestamp_skew_ms=200))
    skew = g.params.timestamp_skew_ms
    assert skew < E // 2
    n1 = g.node(0)
    g.advance(E // 2, [0])  # no reply meanwhile
    g.propose(0, g.txs[0])
    assert n1.log.last_index == 2
    g.drop()
    g.wall_offset_ms[0] = 10 * skew
    g.advance(1, [0])
    g.propose(0, g.txs[1])
    assert entries_holding(n1, g.txs[1].id) == [] and n1.status()["clock"]["disagrees"]
    assert n1.status()["clock"]["handing_to"] is not None


def test_a_leader_whose_clock_stops_proposes_only_while_it_agrees_then_hands_off() -> None:
    """A clock stopped where it stood (a broken time source) agrees with the others for a
    skew's time, then falls behind: followers' clocks are advanced by the leader's monotonic
    clock, which runs on, so the gate sees it go. The leader stamps no batch once its clock is
    more than a skew behind, and hands leadership away; everything commits."""
    skew = 200
    g = clocked(params=replace(PARAMS, timestamp_skew_ms=skew))
    n1 = g.node(0)
    stopped_ms = EPOCH_MS + g.now
    stamped: list[int] = []  # how far behind real time n1's clock was at each batch it made
    for k in range(12):  # 12 x 50 ms: well past the skew
        g.wall_offset_ms[0] = stopped_ms - (EPOCH_MS + g.now + 50)  # it reads stopped_ms
        g.advance(50)
        if n1.role == LEADER:
            last = n1.log.last_index
            g.propose(0, g.txs[k])
            if n1.log.last_index > last and n1.log.entry(n1.log.last_index).txs:
                stamped.append(EPOCH_MS + g.now - stopped_ms)
        else:
            g.propose(0, g.txs[k])  # (forwarded to the new leader)
        g.settle()
    assert stamped and max(stamped) <= skew, stamped
    assert n1.clock_handoffs and n1.role != LEADER and len(g.leaders()) == 1
    g.run(E)
    assert all(g.txs[k].id in g.members[i].committed_ids for k in range(12) for i in range(3))


def test_one_follower_with_a_wrong_clock_neither_stops_the_leader_nor_goes_unnoticed() -> None:
    g = started()
    g.wall_offset_ms[2] = 600_000
    g.tick(2)
    for k in range(6):
        g.propose(0, g.txs[k])
        g.settle()
        g.heartbeat(0)
        g.advance(10)
    assert all(g.txs[k].id in g.members[i].committed_ids for k in range(6) for i in range(3))
    assert not g.node(0).status()["clock"]["disagrees"]
    clock = g.node(2).status()["clock"]
    assert clock["disagrees"] and clock["basis"] == "entries its leader proposed"
    assert abs(clock["offset_ms"] - 600_000) < E and clock["samples"] == 6
    assert not g.node(1).status()["clock"]["disagrees"]


def test_with_two_clocks_that_disagree_the_leader_cannot_tell_which_is_wrong_and_waits() -> None:
    g = started()
    g.crash(2)
    g.wall_offset_ms[1] = -600_000
    g.run(E + HEARTBEAT)  # n3's last clock ages out; n2 answers every heartbeat
    n1 = g.node(0)
    g.propose(0, g.txs[0])
    g.advance(1, [0])
    assert n1.role == LEADER and n1.log.last_index == 1 and g.pending(m.TimeoutNow) == []
    clock = n1.status()["clock"]
    assert clock["disagrees"] and clock["samples"] == 2 and clock["handing_to"] is None
    waiting = n1.status()["waiting_for"]
    assert waiting.startswith("own clock +600") and waiting.endswith(
        " ms off the median of 2 members' clocks: not proposing"
    )
    assert n1.clock_stuck.endswith("no member whose clock agrees to hand leadership to")


# --- ReadIndex ----------------------------------------------------------------------------------


def test_a_read_waits_for_the_leaders_own_term_to_commit() -> None:
    g = RaftGroup(3)
    g.elect(0)
    g.read(0, 1)
    assert g.members[0].reads == [] and g.members[0].read_failures == []
    g.settle()
    assert g.members[0].reads == [ReadState(1, 1)]


def test_a_read_is_released_only_after_a_heartbeat_quorum_confirms_leadership() -> None:
    g = started()
    g.read(0, 7)
    beats = g.pending(m.Heartbeat, src=0)
    assert {q.dst for q in beats} == {1, 2}
    assert all(q.msg.ctx == 1 for q in beats)  # type: ignore[union-attr]
    assert g.members[0].reads == []
    g.deliver(lambda q: q.dst == 1 or q.src == 1, keep=True)  # n3's echo is still in flight
    assert g.members[0].reads == [ReadState(7, 1)]
    # A follower's read goes through the leader the same way.
    g.drop()
    g.read(1, 9)
    assert [type(q.msg) for q in g.pending(src=1)] == [m.Read]
    g.settle()
    assert g.members[1].reads == [ReadState(9, 1)]


def test_a_read_reply_meant_for_a_follower_before_its_restart_releases_no_new_read() -> None:
    """Replies are matched by id alone, and the shell numbers its reads from 1 in each
    process: a ReadReply still in flight for read 1 of n2's previous process released read 1
    of the new one, at an index older than what was committed when it was issued."""
    g = started()
    g.read(1, 1)
    [ask] = g.pending(m.Read, src=1)
    g.deliver(lambda q: q.msg is ask.msg, keep=True)  # n1 starts its heartbeat round
    g.deliver(g.among(0, 2), keep=True)  # n3 confirms; n1 answers n2
    [stale] = g.pending(m.ReadReply, src=0)
    assert stale.msg.index == 1  # type: ignore[union-attr]
    g.queue.remove(stale)
    g.crash(1)
    g.propose(0, g.txs[0])
    g.settle([0, 2])
    g.heartbeat(0, [0, 2])  # index 2 commits while n2 is down
    g.restart(1)
    g.heartbeat(0)
    assert g.node(1).commit == 2
    g.read(1, 1)  # the new process's first read: at least index 2
    g.receive(1, 0, stale.msg)
    assert g.members[1].reads == [], "released by a reply to the previous process's read"
    g.settle()
    g.heartbeat(0)
    assert g.members[1].reads == [ReadState(1, 2)]


def test_a_deposed_leader_in_a_minority_never_releases_a_read() -> None:
    g = started()
    g.read(0, 8)  # its heartbeat round never comes back
    g.run(3 * E, pred=without(0))
    assert g.node(0).role == FOLLOWER
    assert g.members[0].reads == []
    assert g.members[0].read_failures == [(8, "leadership lost")]
    new = g.leaders()[0]
    g.propose(new, *g.txs[:2])
    g.run(E, pred=without(0))
    g.read(0, 9)  # no leader known: refused at once
    assert g.members[0].read_failures[-1] == (9, "no leader: an election is in progress")
    assert g.members[0].reads == []


def test_a_leader_of_an_old_term_gets_no_read_echoes_from_the_new_term() -> None:
    g = started(check_quorum=False)  # it does not step down by itself: the term must stop it
    g.run(3 * E, pred=without(0))  # n2 or n3 takes over in term 2
    assert g.node(0).role == LEADER and g.node(0).term == 1
    g.read(0, 5)
    g.deliver()  # its heartbeats reach term-2 members: they answer with their term
    assert g.members[0].reads == []
    assert g.node(0).role == FOLLOWER and g.members[0].read_failures == [(5, "leadership lost")]


# --- input validation and bounds ----------------------------------------------------------------


def test_malformed_frames_and_unknown_senders_are_counted_never_raised() -> None:
    g = started()
    n2 = g.node(1)
    canonical = m.encode(m.TimeoutNow(1, 1))
    assert canonical[-1:] == b"\x01"
    frames = [
        b"",
        b"\xff\x00garbage",
        pack(["vote", 1]),  # wrong number of fields
        pack(["nonsense", 1]),
        pack(["append", 1, 0, 0, 0, [[1, 3]]]),  # entry index not prev + 1
        pack(["append", 1, 0, 0, 0, [[1, 1, 0, 0, b"short", []]]]),  # bad signature size
        canonical[:-1] + b"\xcc\x01",  # the same message, non-canonical integer encoding
        b"\x90" * (g.params.frame_bytes_max + 1),
    ]
    for frame in frames:
        assert g.receive(1, 0, frame).messages == []
    assert n2.rejected["malformed"] == len(frames)
    for sender in (-1, 1, 3, 99):
        g.receive(1, sender, m.encode(m.Vote(9, 9, 9, False, True)))
    assert n2.rejected["unknown_sender"] == 4
    assert (n2.term, n2.leader, n2.role) == (1, 0, FOLLOWER)


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


def test_compaction_bounds_the_log_and_a_lagging_follower_catches_up_by_snapshot() -> None:
    keep = 2
    g = started(log_keep=keep, append_entries_max=2, blocks_per_fetch=2)
    for k in range(12):  # n3 is cut off while 12 batches commit
        g.propose(0, *g.txs[4 * k : 4 * k + 4])
        g.settle((0, 1))
        g.heartbeat(0, (0, 1))
    n1 = g.node(0)
    assert n1.commit == 13 and g.members[0].head.height == 12
    assert n1.log.snap_index > 0 and len(n1.log) <= 2 * keep + 1
    for i in (0, 1):
        records = g.members[i].records
        log_records = sorted(k for k in records if k.startswith(LOG_PREFIX))
        raft = g.node(i)
        assert log_records == [log_key(x) for x in range(raft.log.first_index, 14)]
        assert SNAP_KEY in records
    # n3 rejoins: the entries it needs are compacted, so it fetches the blocks.
    g.run(2 * E)
    kinds = {type(q.msg) for q in g.delivered if 2 in (q.src, q.dst)}
    assert {m.Snapshot, m.Fetch, m.Blocks} <= kinds
    n3 = g.node(2)
    assert n3.blocks_installed >= 1 and n3.commit == 13
    assert g.members[2].block_hashes == g.members[0].block_hashes
    assert len(n3.log) <= 2 * keep + 1
    # And it goes on replicating normally, and restarts from its records.
    g.propose(0, *g.txs[60:64])
    g.run(E)
    assert g.members[2].head.height == 13
    g.crash(2)
    n3 = g.restart(2)
    assert n3.log.last_index == 14 and n3.log.snap_index == g.node(2).log.snap_index
    g.run(E)
    assert len({tuple(x.block_hashes) for x in g.members}) == 1


# --- recovery -----------------------------------------------------------------------------------


def test_a_restarted_member_resumes_its_term_vote_and_log_from_its_records() -> None:
    g = started()
    g.propose(0, *g.txs[:4])
    g.propose(0, *g.txs[4:8])
    g.settle()
    before = {i: (g.node(i).term, g.node(i).voted_for, log_terms(g.node(i))) for i in range(3)}
    entries = [g.node(1).log.entry(i).encode() for i in range(1, 4)]
    for i in (1, 0):  # a follower, then the leader
        g.crash(i)
        raft = g.restart(i)
        assert (raft.term, raft.voted_for, log_terms(raft)) == before[i]
        assert raft.role == FOLLOWER
    assert [g.node(1).log.entry(i).encode() for i in range(1, 4)] == entries
    assert g.node(1).commit == 3  # its ledger applied through index 3
    g.run(3 * E)
    assert len(g.leaders()) == 1 and g.node(g.leaders()[0]).term == 2
    assert len({tuple(x.block_hashes) for x in g.members}) == 1


def test_records_that_do_not_fit_together_are_refused() -> None:
    g = started()
    records = sorted(g.members[0].records.items())
    params = g.params
    kwargs = {"height": 0, "block_hash": g.members[0].head.hash, "last_block_point": None}
    state = RecoveredState.from_records(records, params, **kwargs)  # type: ignore[arg-type]
    assert (state.term, state.voted_for, [e.index for e in state.entries]) == (1, 0, [1])
    gap = [*records, (log_key(3), m.Entry(1, 3).encode())]
    with pytest.raises(RecoveryError, match="not contiguous"):
        RecoveredState.from_records(sorted(gap), params, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(RecoveryError, match="does not decode"):
        RecoveredState.from_records([(HARD_KEY, b"\xc1")], params, **kwargs)  # type: ignore[arg-type]


# --- regressions --------------------------------------------------------------------------------


def test_regression_a_follower_that_lost_acknowledged_entries_causes_no_append_storm() -> None:
    """Found with broken_shell=True (run_raft(90, 3, "crashes", broken_shell=True) never
    ends: n1 and n3 exchange the same APPEND prev_index=49 / refusal without end, and the
    network's duplicates multiply the copies). A member whose storage lost entries it had
    acknowledged (a lying disk, a restored backup) refuses the leader's probe at its old
    match; the leader clamps next to match + 1, so it probes the very same index again at
    once, forever, without time passing. Everything the node holds or sends is meant to be
    bounded: the leader should probe at most once per heartbeat, or back up below match.

    Fails until fixed (crashft/node.py, _on_append_reply, the PROBE branch)."""
    g = started()
    g.propose(0, *g.txs[:4])
    g.settle()
    g.heartbeat(0)  # index 2 applied everywhere
    g.propose(0, *g.txs[4:8])  # index 3: n3 acknowledges it, and loses it
    g.deliver(lambda q: isinstance(q.msg, m.AppendReply) or bool(getattr(q.msg, "entries", ())))
    assert g.node(0).status()["progress"]["2"]["match"] == 3 and g.node(2).commit == 2
    g.crash(2)
    del g.members[2].records[log_key(3)]
    assert g.restart(2).log.last_index == 2
    g.propose(0, *g.txs[8:12])
    g.run(3 * HEARTBEAT, pred=lambda q: q.dst != 1 and q.src != 1)  # n1 and n3 alone
    probes = [q for q in g.delivered if q.src == 0 and q.dst == 2 and isinstance(q.msg, m.Append)]
    assert len(probes) <= 10, f"{len(probes)} appends to n3 in {3 * HEARTBEAT} ms"


def test_a_restart_with_the_ledger_ahead_of_the_log_restarts_the_log_at_the_ledger() -> None:
    """Found in review: a ledger ahead of the log records (a damaged store, or a crash between
    an install's blocks and its compaction point before they were written together) must move
    the compaction point to the ledger's head, and delete the stale log records."""
    g = started()
    stale = [m.Entry(1, 4), m.Entry(1, 5)]
    rec = RecoveredState(
        term=1,
        snap_index=3,
        snap_term=1,
        snap_height=2,
        snap_hash=b"\x02" * 32,
        entries=stale,
        applied_index=9,
        applied_term=1,
        height=8,
        block_hash=b"\x08" * 32,
    )
    node = RaftNode(g.config(2), g.signers[2], recovered=rec)
    assert (node.log.snap_index, node.log.snap_term, node.log.last_index) == (9, 1, 9)
    assert (node.commit, node.applied) == (9, 9)
    records = dict(node.take_ready().records)
    assert records[SNAP_KEY] == pack([9, 1, 8, b"\x08" * 32])
    assert records[log_key(4)] is None and records[log_key(5)] is None


def test_records_older_than_the_ledger_restart_in_the_ledgers_term_without_a_vote() -> None:
    """Found by the invariant checks (the simulator's broken shell, which writes blocks before
    the records, mixed seed 19): a ledger holding an entry of term 2 beside a hard state of
    term 0 restarted the log at that entry, so the last entry's term was above the member's
    own. It was in term 2 when it took the entry: it takes term 2 again, durably, with no
    vote, as the first message of term 2 would make it do."""
    g = started()
    rec = RecoveredState(
        term=0,
        applied_index=5,
        applied_term=2,
        height=3,
        block_hash=b"\x03" * 32,
    )
    node = RaftNode(g.config(2), g.signers[2], recovered=rec)
    assert (node.term, node.voted_for, node.log.last_term) == (2, None, 2)
    node.tick(0, EPOCH_MS)
    node.check_invariants()
    assert dict(node.take_ready().records)[HARD_KEY] == pack([2, -1])


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


# --- a member whose state is older than what it sent (crashft/node.py, "Recovery") ------------


def _second_vote_scene(recovering: bool) -> RaftGroup:
    """n3 is backed up in term 1, is elected leader of term 2 (its own vote), and is restored
    from its backup; n1, back from a crash in term 1 and cut off from n2, campaigns for term 2
    and asks n3 for its vote."""
    g = started()
    backup = dict(g.members[2].records)
    g.crash(0)
    g.run(3 * E)
    assert g.leaders() == [2] and (g.node(2).term, g.node(2).voted_for) == (2, 2)
    g.crash(2)
    g.members[2].records = backup
    g.restart(2, recovering=recovering)
    g.restart(0)
    g.drop()
    g.timeout(0)
    g.deliver(without(1))  # n2, still in its lease on n3 the leader, refuses anyway
    return g


def test_a_member_restored_from_a_backup_without_recovery_votes_twice_in_a_term() -> None:
    with pytest.raises(AssertionError, match="election safety: n3 and n1 lead term 2"):
        _second_vote_scene(recovering=False)


def test_a_recovering_member_grants_no_vote_until_a_later_leader_catches_it_up() -> None:
    g = _second_vote_scene(recovering=True)
    n1, n3 = g.node(0), g.node(2)
    assert n1.role == PRE_CANDIDATE and n3.rejected["vote_while_recovering"] >= 1
    assert g.leaders() == []
    status = n3.status()["recovering"]
    assert status is not None and status["floor"] is None
    # n1 and n2 elect a leader without n3; n3 asks for the terms only 2E after its start,
    # and its own timer never makes it campaign.
    started_ms, seen = g.now, len(g.delivered)

    def sent_by_n3(kind: type) -> list[Msg]:
        return [q for q in g.delivered[seen:] if q.src == 2 and isinstance(q.msg, kind)]

    g.run(2 * E - 2 * HEARTBEAT)
    assert not sent_by_n3(m.TermQuery)
    g.run(4 * HEARTBEAT)
    assert g.now - started_ms >= 2 * E and len(sent_by_n3(m.TermQuery)) == 2
    (leader,) = g.leaders()
    assert leader != 2 and n3.status()["recovering"]["floor"] == g.node(leader).term + 1
    assert not sent_by_n3(m.Vote)
    assert not [q for q in sent_by_n3(m.VoteReply) if q.msg.granted]  # type: ignore[attr-defined]
    assert n3.recovering and n3.commit == g.node(leader).commit  # it follows, not yet votes
    # A later term, elected without n3, catches it up: then it takes part again.
    other = 1 - leader
    assert g.transfer(leader, other) is None
    g.run(3 * HEARTBEAT)
    assert g.leaders() == [other] and not n3.recovering
    assert n3.status()["recovering"] is None


def test_term_reports_count_only_with_our_nonce_and_queries_are_rate_limited() -> None:
    g = started()
    n2 = g.node(1)
    n2.receive(0, m.TermQuery(bytes(16)))
    n2.receive(0, m.TermQuery(bytes(16)))
    assert n2.rejected["query_too_often"] == 1
    assert [q.msg for q in g.queue if q.src == 1] == []  # (not flushed yet)
    assert [type(o) for o in [m.decode(x.frame, g.params) for x in n2.take_ready().messages]] == [
        m.TermReport
    ]
    n2.receive(0, m.TermReport(bytes(16), 99, False))
    assert n2.rejected["stale_term_report"] == 1 and n2.term == 1  # it moves no one's term
    g.crash(2)
    n3 = g.restart(2, recovering=True)
    n3.receive(0, m.TermReport(bytes(16), 99, False))  # not our nonce (an earlier start's answer)
    assert n3.rejected["stale_term_report"] == 1 and n3.status()["recovering"]["reports"] == 0
    n3.receive(0, b"\x92\xaaterm_query\xc4\x01x")  # a nonce of the wrong size
    assert n3.rejected["malformed"] == 1


def test_a_clock_hand_off_to_a_member_that_does_not_campaign_tries_another() -> None:
    """A leader whose clock is off hands leadership to the most caught-up member whose clock
    agrees, lowest id first. A member restored from a backup (recovering) acknowledges
    appends and answers with a right clock, but never campaigns until a later term has
    committed: chosen again after each abandoned transfer, it kept the leader proposing
    nothing for good, although n3 could have taken over at once."""
    g = clocked()
    g.crash(1)
    g.restart(1, recovering=True)  # n2 restored from a backup: right clock, no campaign
    g.tick_all()
    g.settle()
    g.heartbeat(0)
    g.wall_offset_ms[0] = 600_000  # n1's clock jumps ten minutes ahead
    g.propose(0, g.txs[0])
    g.run(6 * E)
    assert g.leaders() != [0], g.node(0).status()["clock_handoffs"]
    assert all(g.txs[0].id in g.members[i].committed_ids for i in (0, 2))


def test_a_clock_hand_off_whose_target_did_not_take_over_goes_to_another_member_next() -> None:
    """Each abandoned hand-off picked the most caught-up member again: a member that
    acknowledges but never takes over (here every TimeoutNow to it is lost) was the target of
    every hand-off after the last. The next one goes to a member no hand-off failed with."""
    g = clocked()
    g.wall_offset_ms[0] = 600_000
    g.advance(1, [0])
    n1 = g.node(0)
    assert n1.status()["transferring_to"] == 1
    g.run(E, pred=lambda q: not (isinstance(q.msg, m.TimeoutNow) and q.dst == 1))
    assert "transfer to member 1 abandoned" in n1.last_transfer
    assert [h[-1] for h in n1.clock_handoffs] == ["1", "2"]
    g.run(E // 2)
    assert g.leaders() == [2] and g.node(2).last_election_reason == "leadership transferred by 0"


def test_an_operators_transfer_replaces_a_clock_hand_off_under_way() -> None:
    """A leader whose clock is off starts its next hand-off in the tick that abandons the
    last, so an operator's `leader transfer` was refused for good as "a transfer is under
    way". The operator's request replaces the leader's own hand-off; the operator's limit of
    one per election timeout counts only operators' requests."""
    g = clocked()
    g.run(E)  # (an operator's first transfer comes an election timeout after the election)
    g.wall_offset_ms[0] = 600_000
    g.advance(1, [0])
    n1 = g.node(0)
    assert n1.status()["transferring_to"] == 1 and n1.status()["clock"]["handing_to"] == 1
    g.drop()
    assert g.transfer(0, 2) is None
    assert n1.status()["transferring_to"] == 2 and n1.status()["clock"]["handing_to"] is None
    why = g.transfer(0, 1)  # an operator's transfer under way is not replaced
    assert why is not None and "a transfer to member 2 is under way" in why
    g.run(E // 2)
    assert g.leaders() == [2]


def test_a_member_behind_its_recovery_gate_is_no_transfer_target() -> None:
    """A recovering member acknowledges appends but never campaigns: its heartbeat replies say
    so, an operator's transfer to it is refused at once, and status shows it."""
    g = clocked()
    g.crash(1)
    g.restart(1, recovering=True)
    g.run(E)
    n1 = g.node(0)
    assert n1.status()["progress"]["1"]["recovering"] is True
    assert n1.status()["progress"]["2"]["recovering"] is False
    why = g.transfer(0, 1)
    assert why is not None and "member 1 is recovering" in why
    assert n1.status()["transferring_to"] is None
    assert g.transfer(0, 2) is None


def test_a_transfer_completes_when_the_targets_write_takes_longer_than_a_quarter_timeout() -> None:
    """The target honours a TimeoutNow only if the entry it names arrived at most E/4 before,
    measured from when the append was handled: before the target's own fsync of it, which its
    acknowledgement waits for, and the TimeoutNow follows that acknowledgement. A target whose
    disk takes longer than E/4 to write (500 ms at the default E; a slow disk) refused every
    TimeoutNow as stale: no transfer, nor a clock hand-off, could ever complete. Safety does
    not need the write in the window: the leader sends TimeoutNow only after the ack and
    while more than E/2 of its deadline is left, so the E/4 could count from the write."""
    g = started()
    g.run(E)
    g.tick(1)
    assert g.transfer(0, 1) is None
    g.deliver(lambda q: q.dst != 1, keep=True)  # (n3 gets its copy)
    marker = g.pending(m.Append, src=0)[0]
    assert marker.dst == 1 and marker.msg.entries[-1].is_noop  # type: ignore[union-attr]
    g.queue.clear()
    g.receive(1, 0, marker.msg)  # handled at n2's last tick; its write then takes 300 ms
    g.now += E // 4 + 50
    g.tick(1)  # (the runtime ticks again once the write is done, and before a TimeoutNow)
    g.tick(0)
    g.deliver()  # n2's acknowledgement, n1's TimeoutNow, n2's campaign
    assert g.node(1).role == LEADER, g.node(1).rejected


def test_two_members_restored_at_once_each_learn_a_floor_above_the_term_they_voted_in() -> None:
    """docs/raft.md, "Recovery": the floor bounds every term the member voted in, because a
    majority of the other members meets the majority(n) - 1 others that elected the leader its
    lost vote helped elect, "who reached that term for good". A member that is itself
    recovering has not: restored from its own backup, it reports the term of its copy. At
    n = 5 (two may be unavailable) n4 and n5 helped elect n3 in term T and are both restored
    from copies of term 1; with n3 down, n4's floor comes from n1, n2 and n5 and is T, a term
    n4 voted in, so its gate no longer keeps it from voting in T again.

    (Fixed: a TERM-REPORT says whether its sender is recovering, and such answers do not
    count. While n3 is down no member up knows T, so no floor can be learned safely: n4 and n5
    wait; once n3 is back, each learns a floor above T.)"""
    g = started(5)
    backups = {i: dict(g.members[i].records) for i in (3, 4)}
    g.run(3 * E, pred=g.among(2, 3, 4))  # n1, n2 cut off: n3, n4, n5 elect one of them
    (leader,) = [i for i in g.leaders() if i in (2, 3, 4)]
    term = g.node(leader).term
    assert all(g.node(i).term == term for i in (2, 3, 4)) and term >= 2
    g.crash(2)
    for i in (3, 4):
        g.crash(i)
        g.members[i].records = backups[i]
        g.restart(i, recovering=True)
    seen = len(g.delivered)
    g.run(3 * E, pred=without(2))
    for i in (3, 4):
        status = g.node(i).status()["recovering"]
        assert status["floor"] is None, (status["floor"], term)
        assert (status["reports"], status["recovering_peers"], status["needed"]) == (2, 1, 3)
    assert g.leaders() == []  # n1 and n2 alone are no majority: beyond the fault budget
    granted = [q for q in g.delivered[seen:] if q.src in (3, 4) and isinstance(q.msg, m.VoteReply)]
    assert not [q for q in granted if q.msg.granted]  # type: ignore[attr-defined]
    g.restart(2)  # n3, which reached T for good, is back
    floors: dict[int, int] = {}
    for _ in range(30):
        g.run(HEARTBEAT)
        for i in (3, 4):
            status = g.node(i).status()["recovering"]
            if status is not None and status["floor"] is not None:
                floors.setdefault(i, status["floor"])
    assert sorted(floors) == [3, 4] and all(f > term for f in floors.values()), (floors, term)


def test_one_member_restored_at_n5_learns_a_floor_above_the_term_it_voted_in() -> None:
    """The bound of docs/raft.md, "Recovery", at n = 5 with the leader its lost vote helped
    elect down: any three of the other four include one that voted with it."""
    g = started(5)
    backup = dict(g.members[3].records)
    g.run(3 * E, pred=g.among(2, 3, 4))
    (leader,) = [i for i in g.leaders() if i in (2, 3, 4)]
    term = g.node(leader).term
    g.crash(leader)
    g.crash(3)
    g.members[3].records = backup
    g.restart(3, recovering=True)
    g.run(3 * E, pred=without(leader))
    floor = g.node(3).status()["recovering"]["floor"]
    assert floor is not None and floor > term
    assert not [q for q in g.delivered if q.src == 3 and isinstance(q.msg, m.Vote)]


def test_a_leader_between_two_followers_whose_clocks_are_wrong_both_ways_proposes() -> None:
    """Three clocks: the median is the leader's own when one follower is ahead and the other
    behind; neither wrong clock moves block time, and the leader keeps proposing."""
    g = clocked()
    g.wall_offset_ms[1] = 600_000
    g.wall_offset_ms[2] = -600_000
    g.tick_all()
    for k in range(3):
        g.propose(0, g.txs[k])
        g.settle()
        g.heartbeat(0)
    n1 = g.node(0)
    assert n1.role == LEADER and not n1.status()["clock"]["disagrees"] and not n1.clock_handoffs
    blocks = [b for b in g.members[0].blocks if b.txs]
    assert len(blocks) == 3
    assert all(abs(b.header.timestamp_ms - (EPOCH_MS + g.now)) < E for b in blocks)


def test_the_core_checks_its_invariants_after_every_input() -> None:
    """STYLE: `_check_invariants()` after every input. A state no correct step produces (a
    second vote in one term, a commit index past the log) is caught at the next input."""
    g = started()
    n2 = g.node(1)
    assert (n2.term, n2.voted_for) == (1, 0)
    n2.voted_for = 2  # a second vote in term 1
    with pytest.raises(AssertionError, match=r"\(1, 0, 2\)"):
        n2.tick(g.now, EPOCH_MS + g.now)
    n3 = g.node(2)
    n3.commit = n3.log.last_index + 1
    with pytest.raises(AssertionError):
        n3.receive(0, m.Heartbeat(1, 0, 0))
