"""Attacks on the view change found in review: a Byzantine new primary that strips prepared
proofs from honest VIEW-CHANGEs it puts into its NEW-VIEW, a member that signs garbage NEW-VIEWs
for views far ahead, and a relay that swaps the contents of an honest NEW-VIEW."""

from __future__ import annotations

from dataclasses import replace

from pbft_harness import RETRANSMIT_MS, Group, drive, frames
from test_recovery import Disk

from consortium.pbft.messages import (
    Commit,
    NewView,
    Prepare,
    PreparedProof,
    PrePrepare,
    ViewChange,
    decode,
    encode,
)
from consortium.pbft.viewchange import NewViewPlan


def view_change_frame(group: Group, i: int) -> bytes:
    (frame,) = [f for f in frames(group.take(i)) if isinstance(decode(f, group.params), ViewChange)]
    return frame


def stripped(group: Group, frame: bytes) -> bytes:
    """An honest VIEW-CHANGE frame with its prepared proofs removed: body and signature as the
    sender made them, so only the attached proofs disagree with the signed digest."""
    vc = decode(frame, group.params)
    assert isinstance(vc, ViewChange) and vc.prepared
    return encode(replace(vc, prepared=()))


def test_a_new_view_with_stripped_proofs_is_refused_even_when_the_honest_frames_were_checked() -> (
    None
):
    group = Group()
    victim = group.replicas[3]
    pp = group.preprepare(1, group.txs[0:1])
    proof = PreparedProof(preprepare=pp, prepares=(group.prepare(pp, 1), group.prepare(pp, 2)))
    proofs = (proof.without_batch(),)
    # Honest VIEW-CHANGEs for view 1 from n1 and n3, both proving seq 1 prepared: the victim
    # checks both (and so caches them) and moves to view 1.
    vc0 = ViewChange.create(group.signers[0], group.chain_id, 1, None, proofs, 0)
    vc2 = ViewChange.create(group.signers[2], group.chain_id, 1, None, proofs, 2)
    victim.receive(0, encode(vc0))
    group.tick_all(RETRANSMIT_MS)
    victim.receive(2, encode(vc2))
    assert victim.view == 1 and not victim.active
    # The Byzantine primary of view 1 (n2) re-uses those bodies and signatures with the proofs
    # stripped, so its NEW-VIEW re-issues nothing at seq 1.
    vc1 = ViewChange.create(group.signers[1], group.chain_id, 1, None, (), 1)
    frames_ = (encode(vc1), *(encode(replace(vc, prepared=())) for vc in (vc0, vc2)))
    nv = NewView.create(group.signers[1], group.chain_id, 1, frames_, (), 1)
    victim.receive(1, encode(nv))
    assert victim.rejected["bad_view_change"] == 1
    assert victim.rejected["bad_new_view"] == 1
    assert victim.evidence[-1].reason == "bad_new_view"
    assert victim.view == 2 and not victim.active  # the primary of view 1 is replaced


