"""A restarted replica reloads its own votes and never contradicts them (Castro & Liskov,
TOCS'02 §4.2 and §6; node/executor.py: "durable before the message that depends on it leaves")."""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

import pytest
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

from consortium.crypto.codec import pack, unpack_canonical
from consortium.ledger.block import batch_digest, genesis_block
from consortium.ledger.certificates import CheckpointCertificate
from consortium.ledger.genesis import Params
from consortium.ledger.membership import genesis_configuration
from consortium.pbft import records
from consortium.pbft.messages import PrePrepare, ViewQuery, ViewReport, decode, encode
from consortium.pbft.records import RecoveryError
from consortium.pbft.recovery import ViewRecovery
from consortium.pbft.replica import Ready, RecoveredState


class Disk:
    """What the shell keeps: the records, the stable checkpoint, the ledger height and hash."""

    def __init__(self, group: Group) -> None:
        self.records: dict[bytes, bytes] = {}
        self.stable: CheckpointCertificate | None = None
        self.height = 0
        self.head = genesis_block(group.genesis).hash

    def write(self, ready: Ready) -> Ready:
        for key, value in ready.records:
            if value is None:
                self.records.pop(key, None)
            else:
                self.records[key] = value
        if ready.stable_checkpoints:
            self.stable = ready.stable_checkpoints[-1]
        return ready

    def executed(self, seq: int) -> None:
        self.height, self.head = seq, block_hash(seq)

    def recovered(self) -> RecoveredState:
        return RecoveredState(self.height, self.head, self.stable, sorted(self.records.items()))


def test_a_restarted_backup_re_sends_its_prepare_and_refuses_a_conflicting_preprepare() -> None:
    group = Group()
    disk = Disk(group)
    pp = group.preprepare(1, group.txs[:1])
    group.replicas[1].receive(0, pp)
    prepare = encode(group.prepare(pp, 1))
    assert frames(disk.write(group.take(1))) == [prepare]
    restarted = group.make(1, disk.recovered())
    restarted.tick(group.mono_ms, 0)
    assert set(frames(restarted.take_ready())) == {prepare}  # the same signed bytes
    restarted.receive(0, group.preprepare(1, group.txs[1:2]))
    assert restarted.rejected["conflicting_preprepare"] == 1
    # Evidence against the primary: a view change, never a second PREPARE for seq 1.
    messages = [m.frame for m in restarted.take_ready().messages]
    assert [type(decode(m, group.params)).__name__ for m in messages] == ["ViewChange"]


def test_a_restarted_replica_that_sent_its_commit_still_holds_the_batch() -> None:
    group = Group()
    disk = Disk(group)
    r = group.replicas[1]
    pp = group.preprepare(1, group.txs[:2])
    r.receive(0, pp)
    r.receive(2, group.prepare(pp, 2))
    disk.write(group.take(1))  # prepared, COMMIT sent, nothing committed yet
    restarted = group.make(1, disk.recovered())
    for s in (0, 2):
        restarted.receive(s, group.commit(pp, s))
    (batch,) = restarted.take_ready().committed
    assert batch.txs == group.txs[:2]
    assert batch.certificate.verify(genesis_configuration(group.genesis), group.verifier) is None


def test_a_restarted_primary_numbers_on_after_its_last_preprepare() -> None:
    group = Group()
    disk = Disk(group)
    primary = group.replicas[0]
    for tx in group.txs[:5]:
        primary.propose(tx)
    disk.write(group.take(0))  # PRE-PREPAREs 1 and 2 persisted and sent
    sent_before = set(disk.records.values())
    restarted = group.make(0, disk.recovered())
    restarted.tick(group.mono_ms, WALL)
    resent = restarted.take_ready()
    assert {out.frame for out in resent.messages} <= sent_before  # 1 and 2, as they were
    restarted.propose(group.txs[10])
    restarted.tick(group.mono_ms + group.params.batch_delay_ms, WALL)
    (pp,) = [decode(f, group.params) for f in frames(restarted.take_ready())]
    assert isinstance(pp, PrePrepare) and (pp.seq, pp.txs) == (3, (group.txs[10],))


