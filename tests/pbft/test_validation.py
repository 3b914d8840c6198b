"""Peer input is validated explicitly and never raised out of the core: everything wrong is
dropped, counted in `rejected` by reason, and changes nothing else (docs/pbft-faults.md;
Castro & Liskov OSDI'99 §4.2 acceptance conditions; TOCS'02 §2.3.3)."""

from __future__ import annotations

from collections.abc import Callable
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
    forge,
    frames,
    new_view_reissuing,
)
from test_recovery import Disk

from consortium.crypto.keys import KeyPair
from consortium.ledger.block import genesis_block
from consortium.ledger.tx import Put, Transaction
from consortium.pbft import records
from consortium.pbft.messages import Message, Prepare, PrePrepare, ViewChange, decode, encode
from consortium.pbft.replica import PbftConfig, PbftReplica, RecoveredState
from consortium.sim.cluster import workload

ME = 1  # the replica under test: a backup


def snapshot(r: PbftReplica) -> dict[str, Any]:
    return {**r.status(), "evidence": len(r.evidence)}


VIEW_CHANGE_FIELDS = (
    "view",
    "primary",
    "view_active",
    "view_change_history",
    "view_changes",
    "view_timeout_ms",
    "view_change",
    "waiting_for",
)


def assert_view_change_started(
    r: PbftReplica, before: dict[str, Any], after: dict[str, Any]
) -> None:
    """Evidence against the primary: the replica moves to view 1 at once, persisting the view
    and its VIEW-CHANGE before multicasting it, and nothing else changes."""
    assert (after["view"], after["view_active"], after["view_changes"]) == (1, False, 1)
    for key in VIEW_CHANGE_FIELDS:
        before.pop(key)
        after.pop(key)
    ready = r.take_ready()
    assert [k for k, _ in ready.records] == [records.VIEW_KEY, records.VIEW_CHANGE_KEY]
    (out,) = ready.messages
    assert out.dest is None and out.frame == dict(ready.records)[records.VIEW_CHANGE_KEY]
    vc = decode(out.frame, r.params)
    assert isinstance(vc, ViewChange) and vc.view == 1 and vc.sender == r.me
    assert not ready.committed


Case = Callable[[Group], tuple[int, bytes | Message]]


def prepare_from(sender: int, *, view: int = 0, seq: int = 1) -> Case:
    def make(g: Group) -> tuple[int, Message]:
        return sender, Prepare.create(g.signers[sender], g.chain_id, view, seq, b"d" * 32, sender)

    return make


CASES: dict[str, Case] = {
    "malformed": lambda g: (2, b"\x93\x01\x02"),
    "not_member": lambda g: (7, prepare_from(2)(g)[1]),
    "from_self": lambda g: (ME, prepare_from(ME)(g)[1]),
    "sender_mismatch": lambda g: (2, prepare_from(3)(g)[1]),
    "bad_signature": lambda g: (
        2,
        forge(Prepare.create(g.signers[2], g.chain_id, 0, 1, b"d" * 32, 2)),
    ),
    "wrong_view": prepare_from(2, view=1),
    "prepare_from_primary": prepare_from(0),
    "not_primary": lambda g: (2, g.preprepare(1, g.txs[:1], sender=2)),
    "outside_window": prepare_from(2, seq=0),
    "digest_mismatch": lambda g: (0, g.preprepare(1, g.txs[:2], digest=b"x" * 32)),
    "batch_too_large": lambda g: (0, g.preprepare(1, g.txs[:5])),
    "wrong_chain": lambda g: (0, g.preprepare(1, (g.txs[0], workload(b"\x01" * 32, 1)[0]))),
    "not_checkpoint_seq": lambda g: (2, g.checkpoint(3, 2)),
}


@pytest.mark.parametrize("reason", sorted(CASES))
def test_invalid_input_is_dropped_counted_and_changes_nothing(reason: str) -> None:
    group = Group()
    r = group.replicas[ME]
    before = snapshot(r)
    sender, msg = CASES[reason](group)
    r.receive(sender, msg)
    assert dict(r.rejected) == {reason: 1}
    after = snapshot(r)
    if reason == "wrong_view":
        # A higher view's message also waits (bounded) for the view-change issue.
        assert after.pop("buffered_messages") == before.pop("buffered_messages") + 1
    if reason in ("digest_mismatch", "batch_too_large", "wrong_chain"):
        # An invalid batch from the primary is evidence: kept, and a view change at once.
        assert after.pop("evidence") == before.pop("evidence") + 1
        assert r.evidence[-1].reason == reason
        assert_view_change_started(r, before, after)
    assert after == before
    assert not r.take_ready()
    r.check_invariants()


