"""The Raft paper's Figure 8 (Ongaro & Ousterhout 2014, §5.4.2; Ongaro's thesis §3.6.2), replayed
step by step on five real cores (S1..S5 are members 0..4): why a leader may not commit an entry
of an earlier term by counting replicas, and how the no-op / own-term rule keeps it safe. The
rule itself is crashft/rules.py commit_index, tested on its own at the end.

Setup: append_entries_max=1, so one APPEND carries one entry and the test decides exactly which
entries reach whom. PreVote and CheckQuorum are off: the scene needs candidates whose terms
really increase while others are down or cut off (with PreVote a restarted S1 would first need
a pre-vote quorum, and with CheckQuorum the followers' leases would make them ignore votes until
a full election timeout passed without a leader) - both are liveness refinements that do not
change which logs may win an election, and the scene is about that.

Our cores append a no-op when elected, so the indexes are the paper's shifted: index 1 is the
no-op of term 1 that everybody holds; "the entry at index 2" is S1's batch of term 1 and S5's
no-op of term 2.

    (a) S1 leads term 1 and replicates 2@t1 to S2 only.
    (b) S1 crashes; S5 is elected for term 2 by S3, S4, S5 and appends 2@t2 (its no-op),
        which reaches nobody.
    (c) S5 crashes; S1 restarts and is elected for term 3 (after a lost round for term 2):
        it appends 3@t3 and brings S3 and S4 to 2@t1, so S1, S3, S4 (and S2) hold it - a
        majority - but 3@t3 reaches nobody. A correct leader does NOT commit 2@t1.
    (d) S1 crashes; S5 restarts and is elected for term 4 by S2, S3, S4 (its last term, 2,
        beats their 1) and overwrites index 2 everywhere: no committed entry is lost.
    (e) Alternatively, had S1 replicated 3@t3 to a majority in (c), 2@t1 and 3@t3 would have
        committed, and S5 could never be elected again.
"""

from __future__ import annotations

import pytest
from raft_harness import Msg, RaftGroup, carries_term, log_terms

from consortium.crashft import messages as m
from consortium.crashft import rules
from consortium.crashft.node import LEADER, RaftNode
from consortium.sim.checkers import SafetyViolation

S1, S2, S3, S4, S5 = range(5)
FIGURE8 = {"append_entries_max": 1, "pre_vote": False, "check_quorum": False}


class CommitsOldTermsByCounting(RaftNode):
    """Deliberately broken: commits whatever a majority holds, whatever its term (the rule
    Figure 8 shows is unsafe)."""

    def _maybe_commit(self) -> bool:
        matches = [self._stable_last] + [self._progress[p].match for p in self._others()]
        candidate = rules.majority_match(matches)
        if candidate > self.commit:
            self.commit = candidate
            return True
        return False


def figure8_a_b(g: RaftGroup) -> None:
    """(a) and (b): S1's 2@t1 on S1 and S2; S5's 2@t2 on S5 alone; S1 and S5 down."""
    g.elect(S1)
    g.settle()
    g.heartbeat(S1)  # the no-op of term 1 commits everywhere
    assert all(g.node(i).commit == 1 for i in range(5))
    g.propose(S1, g.txs[0])
    g.deliver(lambda q: q.src in (S1, S2) and q.dst in (S1, S2))
    assert log_terms(g.node(S1)) == log_terms(g.node(S2)) == [(1, 1), (2, 1)]
    assert g.node(S1).commit == 1  # 2 of 5
    g.crash(S1)

    g.elect(S5, voters=(S3, S4))
    assert g.node(S5).term == 2
    g.drop()  # its no-op reaches nobody
    assert log_terms(g.node(S5)) == [(1, 1), (2, 2)]
    g.crash(S5)


def figure8_c(g: RaftGroup, *, replicate_own_term: bool) -> None:
    """(c): S1 restarts and leads term 3. It always brings S3 and S4 to 2@t1; its own 3@t3
    reaches them only with replicate_own_term (the (e) branch)."""
    g.restart(S1)
    g.elect(S1, voters=(S2, S3, S4))  # term 2 is refused by S3 and S4 (they voted for S5)
    assert g.node(S1).term == 3
    assert log_terms(g.node(S1)) == [(1, 1), (2, 1), (3, 3)]

    def to_s3_s4(q: Msg) -> bool:
        if {q.src, q.dst} not in ({S1, S3}, {S1, S4}):
            return False
        if replicate_own_term or not carries_term(q, 3):
            return True
        # An APPEND of 3@t3 that the follower must refuse anyway (it lacks index 2) may pass:
        # the refusal is what makes S1 back up and send 2@t1.
        assert isinstance(q.msg, m.Append)
        return q.msg.prev_index > g.node(q.dst).log.last_index

    g.deliver(to_s3_s4)


