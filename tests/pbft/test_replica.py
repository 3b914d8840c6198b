"""The PBFT normal case, one test per claim of Castro & Liskov (OSDI'99 §4.2-4.3, §4.6)."""

from __future__ import annotations

import contextlib
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consortium.crypto.codec import WireFormatError
from consortium.ledger.block import batch_digest, genesis_block
from consortium.ledger.genesis import Params
from consortium.ledger.tx import Put, Transaction
from consortium.node.sim.cluster import HmacSigner, HmacVerifier, member_keys, sim_genesis, workload
from consortium.pbft import messages
from consortium.pbft.messages import Checkpoint, Commit, Prepare, PrePrepare, decode, encode
from consortium.pbft.replica import Outbound, PbftConfig, PbftReplica, Ready, RecoveredState

PARAMS = Params(batch_txs_max=4, batch_delay_ms=10, checkpoint_interval=2, window=4)
WALL = 1_000_000


class Group:
    """Four replicas wired by hand: the test decides what is delivered."""

    def __init__(self, params: Params = PARAMS, n: int = 4) -> None:
        self.genesis = sim_genesis(n, params)
        self.chain_id = self.genesis.chain_id
        keys = member_keys(n)
        self.signers = [HmacSigner(k.public, k.seed()) for k in keys]
        self.verifier = HmacVerifier({k.public: k.seed() for k in keys})
        self.bad_txs: set[bytes] = set()
        g = genesis_block(self.genesis)
        self.replicas = [
            PbftReplica(
                PbftConfig.from_genesis(self.genesis, i),
                self.signers[i],
                self.verifier,
                tx_ok=lambda tx: tx.id not in self.bad_txs,
                recovered=RecoveredState(0, g.hash, None, []),
            )
            for i in range(n)
        ]
        for r in self.replicas:
            r.tick(1, WALL)
        self.txs = list(workload(self.chain_id, 64))

    def ready(self, i: int) -> Ready:
        return self.replicas[i].take_ready()

    def deliver(self, src: int, outs: list[Outbound], to: list[int] | None = None) -> None:
        for out in outs:
            for dst in range(len(self.replicas)):
                if dst == src or (out.dest is not None and out.dest != dst):
                    continue
                if to is not None and dst not in to:
                    continue
                self.replicas[dst].receive(src, out.frame)

    def pump(self, rounds: int = 10) -> list[list[Ready]]:
        """Deliver everything to everyone until quiet; returns each replica's Readys."""
        seen: list[list[Ready]] = [[] for _ in self.replicas]
        for _ in range(rounds):
            moved = False
            for i in range(len(self.replicas)):
                r = self.ready(i)
                if r:
                    moved = True
                    seen[i].append(r)
                    self.deliver(i, r.messages)
                    for b in r.committed:
                        self.replicas[i].executed(b.seq, bytes([b.seq]) * 32)
            if not moved:
                break
        return seen

    def preprepare(
        self,
        seq: int,
        txs: list[Transaction],
        *,
        view: int = 0,
        sender: int = 0,
        proposed_ms: int = WALL,
        digest: bytes | None = None,
    ) -> PrePrepare:
        return PrePrepare.create(
            self.signers[sender],
            self.chain_id,
            view=view,
            seq=seq,
            digest=digest or batch_digest(proposed_ms, [t.id for t in txs]),
            proposed_ms=proposed_ms,
            sender=sender,
            txs=tuple(txs),
        )


def committed_seqs(readys: list[Ready]) -> list[int]:
    return [b.seq for r in readys for b in r.committed]