def test_a_restart_after_a_stable_checkpoint_resumes_above_it() -> None:
    group = Group()
    disk = Disk(group)
    r = group.replicas[1]
    for seq in (1, 2, 3):
        disk.write(drive(group, 1, group.preprepare(seq, group.txs[seq : seq + 1])))
        disk.executed(seq)
    for s in (2, 3):
        r.receive(s, group.checkpoint(2, s))
    disk.write(group.take(1))
    assert disk.stable is not None and disk.stable.seq == 2
    log_seqs = {int(k.split(b"/")[2]) for k in disk.records if k.startswith(b"pbft/log/")}
    assert log_seqs == {3}  # collected at or below h
    restarted = group.make(1, disk.recovered())
    assert (restarted.low_watermark, restarted.last_executed) == (2, 3)
    assert restarted.status()["log_slots"] == 1
    restarted.check_invariants()


def test_a_checkpoint_vote_lost_in_a_crash_is_signed_again() -> None:
    group = Group()
    disk = Disk(group)
    for seq in (1, 2):
        ready = drive(group, 1, group.preprepare(seq, group.txs[seq : seq + 1]), execute=False)
        disk.write(ready)
        disk.executed(seq)  # the block is durable, the crash came before executed() ran
    restarted = group.make(1, disk.recovered())
    ready = restarted.take_ready()
    assert encode(group.checkpoint(2, 1)) in frames(ready)
    assert (records.checkpoint_key(2), encode(group.checkpoint(2, 1))) in ready.records


def test_a_corrupt_record_is_an_error_that_names_it() -> None:
    group = Group()
    key = records.slot_key(1, "prepare")
    recovered = RecoveredState(0, genesis_block(group.genesis).hash, None, [(key, b"junk")])
    with pytest.raises(RecoveryError, match="pbft/log/00000000000000000001/prepare"):
        group.make(1, recovered)


def _protocol_2(frame: bytes) -> bytes:
    """`frame` as protocol version 2 wrote it: the same message, its body without the epoch."""
    envelope = unpack_canonical(frame)
    body = unpack_canonical(envelope[0])
    return pack([pack([body[0], *body[2:]]), *envelope[1:]])


def test_records_of_protocol_2_stop_the_start_and_say_why() -> None:
    """A pbft member's votes since its stable checkpoint are what its VIEW-CHANGE carries;
    protocol 3 cannot send them, and dropping them could let a view change re-order heights
    that some members hold. So the start refuses, naming the record and the reason, rather
    than calling the data directory damaged."""
    group = Group()
    ready = drive(group, 1, group.preprepare(1, group.txs[1:2]))
    old = [(k, _protocol_2(v)) for k, v in ready.records if v is not None and b"log/" in k]
    assert {key.rsplit(b"/", 1)[-1] for key, _ in old} == {b"preprepare", b"prepare", b"commit"}
    proof = records.proof_value(
        _protocol_2(encode(group.preprepare(2, group.txs[2:3]))),
        [_protocol_2(encode(group.prepare(group.preprepare(2, group.txs[2:3]), 2)))],
    )
    view_change = (records.VIEW_CHANGE_KEY, _protocol_2(encode(group.checkpoint(1, 1))))
    for record in [*old, (records.proof_key(2), proof), view_change]:
        with pytest.raises(RecoveryError, match="written by protocol version 2: a pbft network"):
            group.make(1, RecoveredState(1, block_hash(1), None, [record]))


def test_a_corrupt_record_is_not_mistaken_for_protocol_2() -> None:
    group = Group()
    key = records.slot_key(1, "prepare")
    junk = pack([pack(["prepare", 0, 1]), b"s" * 64])  # a body of neither version's shape
    with pytest.raises(RecoveryError, match="does not decode"):
        group.make(1, RecoveredState(1, block_hash(1), None, [(key, junk)]))


def test_a_restart_keeps_the_doubled_view_change_timeout() -> None:
    group = Group()
    disk = Disk(group)
    r = group.replicas[2]
    disk.write(r.take_ready())
    base = group.params.request_timeout_ms
    r._start_view_change(1, "test")
    r._start_view_change(2, "test")  # no NEW-VIEW for view 1 in time
    disk.write(r.take_ready())
    assert r.timeout_ms == base << 2
    restarted = group.make(2, disk.recovered())
    assert restarted.view == 2 and not restarted.active
    assert restarted.timeout_ms == base << 2  # not back to the base timeout


def test_a_view_record_written_before_timeouts_were_persisted_still_reads() -> None:
    old = pack([3, 1])  # [view, active]
    restored = records.parse([(records.VIEW_KEY, old)], PARAMS, 0)
    assert (restored.view, restored.active, restored.timeouts) == (3, True, 0)


