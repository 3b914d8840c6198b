"""The view-change core, message by message (Castro & Liskov OSDI'99 §4.4): what a backup
forwards and when it suspects the primary, what VIEW-CHANGE carries and persists, how the new
primary computes NEW-VIEW, and what a backup refuses."""

from __future__ import annotations

from dataclasses import replace

from pbft_harness import (
    PARAMS,
    RETRANSMIT_MS,
    WALL,
    Group,
    block_hash,
    drive,
    frames,
    new_view_reissuing,
)

from consortium.ledger.certificates import CommitCertificate
from consortium.pbft import records, rules
from consortium.pbft.messages import (
    Batch,
    BatchRequest,
    Blocks,
    Fetch,
    NewView,
    Prepare,
    PreparedProof,
    PrePrepare,
    TransferredBlock,
    ViewChange,
    decode,
    encode,
)
from consortium.pbft.replica import (
    BATCH_ASKS_MAX,
    FORWARD_DIGEST,
    TIMEOUT_DOUBLINGS_MAX,
    PbftReplica,
)
from consortium.pbft.transfer import blocks_reply
from consortium.pbft.viewchange import NULL_DIGEST, check_proof

TIMEOUT = PARAMS.request_timeout_ms


def kinds(group: Group, i: int) -> list[object]:
    return [decode(f, group.params) for f in frames(group.take(i))]


def view_change_of(group: Group, i: int) -> ViewChange:
    vcs = [m for m in kinds(group, i) if isinstance(m, ViewChange)]
    assert len(vcs) == 1
    return vcs[0]


