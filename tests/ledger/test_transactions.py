"""Transactions: wire form [body, signature], id = sha256(unsigned body), strict decoding."""

from __future__ import annotations

import contextlib
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consortium.crypto.codec import WireFormatError, pack, unpack
from consortium.crypto.hashing import sha256
from consortium.crypto.signing import Domain, Ed25519Signer, Ed25519Verifier
from consortium.ledger.genesis import Params
from consortium.ledger.tx import CompareAndSet, Delete, Get, Op, Put, Transaction
from tests.ledger.chain_fixture import CLIENT, CREATED_MS, ChainBuilder

PARAMS = Params()
CHAIN = ChainBuilder().genesis.chain_id
ALL_OPS: list[Op] = [
    Put(b"a", b"1"),
    Delete(b"b"),
    CompareAndSet(b"c", None, b"2"),
    CompareAndSet(b"c", b"2", None),
    Get(b"d"),
]


def make(ops: list[Op] | None = None, nonce: bytes = b"n1") -> Transaction:
    return Transaction.create(CLIENT, CHAIN, nonce, CREATED_MS + 60_000, ops or ALL_OPS)


def with_body(fields: list[object], signature: bytes | None = None) -> list[object]:
    body = pack(fields)
    sig = signature or Ed25519Signer(CLIENT).sign(Domain.TX, CHAIN, body)
    return [body, sig]


def good_fields() -> list[object]:
    fields = unpack(make().body)
    assert isinstance(fields, list)
    return fields


def test_a_transaction_round_trips_through_its_encoding() -> None:
    tx = make()
    assert Transaction.decode(tx.encode(), PARAMS) == tx
    assert Transaction.from_array(tx.to_array(), PARAMS) == tx
    assert tx.ops == tuple(ALL_OPS)
    assert (tx.chain_id, tx.client_key, tx.nonce) == (CHAIN, CLIENT.public, b"n1")
    assert tx.size == len(tx.body) + 64
    assert tx.verify_signature(Ed25519Verifier())


def test_the_id_is_the_hash_of_the_unsigned_body_and_ignores_the_signature() -> None:
    tx = make()
    assert tx.id == sha256(tx.body)
    resigned = Transaction.from_array([tx.body, bytes(64)], PARAMS)
    assert resigned.id == tx.id  # a malleated or forged signature never makes a new id
    assert not resigned.verify_signature(Ed25519Verifier())
    assert replace(tx, signature=b"\x01" * 64).id == tx.id
    assert make(nonce=b"n2").id != tx.id  # the nonce makes retries distinct only on purpose
    assert make().id == tx.id  # and the id is known before submitting


def test_a_signature_is_bound_to_the_body_and_the_chain() -> None:
    tx = make()
    other = make(nonce=b"other")
    assert not Transaction.from_array([tx.body, other.signature], PARAMS).verify_signature(
        Ed25519Verifier()
    )
    wrong_chain = Ed25519Signer(CLIENT).sign(Domain.TX, b"\x00" * 32, tx.body)
    assert not replace(tx, signature=wrong_chain).verify_signature(Ed25519Verifier())


def test_a_noncanonical_body_or_frame_is_refused() -> None:
    tx = make()
    array16 = b"\xdc\x00\x05" + tx.body[1:]  # the body's fixarray header in a longer form
    assert unpack(array16) == unpack(tx.body)
    with pytest.raises(WireFormatError, match="non-canonical"):
        Transaction.from_array([array16, tx.signature], PARAMS)
    frame = tx.encode()
    with pytest.raises(WireFormatError, match="non-canonical"):
        Transaction.decode(b"\xdc\x00\x02" + frame[1:], PARAMS)


def test_oversize_transactions_and_fields_are_refused() -> None:
    small = Params(tx_bytes_max=200)
    big = make([Put(b"k", b"x" * 300)])
    with pytest.raises(WireFormatError, match="exceeds"):
        Transaction.decode(big.encode(), small)
    with pytest.raises(WireFormatError, match="exceeds"):
        Transaction.from_array(big.to_array(), small)
    too_long = [
        make([Put(b"k" * (PARAMS.key_bytes_max + 1), b"v")]),
        make([Put(b"k", b"v" * (PARAMS.value_bytes_max + 1))]),
        make([CompareAndSet(b"k", b"e" * (PARAMS.value_bytes_max + 1), None)]),
        make(nonce=b"n" * 33),
        make([Put(b"k%d" % i, b"v") for i in range(PARAMS.ops_per_tx_max + 1)]),
    ]
    for tx in too_long:
        with pytest.raises(WireFormatError):
            Transaction.decode(tx.encode(), PARAMS)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: f.pop(), "expected 5 fields"),
        (lambda f: f.append(1), "expected 5 fields"),
        (lambda f: f.__setitem__(0, b"short"), "chain_id: expected 32 bytes"),
        (lambda f: f.__setitem__(1, "key"), "client_key: expected bytes"),
        (lambda f: f.__setitem__(3, -1), "expiry_ms"),
        (lambda f: f.__setitem__(3, True), "expiry_ms: expected an integer"),
        (lambda f: f.__setitem__(4, []), "1..64 operations"),
        (lambda f: f.__setitem__(4, [["put", b"k"]]), "wrong arity"),
        (lambda f: f.__setitem__(4, [["put", b"k", b"v", b"x"]]), "wrong arity"),
        (lambda f: f.__setitem__(4, [["del"]]), "wrong arity"),
        (lambda f: f.__setitem__(4, [["cas", b"k", None]]), "wrong arity"),
        (lambda f: f.__setitem__(4, [["drop", b"k"]]), "unknown operation"),
        (lambda f: f.__setitem__(4, [[]]), "op: empty"),
        (lambda f: f.__setitem__(4, [["put", "k", b"v"]]), "key: expected bytes"),
    ],
)
def test_a_body_of_the_wrong_shape_is_refused_with_the_reason(edit: object, message: str) -> None:
    fields = good_fields()
    edit(fields)  # type: ignore[operator]
    with pytest.raises(WireFormatError, match=message):
        Transaction.from_array(with_body(fields), PARAMS)


@pytest.mark.parametrize(
    "outer",
    [
        [],
        [b"body"],
        [b"body", b"s" * 64, b"extra"],
        "not an array",
    ],
)
def test_a_frame_of_the_wrong_arity_is_refused(outer: object) -> None:
    with pytest.raises(WireFormatError):
        Transaction.decode(pack(outer), PARAMS)


def test_a_signature_of_the_wrong_length_is_refused() -> None:
    tx = make()
    for sig in (b"", tx.signature[:63], tx.signature + b"\x00"):
        with pytest.raises(WireFormatError, match="signature"):
            Transaction.from_array([tx.body, sig], PARAMS)


@given(st.binary(max_size=400))
def test_garbage_decodes_to_wire_format_error_only(data: bytes) -> None:
    with contextlib.suppress(WireFormatError):
        Transaction.decode(data, PARAMS)


@given(st.integers(0, 10_000), st.integers(0, 255))
def test_a_mangled_transaction_decodes_to_wire_format_error_or_a_transaction(
    at: int, byte: int
) -> None:
    frame = bytearray(make().encode())
    frame[at % len(frame)] = byte
    with contextlib.suppress(WireFormatError):
        decoded = Transaction.decode(bytes(frame), PARAMS)
        assert decoded.id == sha256(decoded.body)
