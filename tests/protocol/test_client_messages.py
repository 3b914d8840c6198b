"""The client protocol's messages (protocol/messages.py): round trips, and garbage decodes to
WireFormatError only."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consortium.crypto.codec import WireFormatError, pack, unpack
from consortium.ledger.certificates import SignedVote, block_signature_body
from consortium.protocol.limits import FOLLOW_CREDIT_MAX
from consortium.protocol.messages import (
    BlockRequest,
    CreditRequest,
    ErrorReply,
    FollowRequest,
    GetRequest,
    OkReply,
    ReceiptPush,
    ReceiptRequest,
    Request,
    RequestError,
    StatusRequest,
    SubmitRequest,
    SubmitVerdict,
    TransferRequest,
    UnfollowRequest,
    WatchRequest,
    decode_request,
    decode_response,
    decode_status,
    decode_verdicts,
    encode_followed_block,
    encode_request,
    encode_response,
    encode_status,
    encode_verdicts,
)
from consortium.protocol.verify import Bundle, FollowedBlock, ReadReply
from tests.ledger.chain_fixture import build_chain
from tests.protocol.fixtures import BLOCK, LIMIT, good_bundle

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


def test_follow_requests_and_blocks_round_trip_and_are_bounded() -> None:
    req = FollowRequest(5, 10, 64)
    assert decode_request(encode_request(req), 1 << 20) == req
    credit = CreditRequest(6, 5, 3)
    assert decode_request(encode_request(credit), 1 << 20) == credit
    stop = UnfollowRequest(7, 5)
    assert decode_request(encode_request(stop), 1 << 20) == stop
    for bad in (
        ["follow", 1, 0, 0],  # no credit
        ["follow", 1, 0, FOLLOW_CREDIT_MAX + 1],
        ["follow", 1, -1, 5],
        ["credit", 1, 0, 5],
    ):
        with pytest.raises(RequestError) as info:
            decode_request(pack(bad), 1 << 20)
        assert info.value.req_id == 1
    block = build_chain(1).blocks[0][0]
    vote = SignedVote(block_signature_body(1, block.hash, 2), b"s" * 64)
    frame = encode_followed_block(5, block.header, block.receipts, vote)
    decoded = decode_response(frame, 1 << 20)
    assert decoded == FollowedBlock(5, block.header, block.receipts, vote)
