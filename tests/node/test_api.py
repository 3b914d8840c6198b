"""The client protocol: round trips, garbage decodes to WireFormatError only, and the pure
checks of receipt bundles and signed reads."""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consortium.crypto.codec import WireFormatError, pack, unpack
from consortium.crypto.keys import KeyPair
from consortium.crypto.signing import Domain, Ed25519Signer, Ed25519Verifier
from consortium.ledger.block import Block
from consortium.ledger.certificates import SignedVote, block_signature_body
from consortium.ledger.genesis import Params
from consortium.ledger.tx import Put
from consortium.node.api import (
    BlockRequest,
    Bundle,
    ErrorReply,
    GetRequest,
    OkReply,
    ReadReply,
    ReceiptPush,
    ReceiptRequest,
    Request,
    RequestError,
    StatusRequest,
    SubmitRequest,
    SubmitVerdict,
    TransferRequest,
    WatchRequest,
    bundle_for,
    decode_request,
    decode_response,
    decode_status,
    decode_verdicts,
    encode_request,
    encode_response,
    encode_status,
    encode_verdicts,
    verify_bundle,
    verify_read,
)
from tests.ledger.chain_fixture import MEMBERS, ChainBuilder, make_genesis

GENESIS = make_genesis()
VERIFIER = Ed25519Verifier()
LIMIT = 1 << 20
OUTSIDER = KeyPair.from_seed(hashlib.sha256(b"outsider").digest())


def block_vote(block: Block, signer: int, keys: KeyPair | None = None, **kw: Any) -> SignedVote:
    body = block_signature_body(
        kw.get("height", block.height), kw.get("block_hash", block.hash), signer
    )
    domain = kw.get("domain", Domain.BLOCK)
    chain_id = kw.get("chain_id", block.header.chain_id)
    return SignedVote(body, Ed25519Signer(keys or MEMBERS[signer]).sign(domain, chain_id, body))


def make_block(builder: ChainBuilder | None = None, count: int = 5) -> Block:
    builder = builder or ChainBuilder()
    builder.add_puts(2)
    return builder.add([builder.tx(Put(b"key %d" % i, b"v")) for i in range(count)])


BLOCK = make_block()


def good_bundle(index: int = 2, signer: int = 1) -> Bundle:
    return bundle_for(BLOCK, index, block_vote(BLOCK, signer))


# --- requests and responses ------------------------------------------------------------------

req_ids = st.integers(min_value=1, max_value=2**63 - 1)
ids = st.binary(min_size=32, max_size=32)
requests: st.SearchStrategy[Request] = st.one_of(
    st.builds(
        SubmitRequest,
        req_ids,
        st.lists(st.lists(st.binary(max_size=40), min_size=2, max_size=2), max_size=5),
    ),
    st.builds(ReceiptRequest, req_ids, ids),
    st.builds(GetRequest, req_ids, st.binary(max_size=100)),
    st.builds(BlockRequest, req_ids, st.integers(min_value=0, max_value=2**63 - 1)),
    st.builds(StatusRequest, req_ids),
    st.builds(WatchRequest, req_ids, st.lists(ids, max_size=5)),
    st.builds(
        TransferRequest,
        req_ids,
        st.integers(min_value=0, max_value=1 << 16),
        st.binary(max_size=256),
        st.binary(min_size=64, max_size=64),
    ),
)
values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.binary(max_size=40)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=6),
    max_leaves=25,
)


@given(requests)
def test_every_request_round_trips(request: Request) -> None:
    assert decode_request(encode_request(request), LIMIT) == request


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_garbage_bytes_decode_to_wire_format_errors_only(data: bytes) -> None:
    for decode in (
        lambda: decode_request(data, LIMIT),
        lambda: decode_response(data, LIMIT),
    ):
        with contextlib.suppress(WireFormatError):
            decode()


@settings(max_examples=300)
@given(values)
def test_garbage_values_decode_to_wire_format_errors_only(value: Any) -> None:
    frame = pack(value)
    for decode in (
        lambda: decode_request(frame, LIMIT),
        lambda: decode_request(pack(["submit", 1, value]), LIMIT),
        lambda: decode_request(pack(["watch", 1, value]), LIMIT),
        lambda: decode_response(frame, LIMIT),
        lambda: decode_response(pack([0, "receipt", value]), LIMIT),
        lambda: decode_verdicts(value),
        lambda: decode_verdicts([value]),
        lambda: decode_status(value),
        lambda: Bundle.from_array(value),
        lambda: ReadReply.from_array(value),
    ):
        with contextlib.suppress(WireFormatError):
            decode()


