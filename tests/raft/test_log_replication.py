"""Log replication (Ongaro's thesis §3.5; the Raft paper §5.3): the leader appends, replicates
and commits once a majority stores an entry; a follower takes entries only after a matching
previous entry (the AppendEntries consistency check, crashft/rules.py entry_matches) and the
leader backs up past a conflicting suffix; the commit index reaches the followers with the next
append. The leader writes its own log in parallel with replicating it (thesis §10.2.1) and
counts itself only for what its write made durable."""

from __future__ import annotations

from raft_harness import HEARTBEAT, RaftGroup, log_terms, started

from consortium.crashft import messages as m
from consortium.crashft import rules
from consortium.crashft.node import FOLLOWER, LEADER, LOG_PREFIX, log_key


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


def test_entry_matches_is_the_append_consistency_check() -> None:
    """crashft/rules.py entry_matches (thesis §3.5): the follower holds an entry at prev_index
    with prev_term (term_at: None where it holds none, or compacted past it)."""
    terms = {0: 0, 1: 1, 2: 1, 3: 2}.get  # a log 1@t1 2@t1 3@t2 after the empty start
    assert rules.entry_matches(terms, 0, 0)  # everything matches before the first entry
    assert rules.entry_matches(terms, 3, 2)
    assert not rules.entry_matches(terms, 3, 1)  # another term at that index
    assert not rules.entry_matches(terms, 4, 2)  # no entry there