def test_a_bad_client_signature_rejects_the_whole_batch_after_asking_about_every_tx() -> None:
    group = Group()
    r = group.replicas[ME]
    txs = group.txs[:3]
    group.bad_txs.add(txs[1].id)
    r.receive(0, group.preprepare(1, txs))
    assert dict(r.rejected) == {"bad_client_signature": 1}
    assert group.asked == [tx.id for tx in txs]
    assert r.status()["log_slots"] == 0
    assert r.evidence[-1].reason == "bad_client_signature"
    assert r.view == 1 and not r.active  # evidence: a view change at once


def test_a_conflicting_preprepare_is_counted_kept_as_evidence_and_changes_nothing() -> None:
    group = Group()
    r = group.replicas[ME]
    first = group.preprepare(1, group.txs[:1])
    second = group.preprepare(1, group.txs[1:2])
    r.receive(0, first)
    group.take(ME)
    before = snapshot(r)
    r.receive(0, second)
    assert r.rejected["conflicting_preprepare"] == 1
    after = snapshot(r)
    assert after.pop("evidence") == before.pop("evidence") + 1
    assert_view_change_started(r, before, after)
    assert after == before
    (evidence,) = r.evidence
    assert (evidence.reason, evidence.view, evidence.seq, evidence.primary) == (
        "conflicting_preprepare",
        0,
        1,
        0,
    )
    assert [v.body for v in evidence.preprepares] == [first.body, second.body]


def test_a_forged_conflicting_preprepare_is_a_bad_signature_not_evidence() -> None:
    group = Group()
    r = group.replicas[ME]
    r.receive(0, group.preprepare(1, group.txs[:1]))
    r.receive(0, forge(group.preprepare(1, group.txs[1:2])))
    assert r.rejected["bad_signature"] == 1 and not r.evidence


@pytest.mark.parametrize("kind", ["prepare", "commit"])
def test_a_second_different_vote_from_one_member_does_not_count(kind: str) -> None:
    group = Group()
    r = group.replicas[3]
    pp = group.preprepare(1, group.txs[:1])
    other = replace(pp, digest=b"o" * 32)
    vote = group.prepare if kind == "prepare" else group.commit
    r.receive(2, vote(other, 2))  # before the PRE-PREPARE: kept, for the wrong digest
    r.receive(2, vote(pp, 2))
    assert r.rejected["conflicting_vote"] == 1
    r.receive(0, pp)
    if kind == "prepare":
        # Only its own PREPARE matches; member 2's first one was for another digest.
        assert r.status()["waiting_for"] == "prepares for seq 1: 1 of 2"
    else:
        r.receive(1, group.prepare(pp, 1))
        r.receive(0, group.commit(pp, 0))
        assert r.status()["waiting_for"] == "commits for seq 1: 2 of 3"


def test_a_backup_withholds_its_prepare_for_a_skewed_timestamp() -> None:
    group = Group()
    r = group.replicas[ME]
    skew = group.params.timestamp_skew_ms
    pp = group.preprepare(1, group.txs[:1], proposed_ms=WALL + group.mono_ms + skew + 1)
    r.receive(0, pp)
    ready = group.take(ME)
    assert r.rejected["timestamp_skew"] == 1
    assert ready.messages == [] and not r.evidence  # withheld, and not evidence
    assert r.status()["log_slots"] == 1  # the PRE-PREPARE itself is accepted
    # The others prepare it; this backup still commits with them.
    for sender in (2, 3):
        r.receive(sender, group.prepare(pp, sender))
    assert frames(group.take(ME)) == [encode(group.commit(pp, ME))]


