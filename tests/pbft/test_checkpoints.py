"""Checkpoints, stable checkpoints, garbage collection and the window (Castro & Liskov,
OSDI'99 §4.3; TOCS'02 §2.3.4)."""

from __future__ import annotations

from pbft_harness import WALL, Group, block_hash, drive, frames

from consortium.ledger.certificates import CheckpointCertificate
from consortium.ledger.membership import genesis_configuration
from consortium.pbft import records
from consortium.pbft.messages import (
    Blocks,
    Checkpoint,
    Fetch,
    NewView,
    Prepare,
    PrePrepare,
    ViewChange,
    decode,
    encode,
)

ME = 1


def executed_through(group: Group, seq: int, i: int = ME) -> list[PrePrepare]:
    pps = [group.preprepare(s, group.txs[s : s + 1]) for s in range(1, seq + 1)]
    for pp in pps:
        drive(group, i, pp)
    return pps


def test_a_replica_signs_a_checkpoint_after_executing_every_kth_sequence_number() -> None:
    group = Group()  # K = 2
    r = group.replicas[ME]
    executed_through(group, 1)
    assert not any(isinstance(decode(f, group.params), Checkpoint) for f in frames(r.take_ready()))
    executed_through(group, 2)
    ready = r.take_ready()
    own = group.checkpoint(2, ME)
    assert encode(own) in frames(ready)
    assert (records.checkpoint_key(2), encode(own)) in ready.records


def test_a_checkpoint_is_stable_at_q_matching_votes_from_distinct_members() -> None:
    group = Group()  # Q = 3: its own vote and two more
    r = group.replicas[ME]
    executed_through(group, 2)
    r.take_ready()
    r.receive(2, group.checkpoint(2, 2))
    r.receive(2, group.checkpoint(2, 2))  # the same member twice counts once
    assert r.low_watermark == 0 and r.rejected["duplicate"] == 1
    assert not r.take_ready().stable_checkpoints
    r.receive(3, group.checkpoint(2, 3))
    ready = r.take_ready()
    (cert,) = ready.stable_checkpoints
    assert (cert.seq, cert.block_hash) == (2, block_hash(2))
    assert cert.verify(genesis_configuration(group.genesis), group.verifier) is None
    assert (records.STABLE_KEY, cert.encode()) in ready.records
    assert r.low_watermark == r.stable_checkpoint_seq == 2
    assert r.high_watermark == 2 + group.params.window


def test_a_stable_checkpoint_collects_the_log_and_its_records_at_or_below_h() -> None:
    group = Group()
    r = group.replicas[ME]
    pps = [group.preprepare(s, group.txs[s : s + 1]) for s in (1, 2, 3)]
    written = [kv for pp in pps for kv in drive(group, ME, pp).records]
    keys = {k for k, v in written + r.take_ready().records if k.startswith(b"pbft/log/") and v}
    assert {records.slot_key(s, "preprepare") for s in (1, 2, 3)} <= keys
    assert r.status()["log_slots"] == 3
    for s in (2, 3):
        r.receive(s, group.checkpoint(2, s))
    ready = r.take_ready()
    deleted = {k for k, v in ready.records if v is None}
    proofs = {records.proof_key(s) for s in (1, 2)}  # prepared certificates at or below h
    assert deleted == {k for k in keys if int(k.split(b"/")[2]) <= 2} | proofs
    assert r.status()["log_slots"] == 1  # only seq 3 is left in the window
    r.receive(2, group.prepare(pps[0], 2))  # a vote for a collected seq is outside the window
    assert r.rejected["outside_window"] == 1


def test_checkpoints_with_different_block_hashes_do_not_combine() -> None:
    group = Group()
    r = group.replicas[ME]
    executed_through(group, 2)
    r.take_ready()
    r.receive(2, group.checkpoint(2, 2, block=b"x" * 32))
    r.receive(3, group.checkpoint(2, 3))
    assert r.low_watermark == 0
    r.receive(0, group.checkpoint(2, 0))
    assert r.low_watermark == 2
    assert r.stable_certificate is not None
    assert {v.body for v in r.stable_certificate.votes} == {
        group.checkpoint(2, s).body for s in (0, 1, 3)
    }


def test_a_quorum_for_a_hash_other_than_ours_is_never_adopted() -> None:
    group = Group()
    r = group.replicas[ME]
    executed_through(group, 2)
    for s in (0, 2, 3):
        r.receive(s, group.checkpoint(2, s, block=b"x" * 32))
    assert r.low_watermark == 0
    assert r.rejected["checkpoint_mismatch"] >= 1


def test_a_replica_whose_execution_diverged_signs_no_more_votes_and_says_so() -> None:
    """Q members (f+1 honest among them) certified another block than ours at a checkpoint:
    our state is the wrong one (a damaged store). The replica stops signing votes at once,
    counts what it withheld, and its status names the divergence (node/explain.py turns it
    into a reason, so the member is not ready)."""
    group = Group()
    r = group.replicas[ME]
    executed_through(group, 2)
    r.take_ready()
    for s in (0, 2, 3):
        r.receive(s, group.checkpoint(2, s, block=b"x" * 32))
    assert r.diverged == (2, block_hash(2), b"x" * 32)
    pp = group.preprepare(3, group.txs[3:4])
    r.receive(0, pp)
    sent = [decode(f, group.params) for f in frames(r.take_ready())]
    assert not [m for m in sent if isinstance(m, Prepare)]  # an honest one would prepare
    status = r.status()["diverged"]
    assert status["seq"] == 2 and status["certified"] == (b"x" * 32).hex()
    assert status["withheld"] == 1