# --- a member whose state is older than what it sent (pbft/recovery.py) ---------------------

NONCE = bytes(range(16))


def _kinds(ready: Ready, params: Params = PARAMS) -> list[str]:
    return [type(decode(f, params)).__name__ for f in frames(ready)]


def _answer_queries(group: Group, i: int, ready: Ready) -> None:
    """Deliver i's VIEW-QUERYs to their peers and their VIEW-REPORTs back to i."""
    for out in ready.messages:
        msg = decode(out.frame, group.params)
        if isinstance(msg, ViewQuery) and out.dest is not None:
            peer = group.replicas[out.dest]
            peer.receive(i, out.frame)
            for answer in peer.take_ready().messages:
                assert answer.dest == i
                group.replicas[i].receive(out.dest, answer.frame)


def _primary_with_a_backup(group: Group) -> tuple[Disk, RecoveredState]:
    """Primary n1 commits seq 1 (the backup is taken), then seqs 2 and 3 (lost with it)."""
    disk = Disk(group)
    for seq in (1, 2, 3):
        group.replicas[0].propose(group.txs[seq])
        group.tick_all(group.params.batch_delay_ms)
        seen = group.pump()
        for ready in seen[0]:
            disk.write(ready)
        disk.executed(seq)
        if seq == 1:
            backup = disk.recovered()
    assert all(r.last_executed == 3 for r in group.replicas)
    return disk, backup


def test_a_primary_restored_from_a_backup_proposes_nothing_in_its_old_view() -> None:
    group = Group()
    _, backup = _primary_with_a_backup(group)
    sent = {f for f in group.replicas[0]._log.window_slots() for f in [f.own_preprepare] if f}

    # Today's start, the mark ignored: it numbers on from its backup and signs a second,
    # different PRE-PREPARE for (view 0, seq 2): equivocation, from an honest member.
    careless = group.make(0, backup)
    careless.tick(group.mono_ms, WALL + group.mono_ms)
    careless.take_ready()
    careless.propose(group.txs[20])
    careless.tick(group.mono_ms + 20, WALL + group.mono_ms + 20)
    (pp,) = [m for m in map(lambda f: decode(f, PARAMS), frames(careless.take_ready()))]
    assert isinstance(pp, PrePrepare) and (pp.view, pp.seq) == (0, 2)
    assert encode(pp) not in sent

    restored = group.make(0, backup, recovery_nonce=NONCE)
    assert restored.recovering
    copies = {v for k, v in backup.records if k.endswith(b"/preprepare")}
    restored.propose(group.txs[20])
    for step in range(20):
        restored.tick(group.mono_ms + 20 * step, WALL + group.mono_ms + 20 * step)
        ready = restored.take_ready()
        queries = [o.dest for o in ready.messages if isinstance(decode(o.frame, PARAMS), ViewQuery)]
        assert sorted(queries) == ([1, 2, 3] if step % 5 == 0 else [])  # once per interval
        for f in frames(ready):
            if isinstance(decode(f, PARAMS), PrePrepare):
                assert f in copies  # a re-sent copy of what the backup holds, nothing new
    assert restored.status()["recovering"]["floor"] is None


def test_the_floor_is_above_the_views_n_minus_f_minus_1_others_report_for_our_nonce() -> None:
    group = Group()
    r = group.make(3, recovery_nonce=NONCE)
    r.tick(group.mono_ms, WALL)
    queries = r.take_ready()
    assert _kinds(queries) == ["ViewQuery"] * 3
    # An answer signed for another nonce (one recorded before the state was lost) is refused.
    old = ViewReport.create(group.signers[0], group.chain_id, bytes(16), 7, 0, 0)
    r.receive(0, old)
    assert r.rejected["stale_view_report"] == 1 and r.status()["recovering"]["reports"] == 0
    forged = replace(ViewReport.create(group.signers[0], group.chain_id, NONCE, 0, 0, 0))
    r.receive(0, replace(forged, signature=bytes(64)))
    assert r.rejected["bad_signature"] == 1
    group.mono_ms += RETRANSMIT_MS // 2  # (a member's reports: one checked per half interval)
    r.tick(group.mono_ms, WALL)
    r.take_ready()
    # n-f-1 = 2 others: an inflated answer (view 1000) is outvoted once a third one arrives.
    r.receive(0, ViewReport.create(group.signers[0], group.chain_id, NONCE, 1000, 0, 0))
    assert r.status()["recovering"]["floor"] is None
    r.receive(1, ViewReport.create(group.signers[1], group.chain_id, NONCE, 2, 5, 1))
    assert r.status()["recovering"]["floor"] == 1001
    r.receive(2, ViewReport.create(group.signers[2], group.chain_id, NONCE, 3, 5, 2))
    assert r.status()["recovering"]["floor"] == 4  # the 2nd smallest of 2, 3, 1000, plus one
    assert r.status()["recovering"]["target"] == 5  # the (f+1)-th highest height reported
    # Everyone answered: no more queries. Below the floor it joins no view change.
    group.tick_all(10 * RETRANSMIT_MS)
    r.tick(group.mono_ms, WALL + group.mono_ms)
    assert "ViewQuery" not in _kinds(r.take_ready())
    r._start_view_change(3, "test")
    assert r.view == 0 and r.active and not r.take_ready().messages
    r._start_view_change(4, "test")
    assert r.view == 4 and _kinds(r.take_ready()) == ["ViewChange"]