def test_a_backup_withholds_its_prepare_for_a_timestamp_too_far_in_the_past() -> None:
    # Block time = max(proposed, previous): a primary stamping the past (time 0, a frozen
    # clock) would hold block time back until every transaction commits as expiry_too_far.
    group = Group()
    r = group.replicas[ME]
    skew = group.params.timestamp_skew_ms
    for seq, proposed_ms in ((1, WALL + group.mono_ms - skew - 1), (2, 0)):
        r.receive(0, group.preprepare(seq, group.txs[seq : seq + 1], proposed_ms=proposed_ms))
    ready = group.take(ME)
    assert r.rejected["timestamp_skew"] == 2
    assert ready.messages == [] and not r.evidence  # withheld, and not evidence
    assert r.status()["waiting_for"] == "prepares for seq 1: 0 of 2 (ours withheld: timestamp skew)"


def test_a_primary_stamping_time_zero_gets_no_prepares_and_is_replaced() -> None:
    group = Group()
    primary = group.replicas[0]
    primary.tick(group.mono_ms, 0)  # its clock says 1970
    primary.propose(group.txs[0])
    group.pump()
    assert all(group.replicas[i].rejected["timestamp_skew"] == 1 for i in (1, 2, 3))
    assert all(group.replicas[i].last_executed == 0 for i in range(4))
    # Nothing executes within the request timeout: the backups move to the next view.
    group.tick_all(group.params.request_timeout_ms + 1)
    assert all(group.replicas[i].view == 1 for i in (1, 2, 3))


def test_a_timestamp_within_the_skew_is_prepared() -> None:
    group = Group()
    r = group.replicas[ME]
    skew = group.params.timestamp_skew_ms
    r.receive(0, group.preprepare(1, group.txs[:1], proposed_ms=WALL + group.mono_ms - skew))
    r.receive(0, group.preprepare(2, group.txs[1:2], proposed_ms=WALL + group.mono_ms + skew))
    assert r.rejected["timestamp_skew"] == 0 and len(group.take(ME).messages) == 2


def test_a_backup_whose_clock_is_far_off_says_so_in_status() -> None:
    group = Group(params=replace(PARAMS, window=16, checkpoint_interval=8))
    r = group.replicas[ME]
    ahead_ms = 600_000
    group.tick_all(0)
    r.tick(group.mono_ms, WALL + group.mono_ms + ahead_ms)
    before = r.status()["clock"]
    assert before["offset_ms"] is None and not before["disagrees"]
    for seq in range(1, 7):
        group.mono_ms += 10
        r.tick(group.mono_ms, WALL + group.mono_ms + ahead_ms)
        drive(group, ME, group.preprepare(seq, group.txs[seq : seq + 1]))
    clock = r.status()["clock"]
    assert r.last_executed == 6 and r.rejected["timestamp_skew"] == 6
    assert clock["offset_ms"] == ahead_ms and clock["samples"] == 6
    assert clock["disagrees"] and clock["limit_ms"] == 2 * group.params.timestamp_skew_ms


def test_a_primary_stamping_the_edge_of_the_skew_cannot_make_a_backup_doubt_its_clock() -> None:
    # The primary lies within what the other backups accept (their clocks are 0.9 skew ahead
    # of ours, theirs + 0.9 skew is its stamp): we withhold every PREPARE, yet our clock is
    # less than a skew from theirs, and only a clock more than a skew from every clock that
    # accepted a batch is called wrong.
    group = Group(params=replace(PARAMS, window=16, checkpoint_interval=8))
    r = group.replicas[ME]
    skew = group.params.timestamp_skew_ms
    lag_ms = skew * 9 // 10
    for seq in range(1, 9):
        group.mono_ms += 10
        r.tick(group.mono_ms, WALL + group.mono_ms - lag_ms)
        stamp = WALL + group.mono_ms + skew * 9 // 10
        drive(group, ME, group.preprepare(seq, group.txs[seq : seq + 1], proposed_ms=stamp))
    clock = r.status()["clock"]
    assert r.rejected["timestamp_skew"] == 8
    assert clock["offset_ms"] == -lag_ms - skew * 9 // 10 and not clock["disagrees"]


