"""Raft membership (docs/design/membership.md, part 4): configuration on apply, learners, and
the rules R1 to R3, in the hand-wired harness (tests/raft/raft_harness.py: `spares`, a change
is applied by ledger.membership.apply_ops and reported with reconfigure on apply)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from consortium.crashft import messages as m
from consortium.crashft import reasons as drop
from consortium.crashft.node import LEADER, RaftNode, member_change_of
from consortium.crypto.codec import pack
from consortium.crypto.hashing import sha256
from consortium.ledger.membership import ChangeV2, PromoteLearner, RemoveMember
from consortium.ledger.tx import Transaction
from consortium.sim.checkers import SafetyViolation
from tests.raft.raft_harness import PARAMS, E, Member, RaftGroup, without


def grown(n: int = 3, spares: int = 2, **overrides: object) -> RaftGroup:
    """n1 leads term 1 of a genesis of n, with `spares` members to add; clocks read."""
    g = RaftGroup(n, spares=spares, **overrides)  # type: ignore[arg-type]
    g.elect(0)
    g.tick_all()
    g.settle()
    g.heartbeat(0)
    g.run(300)
    return g


def change(g: RaftGroup, leader: int, tx: Transaction, ms: int = 1_000) -> None:
    g.propose(leader, tx)
    g.run(ms)


def epochs(g: RaftGroup, nodes: list[int]) -> list[int]:
    return [g.node(i).epoch for i in nodes]


def to_five(g: RaftGroup) -> None:
    for op in (g.add_op(3), PromoteLearner(3), g.add_op(4), PromoteLearner(4)):
        change(g, 0, g.change_tx([op]))
    assert epochs(g, [0, 1, 2, 3, 4]) == [4] * 5


# --- the whole path: 3 -> learner -> 5 -> remove the leader -> 4 ----------------------------


def test_three_to_five_to_four_removing_the_leader() -> None:
    g = grown()
    change(g, 0, g.change_tx([g.add_op(3)]))
    assert epochs(g, [0, 1, 2, 3]) == [1] * 4  # n4 joined as a learner, and applied it
    assert not g.node(3).is_voter and g.node(3).commit == g.node(0).commit
    assert g.node(0).status()["learners"] == [
        {"id": 3, "match": g.node(0).log.last_index, "lag": 0}
    ]
    assert g.node(0).majority == 2  # the learner counts for nothing
    change(g, 0, g.change_tx([PromoteLearner(3)]))
    assert g.node(3).is_voter and g.node(0).majority == 3
    change(g, 0, g.change_tx([g.add_op(4)]))
    change(g, 0, g.change_tx([PromoteLearner(4)]))
    assert epochs(g, [0, 1, 2, 3, 4]) == [4] * 5 and g.node(0).n == 5
    g.propose(0, *g.txs[:8])
    g.run(1_000)
    change(g, 0, g.change_tx([RemoveMember(0)]), ms=3 * E)
    old = g.node(0)
    assert old.removed and old.role != LEADER
    (leader,) = g.leaders()
    assert leader in (1, 2, 3, 4) and g.node(leader).term > old.term - 1
    assert "removed" not in " ".join(old.step_downs)  # it handed over: the transfer completed
    assert epochs(g, [1, 2, 3, 4]) == [5] * 4 and g.node(leader).n == 4
    g.propose(leader, *g.txs[8:16])
    g.run(1_000)
    heads = {g.members[i].head.hash for i in (1, 2, 3, 4)}
    assert len(heads) == 1
    assert all(t.id in g.members[1].committed_ids for t in g.txs[:16])
    # Every member applied every change at the same index (configuration on apply).
    assert len({tuple(g.members[i].activations[-4:]) for i in (1, 2, 3, 4)}) == 1


# --- learners --------------------------------------------------------------------------------


def test_learners_never_vote_campaign_or_count() -> None:
    g = grown()
    change(g, 0, g.change_tx([g.add_op(3)]))
    learner = g.node(3)
    # It never campaigns: its election timer fires and nothing is asked.
    elections = learner.elections
    g.timeout(3)
    assert learner.elections == elections and not g.pending(m.Vote, src=3)
    # It answers no vote request.
    before = learner.rejected[drop.VOTE_NOT_VOTER]
    ready = g.receive(3, 1, m.Vote(learner.term, 99, learner.term, False, False, 1))
    assert ready.messages == [] and learner.rejected[drop.VOTE_NOT_VOTER] == before + 1
    g.settle()
    # It does not count for a commit: with only the learner's acknowledgements, the leader
    # commits nothing, though the learner stores every entry.
    commit = g.node(0).commit
    g.propose(0, *g.txs[:4])
    g.advance(10, [0])
    g.heartbeat(0, nodes=[0, 3])  # (what the voters send is lost)
    g.heartbeat(0, nodes=[0, 3])
    assert g.node(3).log.last_index == g.node(0).log.last_index > commit
    assert g.node(0).commit == commit
    # And CheckQuorum does not count it either: cut off from the voters, the leader steps
    # down although the learner answers every heartbeat.
    g.queue.clear()
    g.run(3 * E, pred=g.among(0, 3), nodes=[0, 3])
    assert g.node(0).role != LEADER
    assert any("check quorum" in s for s in g.node(0).step_downs)


def test_a_voter_does_not_grant_a_vote_to_a_learner_or_a_non_member() -> None:
    g = grown()
    change(g, 0, g.change_tx([g.add_op(3)]))
    n2 = g.node(1)
    term = n2.term
    assert g.receive(1, 3, m.Vote(term + 5, 99, term, False, True, 1)).messages == []
    assert n2.rejected[drop.VOTE_FROM_LEARNER] == 1
    assert g.receive(1, 4, m.Vote(term + 5, 99, term, False, True, 1)).messages == []
    assert n2.rejected[drop.NOT_MEMBER] == 1  # n5: not in the configuration n2 applied
    assert (n2.term, n2.voted_for) == (term, 0)  # neither moved its term nor got a vote


# --- R1: when a leader appends a change entry ------------------------------------------------


def test_r1a_no_change_before_an_entry_of_the_leaders_term_commits() -> None:
    g = RaftGroup(3, spares=1)
    g.elect(0)
    g.tick_all()
    leader = g.node(0)
    # The followers take its no-op and answer heartbeats (their clocks), but their
    # acknowledgements are lost: no entry of its term commits.
    g.deliver(lambda q: not isinstance(q.msg, m.AppendReply))
    g.now = leader._heartbeat_due
    g.tick(0)
    g.deliver(lambda q: not isinstance(q.msg, m.AppendReply))
    assert leader.log.term_at(leader.commit) != leader.term  # its no-op is not committed yet
    tx = g.change_tx([g.add_op(3)])
    g.propose(0, tx)
    g.advance(10, [0])  # (past params.batch_delay_ms: the pool is cut)
    assert leader.rejected[drop.CHANGE_TERM_UNCOMMITTED] == 1
    assert tx.id in leader._pool and not any(
        tx in leader.log.entry(i).txs for i in range(1, leader.log.last_index + 1)
    )
    g.settle()
    g.heartbeat(0)
    g.run(500)
    assert leader.epoch == 1 and tx.id in g.members[0].committed_ids


def test_r1b_and_r2_one_change_at_a_time_and_no_batch_behind_it() -> None:
    g = grown(spares=2)
    first, second = g.change_tx([g.add_op(3)]), g.change_tx([g.add_op(4)])
    leader = g.node(0)
    last = leader.log.last_index
    g.propose(0, first)  # appended; nothing delivered, so neither committed nor applied
    assert leader.log.last_index == last + 1 and leader.log.entry(last + 1).txs == (first,)
    g.propose(0, second, *g.txs[:4])
    g.advance(50, [0])
    # R1b: the second change waits; R2: so does every batch, behind the unapplied change.
    assert leader.log.last_index == last + 1
    assert leader.rejected[drop.CHANGE_UNAPPLIED] == 1
    g.drop()
    g.run(1_000)
    # Applied: the batch went, then (R1c once the followers reported epoch 1) the second
    # change, in an entry of its own. It was approved under epoch 0: execution refuses it
    # (config_superseded), so the configuration stays at epoch 1.
    kinds = [
        "change" if member_change_of_harness(leader, i) else "batch"
        for i in range(last + 1, leader.log.last_index + 1)
        if not leader.log.entry(i).is_noop
    ]
    assert kinds[0] == "change" and sorted(kinds) == ["batch", "change", "change"]
    assert second.id in g.members[0].committed_ids
    assert epochs(g, [0, 1, 2, 3]) == [1] * 4


def member_change_of_harness(raft: RaftNode, index: int) -> bool:
    return any(raft._change_of(tx) is not None for tx in raft.log.entry(index).txs)


def test_r1c_a_change_waits_for_a_majority_of_voters_at_the_leaders_epoch() -> None:
    g = grown()
    leader = g.node(0)
    g.propose(0, g.change_tx([g.add_op(3)]))
    # The followers store the entry and acknowledge it, but hear of its commit only later.
    g.deliver(
        lambda q: q.dst == 0 or (q.src == 0 and bool(getattr(q.msg, "entries", ()))),
        keep=True,
    )
    assert leader.epoch == 1 and epochs(g, [1, 2]) == [0, 0]
    promote = g.change_tx([PromoteLearner(3)])
    g.propose(0, promote)
    assert leader.rejected[drop.CHANGE_EPOCHS_BEHIND] == 1
    assert promote.id in leader._pool
    g.run(1_000)  # the commit reaches them, they apply and report epoch 1
    assert epochs(g, [0, 1, 2, 3]) == [2] * 4 and g.node(3).is_voter


def test_r1d_a_change_entry_carries_its_change_alone() -> None:
    g = grown()
    leader = g.node(0)
    last = leader.log.last_index
    tx = g.change_tx([g.add_op(3)])
    g.propose(0, *g.txs[:2], tx, *g.txs[2:4])
    g.run(1_000)
    entries = [leader.log.entry(i) for i in range(last + 1, leader.log.last_index + 1)]
    holding = [e for e in entries if tx in e.txs]
    assert len(holding) == 1 and holding[0].txs == (tx,)
    assert leader.rejected[drop.CHANGE_OWN_ENTRY] == 1  # the batch was cut before it
    assert all(t.id in g.members[0].committed_ids for t in g.txs[:4])


def test_r1e_a_promote_waits_until_the_learner_is_within_the_window() -> None:
    g = grown(params=replace(PARAMS, batch_txs_max=2))
    change(g, 0, g.change_tx([g.add_op(3)]))
    g.crash(3)
    g.propose(0, *g.txs)  # 64 transactions: 32 entries, beyond window 16
    g.run(1_000)
    leader = g.node(0)
    lag = leader.learner_lag(3)
    assert lag is not None and lag > g.params.window
    assert leader.learner_lag(1) is None  # a voter has no learner lag
    promote = g.change_tx([PromoteLearner(3)])
    g.propose(0, promote)
    g.run(300)
    assert leader.rejected[drop.LEARNER_BEHIND] == 1 and leader.epoch == 1
    g.restart(3)
    g.run(2_000)
    assert leader.epoch == 2 and g.node(3).is_voter


# --- R3: elections ---------------------------------------------------------------------------


class Deferring(RaftGroup):
    """A harness whose members in `deferred` apply committed entries only on release() (a
    slow executor: the core knows the commit, the ledger has not applied it)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.deferred: set[int] = set()
        self.stash: dict[int, list[object]] = {}
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def _apply(self, member: Member, raft: RaftNode, entry: m.Entry) -> None:
        if member.index in self.deferred:
            self.stash.setdefault(member.index, []).append(entry)
            return
        super()._apply(member, raft, entry)

    def release(self, i: int) -> None:
        self.deferred.discard(i)
        for entry in self.stash.pop(i, []):
            super()._apply(self.members[i], self.node(i), entry)  # type: ignore[arg-type]
        self.flush(i)