def test_a_recovering_backup_withholds_its_votes_but_still_commits_and_checkpoints() -> None:
    group = Group()
    r = group.make(3, recovery_nonce=NONCE)
    group.replicas[3] = r
    r.tick(group.mono_ms, WALL)
    _answer_queries(group, 3, r.take_ready())
    assert r.status()["recovering"]["floor"] == 1  # everyone is in view 0
    for seq in (1, 2):
        ready = drive(group, 3, group.preprepare(seq, group.txs[seq : seq + 1]))
        assert "Prepare" not in _kinds(ready) and "Commit" not in _kinds(ready)
        assert [b.seq for b in ready.committed] == [seq]  # Q COMMITs of the others
    # The checkpoint at seq 2 is signed: it cannot differ from any signed before.
    assert _kinds(r.take_ready()) == ["Checkpoint"]
    assert r.status()["recovering"]["withheld"] == 4  # two PREPAREs, two COMMITs
    assert r.recovering


def test_a_member_that_lost_its_state_joins_the_next_view_and_then_votes_again() -> None:
    group = Group()
    r = group.make(3, recovery_nonce=NONCE)
    group.replicas[3] = r
    r.tick(group.mono_ms, WALL)
    _answer_queries(group, 3, r.take_ready())
    # The primary n1 is silent: the others' timers take them to view 1, which n4 may join.
    members = [1, 2, 3]
    for i in members:
        group.replicas[i].propose(group.txs[5])
    for _ in range(12):
        group.tick_all(RETRANSMIT_MS)
        group.pump(to=members)
    assert all(group.replicas[i].view == 1 and group.replicas[i].active for i in members)
    seen = group.pump(to=members)
    assert r.last_executed == 1 and not r.recovering  # it executed the view's first batch
    group.replicas[1].propose(group.txs[6])
    group.tick_all(group.params.batch_delay_ms)
    seen = group.pump(to=members)
    assert any("Prepare" in _kinds(ready) for ready in seen[3])  # it votes again
    r.check_invariants()


def test_view_queries_are_answered_at_most_once_per_half_interval_and_junk_is_dropped() -> None:
    group = Group()
    peer = group.replicas[1]
    query = ViewQuery.create(group.signers[0], group.chain_id, NONCE, 0)
    peer.receive(0, query)
    (answer,) = peer.take_ready().messages
    report = decode(answer.frame, PARAMS)
    assert isinstance(report, ViewReport) and (report.nonce, report.view) == (NONCE, 0)
    peer.receive(0, query)
    assert peer.rejected["query_too_often"] == 1 and not peer.take_ready().messages
    peer.receive(0, replace(query, sender=2))
    assert peer.rejected["sender_mismatch"] == 1
    short = pack([pack(["viewquery", b"x", 0]), bytes(64)])
    peer.receive(0, short)
    assert peer.rejected["malformed"] == 1
    peer.receive(0, ViewReport.create(group.signers[0], group.chain_id, NONCE, 9, 9, 0))
    assert peer.rejected["stale_view_report"] == 1  # not recovering: nothing to learn
    peer.check_invariants()


