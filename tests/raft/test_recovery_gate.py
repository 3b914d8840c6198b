"""A member whose state is older than what it sent (a restored backup, lost state): beyond the
thesis, which assumes persisted state survives (§3.8). It votes in no term it may have voted
in and campaigns for none until it has learned a floor above them and caught up
(crashft/node.py and docs/raft.md, "Recovery"); without the gate it can elect a second leader
in one term, which election safety (thesis §3.6.3) forbids."""

from __future__ import annotations

import pytest
from raft_harness import HEARTBEAT, E, Msg, RaftGroup, started, without

from consortium.crashft import messages as m
from consortium.crashft.node import PRE_CANDIDATE


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