def test_a_byzantine_new_primary_cannot_fork_a_committed_seq_by_stripping_proofs() -> None:
    """The reviewer's end-to-end divergence: n1 and n3 commit A at seq 1, n4 never hears of it;
    Byzantine n2, primary of view 1, strips A's prepared proof from n3's VIEW-CHANGE and then
    proposes B at seq 1 in view 1. No honest replica may commit B (nor vote for it), and view 2
    re-issues A at seq 1 so n4 commits A there."""
    group = Group()
    for i in range(4):
        group.take(i)
    group.replicas[0].propose(group.txs[0])
    (a,) = [
        m
        for m in (decode(f, group.params) for f in frames(group.take(0)))
        if isinstance(m, PrePrepare)
    ]
    for i in (0, 2):
        replica = group.replicas[i]
        if i != 0:
            replica.receive(0, a)
        for s in (1, 2):
            if s != i:
                replica.receive(s, group.prepare(a, s))
        for s in (0, 1, 2):
            if s != i:
                replica.receive(s, group.commit(a, s))
        for batch in replica.take_ready().committed:
            replica.executed(batch.seq, b"\x01" * 32)
        assert replica.last_executed == 1
    # n1 and n3 time out (Byzantine n2 stalls view 0): their VIEW-CHANGEs prove A prepared.
    for i in (0, 2):
        group.replicas[i]._start_view_change(1, "test")
    vcf = {i: view_change_frame(group, i) for i in (0, 2)}
    for dst in (0, 2, 3):
        for src in (0, 2):
            if src != dst:
                group.tick_all(RETRANSMIT_MS)
                group.replicas[dst].receive(src, vcf[src])
    vcf[3] = view_change_frame(group, 3)  # n4 joined view 1 on f+1 VIEW-CHANGEs
    group.tick_all(RETRANSMIT_MS)
    group.replicas[0].receive(3, vcf[3])
    group.take(0)
    vc1 = ViewChange.create(group.signers[1], group.chain_id, 1, None, (), 1)
    nv = NewView.create(
        group.signers[1],
        group.chain_id,
        1,
        (encode(vc1), stripped(group, vcf[2]), vcf[3]),
        (),
        1,
    )
    for dst in (0, 2, 3):
        group.replicas[dst].receive(1, encode(nv))
        assert group.replicas[dst].rejected["bad_new_view"] == 1
        assert group.replicas[dst].view == 2 and not group.replicas[dst].active
    # n2 pushes B at seq 1 in view 1 regardless, with its own PREPARE-free COMMIT.
    b = group.preprepare(1, group.txs[5:6], view=1, sender=1)
    for dst in (0, 2, 3):
        group.replicas[dst].receive(1, b)
        group.replicas[dst].receive(1, group.commit(b, 1))
    # n1, n3 and n4 carry on among themselves (n2 hears nothing more).
    seen = group.pump(to=(0, 2, 3))
    group.tick_all(RETRANSMIT_MS)
    for i, readies in enumerate(group.pump(to=(0, 2, 3))):
        seen[i] += readies
    for i in (0, 2, 3):
        for ready in seen[i]:
            assert all(not (c.seq == 1 and c.digest == b.digest) for c in ready.committed)
            for f in frames(ready):
                msg = decode(f, group.params)
                if isinstance(msg, Prepare | Commit):
                    assert msg.digest != b.digest, (i, msg)
    # View 2 (primary n3) re-issued A at seq 1: n4 committed A there, like n1 and n3 did.
    assert all(group.replicas[i].view == 2 and group.replicas[i].active for i in (0, 2, 3))
    assert [c.digest for ready in seen[3] for c in ready.committed if c.seq == 1] == [a.digest]


def test_a_replica_never_votes_for_another_digest_at_a_seq_it_committed() -> None:
    """The second guard, on its own: even a NEW-VIEW that (wrongly) re-issued nothing at a seq
    this replica committed cannot make it PREPARE or COMMIT another batch there."""
    group = Group()
    r = group.replicas[2]
    group.take(2)
    a = group.preprepare(1, group.txs[0:1])
    drive(group, 2, a)
    assert r.last_executed == 1
    r._start_view_change(1, "test")
    group.take(2)
    # Enter view 1 as if a NEW-VIEW with no re-issued batch had been accepted.
    r._enter_view(b"", NewViewPlan(0, None, ()), ())
    assert r.active and r.view == 1
    group.take(2)
    b = group.preprepare(1, group.txs[5:6], view=1, sender=1)
    r.receive(1, b)
    for s in (0, 3):
        r.receive(s, group.prepare(b, s))
    for s in (0, 1, 3):
        r.receive(s, group.commit(b, s))
    ready = group.take(2)
    assert r.rejected["conflicts_committed"] >= 1
    assert not ready.committed
    votes = [decode(f, group.params) for f in frames(ready)]
    assert not [m for m in votes if isinstance(m, Prepare | Commit) and m.digest == b.digest]


