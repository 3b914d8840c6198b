"""Block time is the leader's clock, checked against a majority's (no section of the papers,
which have no block time: crashft/node.py, "Clocks"). Followers never refuse an entry for its
time and tell the leader their clock in every reply; the leader proposes only while its clock
is within timestamp_skew_ms of the median of a majority's, and otherwise hands leadership (by
the transfer of thesis §3.10) to a member whose clock agrees."""

from __future__ import annotations

from dataclasses import replace

from raft_harness import HEARTBEAT, PARAMS, E, RaftGroup, clocked, entries_holding, started

from consortium.crashft import messages as m
from consortium.crashft.node import FOLLOWER, LEADER
from consortium.sim.cluster import EPOCH_MS


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
