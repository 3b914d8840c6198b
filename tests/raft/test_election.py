"""Leader election (Ongaro's thesis §3.4; the Raft paper §5.2), run the way etcd runs it: a
member whose election timer fires first runs a PreVote round (thesis §9.6, tested with the
other guards against disruption in test_prevote_check_quorum.py), then campaigns; a candidate
asks again those that did not answer (the paper retries RPCs, §5.1); a vote is durable before
it leaves (thesis §3.8). Which logs may win is the election restriction: test_safety.py."""

from __future__ import annotations

from raft_harness import HEARTBEAT, RaftGroup

from consortium.crashft import messages as m
from consortium.crashft.node import CANDIDATE, FOLLOWER, HARD_KEY, LEADER, PRE_CANDIDATE
from consortium.crypto.codec import pack


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