def test_a_fresh_preprepare_at_or_below_the_new_views_max_s_is_refused() -> None:
    group = Group()
    r = group.replicas[2]
    group.take(2)
    r._start_view_change(1, "test")
    group.take(2)
    # A NEW-VIEW fixed seq 1 and 2 (re-issued and then, say, lost on a restart).
    r._enter_view(
        b"",
        NewViewPlan(0, None, ()),
        (),
    )
    r._reissued_max = 2
    b = group.preprepare(2, group.txs[5:6], view=1, sender=1)
    r.receive(1, b)
    assert r.rejected["not_reissued"] == 1
    assert not [f for f in frames(group.take(2)) if isinstance(decode(f, group.params), Prepare)]
    # Above max_s the primary proposes afresh as usual.
    r.receive(1, group.preprepare(3, group.txs[6:7], view=1, sender=1))
    assert [f for f in frames(group.take(2)) if isinstance(decode(f, group.params), Prepare)]


def test_a_bad_new_view_for_a_far_higher_view_is_dropped_not_followed() -> None:
    group = Group()
    r = group.replicas[2]
    group.take(2)
    # n2 is primary of view 1001 (1001 % 4 == 1) and signs a NEW-VIEW with nothing in it.
    nv = NewView.create(group.signers[1], group.chain_id, 1001, (), (), 1)
    r.receive(1, encode(nv))
    assert r.rejected["bad_new_view"] == 1
    assert r.view == 0 and r.active and r.view_changes == 0
    assert not r.evidence
    # Checking NEW-VIEWs for views we are not waiting for is rate-limited per signer.
    r.receive(1, encode(NewView.create(group.signers[1], group.chain_id, 1005, (), (), 1)))
    assert r.rejected["rate_limited"] == 1 and r.rejected["bad_new_view"] == 1
    group.tick_all(RETRANSMIT_MS)
    # Nor while moving to another view: only the primary of that very view is blamed.
    r._start_view_change(1, "test")
    r.receive(1, encode(NewView.create(group.signers[1], group.chain_id, 5, (), (), 1)))
    assert r.rejected["bad_new_view"] == 2
    assert r.view == 1 and not r.active and r.view_changes == 1


def test_a_new_view_tampered_by_a_relay_is_dropped_without_blaming_the_primary() -> None:
    group = Group()
    r = group.replicas[2]
    group.take(2)
    vcs = [ViewChange.create(group.signers[i], group.chain_id, 1, None, (), i) for i in (0, 1, 3)]
    nv = NewView.create(group.signers[1], group.chain_id, 1, tuple(encode(v) for v in vcs), (), 1)
    r._start_view_change(1, "test")
    # n4 relays n2's honest NEW-VIEW with the VIEW-CHANGEs removed, or one swapped for junk.
    for tampered in (
        replace(nv, view_change_frames=()),
        replace(nv, view_change_frames=(b"\x93junk", *nv.view_change_frames[1:])),
    ):
        r.receive(3, encode(tampered))
    assert r.rejected["malformed"] == 2
    assert r.rejected["bad_new_view"] == 0 and not r.evidence
    assert r.view == 1 and not r.active and r.view_changes == 1
    # The genuine one, relayed intact, still brings it into view 1.
    r.receive(3, encode(nv))
    assert r.view == 1 and r.active


def test_a_new_view_whose_primary_signed_an_undecodable_frame_is_blamed_on_it() -> None:
    group = Group()
    r = group.replicas[2]
    group.take(2)
    vcs = [ViewChange.create(group.signers[i], group.chain_id, 1, None, (), i) for i in (0, 1)]
    frames_ = (*(encode(v) for v in vcs), b"\x93junk")
    nv = NewView.create(group.signers[1], group.chain_id, 1, frames_, (), 1)
    r._start_view_change(1, "test")
    r.receive(3, encode(nv))  # relayed intact: the digest n2 signed covers the junk
    assert r.rejected["bad_new_view"] == 1 and r.evidence[-1].reason == "bad_new_view"
    assert r.view == 2 and not r.active


