"""Wire format of PBFT messages (docs/protocol.md; Castro & Liskov TOCS'02 §2.3): canonical
msgpack, signatures over the exact body received, decode raises only WireFormatError."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pbft_harness import Group

from consortium.crypto.codec import WireFormatError, pack, unpack
from consortium.crypto.signing import Domain
from consortium.ledger.certificates import checkpoint_body, commit_body
from consortium.pbft.messages import Checkpoint, Commit, Prepare, PrePrepare, decode, encode

GROUP = Group(tick=False)
ints = st.integers(min_value=0, max_value=2**63 - 1)
hashes = st.binary(min_size=32, max_size=32)
members = st.integers(min_value=0, max_value=3)


@given(view=ints, seq=ints, proposed_ms=ints, sender=members, k=st.integers(0, 4))
def test_preprepare_round_trips(view: int, seq: int, proposed_ms: int, sender: int, k: int) -> None:
    pp = PrePrepare.create(
        GROUP.signers[sender], GROUP.chain_id, view, seq, proposed_ms, sender, GROUP.txs[:k]
    )
    assert decode(encode(pp), GROUP.params) == pp


@given(view=ints, seq=ints, digest=hashes, sender=members)
def test_votes_round_trip(view: int, seq: int, digest: bytes, sender: int) -> None:
    s = GROUP.signers[sender]
    for msg in (
        Prepare.create(s, GROUP.chain_id, view, seq, digest, sender),
        Commit.create(s, GROUP.chain_id, view, seq, digest, sender),
        Checkpoint.create(s, GROUP.chain_id, seq, digest, sender),
    ):
        assert decode(encode(msg), GROUP.params) == msg


def test_commit_and_checkpoint_bodies_are_the_certificate_bodies() -> None:
    s = GROUP.signers[1]
    commit = Commit.create(s, GROUP.chain_id, 3, 7, b"d" * 32, 1)
    checkpoint = Checkpoint.create(s, GROUP.chain_id, 8, b"h" * 32, 1)
    assert commit.body == commit_body(0, 3, 7, b"d" * 32, 1)
    assert checkpoint.body == checkpoint_body(0, 8, b"h" * 32, 1)
    assert GROUP.verifier.verify(
        GROUP.signers[1].public_key, Domain.PBFT, GROUP.chain_id, commit.body, commit.signature
    )


def test_signatures_cover_the_chain_id() -> None:
    prepare = Prepare.create(GROUP.signers[1], GROUP.chain_id, 0, 1, b"d" * 32, 1)
    other_chain = b"\x01" * 32
    key = GROUP.signers[1].public_key
    assert not GROUP.verifier.verify(key, Domain.PBFT, other_chain, prepare.body, prepare.signature)


@settings(max_examples=300)
@given(st.binary(max_size=512))
def test_garbage_decodes_to_wire_format_error_only(data: bytes) -> None:
    with contextlib.suppress(WireFormatError):  # anything else fails the test
        decode(data, GROUP.params)


@settings(max_examples=200)
@given(st.data())
def test_any_flipped_byte_is_refused_or_fails_its_signature(data: st.DataObject) -> None:
    pp = GROUP.preprepare(1, GROUP.txs[:2])
    frame = bytearray(encode(pp))
    i = data.draw(st.integers(0, len(frame) - 1))
    frame[i] ^= data.draw(st.integers(1, 255))
    try:
        msg = decode(bytes(frame), GROUP.params)
    except WireFormatError:
        return
    key = GROUP.signers[0].public_key
    signed = GROUP.verifier.verify(key, Domain.PBFT, GROUP.chain_id, msg.body, msg.signature)
    # Either the signed part changed (the signature fails) or only the batch did (the digest
    # no longer matches it, which the replica checks: see test_validation).
    assert not signed or msg.txs != pp.txs


def test_a_non_canonical_body_is_refused() -> None:
    canonical = pack(["prepare", 0, 1, b"d" * 32, 1])
    assert canonical.endswith(b"\x01")
    body = canonical[:-1] + b"\xcc\x01"  # the sender 1 as a uint8: same value, other bytes
    assert unpack(body) == unpack(canonical)
    with pytest.raises(WireFormatError):
        decode(pack([body, b"s" * 64]), GROUP.params)


def test_a_non_canonical_frame_is_refused() -> None:
    prepare = Prepare.create(GROUP.signers[1], GROUP.chain_id, 0, 1, b"d" * 32, 1)
    frame = encode(prepare)
    # array header 0x92 re-encoded as array16: the same value, another encoding
    longer = b"\xdc\x00\x02" + frame[1:]
    assert unpack(longer) == unpack(frame)
    with pytest.raises(WireFormatError):
        decode(longer, GROUP.params)


def test_a_frame_larger_than_the_limit_is_refused() -> None:
    pp = GROUP.preprepare(1, GROUP.txs[:4])
    frame = encode(pp)
    small = GROUP.params.__class__(frame_bytes_max=len(frame) - 1, tx_bytes_max=64)
    with pytest.raises(WireFormatError):
        decode(frame, small)


def test_a_batch_over_the_limits_is_refused_before_any_transaction_is_decoded() -> None:
    from dataclasses import replace

    pp = GROUP.preprepare(1, GROUP.txs[:4])
    frame = encode(pp)
    three = replace(GROUP.params, batch_txs_max=3)
    with pytest.raises(WireFormatError, match="more than 3 transactions"):
        decode(frame, three)
    tiny = replace(GROUP.params, batch_bytes_max=16, frame_bytes_max=len(frame) * 4)
    oversize = frame + b"\x00" * (70 * 1024)
    with pytest.raises(WireFormatError, match="exceeds a full batch"):
        decode(oversize, tiny)