def test_a_backup_forwards_what_waited_a_timeout_then_suspects_the_primary() -> None:
    group = Group()
    backup = group.replicas[1]
    group.take(1)
    backup.propose(group.txs[0])
    out: list[object] = []
    # Batches keep executing meanwhile (the primary is alive), but never with tx0.
    for seq in (1, 2, 3, 4):
        group.tick_all(TIMEOUT // 2)
        ready = drive(group, 1, group.preprepare(seq, group.txs[seq : seq + 1]))
        out += [decode(f, group.params) for f in frames(ready)] + kinds(group, 1)
        if seq == 2:
            # Waited a timeout: forwarded to the primary (once), no view change yet.
            forwarded = [m for m in out if isinstance(m, Batch)]
            assert len(forwarded) == 1 and forwarded[0].digest == FORWARD_DIGEST
            assert forwarded[0].txs == group.txs[:1]
            assert backup.view == 0
    group.tick_all(1)
    # A timeout after forwarding, still in no batch: the primary censors it.
    assert backup.view == 1 and not backup.active
    assert backup.last_view_change_reason == "a forwarded transaction stayed out of every batch"


def test_the_primary_puts_forwarded_transactions_first() -> None:
    group = Group()
    primary = group.replicas[0]
    group.take(0)
    batch = Batch.create(
        group.signers[2], group.chain_id, 0, group.txs[5:6], 2, digest=FORWARD_DIGEST
    )
    primary.receive(2, encode(batch))
    pps = [m for m in kinds(group, 0) if isinstance(m, PrePrepare)]
    assert [pp.txs for pp in pps] == [group.txs[5:6]]


def test_view_change_carries_the_stable_proof_and_prepared_certificates_and_is_durable() -> None:
    group = Group()
    r = group.replicas[1]
    group.take(1)
    # seq 1 and 2 commit and checkpoint 2 becomes stable; seq 3 only prepares.
    for seq in (1, 2):
        drive(group, 1, group.preprepare(seq, group.txs[seq : seq + 1]))
    for s in (0, 2):
        r.receive(s, group.checkpoint(2, s))
    pp3 = group.preprepare(3, group.txs[3:4])
    r.receive(0, pp3)
    r.receive(2, group.prepare(pp3, 2))
    group.take(1)
    group.tick_all(TIMEOUT + 1)
    ready = r.take_ready()
    stored = dict(ready.records)
    assert stored[records.VIEW_KEY] == records.view_value(
        1, False, 1
    )  # one view change: timer doubled
    vc = decode(stored[records.VIEW_CHANGE_KEY], group.params)
    assert isinstance(vc, ViewChange) and encode(vc) in frames(ready)  # durable, then sent
    assert vc.view == 1 and vc.stable_seq == 2 and vc.stable is not None
    assert [(p.seq, p.view, p.digest) for p in vc.prepared] == [(3, 0, pp3.digest)]
    assert vc.prepared[0].preprepare.txs == ()  # by digest: the batch is fetched if needed


def test_the_new_primary_reissues_prepared_batches_and_fills_gaps_with_null_requests() -> None:
    group = Group()
    for i in range(4):
        group.take(i)
    # seq 1 prepared at n2, n3, n4 in view 0; seq 2 prepared nowhere; seq 3 prepared at n3.
    pp1, pp3 = group.preprepare(1, group.txs[1:2]), group.preprepare(3, group.txs[3:4])
    for i in (1, 2, 3):
        group.replicas[i].receive(0, pp1)
        for s in (1, 2, 3):
            if s != i:
                group.replicas[i].receive(s, group.prepare(pp1, s))
    group.replicas[2].receive(0, pp3)
    group.replicas[2].receive(1, group.prepare(pp3, 1))
    group.replicas[2].receive(3, group.prepare(pp3, 3))
    for i in (1, 2, 3):
        group.take(i)
    # The primary n1 is gone: n2, n3, n4 time out.
    group.mono_ms += TIMEOUT + 1
    for i in (1, 2, 3):
        group.replicas[i].tick(group.mono_ms, 0)
    vcs = {i: view_change_of(group, i) for i in (2, 3)}
    new_primary = group.replicas[1]
    new_primary.take_ready()
    for i, vc in vcs.items():
        new_primary.receive(i, encode(vc))
    # It lacks seq 3's batch (only n3 saw it): it asks by digest before sending NEW-VIEW.
    (ask,) = [m for m in kinds(group, 1) if isinstance(m, BatchRequest)]
    assert ask.digest == pp3.digest
    group.replicas[2].receive(1, encode(ask))
    (answer,) = [m for m in kinds(group, 2) if isinstance(m, Batch)]
    new_primary.receive(2, encode(answer))
    out = kinds(group, 1)
    (nv,) = [m for m in out if isinstance(m, NewView)]
    assert nv.view == 1 and len(nv.view_change_frames) == 3
    assert [(p.seq, p.digest) for p in nv.preprepares] == [
        (1, pp1.digest),
        (2, NULL_DIGEST),
        (3, pp3.digest),
    ]
    assert new_primary.active and new_primary.view == 1
    # Every backup recomputes it and enters view 1, preparing the re-issued batches.
    for i in (2, 3):
        group.replicas[i].receive(1, encode(nv))
        assert group.replicas[i].active and group.replicas[i].view == 1


def test_batches_reissued_in_a_new_view_are_prepared_whatever_their_time() -> None:
    # Their time was fixed, and checked, in the view that prepared them; the skew check is for
    # fresh PRE-PREPAREs only, or a batch older than the skew could never be re-issued.
    group = Group()
    for i in range(4):
        group.take(i)
    pp1 = group.preprepare(1, group.txs[1:2])
    for i in (1, 2, 3):
        group.replicas[i].receive(0, pp1)
        for s in (1, 2, 3):
            if s != i:
                group.replicas[i].receive(s, group.prepare(pp1, s))
        group.take(i)
    group.mono_ms += TIMEOUT + 1
    late_ms = pp1.proposed_ms + 100 * PARAMS.timestamp_skew_ms  # long after the view change
    for i in (1, 2, 3):
        group.replicas[i].tick(group.mono_ms, late_ms)
    vcs = {i: view_change_of(group, i) for i in (2, 3)}
    for i, vc in vcs.items():
        group.replicas[1].receive(i, encode(vc))
    (nv,) = [m for m in kinds(group, 1) if isinstance(m, NewView)]
    assert [p.digest for p in nv.preprepares] == [pp1.digest]
    for i in (2, 3):
        group.replicas[i].receive(1, encode(nv))
        prepares = [m for m in kinds(group, i) if isinstance(m, Prepare)]
        assert [(p.view, p.seq, p.digest) for p in prepares] == [(1, 1, pp1.digest)]
        assert group.replicas[i].rejected["timestamp_skew"] == 0


def test_a_new_view_that_leaves_out_a_prepared_batch_is_refused_and_replaced() -> None:
    group = Group()
    for i in range(4):
        group.take(i)
    pp1 = group.preprepare(1, group.txs[1:2])
    for i in (1, 2, 3):
        group.replicas[i].receive(0, pp1)
        for s in (1, 2, 3):
            if s != i:
                group.replicas[i].receive(s, group.prepare(pp1, s))
        group.take(i)
    group.mono_ms += TIMEOUT + 1
    for i in (1, 2, 3):
        group.replicas[i].tick(group.mono_ms, 0)
    vcs = [view_change_of(group, i) for i in (1, 2, 3)]
    null = PrePrepare.create(group.signers[1], group.chain_id, 1, 1, 0, 1, (), digest=NULL_DIGEST)
    bad = NewView.create(
        group.signers[1], group.chain_id, 1, tuple(encode(v) for v in vcs), (null,), 1
    )
    backup = group.replicas[2]
    for vc, i in zip(vcs, (1, 2, 3), strict=True):
        if i != 2:
            backup.receive(i, encode(vc))
    backup.receive(1, encode(bad))
    assert backup.rejected["bad_new_view"] == 1
    assert backup.evidence[-1].reason == "bad_new_view"
    assert backup.view == 2 and not backup.active  # the primary of view 1 is replaced


def test_f_plus_one_view_changes_for_higher_views_make_a_replica_join_the_smallest() -> None:
    group = Group()
    r = group.replicas[3]
    group.take(3)
    for sender, view in ((1, 3), (2, 5)):
        other: PbftReplica = group.replicas[sender]
        other._start_view_change(view, "test")
        r.receive(sender, encode(view_change_of(group, sender)))
    assert r.view == 3 and not r.active  # f+1 = 2 members above view 0: join the smaller


def test_view_to_join_is_the_highest_view_f_plus_1_others_asked_for() -> None:
    """pbft/rules.py view_to_join (OSDI'99 §4.5.2): f members alone never move us."""
    assert rules.view_to_join(0, [5], f=1) is None  # one member: maybe faulty
    assert rules.view_to_join(0, [3, 5], f=1) == 3
    assert rules.view_to_join(0, [3, 5, 9], f=1) == 5  # the f+1 highest: 9 and 5
    assert rules.view_to_join(4, [3, 4, 5], f=1) is None  # only views above ours count
    assert rules.view_to_join(4, [5, 5, 2], f=1) == 5
    assert rules.view_to_join(0, [1, 2], f=2) is None  # n = 7: f+1 = 3 members needed
    assert rules.view_to_join(0, [1, 2, 7, 8], f=2) == 2


def test_a_replica_restarted_during_a_view_change_re_sends_the_same_view_change() -> None:
    group = Group()
    r = group.replicas[2]
    group.take(2)
    r._start_view_change(1, "test")
    ready = r.take_ready()
    disk = dict(ready.records)
    frame = disk[records.VIEW_CHANGE_KEY]
    from consortium.ledger.block import genesis_block
    from consortium.pbft.replica import RecoveredState

    restarted = group.make(
        2, RecoveredState(0, genesis_block(group.genesis).hash, None, sorted(disk.items()))
    )
    assert restarted.view == 1 and not restarted.active
    restarted.tick(group.mono_ms + RETRANSMIT_MS, 0)
    assert frame in frames(restarted.take_ready())


def test_the_primary_verifies_at_most_a_budget_of_forwarded_transactions_per_peer() -> None:
    group = Group()
    primary = group.replicas[0]
    group.take(0)
    budget = 4 * group.params.batch_txs_max  # FORWARDED_BATCHES_PER_INTERVAL full batches
    size = group.params.batch_txs_max

    def forward(sender: int, first: int) -> None:
        txs = group.txs[first : first + size]
        batch = Batch.create(
            group.signers[sender], group.chain_id, 0, txs, sender, digest=FORWARD_DIGEST
        )
        assert primary.wants_batch(batch, sender) == (first - start[sender] < budget)
        primary.receive(sender, encode(batch))

    start = {2: 0, 3: 40}
    for first in range(0, budget + size, size):  # one batch over the budget from member 2
        forward(2, first)
    assert len(group.asked) == budget
    assert primary.rejected["forwarded_too_many"] == size
    # Another backup has its own budget; and the next interval brings new tokens.
    forward(3, 40)
    assert len(group.asked) == budget + size
    group.tick_all(RETRANSMIT_MS)
    start[2] = 60 - size
    forward(2, 60 - size)
    assert primary.rejected["forwarded_too_many"] == size


def test_a_backup_forwards_no_more_per_interval_than_the_primary_accepts_from_it() -> None:
    """Review: a backup with a backlog forwarded up to 256 transactions per tick while the
    primary accepts a budget per interval; the rest were dropped there but marked forwarded
    here, so the backup would suspect an honest primary. Now the rest wait their turn."""
    group = Group()
    backup = group.replicas[1]
    group.take(1)
    budget = 4 * group.params.batch_txs_max  # FORWARDED_BATCHES_PER_INTERVAL full batches
    for tx in group.txs:  # 64, four budgets' worth, never proposed by the primary here
        backup.propose(tx)

    def forwarded_now() -> int:
        count = 0
        for out in group.take(1).messages:
            msg = decode(out.frame, group.params)
            if isinstance(msg, Batch) and msg.digest == FORWARD_DIGEST:
                assert out.dest == backup.primary
                count += len(msg.txs)
        return count

    sent: list[int] = []
    # A timeout until they are overdue, then three intervals (a forwarded transaction still
    # out of every batch a timeout later rightly starts a view change: not reached here).
    for _ in range((group.params.request_timeout_ms + 3 * RETRANSMIT_MS) // 10):
        backup._progress_ms = group.mono_ms  # requests keep executing: no view change
        group.tick_all(10)
        sent.append(forwarded_now())
    assert sum(sent) > budget  # the backlog does go out, interval after interval
    per_interval: dict[int, int] = {}
    for k, count in enumerate(sent):
        interval = (k * 10) // RETRANSMIT_MS
        per_interval[interval] = per_interval.get(interval, 0) + count
    assert max(per_interval.values()) <= budget, per_interval
    assert backup.active and backup.view == 0


# --- batches by digest: asked while needed, a bounded number of times --------------------


def asks_for(group: Group, i: int, digest: bytes) -> int:
    return sum(1 for m in kinds(group, i) if isinstance(m, BatchRequest) and m.digest == digest)


def test_a_batch_held_before_the_view_change_is_not_asked_for_again() -> None:
    """Entering a view dropped the old view's slots with their batches, then asked the peers
    for the batches the NEW-VIEW re-issued: those a member held are kept (at most L)."""
    group = Group()
    r = group.replicas[3]
    pp = group.preprepare(1, group.txs[1:2])
    r.receive(0, pp)  # accepted, never prepared here (no PREPARE from the others)
    group.take(3)
    r.receive(1, new_view_reissuing(group, pp))
    assert r.view == 1 and r.active
    ready = r.take_ready()
    assert not [m for m in ready.messages if isinstance(decode(m.frame, PARAMS), BatchRequest)]
    prepares = [decode(m.frame, PARAMS) for m in ready.messages]
    assert [(p.view, p.seq, p.digest) for p in prepares if isinstance(p, Prepare)] == [
        (1, 1, pp.digest)
    ]


def test_a_batch_request_stops_when_the_view_moves_on() -> None:
    group = Group()
    r = group.replicas[3]
    pp = group.preprepare(1, group.txs[1:2])  # never sent to member 3
    group.take(3)
    r.receive(1, new_view_reissuing(group, pp))
    assert asks_for(group, 3, pp.digest) == 1
    group.tick_all(RETRANSMIT_MS)
    assert asks_for(group, 3, pp.digest) == 1  # still needed: asked again
    r._start_view_change(2, "test")
    for _ in range(4):
        group.tick_all(RETRANSMIT_MS)
        assert asks_for(group, 3, pp.digest) == 0
    assert not r.wants_batch(
        Batch.create(group.signers[0], group.chain_id, pp.proposed_ms, pp.txs, 0)
    )


def test_a_batch_whose_contents_are_not_its_digest_is_not_worth_its_client_signatures() -> None:
    """The shell verifies a BATCH's client signatures (up to batch_txs_max Ed25519 checks)
    ahead of the core when the core wants its digest. Any member that saw our BATCH-REQ knows
    the digest: it could attach any transactions to it, and each such BATCH cost a full batch of
    checks before the core found the digest wrong. The digest is checked first (one hash)."""
    group = Group()
    r = group.replicas[3]
    pp = group.preprepare(1, group.txs[1:3])  # never sent to member 3
    group.take(3)
    r.receive(1, new_view_reissuing(group, pp))
    assert asks_for(group, 3, pp.digest) == 1
    right = Batch.create(group.signers[0], group.chain_id, pp.proposed_ms, pp.txs, 0)
    assert r.wants_batch(right, 0)
    wrong = replace(right, txs=group.txs[3:5])  # (the digest is a field of the signed body)
    assert not r.wants_batch(wrong, 0)
    r.receive(0, wrong)
    assert r.rejected["bad_batch"] == 1 and asks_for(group, 3, pp.digest) == 0


def test_a_batch_nobody_sends_is_asked_for_a_bounded_number_of_times() -> None:
    """A re-issued sequence number this member already committed (by state transfer, so it
    never held the batch) waits for its batch with no timer running: nobody answering (the
    others collected it), it was asked for every interval, for ever (1,800 requests per idle
    10 s after crash-restart runs). It is given up after BATCH_ASKS_MAX asks, and counted."""
    group = Group()
    r = group.replicas[3]
    pp = group.preprepare(1, group.txs[1:2])
    votes = tuple(group.commit(pp, s).vote() for s in range(3))
    block = TransferredBlock(
        proposed_ms=pp.proposed_ms,
        txs=pp.txs,
        certificate=CommitCertificate(0, 1, pp.digest, votes),
    )
    r._fetch_peer = 2  # (it asked member 2 for blocks)
    r.receive(2, Blocks.create(group.signers[2], group.chain_id, 1, 1, None, (block,), 2))
    for batch in r.take_ready().committed:
        r.executed(batch.seq, block_hash(batch.seq))
    assert r.last_executed == 1
    r._fetch_peer = None
    r.receive(1, new_view_reissuing(group, pp))
    asks = asks_for(group, 3, pp.digest)
    for _ in range(3 * BATCH_ASKS_MAX):
        group.tick_all(RETRANSMIT_MS)
        asks += asks_for(group, 3, pp.digest)
    assert r.view == 1 and r.active  # no timer moved it on
    assert asks == BATCH_ASKS_MAX
    assert r.rejected["batch_request_abandoned"] == 1


def test_a_new_primary_asks_for_a_missing_batch_as_long_as_the_view_change_timeout() -> None:
    """The new primary asks for a batch the VIEW-CHANGEs name and it lacks. It gave the batch
    up after BATCH_ASKS_MAX intervals whatever the view-change timeout (up to 64 x the base
    after view changes in a row): a batch that came later (its holder back from a partition,
    well within the timeout the others wait for the NEW-VIEW) was refused as unwanted, and the
    NEW-VIEW never went out. It asks for as long as the timeout has grown."""
    group = Group()
    r = group.replicas[1]  # the primary of view 1
    pp = group.preprepare(1, group.txs[1:2])  # prepared in view 0 at 0, 2 and 3, never here
    proof = PreparedProof(
        preprepare=replace(pp, txs=()), prepares=tuple(group.prepare(pp, s) for s in (2, 3))
    )
    r._timeouts = TIMEOUT_DOUBLINGS_MAX  # view changes in a row before this one
    r._start_view_change(1, "test")
    for s in (0, 2):
        r.receive(s, ViewChange.create(group.signers[s], group.chain_id, 1, None, (proof,), s))
    assert asks_for(group, 1, pp.digest) == 1
    late = 4 * BATCH_ASKS_MAX  # intervals until a member holding the batch answers
    assert late * RETRANSMIT_MS < r.timeout_ms  # the others still wait for the NEW-VIEW
    for _ in range(late):
        group.tick_all(RETRANSMIT_MS)
        group.take(1)
    r.receive(0, Batch.create(group.signers[0], group.chain_id, pp.proposed_ms, pp.txs, 0))
    assert [m.view for m in kinds(group, 1) if isinstance(m, NewView)] == [1]
    assert r.view == 1 and r.active and r.rejected["batch_request_abandoned"] == 0


def test_a_full_set_of_batch_requests_is_counted_not_silent() -> None:
    group = Group()
    r = group.replicas[3]
    for k in range(PARAMS.window + 1):
        r._want(bytes([k]) * 32)
    assert r.rejected["batch_requests_full"] == 1


def test_a_block_that_comes_by_state_transfer_fills_the_reissued_slot_waiting_for_it() -> None:
    group = Group()
    r = group.replicas[3]
    pp = group.preprepare(1, group.txs[1:2])  # never sent to member 3
    group.take(3)
    r.receive(1, new_view_reissuing(group, pp))
    assert asks_for(group, 3, pp.digest) == 1
    votes = tuple(group.commit(pp, s).vote() for s in range(3))
    block = TransferredBlock(
        proposed_ms=pp.proposed_ms,
        txs=pp.txs,
        certificate=CommitCertificate(0, 1, pp.digest, votes),
    )
    r._fetch_peer = 2
    r.receive(2, Blocks.create(group.signers[2], group.chain_id, 1, 1, None, (block,), 2))
    sent = kinds(group, 3)
    assert [(p.view, p.seq, p.digest) for p in sent if isinstance(p, Prepare)] == [
        (1, 1, pp.digest)
    ]
    group.tick_all(RETRANSMIT_MS)
    assert asks_for(group, 3, pp.digest) == 0


# --- the NEW-VIEW timer counts VIEW-CHANGEs for our view or a later one ---------------------


def run_live(group: Group, live: list[int], ms: int, step_ms: int = RETRANSMIT_MS // 2) -> None:
    """Tick the live members and deliver everything among them; the others are silent."""
    for _ in range(ms // step_ms):
        group.mono_ms += step_ms
        for i in live:
            group.replicas[i].tick(group.mono_ms, WALL + group.mono_ms)
        group.pump(to=live)


def deadlock_split(group: Group, ahead: int, behind: list[int]) -> None:
    """The split the issue found after a healed partition with members down: `ahead` moved on
    to view 2 holding only its own VIEW-CHANGE, `behind` sit in view 1 holding each other's
    (Q-1 of them) and the one for view 2; nobody holds Q for exactly their own view."""
    for i in behind:
        group.replicas[i]._start_view_change(1, "no request executed within the timeout")
    a = group.replicas[ahead]
    a._start_view_change(1, "no request executed within the timeout")
    a._start_view_change(2, "no valid NEW-VIEW in time")
    live = [ahead, *behind]
    for i in live:
        group.take(i)  # older VIEW-CHANGEs (lost in the partition)
    for i in live:
        frame = group.replicas[i]._own_vc
        assert frame is not None
        for j in live:
            if j != i:
                group.replicas[j].receive(i, frame)
    for i in live:
        group.take(i)
    quorum = group.replicas[ahead].quorum
    assert len(behind) == quorum - 1
    for i in behind:
        r = group.replicas[i]
        assert (r.view, r.active, len(r._view_changes_for(1))) == (1, False, quorum - 1)
    assert len(a._view_changes_for(2)) == 1 and a.view == 2


def test_a_healed_partition_with_a_member_down_does_not_deadlock_the_view_change() -> None:
    # n = 4, n4 silent for good: n3 is at view 2 alone, n1 and n2 at view 1 with two
    # VIEW-CHANGEs for it. The VIEW-CHANGE for view 2 counts toward their timer: they move on
    # to view 2, whose primary n3 then holds a quorum and sends NEW-VIEW.
    group = Group()
    live = [0, 1, 2]
    deadlock_split(group, 2, [0, 1])
    assert group.replicas[0]._nv_timer_at is not None  # three members at view 1 or later
    run_live(group, live, 20 * TIMEOUT)
    assert {(group.replicas[i].view, group.replicas[i].active) for i in live} == {(2, True)}
    for i in live:
        group.replicas[i].propose(group.txs[0])
    run_live(group, live, 4 * TIMEOUT)
    assert all(group.replicas[i].last_executed >= 1 for i in live)


def test_a_healed_partition_with_two_of_seven_down_does_not_deadlock_the_view_change() -> None:
    group = Group(7)
    live = [0, 1, 2, 3, 4]  # n6 and n7 silent; n3 (primary of view 2) ahead alone
    deadlock_split(group, 2, [0, 1, 3, 4])
    run_live(group, live, 20 * TIMEOUT)
    assert {(group.replicas[i].view, group.replicas[i].active) for i in live} == {(2, True)}
    for i in live:
        group.replicas[i].propose(group.txs[0])
    run_live(group, live, 4 * TIMEOUT)
    assert all(group.replicas[i].last_executed >= 1 for i in live)


def test_a_view_change_for_a_later_view_starts_the_timer_when_it_arrives() -> None:
    group = Group()
    r = group.replicas[0]
    r._start_view_change(1, "test")
    for sender, view in ((1, 1), (2, 3)):
        group.replicas[sender]._start_view_change(view, "test")
        frame = group.replicas[sender]._own_vc
        assert frame is not None
        assert r._nv_timer_at is None
        r.receive(sender, frame)
    # Ours and n2's for view 1, n3's for view 3: three members at view 1 or later.
    assert r.view == 1 and not r.active
    assert r._nv_timer_at == group.mono_ms + r.timeout_ms
    progress = r.status()["view_change"]
    assert progress["view_changes"] == 2  # for exactly view 1: what a NEW-VIEW carries
    assert progress["members_at_or_above"] == 3 and progress["needed"] == 3
    assert progress["new_view_timer_running"]


def test_view_changes_for_later_views_never_make_a_new_view() -> None:
    # n2 is primary of view 1 and holds Q VIEW-CHANGEs for views >= 1, but only two for
    # exactly view 1: it starts its timer and sends no NEW-VIEW.
    group = Group()
    new_primary = group.replicas[1]
    new_primary._start_view_change(1, "test")
    for sender, view in ((2, 1), (3, 2)):
        group.replicas[sender]._start_view_change(view, "test")
        frame = group.replicas[sender]._own_vc
        assert frame is not None
        new_primary.receive(sender, frame)
    assert not new_primary.active and new_primary._nv_timer_at is not None
    assert not [m for m in kinds(group, 1) if isinstance(m, NewView)]


def test_a_primary_one_commit_short_of_a_block_the_others_executed_fetches_it() -> None:
    # Found by the flapping mixes (flap-mute, n = 4, seed 133): n2's COMMIT for seq 1 never
    # reached the primary n1, and n2 then moved on to view 1, so it never re-sends it (only a
    # signer re-sends its vote, and only in its view); n4 is silent. n3 committed seq 1 with
    # n2's COMMIT. The primary never suspects itself, the clients had their f+1 replies, and
    # seq 1 is no checkpoint: nothing would ever tell n1. Holding an accepted batch that has
    # not committed for a whole timeout, it asks a peer for blocks.
    group = Group()
    primary, n2 = group.replicas[0], group.replicas[1]
    for i in range(4):
        group.take(i)
    primary.propose(group.txs[0])
    (pp,) = [m for m in kinds(group, 0) if isinstance(m, PrePrepare)]
    for i in (1, 2):
        group.replicas[i].receive(0, pp)
    for i in (1, 2):
        group.deliver(i, group.take(i).messages, to=[0, 1, 2])  # PREPAREs
    commits = {i: group.take(i).messages for i in (0, 1, 2)}
    group.deliver(0, commits[0], to=[1, 2])
    group.deliver(1, commits[1], to=[2])  # lost on its way to n1
    group.deliver(2, commits[2], to=[0, 1])
    (batch,) = group.take(2).committed
    assert primary.status()["waiting_for"] == "commits for seq 1: 2 of 3"
    n2._start_view_change(1, "no request executed within the timeout")
    group.take(1)
    asked: list[tuple[int | None, Fetch]] = []
    while not asked and group.mono_ms < 2 * TIMEOUT:
        group.mono_ms += RETRANSMIT_MS // 4
        primary.tick(group.mono_ms, WALL + group.mono_ms)
        for out in group.take(0).messages:
            msg = decode(out.frame, group.params)
            if isinstance(msg, Fetch):
                asked.append((out.dest, msg))
    ((peer, fetch),) = asked
    assert peer is not None and peer in (1, 2, 3) and fetch.from_seq == 1
    block = TransferredBlock(
        proposed_ms=batch.proposed_ms, txs=batch.txs, certificate=batch.certificate
    )
    answer = blocks_reply(
        group.signers[peer], group.chain_id, peer, group.params, 1, 1, None, lambda s: block
    )
    primary.receive(peer, answer)
    assert [b.seq for b in group.take(0).committed] == [1]


# --- prepared proofs carry exactly Q-1 PREPAREs ------------------------------------------------


def test_a_view_change_proves_a_prepared_batch_with_exactly_q_minus_1_prepares() -> None:
    """A backup holding every backup's PREPARE (n-1 of them, its own included) kept them all in
    its proof, so each VIEW-CHANGE, and the NEW-VIEW of Q of them, grew with n-1 instead of Q-1:
    at the default parameters genesis had to refuse n > 27 for the NEW-VIEW to fit a frame."""
    group = Group()
    r = group.replicas[3]
    pp = group.preprepare(1, group.txs[0:1])
    for sender in (1, 2):  # (PREPAREs overtaking the PRE-PREPARE, as a network reorders them)
        r.receive(sender, group.prepare(pp, sender))
    r.receive(0, pp)
    assert len(r._log.get(1).prepares) == 3  # n-1 matching PREPAREs, ours included
    group.take(3)
    r._start_view_change(1, "test")
    (vc,) = [m for m in kinds(group, 3) if isinstance(m, ViewChange)]
    (proof,) = vc.prepared
    assert len(proof.prepares) == group.replicas[0].quorum - 1 == 2
    assert check_proof(r._members, r._verifier, proof) is None


def test_a_prepared_proof_with_more_than_q_minus_1_prepares_is_refused() -> None:
    group = Group()
    r = group.replicas[3]
    pp = group.preprepare(1, group.txs[0:1])
    prepares = tuple(group.prepare(pp, s) for s in (1, 2, 3))
    proof = PreparedProof(preprepare=pp, prepares=prepares).without_batch()
    problem = check_proof(r._members, r._verifier, proof)
    assert problem == "prepared proof: 3 prepares, at most 2"
    assert check_proof(r._members, r._verifier, proof.without_batch(2)) is None


def test_one_faulty_view_change_for_a_far_view_only_starts_timers_and_moves_no_one_there() -> None:
    # A faulty member's VIEW-CHANGE for view 1000 counts toward every lower view's NEW-VIEW
    # timer (as one for exactly that view could), but alone it moves no active member, and a
    # timer it helped start takes a member to the next view only, never toward 1000.
    group = Group()
    r = group.replicas[0]
    liar = group.replicas[3]
    liar._start_view_change(1000, "test")
    far = liar._own_vc
    assert far is not None
    r.receive(3, far)
    assert (r.view, r.active, r._nv_timer_at) == (0, True, None)
    r._start_view_change(1, "test")
    assert r._nv_timer_at is None  # ours and the liar's: two of three
    group.replicas[1]._start_view_change(1, "test")
    frame = group.replicas[1]._own_vc
    assert frame is not None
    r.receive(1, frame)
    assert r._nv_timer_at is not None
    group.mono_ms += r.timeout_ms
    r.tick(group.mono_ms, WALL + group.mono_ms)
    assert (r.view, r.active) == (2, False)
    r.check_invariants()
