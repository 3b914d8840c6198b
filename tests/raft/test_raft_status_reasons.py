"""`consortium status` and GET /readyz explain, in words, why a Raft member is not making
progress: computed from the core's real state (driven through the harness) by
node/explain.py, with member names."""

from __future__ import annotations

from raft_harness import HEARTBEAT, E, RaftGroup

from consortium.crashft import messages as m
from consortium.crashft.node import CANDIDATE, LEADER, PRE_CANDIDATE
from consortium.node.explain import PeerLink, blockers, name_members, peer_rows

NAMES = ["n1", "n2", "n3"]


def links(me: int, down: set[int] = frozenset()) -> list[PeerLink]:  # type: ignore[assignment]
    return [
        PeerLink(i, NAMES[i], outbound=i not in down, inbound=i not in down)
        for i in range(3)
        if i != me
    ]


def reasons(g: RaftGroup, me: int, down: set[int] = frozenset()) -> list[str]:  # type: ignore[assignment]
    return blockers(
        "raft",
        g.node(me).status(),
        names=NAMES,
        me=me,
        quorum=g.genesis.quorum,
        links=links(me, down),
        behind_blocks_max=16,
    )


def test_before_any_election_a_follower_waits_for_a_leader() -> None:
    g = RaftGroup(3)
    assert reasons(g, 1) == ["no leader: waiting for an election (term 0)"]


def test_a_pre_vote_then_an_election_in_progress_count_the_votes() -> None:
    g = RaftGroup(3)
    g.timeout(0)
    assert g.node(0).role == PRE_CANDIDATE
    assert reasons(g, 0) == ["no leader: pre-vote in progress (term 1): 1 of 2 votes; no leader"]
    # The pre-vote succeeds; the real vote requests are lost: a candidate in term 1.
    g.deliver(lambda q: isinstance(q.msg, m.Vote | m.VoteReply) and q.msg.prevote)
    g.drop()
    assert g.node(0).role == CANDIDATE and g.node(0).term == 1
    assert reasons(g, 0)[0].startswith("no leader: election in progress (term 1): 1 of 2 votes")


def test_an_elected_leader_with_its_followers_has_no_reason() -> None:
    g = RaftGroup(3)
    g.elect(0)
    g.settle()
    g.heartbeat(0)
    assert g.node(0).role == LEADER
    assert reasons(g, 0) == []
    assert reasons(g, 1) == []
    rows = peer_rows("raft", g.node(0).status(), links(0), 0, NAMES)
    assert rows["n2"]["state"] == "connected" and rows["n2"]["lag"] == 0


def test_a_leader_whose_followers_went_silent_has_no_quorum() -> None:
    g = RaftGroup(3)
    g.elect(0)
    g.settle()
    g.heartbeat(0)
    g.crash(1)
    g.crash(2)
    for _ in range(12):  # past a CheckQuorum round with no answers
        g.advance(HEARTBEAT, [0])
        g.drop()
    # Connections still up (a hung peer): the leader's own view names the silent followers.
    assert reasons(g, 0) == ["no quorum: n2 and n3 not responding to the leader"]
    # Connections down: the transport's view says it first, and once.
    assert reasons(g, 0, down={1, 2}) == ["no quorum: n2 and n3 unreachable"]


def test_a_follower_behind_the_compacted_log_says_it_installs_a_snapshot_and_from_whom() -> None:
    g = RaftGroup(3, log_keep=2, append_entries_max=2, blocks_per_fetch=2)
    g.elect(0)
    g.settle()
    g.heartbeat(0)
    for k in range(12):  # n3 is cut off while 12 batches commit
        g.propose(0, *g.txs[4 * k : 4 * k + 4])
        g.settle((0, 1))
        g.heartbeat(0, (0, 1))
    # The leader sees n3 lagging...
    rows = peer_rows("raft", g.node(0).status(), links(0), 12, NAMES)
    assert rows["n3"]["lag"] > 0 and rows["n2"]["lag"] == 0
    # ...and n3, offered a snapshot but not yet given the blocks, says what it is doing.
    g.run(2 * E, pred=lambda q: not isinstance(q.msg, m.Blocks))
    assert g.node(2).status()["installing_snapshot"] is not None
    height = g.members[2].head.height
    assert reasons(g, 2) == [
        f"behind by {8 - height} blocks, catching up from n1 (snapshot to height 8)"
    ]
    g.run(2 * E)  # the blocks arrive: caught up, nothing to explain
    assert g.members[2].head.height == 12
    assert reasons(g, 2) == []