def deferring(**overrides: object) -> Deferring:
    g = Deferring(3, spares=2, **overrides)
    g.elect(0)
    g.tick_all()
    g.settle()
    g.heartbeat(0)
    g.run(300)
    return g


def test_r3_no_campaign_with_a_committed_change_not_applied() -> None:
    g = deferring()
    g.deferred.add(1)
    change(g, 0, g.change_tx([g.add_op(3)]))
    n2 = g.node(1)
    assert n2.commit > n2.applied - 1 and n2.epoch == 0  # committed, known, not applied
    g.crash(0)
    elections = n2.elections
    g.timeout(1)
    assert n2.elections == elections and not g.pending(m.Vote, src=1)
    g.release(1)
    assert n2.epoch == 1
    g.timeout(1)
    assert n2.elections == elections + 1


def test_r3_a_voter_refuses_a_candidate_of_an_older_epoch() -> None:
    g = grown()
    change(g, 0, g.change_tx([g.add_op(3)]))
    n2 = g.node(1)
    last = (n2.log.last_index, n2.log.last_term)
    for prevote in (True, False):
        ready = g.receive(1, 2, m.Vote(n2.term + 1, last[0], last[1], prevote, True, 0))
        assert [m.decode(o.frame, g.params) for o in ready.messages] == [
            m.VoteReply(n2.term, False, prevote)
        ]
    assert n2.rejected[drop.VOTE_STALE_EPOCH] == 2
    ready = g.receive(1, 2, m.Vote(n2.term + 1, last[0], last[1], False, True, 1))
    assert m.decode(ready.messages[0].frame, g.params).granted  # the same epoch: granted