def test_a_bad_request_keeps_its_req_id_when_it_has_one() -> None:
    with pytest.raises(RequestError, match="unknown method 'frobnicate'") as info:
        decode_request(pack(["frobnicate", 7]), LIMIT)
    assert info.value.req_id == 7
    with pytest.raises(RequestError) as info:
        decode_request(pack(["get", 8, 123]), LIMIT)
    assert info.value.req_id == 8
    for frame in (pack([b"x"]), pack(["get", 0, b"k"]), pack(["get", -1, b"k"]), b"\xc1"):
        with pytest.raises(RequestError) as info:
            decode_request(frame, LIMIT)
        assert info.value.req_id is None
    with pytest.raises(RequestError, match="exceeds the limit"):
        decode_request(pack(["status", 1]), 3)
    # The integer 1 as a uint8 (0xcc 0x01) instead of a fixint: decodable, not canonical.
    noncanonical = b"\x92\xa6status\xcc\x09"
    assert decode_request(pack(["status", 9]), LIMIT) == StatusRequest(9)
    with pytest.raises(RequestError, match="non-canonical") as info:
        decode_request(noncanonical, LIMIT)
    assert info.value.req_id == 9
    with pytest.raises(WireFormatError, match="non-canonical"):
        decode_response(b"\x93\xcc\x05\xa2ok\xc0", LIMIT)


def test_responses_round_trip() -> None:
    bundle = good_bundle()
    for response in (
        OkReply(5, [b"x", None, 3, "s"]),
        OkReply(6, None),
        ErrorReply(7, "bad request: no"),
        ErrorReply(0, "closing the connection: oversize"),
        ReceiptPush(bundle),
    ):
        assert decode_response(encode_response(response), LIMIT) == response
    with pytest.raises(WireFormatError, match="unknown push"):
        decode_response(pack([0, "ok", None]), LIMIT)
    with pytest.raises(WireFormatError, match="unknown response kind"):
        decode_response(pack([3, "maybe", None]), LIMIT)


def test_submit_verdicts_round_trip() -> None:
    verdicts = [
        SubmitVerdict(b"\x01" * 32, "accepted", ""),
        SubmitVerdict(b"\x02" * 32, "rejected", "bad_signature"),
        SubmitVerdict(b"", "rejected", "malformed: transaction: expected an array"),
        SubmitVerdict(BLOCK.receipts[0].tx_id, "committed", good_bundle(0)),
    ]
    assert decode_verdicts(unpack(pack(encode_verdicts(verdicts)))) == verdicts
    with pytest.raises(WireFormatError, match="verdict status"):
        decode_verdicts([[b"\x01" * 32, "maybe", ""]])
    with pytest.raises(WireFormatError, match="0 or 32 bytes"):
        decode_verdicts([[b"\x01" * 5, "accepted", ""]])


def test_status_travels_as_a_json_string() -> None:
    doc = {"height": 3, "peers": [{"name": "n1"}], "mode": "pbft"}
    assert decode_status(encode_status(doc)) == doc
    assert json.loads(encode_status(doc)) == doc
    for bad in ("[1, 2]", "{not json", 42):
        with pytest.raises(WireFormatError):
            decode_status(bad)


def test_a_bundle_round_trips_and_still_verifies() -> None:
    bundle = good_bundle()
    again = Bundle.from_array(bundle.to_array())
    assert again == bundle
    assert again.encode() == bundle.encode() == pack(bundle.to_array())
    assert verify_bundle(again, GENESIS, VERIFIER) is None
    assert bundle.signer() == 1


# --- verify_bundle ---------------------------------------------------------------------------


@pytest.mark.parametrize("index", range(5))
@pytest.mark.parametrize("signer", range(4))
def test_a_correct_bundle_verifies_for_every_receipt_and_member(index: int, signer: int) -> None:
    assert verify_bundle(good_bundle(index, signer), GENESIS, VERIFIER) is None


def test_a_wrong_proof_is_refused() -> None:
    bundle = good_bundle(2)
    flipped = bytes([bundle.proof[0][0] ^ 1]) + bundle.proof[0][1:]
    for proof in ((flipped, *bundle.proof[1:]), bundle.proof[:-1], (*bundle.proof, b"\0" * 32)):
        wrong = replace(bundle, proof=proof)
        assert (
            verify_bundle(wrong, GENESIS, VERIFIER)
            == "receipt is not in the block (bad Merkle proof)"
        )
    other = good_bundle(3)
    assert "bad Merkle proof" in str(
        verify_bundle(replace(bundle, proof=other.proof), GENESIS, VERIFIER)
    )