def other_certificate(group: Group, seq: int, senders: tuple[int, ...]) -> CheckpointCertificate:
    """A valid stable checkpoint certificate (Q members signed it) for another block hash."""
    votes = tuple(group.checkpoint(seq, s, block=b"x" * 32).vote() for s in senders)
    return CheckpointCertificate(seq, b"x" * 32, votes)


def test_a_certificate_in_a_blocks_answer_for_another_hash_than_ours_is_refused() -> None:
    """State transfer adopted the stable checkpoint certificate of a BLOCKS answer without
    comparing it with our own CHECKPOINT at its sequence number: our execution diverged from
    Q members' and nothing said so. It is refused and counted, as for Q CHECKPOINTs."""
    group = Group()
    r = group.replicas[ME]
    executed_through(group, 2)  # our own CHECKPOINT for 2 names block_hash(2)
    r.take_ready()
    r._fetch_peer = 2  # (it asked member 2 for blocks)
    cert = other_certificate(group, 2, (0, 2, 3))
    r.receive(2, Blocks.create(group.signers[2], group.chain_id, 3, 2, cert, (), 2))
    assert r.rejected["checkpoint_mismatch"] == 1
    assert r.low_watermark == 0 and r.stable_certificate is None


def test_a_new_views_certificate_for_another_hash_than_ours_is_refused() -> None:
    """The same for the stable checkpoint a NEW-VIEW carries (its min_s): the view is entered,
    the certificate is not adopted."""
    group = Group()
    r = group.replicas[2]
    executed_through(group, 2, i=2)
    r.take_ready()
    cert = other_certificate(group, 2, (0, 1, 3))
    vcs = tuple(
        encode(ViewChange.create(group.signers[s], group.chain_id, 1, cert, (), s))
        for s in (0, 1, 3)
    )
    nv = NewView.create(group.signers[1], group.chain_id, 1, vcs, (), 1)
    r.receive(1, nv)
    assert r.view == 1 and r.active
    assert r.rejected["checkpoint_mismatch"] == 1
    assert r.low_watermark == 0 and r.stable_certificate is None


def test_a_new_primary_does_not_lead_a_view_from_a_checkpoint_its_execution_disputes() -> None:
    """As the new primary it would adopt the VIEW-CHANGEs' certificate as its NEW-VIEW's min_s:
    it sends no NEW-VIEW (counted), and the others' NEW-VIEW timers move them on."""
    group = Group()
    r = group.replicas[1]  # primary of view 1
    executed_through(group, 2, i=1)
    r.take_ready()
    cert = other_certificate(group, 2, (0, 2, 3))
    for s in (0, 2, 3):
        vc = ViewChange.create(group.signers[s], group.chain_id, 1, cert, (), s)
        r.receive(s, vc)
    assert r.view == 1 and not r.active
    sent = [decode(f, group.params) for f in frames(r.take_ready())]
    assert not [m for m in sent if isinstance(m, NewView)]
    assert r.rejected["checkpoint_mismatch"] == 1
    group.tick_all(group.params.request_timeout_ms)
    assert r.rejected["checkpoint_mismatch"] == 1  # once: it does not try again in this view


def test_a_checkpoint_at_or_below_h_is_stale() -> None:
    group = Group()
    r = group.replicas[ME]
    executed_through(group, 2)
    for s in (2, 3):
        r.receive(s, group.checkpoint(2, s))
    r.take_ready()
    r.receive(0, group.checkpoint(2, 0))
    assert r.rejected["stale_checkpoint"] == 1 and not r.take_ready()


def test_a_replica_behind_a_stable_checkpoint_adopts_it_and_fetches_the_blocks() -> None:
    group = Group()
    r = group.replicas[ME]
    r.tick(group.mono_ms, WALL)
    for s in (0, 2, 3):
        r.receive(s, group.checkpoint(4, s))
    assert r.low_watermark == 4 and r.last_executed == 0
    assert r.stable_certificate is not None and r.stable_certificate.seq == 4
    assert str(r.status()["waiting_for"]).startswith("state transfer: behind by 4 blocks")
    fetches = [decode(m.frame, group.params) for m in r.take_ready().messages]
    fetch = [m for m in fetches if isinstance(m, Fetch)]
    assert len(fetch) == 1 and fetch[0].from_seq == 1


def test_the_primary_proposes_only_inside_the_window() -> None:
    group = Group()  # L = 4, batch_txs_max = 4
    primary = group.replicas[0]
    for tx in group.txs[:24]:
        primary.propose(tx)
    group.tick_all(group.params.batch_delay_ms)
    seqs = [decode(f, group.params).seq for f in frames(group.take(0))]
    assert seqs == [1, 2, 3, 4]
    assert primary.status()["pending_txs"] == 24 - 13  # [tx0] at once, then three of four
    # As checkpoints become stable the window moves and the rest is proposed.
    for _ in range(12):
        group.deliver(0, [])
        group.pump()
        group.tick_all(group.params.batch_delay_ms)
    assert all(r.last_executed == 7 for r in group.replicas)
    assert primary.status()["pending_txs"] == 0


def test_messages_above_the_window_are_replayed_when_it_moves() -> None:
    group = Group()
    r = group.replicas[ME]
    early = Prepare.create(group.signers[2], group.chain_id, 0, 5, b"d" * 32, 2)
    r.receive(2, early)
    assert r.status()["buffered_messages"] == 1 and r.status()["log_slots"] == 0
    executed_through(group, 2)
    for s in (2, 3):
        r.receive(s, group.checkpoint(2, s))
    assert r.low_watermark == 2
    assert r.status()["buffered_messages"] == 0
    assert r.status()["log_slots"] == 1  # seq 5 now holds member 2's PREPARE
