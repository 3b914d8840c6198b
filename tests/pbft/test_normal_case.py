"""Normal-case operation, one test per claim (Castro & Liskov, OSDI'99 §4.2; TOCS'02 §2.3.3)."""

from __future__ import annotations

from pbft_harness import WALL, Group, block_hash, frames, sent

from consortium.crypto.codec import unpack
from consortium.ledger.membership import genesis_configuration
from consortium.pbft import records, rules
from consortium.pbft.messages import Prepare, PrePrepare, decode, encode


def test_the_primary_of_view_v_is_v_mod_n() -> None:
    group = Group()
    for i, replica in enumerate(group.replicas):
        assert replica.view == 0
        assert replica.primary == 0
        assert replica.status()["primary"] == 0
        assert replica.me == i


def test_a_backup_accepts_a_valid_preprepare_and_multicasts_a_prepare() -> None:
    group = Group()
    pp = group.preprepare(1, group.txs[:2])
    group.replicas[1].receive(0, encode(pp))
    ready = group.take(1)
    prepare = Prepare.create(group.signers[1], group.chain_id, 0, 1, pp.digest, 1)
    assert [(out.dest, out.frame) for out in ready.messages] == [(None, encode(prepare))]
    assert group.asked == [tx.id for tx in pp.txs]  # every client signature was checked


def test_the_primary_sends_no_prepare() -> None:
    group = Group()
    group.replicas[0].propose(group.txs[0])
    ready = group.take(0)
    kinds = [type(decode(f, group.params)) for f in frames(ready)]
    assert kinds == [PrePrepare]
    group.deliver(0, ready.messages)
    for i in (1, 2, 3):
        group.deliver(i, group.take(i).messages)
    assert not any(isinstance(decode(f, group.params), Prepare) for f in frames(group.take(0)))


def test_prepared_needs_the_preprepare_and_q_minus_1_prepares_from_distinct_backups() -> None:
    group = Group()  # n = 4, f = 1, Q = 3: prepared at PRE-PREPARE + 2 PREPAREs
    pp = group.preprepare(1, group.txs[:1])
    r = group.replicas[1]
    r.receive(0, pp)
    group.take(1)
    own_commit = group.commit(pp, 1)
    # Its own PREPARE is one of the two; one more from another backup makes it prepared.
    r.receive(2, group.prepare(pp, 2))
    assert sent(group.take(1), own_commit)


def test_the_primary_is_prepared_only_with_q_minus_1_backup_prepares() -> None:
    group = Group()
    primary = group.replicas[0]
    primary.propose(group.txs[0])
    pp = decode(frames(group.take(0))[0], group.params)
    assert isinstance(pp, PrePrepare)
    primary.receive(1, group.prepare(pp, 1))
    assert not sent(group.take(0), group.commit(pp, 0))
    primary.receive(2, group.prepare(pp, 2))
    assert sent(group.take(0), group.commit(pp, 0))


def test_duplicate_votes_from_one_sender_count_once() -> None:
    group = Group(n=7)  # f = 2, Q = 5: a backup needs 4 PREPAREs (its own and 3 more)
    pp = group.preprepare(1, group.txs[:1])
    r = group.replicas[1]
    r.receive(0, pp)
    group.take(1)
    for _ in range(5):
        r.receive(2, group.prepare(pp, 2))
        r.receive(3, encode(group.prepare(pp, 3)))
    assert not sent(group.take(1), group.commit(pp, 1))
    assert r.rejected["duplicate"] == 8
    assert r.status()["waiting_for"] == "prepares for seq 1: 3 of 4"
    r.receive(4, group.prepare(pp, 4))
    assert sent(group.take(1), group.commit(pp, 1))


def test_votes_that_arrive_before_the_preprepare_are_kept_and_counted() -> None:
    group = Group()
    pp = group.preprepare(1, group.txs[:3])
    r = group.replicas[3]
    for sender in (1, 2):
        r.receive(sender, group.prepare(pp, sender))
    for sender in (0, 1, 2):
        r.receive(sender, group.commit(pp, sender))
    assert not group.take(3)
    r.receive(0, pp)
    ready = group.take(3)
    assert sent(ready, group.prepare(pp, 3)) and sent(ready, group.commit(pp, 3))
    assert [b.seq for b in ready.committed] == [1]


