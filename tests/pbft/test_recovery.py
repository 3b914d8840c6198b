"""A restarted replica reloads its own votes and never contradicts them (Castro & Liskov,
TOCS'02 §4.2 and §6; DESIGN: "durable before the message that depends on it leaves")."""

from __future__ import annotations

import pytest
from pbft_harness import PARAMS, WALL, Group, block_hash, drive, frames

from consortium.crypto.codec import pack
from consortium.ledger.block import genesis_block
from consortium.ledger.certificates import CheckpointCertificate
from consortium.pbft import records
from consortium.pbft.messages import PrePrepare, decode, encode
from consortium.pbft.records import RecoveryError
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
    assert batch.certificate.verify(group.genesis, group.verifier) is None


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
