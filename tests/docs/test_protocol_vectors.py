"""docs/protocol.md's worked vectors are what the code computes, and mean what the doc says.

The values are read out of the doc's ```vectors blocks (tests/docs/vectors.py), so editing the
doc or the code without the other fails here. Beyond equality with the code, the checks below
recompute the documented constructions independently (hashlib, struct, msgpack, PyNaCl), so a
change that moved the code and the doc together away from what the doc's prose says would
still fail."""

from __future__ import annotations

import hashlib
import struct

import msgpack
import nacl.exceptions
import nacl.signing
import pytest

from consortium.crypto.signing import Ed25519Verifier
from consortium.protocol.verify import Bundle, ReadReply, verify_bundle, verify_read
from tests.docs.vectors import (
    CLIENT_SEED,
    DOCS,
    EXPIRY_MS,
    FOLLOWER_WALL_MS,
    MEMBER_SEEDS,
    TX_NONCES,
    doc_vectors,
    protocol_vectors,
    vector_genesis,
)

DOC = DOCS / "protocol.md"


@pytest.fixture(scope="module")
def doc() -> dict[str, bytes]:
    return doc_vectors(DOC.read_text())


def test_every_vector_in_the_doc_is_what_the_code_computes(doc: dict[str, bytes]) -> None:
    computed = protocol_vectors()
    assert sorted(doc) == sorted(computed), "docs/protocol.md lists other vectors than the code"
    wrong = {k: v.hex() for k, v in computed.items() if doc[k] != v}
    assert not wrong, f"docs/protocol.md disagrees with the code; the code gives {wrong}"


def _verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except nacl.exceptions.BadSignatureError:
        return False
    return True


def test_transaction_construction_as_documented(doc: dict[str, bytes]) -> None:
    chain_id = doc["chain_id"]
    client = nacl.signing.SigningKey(CLIENT_SEED)
    assert bytes(client.verify_key) == doc["client.public_key"]
    body = msgpack.packb(
        [
            chain_id,
            doc["client.public_key"],
            TX_NONCES[0],
            EXPIRY_MS,
            [["put", b"greeting", b"hello"]],
        ],
        use_bin_type=True,
    )
    assert body == doc["tx.body"]
    assert hashlib.sha256(body).digest() == doc["tx.id"]
    assert doc["tx.signed_bytes"] == b"consortium/v1/tx\x00" + chain_id + body
    # Ed25519 is deterministic: the signature over the documented bytes is the documented one.
    assert client.sign(doc["tx.signed_bytes"]).signature == doc["tx.signature"]
    assert msgpack.unpackb(doc["tx.wire"]) == [body, doc["tx.signature"]]


def test_submit_frame_is_length_prefixed_msgpack(doc: dict[str, bytes]) -> None:
    frame = doc["submit.frame"]
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    assert msgpack.unpackb(frame[4:]) == ["submit", 1, [[doc["tx.body"], doc["tx.signature"]]]]


def test_bundle_verifies_and_its_parts_are_the_documented_ones(doc: dict[str, bytes]) -> None:
    genesis = vector_genesis()
    bundle = Bundle.from_array(msgpack.unpackb(doc["bundle1"]))
    assert verify_bundle(bundle, genesis, Ed25519Verifier()) is None
    assert bundle.receipt.encode() == doc["receipt1.encoding"]
    assert list(bundle.proof) == [doc["receipt1.proof.0"], doc["receipt1.proof.1"]]
    assert bundle.tree_size == 3
    assert bundle.header.hash == doc["block1.hash"]
    assert bundle.signature.body == doc["block_signature.body"]
    # The inclusion proof by hand (RFC 6962): leaf 0 of 3 is ((r0, r1), r2).
    leaf = hashlib.sha256(b"\x00" + doc["receipt1.encoding"]).digest()
    assert leaf == doc["receipt1.leaf_hash"]
    left = hashlib.sha256(b"\x01" + leaf + doc["receipt1.proof.0"]).digest()
    root = hashlib.sha256(b"\x01" + left + doc["receipt1.proof.1"]).digest()
    assert root == doc["block1.receipts_root"] == bundle.header.receipts_root
    n1 = nacl.signing.SigningKey(MEMBER_SEEDS["n1"]).verify_key
    assert msgpack.unpackb(doc["block_signature.body"]) == ["block", 1, doc["block1.hash"], 0]
    signed = b"consortium/v1/block\x00" + doc["chain_id"] + doc["block_signature.body"]
    assert _verify(bytes(n1), signed, doc["block_signature.signature"])


def test_a_bundle_with_one_bit_changed_does_not_verify(doc: dict[str, bytes]) -> None:
    genesis = vector_genesis()
    raw = msgpack.unpackb(doc["bundle1"])
    raw[0][3] = [b"goodbye"]  # the receipt's results
    assert verify_bundle(Bundle.from_array(raw), genesis, Ed25519Verifier()) is not None


def test_read_reply_signature_as_documented(doc: dict[str, bytes]) -> None:
    assert msgpack.unpackb(doc["read.body"]) == [
        "read",
        b"greeting",
        b"hi",
        1,
        doc["block1.hash"],
        0,
    ]
    reply = ReadReply(b"greeting", b"hi", 1, doc["block1.hash"], 0, doc["read.signature"])
    assert verify_read(reply, vector_genesis(), Ed25519Verifier(), key=b"greeting") is None
    n1 = nacl.signing.SigningKey(MEMBER_SEEDS["n1"]).verify_key
    signed = b"consortium/v1/read\x00" + doc["chain_id"] + doc["read.body"]
    assert _verify(bytes(n1), signed, doc["read.signature"])