def test_member_indexes_in_core_texts_become_names_lists_and_transfers_included() -> None:
    names = ["n1", "n2", "n3"]
    assert name_members("no quorum: members 1, 2 not responding", names) == (
        "no quorum: members n2, n3 not responding"
    )
    assert name_members("leadership transferred by 2", names) == "leadership transferred by n3"
    assert name_members("primary 0 silent; member 1", names) == "primary n1 silent; member n2"
    assert name_members("leader 7", names) == "leader 7"  # not a member: left as it is


def test_a_follower_far_behind_the_leader_s_commit_says_so_and_from_whom() -> None:
    g = RaftGroup(3, append_entries_max=2)
    g.elect(0)
    g.settle()
    g.heartbeat(0)
    for k in range(40):  # n3 is cut off while 40 batches commit
        g.propose(0, g.txs[k])
        g.settle((0, 1))
        g.heartbeat(0, (0, 1))
    assert reasons(g, 2) == []  # it has heard of nothing yet
    # n3 hears again: a heartbeat, its answer, and the leader's first append in reply reach it
    # (the rest of the catch-up is still on its way). The append carries the leader's commit
    # index, so n3 knows it is behind (behind_blocks_max is 16 here); heartbeats alone cannot
    # tell it, since a leader caps their commit index at the follower's match.
    g.advance(HEARTBEAT, [0])
    g.deliver(lambda q: (q.dst == 2 and isinstance(q.msg, m.Heartbeat)) or q.src == 2, keep=True)
    first = next(q for q in g.pending(m.Append, src=0) if q.dst == 2)
    g.drop()
    g.receive(2, 0, first.msg)
    g.drop()
    behind = g.node(0).commit - g.node(2).applied
    assert behind > 16
    assert reasons(g, 2) == [f"behind by {behind} entries, catching up from n1"]
    g.run(4 * E)  # catching up: nothing left to explain
    assert g.node(2).applied == g.node(0).commit
    assert reasons(g, 2) == []


def test_a_leader_whose_clock_is_off_says_it_proposes_nothing_and_whom_it_hands_over_to() -> None:
    g = RaftGroup(3)
    g.elect(0)
    g.tick_all()
    g.settle()
    g.heartbeat(0)
    g.wall_offset_ms[0] = 3_600_000
    g.advance(1, [0])
    (reason,) = reasons(g, 0)
    assert reason.startswith("clock: this member's clock is 3,600.")
    assert reason.endswith(
        " s ahead of the median of 3 members' clocks (more than 30.0 s): not proposing; "
        "handing leadership to n2"
    )
    g.settle()  # n2 takes over; n1, a follower now, measures its clock against n2's entries
    for k in range(4):
        g.propose(1, g.txs[k])
        g.settle()
        g.heartbeat(1)
    assert g.node(1).role == LEADER and reasons(g, 1) == []
    (reason,) = reasons(g, 0)
    assert reason.startswith("clock: this member's clock is 3,59") or reason.startswith(
        "clock: this member's clock is 3,600."
    )
    assert reason.endswith(
        " s ahead of the entries its leader proposed (more than 60.0 s): as leader it would "
        "hand leadership away; fix its time source"
    )


def test_a_leader_that_cannot_tell_whose_clock_is_wrong_says_so() -> None:
    g = RaftGroup(3)
    g.elect(0)
    g.settle()
    g.heartbeat(0)
    g.crash(2)
    g.wall_offset_ms[1] = 3_600_000
    g.run(E + HEARTBEAT)
    assert reasons(g, 0, down={2}) == [
        "clock: this member's clock is 3,600.0 s behind the median of 2 members' clocks (more "
        "than 30.0 s): not proposing; no member whose clock agrees to hand leadership to"
    ]


def test_a_member_restored_with_another_says_that_answers_of_recovering_members_do_not_count() -> (
    None
):
    """Two of three members restored at once: each has n1's answer and the other's, which
    says it is recovering too and does not count (crashft/node.py "Recovery"); they wait for
    good (beyond the fault budget), and status says why."""
    g = RaftGroup(3)
    g.elect(0)
    g.settle()
    for i in (1, 2):
        g.crash(i)
        g.restart(i, recovering=True)
    g.run(3 * E)
    assert g.node(1).status()["recovering"]["floor"] is None
    (reason,) = [r for r in reasons(g, 1) if r.startswith("recovering")]
    assert reason == (
        "recovering from a restart: 1 of 2 members answered with their term (1 more answered "
        "but are recovering too); it grants no vote and does not campaign until then, and it "
        "counts as unavailable"
    )