def test_a_leader_does_not_commit_an_old_term_entry_that_a_majority_holds() -> None:
    g = RaftGroup(5, **FIGURE8)  # type: ignore[arg-type]
    figure8_a_b(g)
    figure8_c(g, replicate_own_term=False)
    s1 = g.node(S1)
    assert log_terms(g.node(S3)) == log_terms(g.node(S4)) == [(1, 1), (2, 1)]
    assert s1.status()["progress"]["2"]["match"] == 2
    assert s1.status()["progress"]["3"]["match"] == 2
    # S1, S3, S4 (and S2) hold 2@t1, S1 knows a majority has it - and still does not commit.
    assert s1.commit < 2  # (0: a restarted node knows only what its ledger applied)
    assert s1.status()["waiting_for"] == "committing the first entry of term 3"
    assert all(x.index < 2 for i in range(5) for x in g.members[i].applied)

    # (d) S1 crashes; S5 restarts and wins term 4 with S2, S3, S4.
    g.crash(S1)
    g.restart(S5)
    g.elect(S5, voters=(S2, S3, S4))  # term 3 is refused (they voted for S1)
    assert g.node(S5).term == 4
    g.settle()
    g.heartbeat(S5)
    for i in (S2, S3, S4, S5):
        assert log_terms(g.node(i)) == [(1, 1), (2, 2), (3, 4)]
        assert g.node(i).commit == 3
    # S1 comes back: its 2@t1 (never committed) is overwritten, the ledgers agree.
    g.restart(S1)
    g.run(1_000)  # (elections may happen: the others' timers ran while they were not ticked)
    assert log_terms(g.node(S1))[:3] == [(1, 1), (2, 2), (3, 4)]
    assert g.txs[0].id not in g.members[S1].committed_ids  # lost, never acknowledged
    assert len({tuple(x.block_hashes) for x in g.members}) == 1


def test_the_checker_catches_a_leader_that_commits_an_old_term_entry_by_counting() -> None:
    g = RaftGroup(5, factory=CommitsOldTermsByCounting, **FIGURE8)  # type: ignore[arg-type]
    figure8_a_b(g)
    figure8_c(g, replicate_own_term=False)
    assert g.node(S1).commit == 2  # the broken rule: 2@t1 is on S1, S3, S4
    assert [(x.index, x.term) for x in g.members[S1].applied] == [(1, 1), (2, 1)]
    g.crash(S1)
    g.restart(S5)
    with pytest.raises(
        SafetyViolation,
        match=r"leader completeness: n5 leads term 4 without committed entry 2 \(term 1\)",
    ):
        g.elect(S5, voters=(S2, S3, S4))
        g.settle()


def test_figure8_e_an_own_term_entry_on_a_majority_commits_both_and_s5_cannot_win() -> None:
    g = RaftGroup(5, **FIGURE8)  # type: ignore[arg-type]
    figure8_a_b(g)
    figure8_c(g, replicate_own_term=True)
    s1 = g.node(S1)
    assert s1.commit == 3  # 3@t3 on S1, S3, S4: it commits, and 2@t1 with it
    assert [(x.index, x.term) for x in g.members[S1].applied] == [(1, 1), (2, 1), (3, 3)]
    assert g.txs[0].id in g.members[S1].committed_ids
    g.crash(S1)
    g.restart(S5)
    for _ in range(4):  # S3 and S4 (last term 3) refuse S5 (last term 2); S2 alone is not enough
        g.timeout(S5)
        g.deliver(g.among(S2, S3, S4, S5))
        assert g.node(S5).role != LEADER
    assert g.node(S5).term >= 6
    # S3 (or S4) can win, and brings everyone, S5 included, to 2@t1 and 3@t3.
    g.elect(S3, voters=(S2, S4, S5))
    g.settle()
    g.heartbeat(S3)
    for i in (S2, S3, S4, S5):
        assert log_terms(g.node(i))[:3] == [(1, 1), (2, 1), (3, 3)]
    assert g.txs[0].id in g.members[S5].committed_ids


# --- the rule itself (crashft/rules.py) ---------------------------------------------------------


def test_majority_match_is_the_highest_value_a_majority_reached() -> None:
    assert rules.majority_match([7]) == 7  # one member: itself
    assert rules.majority_match([5, 9, 1]) == 5  # 2 of 3 hold 5 or more
    assert rules.majority_match([4, 4, 9, 2]) == 4  # 3 of 4
    assert rules.majority_match([3, 8, 8, 1, 2]) == 3  # 3 of 5
    assert rules.majority_match([2, 9, 9, 1, 1]) == 2


def test_commit_index_counts_only_entries_of_the_current_term() -> None:
    """The leader S1 of term 3 in scene (c): its log is 1@t1 2@t1 3@t3."""
    term_at = {0: 0, 1: 1, 2: 1, 3: 3}.get
    # 2@t1 on S1, S3, S4 (S2 holds it too): a majority, and still not committed.
    assert rules.commit_index([3, 2, 2, 2, 1], term_at, 3, 1) == 1
    # 3@t3 on a majority: it commits, and 2@t1 with it (scene (e)).
    assert rules.commit_index([3, 2, 3, 3, 1], term_at, 3, 1) == 3
    assert rules.commit_index([3, 3, 3, 1, 1], term_at, 3, 3) == 3  # never moves back
    # A leader of term 1 whose entry 2@t1 reaches a majority commits it by counting.
    assert rules.commit_index([2, 2, 2, 1, 1], term_at, 1, 1) == 2
    assert rules.commit_index([2, 1, 1], term_at, 1, 1) == 1  # one of three holds it