def test_a_recovering_primary_given_its_own_new_view_never_commits_a_batch_without_its_txs() -> (
    None
):
    """A member that lost its state (or was restored from a backup older than a NEW-VIEW it
    sent as primary) is relayed that NEW-VIEW by a peer (its FETCH probes and old-view
    messages make peers relay it). The NEW-VIEW's PRE-PREPAREs travel without their batches:
    taking its own as complete, the member would hand the shell a batch with no transactions
    for a digest that names some, and execute a block no one else has."""
    group = Group()
    pp = group.preprepare(1, group.txs[:2])  # prepared at members 0, 1, 2 in view 0
    nv = new_view_reissuing(group, pp, view=1)  # member 1 sent it, then lost its state
    for s in (0, 2, 3):
        group.replicas[s].receive(1, nv)
        group.take(s)
    r = group.make(1, recovery_nonce=NONCE)
    group.replicas[1] = r
    r.tick(group.mono_ms, WALL)
    _answer_queries(group, 1, r.take_ready())
    assert r.status()["recovering"]["floor"] == 2  # the others are in view 1
    r.receive(2, nv)  # relayed
    assert r.view == 1 and r.active
    # The others prepared and commit the re-issued batch in view 1.
    again = decode(encode(nv), PARAMS).preprepares[0]  # type: ignore[union-attr]
    for s in (0, 2, 3):
        r.receive(s, group.prepare(again, s))
    for s in (0, 2, 3):
        r.receive(s, group.commit(again, s))
    committed = r.take_ready().committed
    for batch in committed:
        assert batch_digest(batch.proposed_ms, [t.id for t in batch.txs]) == batch.digest, (
            f"seq {batch.seq} handed out with {len(batch.txs)} transactions for a digest "
            "naming others"
        )
    r.check_invariants()


@pytest.mark.parametrize("n", [4, 7, 10])
def test_the_floor_is_above_every_view_used_whichever_n_minus_f_minus_1_answer_first(
    n: int,
) -> None:
    """The floor bound, exhaustively at small n: the recovering member acted in view w, so Q-1
    others sent VIEW-CHANGE(w) and are at w or beyond; at most f-1 of those lie (the recovering
    member is one of the f). Whatever the liars and the honest members outside that set report
    (here the worst: 0), and whichever n-f-1 or more others answer, floor > w."""
    f = (n - 1) // 3
    quorum = (n + f + 2) // 2
    w = 5
    me = 0
    others = list(range(1, n))
    for moved in itertools.combinations(others, quorum - 1):
        for liars in itertools.combinations(moved, f - 1):
            for k in range(n - f - 1, n):
                for answered in itertools.combinations(others, k):
                    rec = ViewRecovery(NONCE, tuple(range(n)), f, me)
                    for peer in answered:
                        honest_high = peer in moved and peer not in liars
                        rec.add(peer, w if honest_high else 0, 0)
                    assert rec.floor is not None and rec.floor > w, (moved, liars, answered)


class _CountingVerifier:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    def verify(self, *args: Any) -> bool:
        self.calls += 1
        return bool(self.inner.verify(*args))


def test_view_reports_cost_a_bounded_number_of_signature_checks() -> None:
    """Every VIEW-REPORT carrying our nonce was verified, with no limit per peer: a member
    re-sending its answer, or junk signed badly, bought a signature check per message. A
    report from a peer already counted is dropped unchecked (it adds nothing: it is never
    asked again), and one peer's reports are checked at most once per half interval (an
    honest member answers at most that often)."""
    group = Group()
    counting = _CountingVerifier(group.verifier)
    group.verifier = counting  # type: ignore[assignment]
    r = group.make(1, recovery_nonce=NONCE)
    group.replicas[1] = r
    r.tick(group.mono_ms, WALL)
    r.take_ready()
    junk = replace(
        ViewReport.create(group.signers[0], group.chain_id, NONCE, 0, 0, 0), signature=bytes(64)
    )
    before = counting.calls
    for _ in range(1_000):
        r.receive(0, junk)
    assert counting.calls - before <= 1
    report = ViewReport.create(group.signers[2], group.chain_id, NONCE, 0, 0, 2)
    r.receive(2, report)
    assert r.status()["recovering"]["reports"] == 1
    before = counting.calls
    for _ in range(1_000):
        r.receive(2, report)
    assert counting.calls == before
    group.mono_ms += RETRANSMIT_MS // 2
    r.tick(group.mono_ms, WALL)
    r.receive(0, ViewReport.create(group.signers[0], group.chain_id, NONCE, 0, 0, 0))
    assert r.status()["recovering"]["reports"] == 2  # an honest answer half an interval on
    r.check_invariants()