def test_r3_a_member_two_configurations_behind_cannot_win() -> None:
    g = grown()
    g.queue.clear()
    cut = without(2)
    for op in (g.add_op(3), PromoteLearner(3), g.add_op(4), PromoteLearner(4)):
        g.propose(0, g.change_tx([op]))
        g.run(1_000, pred=cut)
    assert epochs(g, [0, 1, 3, 4]) == [4] * 4 and g.node(2).epoch == 0
    g.crash(0)
    g.advance(2 * E, [1, 3, 4])  # (out of the lease: they miss their leader, and campaign)
    g.queue.clear()
    n3 = g.node(2)
    for _ in range(4):
        g.timeout(2)
        g.deliver(lambda q: isinstance(q.msg, m.Vote | m.VoteReply))
        assert n3.role != LEADER
    # n2, a voter of both n3's configuration and the current one, refused it for its epoch.
    assert g.node(1).rejected[drop.VOTE_STALE_EPOCH] > 0


# --- the etcd-io/raft PR 469 schedule ---------------------------------------------------------


class WithoutR1cR3(RaftNode):
    """The rules R1c and R3 switched off (for this test only): changes go as soon as the
    previous one is applied at the leader, and a member campaigns and votes whatever the
    epochs, with a committed change unapplied."""

    def _r1c_ok(self) -> bool:
        return True

    def _may_campaign(self) -> bool:
        return self.is_voter and not self.removed

    def _vote_refusal(self, sender: int, msg: m.Vote) -> str | None:
        why = super()._vote_refusal(sender, msg)
        return None if why == drop.VOTE_STALE_EPOCH else why


