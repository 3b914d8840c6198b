"""Recovery from message loss by retransmission (pbft/retransmit.py; the paper leaves loss to
retransmission, Castro & Liskov TOCS'02 §5.2). A replica only re-sends its own signed frames,
to the peers whose own messages do not show they have them."""

from __future__ import annotations

from pbft_harness import RETRANSMIT_MS, Group, drive, frames

from consortium.pbft.messages import PrePrepare, decode, encode
from consortium.pbft.replica import Outbound


def test_an_uncommitted_vote_is_re_sent_after_retransmit_ms_then_backs_off() -> None:
    group = Group()
    backup = group.replicas[1]
    pp = group.preprepare(1, group.txs[:1])
    backup.receive(0, pp)
    prepare = encode(group.prepare(pp, 1))
    assert frames(group.take(1)) == [prepare]  # ... and lost
    group.tick_all(RETRANSMIT_MS - 1)
    assert not group.take(1)
    group.tick_all(1)
    assert group.take(1).messages == [Outbound(p, prepare) for p in (0, 2, 3)]
    group.tick_all(2 * RETRANSMIT_MS - 1)
    assert not group.take(1)
    group.tick_all(1)
    assert len(group.take(1).messages) == 3


def test_a_replica_that_lost_the_preprepare_gets_it_after_the_others_committed() -> None:
    group = Group()
    group.replicas[0].propose(group.txs[0])
    first = group.take(0)
    pp = decode(frames(first)[0], group.params)
    assert isinstance(pp, PrePrepare)
    group.deliver(0, first.messages, to=[1, 2])
    group.pump(to=[0, 1, 2])
    assert [r.last_executed for r in group.replicas] == [1, 1, 1, 0]
    group.tick_all(RETRANSMIT_MS)
    # Only member 3 showed nothing for seq 1; the others sent COMMITs and are left alone.
    resent = [group.take(i).messages for i in range(3)]
    assert resent[0] == [Outbound(3, encode(pp)), Outbound(3, encode(group.commit(pp, 0)))]
    for i in (1, 2):
        assert resent[i] == [
            Outbound(3, encode(group.prepare(pp, i))),
            Outbound(3, encode(group.commit(pp, i))),
        ]
    for i in range(3):
        group.deliver(i, resent[i])
    assert [b.seq for b in group.take(3).committed] == [1]


def test_nothing_is_re_sent_once_every_peer_showed_it_has_what_it_needs() -> None:
    group = Group()
    for tx in group.txs[:2]:
        group.replicas[0].propose(tx)
        group.tick_all(group.params.batch_delay_ms)
        group.pump()
    assert all(r.low_watermark == 2 for r in group.replicas)
    for _ in range(20):
        group.tick_all(RETRANSMIT_MS)
        assert not any(group.take(i) for i in range(4))


def test_an_unstable_checkpoint_is_re_broadcast_until_it_is_stable() -> None:
    group = Group()
    r = group.replicas[1]
    for seq in (1, 2):
        drive(group, 1, group.preprepare(seq, group.txs[seq : seq + 1]))
    own = encode(group.checkpoint(2, 1))
    assert own in frames(group.take(1))
    group.tick_all(RETRANSMIT_MS)
    assert group.take(1).messages == [Outbound(None, own)]
    for s in (2, 3):
        r.receive(s, group.checkpoint(2, s))
    group.take(1)
    for _ in range(10):
        group.tick_all(RETRANSMIT_MS)
        assert not group.take(1)


def test_a_vote_for_a_later_seq_reveals_a_gap_that_is_filled_at_once() -> None:
    group = Group()
    primary = group.replicas[0]
    primary.propose(group.txs[0])
    first = group.take(0)
    group.deliver(0, first.messages, to=[1, 2])  # member 3 loses PRE-PREPARE 1
    group.tick_all(RETRANSMIT_MS // 2)
    primary.propose(group.txs[1])
    group.tick_all(group.params.batch_delay_ms)
    (pp2,) = [decode(f, group.params) for f in frames(group.take(0))]
    assert isinstance(pp2, PrePrepare) and pp2.seq == 2
    primary.receive(3, group.prepare(pp2, 3))  # member 3 votes on 2 but never on 1
    assert Outbound(3, frames(first)[0]) in group.take(0).messages


def test_a_repeated_vote_for_a_committed_slot_is_answered_with_what_the_sender_lacks() -> None:
    group = Group()
    r = group.replicas[1]
    pp = group.preprepare(1, group.txs[:1])
    drive(group, 1, pp)
    group.tick_all(RETRANSMIT_MS // 2)
    group.take(1)
    r.receive(3, group.commit(pp, 3))  # member 3 re-sends: it is not committed there
    own_commit = encode(group.commit(pp, 1))
    assert group.take(1).messages == [Outbound(3, own_commit)]  # it is prepared: COMMIT only
    r.receive(3, group.commit(pp, 3))
    assert not group.take(1)  # at most once per half interval


def test_a_repeated_stale_checkpoint_is_answered_with_our_votes() -> None:
    group = Group()
    r = group.replicas[1]
    for seq in (1, 2):
        drive(group, 1, group.preprepare(seq, group.txs[seq : seq + 1]))
    for s in (2, 3):
        r.receive(s, group.checkpoint(2, s))
    group.take(1)
    r.receive(0, group.checkpoint(2, 0))  # a first copy is merely late
    group.tick_all(0)
    assert not group.take(1)
    r.receive(0, group.checkpoint(2, 0))  # a repeat: member 0 lacks votes for it
    group.tick_all(0)
    assert group.take(1).messages == [Outbound(0, encode(group.checkpoint(2, 1)))]
    r.receive(0, group.checkpoint(2, 0))
    group.tick_all(0)
    assert not group.take(1)  # answering every copy would let two replicas ping-pong