def test_a_tampered_receipt_is_refused() -> None:
    bundle = good_bundle(1)
    receipt = bundle.receipt
    for tampered in (
        replace(receipt, status="rejected", reason="duplicate"),
        replace(receipt, results=(b"forged",)),
        replace(receipt, tx_id=b"\x07" * 32),
        replace(receipt, index=2),
    ):
        wrong = verify_bundle(replace(bundle, receipt=tampered), GENESIS, VERIFIER)
        assert wrong == "receipt is not in the block (bad Merkle proof)"
    wrong = verify_bundle(replace(bundle, receipt=replace(receipt, height=9)), GENESIS, VERIFIER)
    assert wrong == f"receipt height 9 differs from the header's {BLOCK.height}"
    wrong = verify_bundle(replace(bundle, tree_size=1), GENESIS, VERIFIER)
    assert wrong == "receipt index 1 outside a tree of 1"
    wrong = verify_bundle(replace(bundle, tree_size=9), GENESIS, VERIFIER)
    assert wrong == "receipt is not in the block (bad Merkle proof)"


def test_a_tampered_header_is_refused() -> None:
    bundle = good_bundle(1)
    header = replace(bundle.header, state_root=b"\x09" * 32)  # another block hash
    wrong = verify_bundle(replace(bundle, header=header), GENESIS, VERIFIER)
    assert wrong == "block signature is for another block"


def test_a_wrong_signer_is_refused() -> None:
    bundle = good_bundle(0, signer=1)
    cases = [
        # member 2's key over a body that names member 1 (n2 is member 1's name)
        (block_vote(BLOCK, 1, MEMBERS[2]), "bad block signature by n2"),
        # a key genesis does not list, naming member 1
        (block_vote(BLOCK, 1, OUTSIDER), "bad block signature by n2"),
        # the right key, the wrong domain or chain
        (block_vote(BLOCK, 1, domain=Domain.PBFT), "bad block signature by n2"),
        (block_vote(BLOCK, 1, chain_id=b"\x05" * 32), "bad block signature by n2"),
        # a body naming no member, or no body at all
        (block_vote(BLOCK, 9, OUTSIDER), "block signature is not by a member"),
        (SignedVote(b"\xc1", bytes(64)), "block signature is not by a member"),
        # a signature over another block
        (block_vote(BLOCK, 1, height=BLOCK.height + 1), "block signature is for another block"),
    ]
    for vote, expected in cases:
        assert verify_bundle(replace(bundle, signature=vote), GENESIS, VERIFIER) == expected


def test_a_bundle_from_another_chain_is_refused() -> None:
    other = make_genesis(Params(batch_txs_max=3))
    block = make_block(ChainBuilder(genesis=other))
    bundle = bundle_for(block, 0, block_vote(block, 1))
    assert verify_bundle(bundle, other, VERIFIER) is None
    wrong = verify_bundle(bundle, GENESIS, VERIFIER)
    assert wrong is not None and wrong.startswith("bundle is for another chain")


# --- verify_read -----------------------------------------------------------------------------


def signed_read(
    member: int = 2, value: bytes | None = b"v", keys: KeyPair | None = None
) -> ReadReply:
    return ReadReply.signed(
        Ed25519Signer(keys or MEMBERS[member]),
        GENESIS.chain_id,
        member,
        b"key",
        value,
        BLOCK.height,
        BLOCK.hash,
    )


def test_a_signed_read_verifies_and_round_trips() -> None:
    for value in (b"v", None, b""):
        reply = signed_read(value=value)
        assert ReadReply.from_array(reply.to_array()) == reply
        assert verify_read(reply, GENESIS, VERIFIER, key=b"key", signer=2) is None
        assert reply.verify(GENESIS, VERIFIER)


def test_a_tampered_or_misattributed_read_is_refused() -> None:
    reply = signed_read()
    assert verify_read(replace(reply, value=b"w"), GENESIS, VERIFIER) == "bad read signature by n3"
    assert verify_read(replace(reply, value=None), GENESIS, VERIFIER) == "bad read signature by n3"
    assert verify_read(replace(reply, height=1), GENESIS, VERIFIER) == "bad read signature by n3"
    assert verify_read(reply, GENESIS, VERIFIER, key=b"other") == "reply is for another key"
    assert verify_read(reply, GENESIS, VERIFIER, signer=1) == (
        "reply from member 1 is signed as member 2"
    )
    assert verify_read(signed_read(9, keys=OUTSIDER), GENESIS, VERIFIER) == (
        "reply is not signed by a member"
    )
    assert verify_read(signed_read(2, keys=OUTSIDER), GENESIS, VERIFIER) == (
        "bad read signature by n3"
    )
    other = make_genesis(Params(batch_txs_max=3))
    assert verify_read(reply, other, VERIFIER) == "bad read signature by n3"
    # A block signature is never a read signature (domain separation).
    vote = block_vote(BLOCK, 2)
    assert verify_read(replace(reply, signature=vote.signature), GENESIS, VERIFIER) is not None
