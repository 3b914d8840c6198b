"""Keeping a member that was cut off or restarted from disrupting a healthy leader: PreVote
(Ongaro's thesis §9.6), the followers' lease on their leader (thesis §4.2.3, "disruptive
servers": no vote within an election timeout of hearing from a leader, except for a leadership
transfer), and CheckQuorum, a leader that hears from no majority within an election timeout
stepping down (thesis §6.2)."""

from __future__ import annotations

from raft_harness import HEARTBEAT, E, started, without

from consortium.crashft import messages as m
from consortium.crashft.node import CANDIDATE, FOLLOWER, LEADER, PRE_CANDIDATE


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