def pr469(factory: type[RaftNode]) -> Deferring:
    """{1,2,3} -> +4 -> +5 (each an add and a promote), configuration on apply. n2 (index 1)
    stores and acknowledges every entry and learns every commit, but its executor applies
    nothing; n3 (index 2) is cut off from the start. Then n2 campaigns with the genesis
    majority {n2, n3}, and n4 with the new one {n1, n4, n5}, both for the next term."""
    g = Deferring(3, spares=2, factory=factory, check_quorum=False)
    g.elect(0)
    g.tick_all()
    g.settle()
    g.heartbeat(0)
    g.run(300)
    g.deferred.add(1)
    cut = without(2)
    for op in (g.add_op(3), PromoteLearner(3), g.add_op(4), PromoteLearner(4)):
        g.propose(0, g.change_tx([op], at=0))
        g.run(1_000, pred=cut)
    g.queue.clear()
    term = g.node(0).term
    g.elect(1, voters=[1, 2], attempts=1) if g.node(1)._may_campaign() else g.timeout(1)
    g.queue = [q for q in g.queue if not isinstance(q.msg, m.Vote | m.VoteReply)]
    g.timeout(3)
    g.deliver(lambda q: isinstance(q.msg, m.Vote | m.VoteReply) and {q.src, q.dst} <= {0, 3, 4})
    assert g.node(3).term >= term
    return g