def test_a_view_change_with_bad_proofs_uses_up_the_senders_check_budget() -> None:
    group = Group()
    r = group.replicas[2]
    group.take(2)
    pp = group.preprepare(1, group.txs[0:1])
    bogus = PreparedProof(preprepare=pp, prepares=()).without_batch()  # Q-1 prepares missing
    bad = ViewChange.create(group.signers[0], group.chain_id, 1, None, (bogus,), 0)
    r.receive(0, encode(bad))
    assert r.rejected["bad_view_change"] == 1
    # The sender signed it: its next VIEW-CHANGE waits half an interval, like a good one.
    good = ViewChange.create(group.signers[0], group.chain_id, 2, None, (), 0)
    r.receive(0, encode(good))
    assert r.rejected["view_change_too_often"] == 1
    group.tick_all(RETRANSMIT_MS // 2)
    r.receive(0, encode(good))
    assert r.rejected["view_change_too_often"] == 1 and r.rejected["bad_view_change"] == 1


def test_regression_a_backup_restarted_before_a_reissued_batch_arrived_still_prepares_it() -> None:
    """Found in review: re-issued slots waiting for their batch were in memory only, so after a
    restart the primary's retransmission was refused as not re-issued and the seq stalled."""
    group = Group()
    a = group.preprepare(1, group.txs[0:1])
    proof = PreparedProof(
        preprepare=a, prepares=(group.prepare(a, 1), group.prepare(a, 2))
    ).without_batch()
    vcs = [
        ViewChange.create(group.signers[i], group.chain_id, 1, None, (proof,) if i else (), i)
        for i in (0, 1, 2)
    ]
    r = group.replicas[3]
    disk = Disk(group)
    r._start_view_change(1, "test")
    disk.write(group.take(3))
    pp1 = PrePrepare.create(
        group.signers[1], group.chain_id, 1, 1, a.proposed_ms, 1, a.txs, digest=a.digest
    )
    nv = NewView.create(
        group.signers[1],
        group.chain_id,
        1,
        tuple(encode(v) for v in vcs),
        (replace(pp1, txs=()),),
        1,
    )
    r.receive(1, encode(nv))
    assert r.view == 1 and r.active
    disk.write(group.take(3))
    # crash before the batch arrives; restart
    r2 = group.make(3, disk.recovered())
    group.replicas[3] = r2
    group.tick_all(RETRANSMIT_MS)
    r2.take_ready()
    # the primary retransmits its re-issued PRE-PREPARE with the batch
    r2.receive(1, encode(pp1))
    out = [decode(f, group.params) for f in frames(r2.take_ready())]
    assert "not_reissued" not in r2.rejected
    assert any(isinstance(m, Prepare) for m in out), (
        "restarted backup never PREPAREs the re-issued seq"
    )


def test_a_new_view_repeating_one_view_change_is_refused_before_any_proof_is_checked() -> None:
    """Review: cheap checks (count, distinct senders, the view) come before signatures and
    proofs, so a NEW-VIEW stuffed with copies costs its receiver one look, not n checks."""
    group = Group()
    r = group.replicas[2]
    group.take(2)
    vc = ViewChange.create(group.signers[0], group.chain_id, 1, None, (), 0)
    r._start_view_change(1, "test")
    stuffed = NewView.create(group.signers[1], group.chain_id, 1, (encode(vc),) * 3, (), 1)
    r.receive(1, encode(stuffed))
    assert r.rejected["bad_new_view"] == 1
    assert r.view == 2 and not r.active  # the primary of view 1 signed it: it is replaced
    assert [e.reason for e in r.evidence] == ["bad_new_view"]