def test_client_change_id_and_approval_as_documented(doc: dict[str, bytes]) -> None:
    body = doc["change.body"]
    fields = msgpack.unpackb(body)
    assert fields[:4] == [doc["chain_id"], "admit", fields[2], "acme-app"]
    assert (
        doc["change.id"]
        == hashlib.sha256(msgpack.packb(["client-change", body], use_bin_type=True)).digest()
    )
    n1 = nacl.signing.SigningKey(MEMBER_SEEDS["n1"]).verify_key
    signed = b"consortium/v1/client-change\x00" + doc["chain_id"] + body
    assert _verify(bytes(n1), signed, doc["change.approval_by_n1"])


def test_handshake_transcript_as_documented(doc: dict[str, bytes]) -> None:
    assert msgpack.unpackb(doc["handshake.transcript"]) == [
        "handshake",
        3,  # the peer protocol's version
        b"\xaa" * 32,
        0,
        1,
        "listener",
    ]
    n2 = nacl.signing.SigningKey(MEMBER_SEEDS["n2"]).verify_key
    signed = b"consortium/v1/handshake\x00" + doc["chain_id"] + doc["handshake.transcript"]
    assert _verify(bytes(n2), signed, doc["handshake.signature_by_n2"])
    # The same signature is not valid as the dialer's transcript (the role string).
    dialer = msgpack.packb(["handshake", 1, b"\xaa" * 32, 0, 1, "dialer"], use_bin_type=True)
    other = b"consortium/v1/handshake\x00" + doc["chain_id"] + dialer
    assert not _verify(bytes(n2), other, doc["handshake.signature_by_n2"])


def test_transfer_request_and_timeout_now_as_documented(doc: dict[str, bytes]) -> None:
    n1 = nacl.signing.SigningKey(MEMBER_SEEDS["n1"]).verify_key
    nonce = b"\x3c" * 16  # drawn by the client for each request
    assert msgpack.unpackb(doc["transfer.body"]) == ["transfer", 1, 3, bytes(n1), 0, nonce]
    signed = b"consortium/v1/maintenance\x00" + doc["chain_id"] + doc["transfer.body"]
    assert _verify(bytes(n1), signed, doc["transfer.signature_by_n1"])
    assert msgpack.unpackb(doc["raft.timeout_now"]) == ["timeout_now", 3, 7]


def test_raft_replies_carry_the_followers_wall_clock_as_documented(doc: dict[str, bytes]) -> None:
    # ["append_reply", term 3, success, index 7, hint 0, wall_ms, epoch 2] and
    # ["heartbeat_reply", term 3, ctx 5, wall_ms, recovering, epoch 2]: the leader's clock
    # check (docs/raft.md), whether the follower could take leadership over, and its applied
    # configuration epoch (R1c: a member change waits for a majority at the leader's epoch).
    assert doc["raft.append_reply"] == msgpack.packb(
        ["append_reply", 3, True, 7, 0, FOLLOWER_WALL_MS, 2]
    )
    assert doc["raft.heartbeat_reply"] == msgpack.packb(
        ["heartbeat_reply", 3, 5, FOLLOWER_WALL_MS, False, 2]
    )
    # ["vote", term 4, last_index 7, last_term 3, prevote, transfer, epoch 2] (R3: a voter at
    # a later applied epoch refuses it)
    assert doc["raft.vote"] == msgpack.packb(["vote", 4, 7, 3, False, False, 2])


def test_doc_vectors_parser_refuses_junk() -> None:
    good = "```vectors\na.b  00ff\n     11\n```\n"
    assert doc_vectors(good) == {"a.b": bytes.fromhex("00ff11")}
    with pytest.raises(ValueError, match="not a vector line"):
        doc_vectors("```vectors\na.b  00ff\nthis is prose\n```\n")
    with pytest.raises(ValueError, match="twice"):
        doc_vectors("```vectors\na  00\n```\n\n```vectors\na  01\n```\n")


def test_recovery_queries_and_reports_as_documented(doc: dict[str, bytes]) -> None:
    nonce = b"\x5e" * 16
    pbft = b"consortium/v1/pbft\x00" + doc["chain_id"]
    body, signature = msgpack.unpackb(doc["viewquery.frame"])
    assert msgpack.unpackb(body) == ["viewquery", 0, nonce, 0]  # epoch 0, n1
    n1 = nacl.signing.SigningKey(MEMBER_SEEDS["n1"]).verify_key
    assert _verify(bytes(n1), pbft + body, signature)
    body, signature = msgpack.unpackb(doc["viewreport.frame"])
    assert msgpack.unpackb(body) == ["viewreport", 0, nonce, 2, 1, 1]  # view 2, executed 1, n2
    n2 = nacl.signing.SigningKey(MEMBER_SEEDS["n2"]).verify_key
    assert _verify(bytes(n2), pbft + body, signature)
    # Raft members trust each other: no signature; the nonce alone makes an answer fresh.
    assert msgpack.unpackb(doc["term_query.frame"]) == ["term_query", nonce]
    # n2 is not recovering itself (a recovering member's answer does not count).
    assert msgpack.unpackb(doc["term_report.frame"]) == ["term_report", nonce, 7, False]