def test_pr469_two_leaders_in_one_term_without_r1c_and_r3() -> None:
    with pytest.raises(SafetyViolation, match="election safety"):
        pr469(WithoutR1cR3)


def test_pr469_schedule_is_safe_with_r1c_and_r3() -> None:
    g = pr469(RaftNode)
    # R1c held the promote of n4 (n2 and n3 still on epoch 0): the cluster never left the
    # genesis voters, and n2 did not campaign with a committed change unapplied (R3).
    assert g.node(0).rejected[drop.CHANGE_EPOCHS_BEHIND] >= 1
    assert g.node(0).epoch == 1
    assert g.node(1).elections == 0
    terms = {}
    for i in g.alive():
        if g.node(i).role == LEADER:
            assert g.node(i).term not in terms
            terms[g.node(i).term] = i


# --- Ongaro's single-server bug schedule ----------------------------------------------------


class WithoutR1a(RaftNode):
    def _r1a_ok(self) -> bool:
        return True


@pytest.mark.parametrize("factory", [RaftNode, WithoutR1a], ids=["with-R1a", "without-R1a"])
def test_ongaro_single_server_schedule_stays_safe(factory: type[RaftNode]) -> None:
    """raft-dev, 2015: S1 appends C1 (+S5) uncommitted and crashes; S2, elected without it,
    appends C2 (+S6) at once and commits it; S1 returns and campaigns. Under configuration on
    append S1 won with C1's majority and overwrote C2. Under configuration on apply an
    uncommitted entry changes nobody's configuration: safe with R1a and without it."""
    g = RaftGroup(4, spares=2, factory=factory)
    g.elect(0)
    g.tick_all()
    g.settle()
    g.heartbeat(0)
    g.run(300)
    g.propose(0, g.change_tx([g.add_op(4)]))  # C1: stays in S1's log alone
    g.queue.clear()
    g.crash(0)
    g.advance(2 * E, [1, 2, 3])  # (out of S1's lease)
    g.queue.clear()
    g.elect(1, voters=[1, 2, 3])
    c2 = g.change_tx([g.add_op(5)], at=1)
    g.propose(1, c2)
    g.run(1_000, pred=without(0))
    assert c2.id in g.members[1].committed_ids
    g.restart(0)
    for _ in range(3):
        g.timeout(0)
        g.deliver(lambda q: isinstance(q.msg, m.Vote | m.VoteReply))
        assert g.node(0).role != LEADER
    g.run(2_000)
    assert c2.id in g.members[0].committed_ids  # S1's C1 was overwritten, C2 kept
    s5, s6 = g.signers[4].public_key, g.signers[5].public_key
    for i in range(4):
        config = g.members[i].config
        assert config is not None and config.epoch == 1
        assert config.by_key(s6) is not None and config.by_key(s5) is None


# --- removed members -------------------------------------------------------------------------


def test_a_removed_leader_steps_down_and_hands_over_to_the_most_caught_up() -> None:
    g = grown()
    to_five(g)
    g.crash(4)  # the least caught-up from here on
    g.propose(0, *g.txs[:8])
    g.run(500)
    g.propose(0, g.change_tx([RemoveMember(0)]))
    g.run(200)
    old = g.node(0)
    assert old.removed and old.removed_at is not None
    assert old._transferee in (1, 2, 3) or old.role != LEADER
    term, mark = old.term, old.removed_at
    g.propose(0, *g.txs[8:12])  # it proposes nothing more (its transfer's marker aside)
    g.run(2 * E)
    log = old.log
    assert all(
        log.entry(i).is_noop
        for i in range(max(mark + 1, log.first_index), log.last_index + 1)
        if log.entry(i).term == term
    )
    assert old.role != LEADER and old.status()["removed"]
    (leader,) = g.leaders()
    assert leader in (1, 2, 3)
    assert "leadership transferred by 0" in g.node(leader).last_election_reason


