"""Linearizable reads by ReadIndex (Ongaro's thesis §6.4): the leader serves a read once an
entry of its own term has committed, notes the commit index, and releases the read once a
majority echoed a heartbeat round started after it (crashft/rules.py majority_match); a
follower asks the leader for the index. A deposed leader releases none."""

from __future__ import annotations

from raft_harness import E, RaftGroup, started, without

from consortium.crashft import messages as m
from consortium.crashft.node import FOLLOWER, LEADER, ReadState


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


def test_the_reads_of_a_drain_are_confirmed_by_one_heartbeat_round() -> None:
    """The shell hands a drain of events as one input (RaftNode.inputs): its own clients' reads
    and the reads followers forwarded, taken together, cost the leader one heartbeat round, not
    one round each."""
    g = started()
    leader = g.node(0)
    with leader.inputs():
        for read_id in (1, 2, 3):
            leader.read(read_id)
        for read_id in (4, 5):
            leader.receive(1, m.Read(read_id))
    g.flush(0)
    beats = g.pending(m.Heartbeat, src=0)
    assert sorted(q.dst for q in beats) == [1, 2]  # one round: one heartbeat to each follower
    g.settle()
    assert sorted(r.read_id for r in g.members[0].reads) == [1, 2, 3]
    answers = [q.msg for q in g.delivered if isinstance(q.msg, m.ReadReply) and q.dst == 1]
    assert sorted((a.read_id, a.ok) for a in answers) == [(4, True), (5, True)]  # type: ignore[union-attr]