def test_a_primary_delaying_its_preprepares_to_one_backup_cannot_make_it_doubt_its_clock() -> None:
    # The offset is measured when the PRE-PREPARE arrives, so the primary, which decides when
    # it sends it, controls it: stamped honestly, sent at once to the others (who prepare and
    # commit the batch) and two skews late to us. Our clock is exact, yet it is called wrong
    # (status, metrics, and a log line telling the operator to fix NTP). The same happens to
    # an honest backup that gets the PRE-PREPAREs of a partition longer than two skews by
    # retransmission once it heals.
    group = Group(params=replace(PARAMS, window=16, checkpoint_interval=8))
    r = group.replicas[ME]
    skew = group.params.timestamp_skew_ms
    for seq in range(1, 9):
        group.mono_ms += 10
        pp = group.preprepare(seq, group.txs[seq : seq + 1])  # stamped with real time
        for s in (2, 3):  # the others got it at once: their PREPAREs reach us at once
            r.receive(s, group.prepare(pp, s))
        group.mono_ms += 2 * skew + 1  # ... and the PRE-PREPARE is held back from us
        r.tick(group.mono_ms, WALL + group.mono_ms)  # our clock: exact
        drive(group, ME, pp)
    clock = r.status()["clock"]
    assert r.last_executed == 8
    assert not clock["disagrees"], clock


def test_a_primary_sending_its_preprepares_to_one_backup_early_cannot_make_it_doubt_its_clock() -> (
    None
):
    # The other way round: stamped ahead and sent to us at once (we withhold our PREPARE), to
    # the others only once their clocks reach the stamp, so they prepare it. Taken on arrival,
    # the offset read our exact clock as far behind. A sample now needs the batch prepared
    # here within an interval of its PRE-PREPARE's arrival (an honest backup's PREPARE among
    # the Q-1 by then), which bounds how early the primary could send it.
    params = replace(PARAMS, window=16, checkpoint_interval=8, request_timeout_ms=40_000)
    group = Group(params=params)
    r = group.replicas[ME]
    early_ms = 3 * r.retransmit_ms // 2  # past the interval, inside the view-change timeout
    for seq in range(1, 9):
        group.mono_ms += 10
        r.tick(group.mono_ms, WALL + group.mono_ms)  # our clock: exact
        pp = group.preprepare(
            seq, group.txs[seq : seq + 1], proposed_ms=WALL + group.mono_ms + early_ms
        )
        r.receive(0, pp)
        group.mono_ms += early_ms  # the others get it now, and prepare it
        r.tick(group.mono_ms, WALL + group.mono_ms)
        drive(group, ME, pp)
    clock = r.status()["clock"]
    assert r.last_executed == 8 and r.rejected["timestamp_skew"] == 8
    assert not clock["disagrees"], clock


def test_messages_above_the_window_wait_in_a_bounded_per_sender_buffer() -> None:
    group = Group()
    r = group.replicas[ME]
    high = r.high_watermark
    cap = 3 * group.params.window
    for k in range(cap + 5):
        r.receive(
            2, Prepare.create(group.signers[2], group.chain_id, 0, high + 1, bytes([k]) * 32, 2)
        )
    r.receive(3, Prepare.create(group.signers[3], group.chain_id, 0, high + 1, b"d" * 32, 3))
    assert r.rejected["buffer_full"] == 5
    assert r.status()["buffered_messages"] == cap + 1
    assert r.status()["log_slots"] == 0


def test_messages_for_a_higher_view_are_counted_and_kept_bounded_for_view_change() -> None:
    group = Group()
    r = group.replicas[ME]
    r.receive(2, prepare_from(2, view=5)(group)[1])
    assert r.rejected["wrong_view"] == 1 and r.status()["buffered_messages"] == 1


def test_peer_input_never_raises() -> None:
    group = Group()
    r = group.replicas[ME]
    pp = group.preprepare(1, group.txs[:2])
    frame = encode(pp)
    for i in range(0, len(frame), 7):
        for flip in (1, 0x80):
            mutated = bytearray(frame)
            mutated[i] ^= flip
            r.receive(0, bytes(mutated))
            r.receive(2, bytes(mutated))
    for cut in range(len(frame)):
        r.receive(0, frame[:cut])
    group.tick_all(RETRANSMIT_MS)
    r.check_invariants()
    assert r.rejected["malformed"] > 0


# --- keys never admitted: ledger spam ----------------------------------------------------

STRANGER = KeyPair.from_seed(b"never-admitted".ljust(32, b"\x00"))


