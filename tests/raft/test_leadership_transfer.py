"""Leadership transfer (Ongaro's thesis §3.10): the leader stops proposing, brings the target up
to date and sends it TimeoutNow; the target campaigns at once and the voters' lease does not
stop it. The operator's limits (a live target, one transfer at a time and per election
timeout, no recovering target) and a TimeoutNow that comes too late are this project's
(crashft/node.py, "Leadership transfer"); the hand-offs a leader starts for its own clock are
in test_clock.py."""

from __future__ import annotations

from raft_harness import HEARTBEAT, E, clocked, started

from consortium.cli.leader import _retry_after_s
from consortium.crashft import messages as m
from consortium.crashft.node import FOLLOWER, LEADER


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
    why = g.transfer(0, 1) or ""
    assert "at most one transfer per election timeout" in why
    # `consortium leader transfer` reads when to ask again from this refusal and waits.
    wait = _retry_after_s(why)
    assert wait is not None and E / 1000 - 0.1 < wait <= E / 1000 + 0.05, why
    assert _retry_after_s("member 1 acknowledged nothing within the last election timeout") is None
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