@pytest.mark.parametrize("n", range(4, 14))
def test_quorum_is_ceil_n_plus_f_plus_1_over_2_and_any_two_quorums_share_an_honest_member(
    n: int,
) -> None:
    config = PbftConfig(
        chain_id=b"c" * 32,
        member_keys=tuple(bytes([i]) * 32 for i in range(n)),
        me=0,
        params=PARAMS,
    )
    f = (n - 1) // 3
    assert config.f == f
    assert config.quorum == -(-(n + f + 1) // 2)
    assert 2 * config.quorum - n >= f + 1  # intersection holds at least one honest member
    assert config.quorum <= n - f  # a quorum exists with f silent
    if n == 3 * f + 1:
        assert config.quorum == 2 * f + 1


def test_an_idle_primary_proposes_at_once_and_all_replicas_commit_the_same_batch() -> None:
    g = Group()
    g.replicas[0].propose(g.txs[0])
    first = g.ready(0)
    pps = [decode(o.frame, PARAMS) for o in first.messages]
    assert len(pps) == 1 and isinstance(pps[0], PrePrepare) and pps[0].seq == 1
    assert first.records and first.records[0][0].endswith(b"/pp")  # persisted before sent
    g.deliver(0, first.messages)
    seen = g.pump()
    for i in range(4):
        assert committed_seqs(seen[i]) == [1]
    batches = [b for i in range(4) for r in seen[i] for b in r.committed]
    assert len({b.digest for b in batches}) == 1
    assert all(len(b.certificate.votes) == 3 for b in batches)


def test_a_busy_primary_waits_to_fill_a_batch_for_at_most_batch_delay_ms() -> None:
    g = Group()
    p = g.replicas[0]
    p.propose(g.txs[0])  # idle: goes at once as seq 1
    assert len(g.ready(0).messages) == 1
    p.propose(g.txs[1])
    p.propose(g.txs[2])
    assert not g.ready(0).messages  # seq 1 in flight: wait
    p.tick(5, WALL)
    assert not g.ready(0).messages
    p.tick(12, WALL)  # batch_delay_ms passed
    [out] = g.ready(0).messages
    pp = decode(out.frame, PARAMS)
    assert isinstance(pp, PrePrepare) and pp.seq == 2 and len(pp.txs) == 2
    for tx in g.txs[3:7]:  # four more: a full batch goes without waiting
        p.propose(tx)
    [out] = g.ready(0).messages
    pp = decode(out.frame, PARAMS)
    assert isinstance(pp, PrePrepare) and pp.seq == 3 and len(pp.txs) == 4


def test_prepared_needs_quorum_minus_one_prepares_from_distinct_backups() -> None:
    g = Group()
    b = g.replicas[1]
    pp = g.preprepare(1, g.txs[:1])
    b.receive(0, encode(pp))
    r = g.ready(1)
    assert [type(decode(o.frame, PARAMS)) for o in r.messages] == [Prepare]
    prepare2 = Prepare.create(g.signers[2], g.chain_id, view=0, seq=1, digest=pp.digest, sender=2)
    b.receive(2, encode(prepare2))
    b.receive(2, encode(prepare2))  # a duplicate counts once
    assert b.rejected["duplicate"] == 1
    r = g.ready(1)
    # own + n3's prepare = 2 = Q-1: prepared, so it commits.
    assert [type(decode(o.frame, PARAMS)) for o in r.messages] == [Commit]
    assert r.records[0][0].endswith(b"/c")


def test_a_prepare_from_the_primary_does_not_count() -> None:
    g = Group()
    b = g.replicas[1]
    pp = g.preprepare(1, g.txs[:1])
    b.receive(0, encode(pp))
    g.ready(1)
    fake = Prepare.create(g.signers[0], g.chain_id, view=0, seq=1, digest=pp.digest, sender=0)
    b.receive(0, encode(fake))
    assert b.rejected["prepare_from_primary"] == 1
    assert not g.ready(1).messages


def test_invalid_messages_are_dropped_and_counted_by_reason_and_change_nothing() -> None:
    g = Group()
    b = g.replicas[1]
    good = g.preprepare(1, g.txs[:2])
    forged = replace(good, signature=bytes(64))
    cases: list[tuple[str, int, bytes]] = [
        ("malformed", 0, b"\x93garbage"),
        ("bad_signature", 0, encode(forged)),
        ("not_member", 9, encode(good)),
        ("wrong_view", 0, encode(g.preprepare(1, g.txs[:2], view=1))),
        ("not_primary", 2, encode(g.preprepare(1, g.txs[:2], sender=2))),
        ("outside_window", 0, encode(g.preprepare(5, g.txs[:2]))),
        ("digest_mismatch", 0, encode(g.preprepare(1, g.txs[:2], digest=b"\x07" * 32))),
    ]
    wrong_chain_tx = Transaction.create(
        member_keys(1)[0], b"\x05" * 32, b"n", 10**12, [Put(b"a", b"b")]
    )
    cases.append(("wrong_chain", 0, encode(g.preprepare(1, [wrong_chain_tx]))))
    g.bad_txs.add(g.txs[9].id)
    cases.append(("bad_client_signature", 0, encode(g.preprepare(1, [g.txs[9]]))))
    for reason, sender, frame in cases:
        before = b.rejected[reason]
        b.receive(sender, frame)
        assert b.rejected[reason] == before + 1, reason
        assert not g.ready(1), f"{reason} changed something"
    assert b.status()["slots"] == 0


def test_conflicting_preprepares_for_one_view_and_seq_are_kept_as_evidence() -> None:
    g = Group()
    b = g.replicas[1]
    first = g.preprepare(1, g.txs[:1])
    second = g.preprepare(1, g.txs[1:2])
    b.receive(0, encode(first))
    g.ready(1)
    b.receive(0, encode(second))
    assert b.rejected["conflicting_preprepare"] == 1
    assert b.evidence == [(first, second)]
    assert not g.ready(1)


def test_a_backup_withholds_its_prepare_for_a_skewed_timestamp() -> None:
    g = Group()
    b = g.replicas[1]
    pp = g.preprepare(1, g.txs[:1], proposed_ms=WALL + PARAMS.timestamp_skew_ms + 1)
    b.receive(0, encode(pp))
    assert b.rejected["timestamp_skew"] == 1
    assert not g.ready(1).messages
    assert b.evidence == []  # not evidence


def test_batches_execute_in_sequence_order_even_when_commits_complete_out_of_order() -> None:
    g = Group()
    b = g.replicas[1]
    pps = [g.preprepare(seq, [g.txs[seq]]) for seq in (1, 2)]
    for pp in pps:
        b.receive(0, encode(pp))
    g.ready(1)

    def votes(seq: int, digest: bytes) -> None:
        for s in (2, 3):
            b.receive(
                s,
                encode(
                    Prepare.create(
                        g.signers[s], g.chain_id, view=0, seq=seq, digest=digest, sender=s
                    )
                ),
            )
        for s in (0, 2):
            b.receive(
                s,
                encode(
                    Commit.create(
                        g.signers[s], g.chain_id, view=0, seq=seq, digest=digest, sender=s
                    )
                ),
            )

    votes(2, pps[1].digest)
    assert g.ready(1).committed == []  # seq 2 committed locally but seq 1 is not
    votes(1, pps[0].digest)
    assert [c.seq for c in g.ready(1).committed] == [1, 2]


def test_the_primary_never_proposes_beyond_the_window() -> None:
    g = Group()
    p = g.replicas[0]
    for i, tx in enumerate(g.txs[:40]):
        p.propose(tx)
        p.tick(20 * (i + 1), WALL)
    seqs = [
        pp.seq for o in g.ready(0).messages if isinstance(pp := decode(o.frame, PARAMS), PrePrepare)
    ]
    assert sorted(set(seqs)) == [1, 2, 3, 4]  # window L = 4 above h = 0 (plus re-sends)
    assert p.status()["pending_txs"] > 0


def test_a_checkpoint_becomes_stable_at_a_quorum_moves_h_and_collects_garbage() -> None:
    g = Group()
    for tx in g.txs[:2]:
        g.replicas[0].propose(tx)
        g.replicas[0].tick(100, WALL)
        g.pump()
    for r in g.replicas:
        assert r.last_executed == 2
        assert r.low_watermark == 2  # K = 2: CHECKPOINT(2) stable at 3 matching
        assert r.status()["slots"] == 0
        assert r.stable_certificate is not None
        assert len(r.stable_certificate.votes) == 3


def test_checkpoints_with_a_hash_we_did_not_compute_never_become_stable() -> None:
    g = Group()
    b = g.replicas[1]
    for s in (0, 2, 3):
        b.receive(
            s,
            encode(
                Checkpoint.create(
                    g.signers[s], g.chain_id, seq=2, block_hash=b"\x09" * 32, sender=s
                )
            ),
        )
    assert b.low_watermark == 0


def test_a_restarted_primary_resends_its_votes_and_never_reuses_a_sequence_number() -> None:
    g = Group()
    p = g.replicas[0]
    p.propose(g.txs[0])
    r = g.ready(0)
    records = [(k, v) for k, v in r.records if v is not None]
    restarted = PbftReplica(
        PbftConfig.from_genesis(g.genesis, 0),
        g.signers[0],
        g.verifier,
        tx_ok=lambda tx: True,
        recovered=RecoveredState(0, genesis_block(g.genesis).hash, None, records),
    )
    restarted.tick(10_000, WALL)
    resent = [decode(o.frame, PARAMS) for o in restarted.take_ready().messages]
    assert any(isinstance(m, PrePrepare) and m.seq == 1 for m in resent)
    restarted.propose(g.txs[5])
    restarted.tick(20_000, WALL)
    new = [
        m
        for o in restarted.take_ready().messages
        if isinstance(m := decode(o.frame, PARAMS), PrePrepare) and m.txs[0].id == g.txs[5].id
    ]
    assert [m.seq for m in new] == [2]


def test_messages_round_trip_through_the_codec() -> None:
    g = Group()
    pp = g.preprepare(1, g.txs[:3])
    assert decode(encode(pp), PARAMS) == pp
    c = Commit.create(g.signers[1], g.chain_id, view=2, seq=9, digest=b"d" * 32, sender=1)
    assert decode(encode(c), PARAMS) == c


@given(st.binary(max_size=300))
def test_garbage_frames_raise_only_wire_format_error(data: bytes) -> None:
    with contextlib.suppress(WireFormatError):
        messages.decode(data, PARAMS)