def admitting(group: Group, i: int, known: set[bytes]) -> PbftReplica:
    """Member i, told by its 'shell' which keys its executed state ever admitted (`known`)."""
    r = PbftReplica(
        PbftConfig.from_genesis(group.genesis, i),
        group.signers[i],
        group.verifier,
        tx_ok=group.tx_ok,
        recovered=RecoveredState(0, genesis_block(group.genesis).hash, None, []),
        ever_admitted=lambda tx: tx.client_key in known,
    )
    r._probes_left = 0
    r.tick(group.mono_ms, WALL + group.mono_ms)
    r.take_ready()
    group.replicas[i] = r
    return r


def spam(group: Group) -> Transaction:
    return Transaction.create(STRANGER, group.chain_id, b"spam", WALL + 60_000, [Put(b"k", b"v")])


def test_a_backup_withholds_its_prepare_for_a_key_never_admitted() -> None:
    """Backups agreed to batches carrying transactions of keys never admitted, which then
    committed as permanent `unknown_client` receipts (ledger spam). A backup withholds its
    PREPARE while a key of the batch was never admitted in the state it executed: counted,
    not evidence (a lagging backup may not know an admission yet), so the primary is not
    replaced for it; if the others prepare the batch, this backup commits with them."""
    group = Group()
    r = admitting(group, ME, {group.txs[0].client_key})
    pp = group.preprepare(1, (group.txs[0], spam(group)))
    r.receive(0, pp)
    ready = r.take_ready()
    assert r.rejected["never_admitted"] == 1
    assert ready.messages == [] and not r.evidence and r.view == 0 and r.active
    assert r.status()["in_flight"] == 1  # the PRE-PREPARE itself is accepted
    assert r.status()["waiting_for"] == (
        "prepares for seq 1: 0 of 2 (ours withheld: a client key never admitted here)"
    )
    for sender in (2, 3):
        r.receive(sender, group.prepare(pp, sender))
    assert frames(r.take_ready()) == [encode(group.commit(pp, ME))]


def test_a_lagging_backup_prepares_once_it_executes_the_admission() -> None:
    """The set of keys ever admitted only grows: a backup that withheld its PREPARE because
    it had not executed the admitting block yet sends it once it has."""
    group = Group()
    known = {group.txs[0].client_key}
    r = admitting(group, ME, known)
    pp = group.preprepare(2, (spam(group),))
    r.receive(0, pp)
    assert r.rejected["never_admitted"] == 1 and not frames(r.take_ready())
    known.add(STRANGER.public)  # what executing block 1 (an admission) does to the state
    drive(group, ME, group.preprepare(1, group.txs[:1]))  # ... and it executes
    assert encode(group.prepare(pp, ME)) in frames(r.take_ready())


def test_a_backup_restarted_while_waiting_for_an_admission_still_prepares_once_it_executes_it() -> (
    None
):
    """The wait for the admitting block was in memory only: restarted, the backup reloaded the
    PRE-PREPARE without its PREPARE and never sent one."""
    group = Group()
    known = {group.txs[0].client_key}
    r = admitting(group, ME, known)
    disk = Disk(group)
    pp = group.preprepare(2, (spam(group),))
    r.receive(0, pp)
    disk.write(r.take_ready())
    assert r.rejected["never_admitted"] == 1
    r = PbftReplica(
        PbftConfig.from_genesis(group.genesis, ME),
        group.signers[ME],
        group.verifier,
        tx_ok=group.tx_ok,
        recovered=disk.recovered(),
        ever_admitted=lambda tx: tx.client_key in known,
    )
    r._probes_left = 0
    r.tick(group.mono_ms, WALL + group.mono_ms)
    group.replicas[ME] = r
    r.take_ready()
    known.add(STRANGER.public)  # executing block 1 (an admission) ...
    drive(group, ME, group.preprepare(1, group.txs[:1]))  # ... which it now does
    assert encode(group.prepare(pp, ME)) in frames(r.take_ready())


def test_an_honest_primary_batches_only_keys_ever_admitted() -> None:
    group = Group()
    primary = admitting(group, 0, {group.txs[0].client_key})
    primary.propose_all([spam(group), group.txs[0]])
    pps = [m for m in map(lambda f: decode(f, PARAMS), frames(primary.take_ready()))]
    assert [pp.txs for pp in pps if isinstance(pp, PrePrepare)] == [group.txs[:1]]
    assert primary.rejected["tx_never_admitted"] == 1


