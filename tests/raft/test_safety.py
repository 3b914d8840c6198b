"""Safety (Ongaro's thesis §3.6; the Raft paper §5.4): the election restriction, a vote only
for a log at least as up-to-date (thesis §3.6.1, crashft/rules.py log_up_to_date); a leader
commits entries of earlier terms only with one of its own (thesis §3.6.2: the no-op it appends
when elected here, the Figure 8 scene in test_figure8.py); and the core's own invariant checks
after every input. The harness checks election safety, log matching, leader completeness and
state machine safety on every test of this directory."""

from __future__ import annotations

import pytest
from raft_harness import RaftGroup, log_terms, started

from consortium.crashft import messages as m
from consortium.crashft import rules
from consortium.sim.cluster import EPOCH_MS


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


def test_log_up_to_date_compares_last_terms_then_lengths() -> None:
    """crashft/rules.py log_up_to_date (thesis §3.6.1): our log ends 5@t2."""

    def grants(candidate_term: int, candidate_index: int) -> bool:
        return rules.log_up_to_date(2, 5, candidate_term, candidate_index)

    assert grants(2, 5) and grants(2, 9)  # same last term, at least as long
    assert not grants(2, 4)  # same last term, shorter
    assert grants(3, 1)  # a later last term beats any length
    assert not grants(1, 99)  # an earlier last term loses to any length
    assert rules.log_up_to_date(0, 0, 0, 0)  # two empty logs