def test_committed_local_needs_the_replica_itself_to_be_prepared() -> None:
    group = Group()
    pp = group.preprepare(1, group.txs[:1])
    r = group.replicas[3]
    r.receive(0, pp)
    for sender in (0, 1, 2):
        r.receive(sender, group.commit(pp, sender))
    # Q COMMITs but only its own PREPARE: not prepared, so not committed-local.
    assert group.take(3).committed == []
    r.receive(1, group.prepare(pp, 1))
    assert [b.seq for b in group.take(3).committed] == [1]


def test_a_committed_batch_carries_q_signed_commits_for_its_view_seq_and_digest() -> None:
    group = Group()
    group.replicas[0].propose(group.txs[0])
    readys = group.pump()
    for i in range(4):
        (batch,) = [b for ready in readys[i] for b in ready.committed]
        assert batch.txs == (group.txs[0],)
        assert (
            batch.certificate.verify(genesis_configuration(group.genesis), group.verifier) is None
        )
        assert (batch.certificate.view, batch.certificate.seq) == (0, 1)
        assert batch.certificate.digest == batch.digest
        assert len(batch.certificate.votes) == group.genesis.quorum


def test_batches_execute_in_sequence_order_even_when_commits_complete_out_of_order() -> None:
    group = Group()
    r = group.replicas[3]
    pps = [group.preprepare(seq, group.txs[seq : seq + 1]) for seq in (1, 2, 3)]
    for pp in reversed(pps):  # seq 3 completes first, then 2, then 1
        r.receive(0, pp)
        for sender in (1, 2):
            r.receive(sender, group.prepare(pp, sender))
        for sender in (0, 1):
            r.receive(sender, group.commit(pp, sender))
        if pp.seq != 1:
            assert group.take(3).committed == []
    assert [b.seq for b in group.take(3).committed] == [1, 2, 3]


def test_each_committed_batch_comes_out_exactly_once() -> None:
    group = Group()
    for tx in group.txs[:6]:
        group.replicas[0].propose(tx)
        group.tick_all(20)
        group.pump()
    group.tick_all(20)
    readys = group.pump()
    assert not any(ready.committed for ready in readys[1])
    for i, replica in enumerate(group.replicas):
        assert replica.last_executed == 6, i


def test_several_sequence_numbers_are_in_flight_inside_the_window() -> None:
    group = Group()
    primary = group.replicas[0]
    for tx in group.txs[:16]:
        primary.propose(tx)
    group.tick_all(group.params.batch_delay_ms)
    pps = [decode(f, group.params) for f in frames(group.take(0))]
    seqs = [m.seq for m in pps if isinstance(m, PrePrepare)]
    assert seqs == [1, 2, 3, 4]  # L = 4: the window (0, 4] is full, nothing has committed
    assert primary.status()["in_flight"] == 4


def test_own_votes_are_in_the_records_of_the_ready_that_sends_them() -> None:
    group = Group()
    persisted: list[set[bytes]] = [set() for _ in range(4)]
    for tx in group.txs[:10]:
        group.replicas[0].propose(tx)
    for _ in range(30):
        moved = False
        for i in range(4):
            ready = group.take(i)
            if not ready:
                continue
            moved = True
            for _, value in ready.records:
                if value is not None:
                    persisted[i].add(value)
            for out in ready.messages:  # a replica only ever sends its own signed messages
                msg = decode(out.frame, group.params)
                assert msg.sender == i
                assert out.frame in persisted[i], f"{type(msg).__name__} sent before persisted"
            group.deliver(i, ready.messages)
            for batch in ready.committed:
                group.replicas[i].executed(batch.seq, block_hash(batch.seq))
        group.tick_all(20)
        if not moved:
            break
    # [tx0] at once (idle), [tx1..tx4] and [tx5..tx8] when full, [tx9] after batch_delay_ms
    assert {r.last_executed for r in group.replicas} == {4}