def test_a_reissued_batch_is_prepared_whatever_its_keys() -> None:
    """A NEW-VIEW's re-issued batch was prepared by Q members in an earlier view, f+1 of them
    honest: its keys were admitted in an honest state. Some members may have committed it, and
    withholding our PREPARE there could only stall the view: exempt, like the skew check."""
    group = Group()
    r = admitting(group, 3, {group.txs[0].client_key})
    pp = group.preprepare(1, (spam(group),))
    r.receive(0, pp)
    assert r.rejected["never_admitted"] == 1
    r.take_ready()
    r.receive(1, new_view_reissuing(group, pp))
    assert r.view == 1 and r.active
    sent = [decode(f, PARAMS) for f in frames(r.take_ready())]
    assert [(p.view, p.seq) for p in sent if isinstance(p, Prepare)] == [(1, 1)]
    assert r.rejected["never_admitted"] == 1


def test_a_prepare_withheld_for_a_key_in_an_earlier_view_never_releases_a_skewed_one() -> None:
    """The seqs whose PREPARE waits for an admission are remembered by number only. One left
    from an earlier view must not release our PREPARE for whatever the new view's primary
    puts at that number: a fresh PRE-PREPARE we withheld for its timestamp stays withheld
    when a block executes (else one stale entry lets a primary's skewed time through)."""
    group = Group()
    skew = group.params.timestamp_skew_ms
    r = admitting(group, 3, {group.txs[0].client_key, group.txs[1].client_key})
    pp1 = group.preprepare(1, group.txs[:1])
    r.receive(0, pp1)
    r.receive(0, group.preprepare(2, (spam(group),)))  # withheld: a key never admitted
    assert r.rejected["never_admitted"] == 1
    r.take_ready()
    nv = new_view_reissuing(group, pp1)  # view 1 re-issues seq 1 only
    r.receive(1, nv)
    assert r.view == 1 and r.active
    r.take_ready()
    # View 1's primary puts a fresh batch at seq 2, stamped beyond our skew: withheld.
    late = group.preprepare(
        2, group.txs[1:2], view=1, sender=1, proposed_ms=WALL + group.mono_ms + 10 * skew
    )
    r.receive(1, late)
    assert r.rejected["timestamp_skew"] == 1 and not frames(r.take_ready())
    # Seq 1 commits in view 1 and executes here.
    again = decode(encode(nv), PARAMS).preprepares[0]  # type: ignore[union-attr]
    for s in (0, 2):
        r.receive(s, group.prepare(again, s))
    for s in (0, 1, 2):
        r.receive(s, group.commit(again, s))
    ready = r.take_ready()
    assert [b.seq for b in ready.committed] == [1]
    r.executed(1, block_hash(1))
    assert encode(group.prepare(late, 3)) not in frames(r.take_ready())


def test_a_backup_restarted_holding_a_skewed_batch_of_a_new_key_never_prepares_it() -> None:
    """The restart re-check of withheld PREPAREs looks at the keys only: a PRE-PREPARE we
    withheld for its timestamp (which also carried a key not yet admitted) is prepared once
    the key is admitted, its time no longer checked."""
    group = Group()
    skew = group.params.timestamp_skew_ms
    known = {group.txs[0].client_key}
    r = admitting(group, ME, known)
    disk = Disk(group)
    pp = group.preprepare(2, (spam(group),), proposed_ms=WALL + group.mono_ms + 10 * skew)
    r.receive(0, pp)
    disk.write(r.take_ready())
    assert r.rejected["timestamp_skew"] == 1
    r = PbftReplica(
        PbftConfig.from_genesis(group.genesis, ME),
        group.signers[ME],
        group.verifier,
        tx_ok=group.tx_ok,
        recovered=disk.recovered(),
        ever_admitted=lambda tx: tx.client_key in known,
    )
    r._probes_left = 0
    r.tick(group.mono_ms, WALL + group.mono_ms)
    group.replicas[ME] = r
    r.take_ready()
    known.add(STRANGER.public)  # executing block 1 (an admission) ...
    drive(group, ME, group.preprepare(1, group.txs[:1]))  # ... which it now does
    assert encode(group.prepare(pp, ME)) not in frames(r.take_ready())