def test_a_removed_leader_without_anyone_to_hand_to_steps_down() -> None:
    g = grown()
    to_five(g)
    g.propose(0, g.change_tx([RemoveMember(0)]))
    # Let the commit through, then cut the leader off before it hears from anyone again.
    g.run(100)
    g.run(3 * E, pred=without(0))
    old = g.node(0)
    assert old.removed and old.role != LEADER


def test_a_removed_member_stops_disturbing_the_cluster() -> None:
    g = grown()
    change(g, 0, g.change_tx([RemoveMember(2)]))
    n3 = g.node(2)
    assert n3.removed and n3.status()["removed_at"] == n3.removed_at
    elections = n3.elections
    for _ in range(3):
        g.timeout(2)
    assert n3.elections == elections and not g.pending(m.Vote, src=2)
    # It answers no vote request either.
    ready = g.receive(2, 1, m.Vote(n3.term + 1, 99, n3.term, False, True, 1))
    assert ready.messages == [] and n3.rejected[drop.VOTE_NOT_VOTER] == 1
    # What it still sends (a stale vote request, say) is dropped by the members.
    term = g.node(1).term
    g.receive(1, 2, m.Vote(term + 7, 99, 99, False, True, 0))
    assert g.node(1).term == term and g.node(1).rejected[drop.NOT_MEMBER] == 1
    g.propose(0, *g.txs[:4])
    g.run(500)
    assert all(t.id in g.members[1].committed_ids for t in g.txs[:4])
    assert g.leaders() == [0] and g.node(0).n == 2


# --- the change-entry predicate ---------------------------------------------------------------


def raw_tx(ops: list[object]) -> Transaction:
    body = pack([bytes(32), bytes(32), b"n", 1, ops])
    return Transaction(body, bytes(64), sha256(body), bytes(32), bytes(32), b"n", 1, ())


def test_the_default_change_predicate_reads_the_raw_op_and_never_raises() -> None:
    g = RaftGroup(3, spares=1, start=False)
    genesis_change = g.change_tx([g.add_op(3)])
    body = ChangeV2.decode(genesis_change.ops[0].value).encode()  # type: ignore[union-attr]
    assert member_change_of(raw_tx([["config", body, [], []]])) is not None
    assert member_change_of(raw_tx([["config", body, []]])) is None  # v1 shape
    assert member_change_of(raw_tx([["config", body, [], []], ["put", b"k", b"v"]])) is None
    assert member_change_of(raw_tx([["config", b"consortium-change/2 junk", [], []]])) is None
    assert member_change_of(raw_tx([["put", b"consortium-change/2", b"v"]])) is None
    for junk in (b"consortium-change/2\xc1\xff", b"\x91\xa0consortium-change/2"):
        tx = Transaction(junk, bytes(64), sha256(junk), bytes(32), bytes(32), b"n", 1, ())
        assert member_change_of(tx) is None
    assert member_change_of(g.txs[0]) is None


def test_a_joiner_behind_the_compaction_point_applies_the_changes_in_the_blocks_it_installs() -> (
    None
):
    g = grown(log_keep=2)
    change(g, 0, g.change_tx([g.add_op(3)]))
    change(g, 0, g.change_tx([PromoteLearner(3)]))
    g.propose(0, *g.txs[:32])
    g.run(1_000)
    leader = g.node(0)
    assert leader.log.snap_index > 4  # the changes are compacted away: blocks only
    change(g, 0, g.change_tx([g.add_op(4)]), ms=3_000)
    joiner = g.node(4)
    assert joiner.blocks_installed > 0
    # It re-executed the blocks of both earlier changes and reported each activation.
    assert [e for e, _ in g.members[4].activations] == [1, 2, 3]
    assert joiner.epoch == 3 and not joiner.is_voter
    assert g.members[4].activations == g.members[1].activations