def test_the_prepared_certificate_is_persisted_before_the_commit() -> None:
    group = Group()
    pp = group.preprepare(1, group.txs[:1])
    r = group.replicas[1]
    r.receive(0, pp)
    r.receive(2, group.prepare(pp, 2))
    stored = dict(group.take(1).records)
    proof = stored[records.proof_key(1)]
    assert proof is not None
    pp_frame, prepares = unpack(proof)
    assert pp_frame == encode(pp)  # with its batch: a VIEW-CHANGE may need it later
    assert sorted(decode(f, group.params).sender for f in prepares) == [1, 2]
    assert stored[records.slot_key(1, "preprepare")] == encode(pp)
    assert stored[records.slot_key(1, "commit")] == encode(group.commit(pp, 1))


def test_proposed_timestamp_is_the_primarys_wall_clock() -> None:
    group = Group()
    group.replicas[0].tick(group.mono_ms, WALL + 12_345)
    group.replicas[0].propose(group.txs[0])
    pp = decode(frames(group.take(0))[0], group.params)
    assert isinstance(pp, PrePrepare) and pp.proposed_ms == WALL + 12_345


# --- the predicates themselves (pbft/rules.py) ---------------------------------------------------


def test_matching_votes_name_the_same_view_seq_and_digest() -> None:
    group = Group()
    pp = group.preprepare(3, group.txs[:1], view=4, sender=0)
    other = group.preprepare(3, group.txs[1:2], view=4, sender=0)
    votes = {
        2: group.prepare(pp, 2),
        1: group.prepare(pp, 1),
        3: group.prepare(other, 3),  # another digest
    }
    assert rules.matching(pp, votes) == [1, 2]
    later = group.preprepare(3, group.txs[:1], view=5, sender=1)
    assert rules.matching(later, votes) == []  # same digest and seq, another view
    elsewhere = group.preprepare(4, group.txs[:1], view=4, sender=0)
    assert rules.matching(elsewhere, votes) == []  # another seq


def test_prepared_is_the_preprepare_and_q_minus_1_matching_prepares_from_backups() -> None:
    group = Group()  # n = 4, Q = 3: two backups
    pp = group.preprepare(1, group.txs[:1])
    assert rules.prepared(pp, {}, 3) is None
    assert rules.prepared(pp, {1: group.prepare(pp, 1)}, 3) is None
    wrong = group.prepare(group.preprepare(1, group.txs[1:2]), 2)
    assert rules.prepared(pp, {1: group.prepare(pp, 1), 2: wrong}, 3) is None
    # The primary's PRE-PREPARE is its vote: a PREPARE from it never counts.
    assert rules.prepared(pp, {0: group.prepare(pp, 0), 1: group.prepare(pp, 1)}, 3) is None
    all_backups = {s: group.prepare(pp, s) for s in (3, 1, 2)}
    assert rules.prepared(pp, all_backups, 3) == [1, 2]  # exactly Q-1, lowest index first
    at_seven = Group(7)  # n = 7, f = 2, Q = 5: four backups
    pp7 = at_seven.preprepare(1, at_seven.txs[:1])
    four = {s: at_seven.prepare(pp7, s) for s in (1, 2, 3, 4)}
    assert rules.prepared(pp7, dict(list(four.items())[:3]), 5) is None
    assert rules.prepared(pp7, four, 5) == [1, 2, 3, 4]


def test_committed_local_is_prepared_and_q_matching_commits_ours_included() -> None:
    group = Group()
    pp = group.preprepare(1, group.txs[:1])
    commits = {s: group.commit(pp, s) for s in (1, 0, 3)}  # the primary's COMMIT counts
    assert rules.committed_local(pp, False, commits, 3) is None  # not prepared here
    assert rules.committed_local(pp, True, commits, 3) == [0, 1, 3]
    assert rules.committed_local(pp, True, {s: commits[s] for s in (0, 1)}, 3) is None
    other = group.commit(group.preprepare(1, group.txs[1:2]), 2)
    assert rules.committed_local(pp, True, {0: commits[0], 1: commits[1], 2: other}, 3) is None
    four = {**commits, 2: group.commit(pp, 2)}
    assert rules.committed_local(pp, True, four, 3) == [0, 1, 2]  # exactly Q signers
