"""Signatures over domain tag + chain id + exact bytes, and small-order keys refused."""

from __future__ import annotations

import hashlib
from itertools import permutations
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from consortium.crypto.keys import InvalidKeyError, KeyPair, validate_public_key
from consortium.crypto.signing import (
    Domain,
    Ed25519Signer,
    Ed25519Verifier,
    signed_message,
    verify_ed25519,
)

DATA = Path(__file__).parents[1] / "data"
SHARED = Path(__file__).parents[2].parent / "shared" / "testdata"
KEYS = KeyPair.from_seed(hashlib.sha256(b"signing tests").digest())
CHAIN = hashlib.sha256(b"chain").digest()
OTHER_CHAIN = hashlib.sha256(b"other chain").digest()
VERIFIER = Ed25519Verifier()
TRIVIAL_SIGNATURE = bytes.fromhex("01" + "00" * 63)  # R = identity, S = 0


def small_order_keys() -> list[bytes]:
    lines = (DATA / "ed25519-small-order-keys.txt").read_text().splitlines()
    return [bytes.fromhex(x.strip()) for x in lines if x.strip() and not x.startswith("#")]


def test_the_copied_test_vectors_match_the_shared_ones() -> None:
    names = ("ed25519-small-order-keys.txt", "msgpack-noncanonical.txt")
    for name in names:
        assert (DATA / name).is_file()
        if SHARED.is_dir():  # the copies must not drift from the reference design's vectors
            assert (DATA / name).read_bytes() == (SHARED / name).read_bytes()
    assert len(small_order_keys()) == 8


@pytest.mark.parametrize("key", small_order_keys(), ids=lambda k: k.hex()[:8])
def test_small_order_public_keys_are_refused_at_enrolment(key: bytes) -> None:
    with pytest.raises(InvalidKeyError, match="small-order"):
        validate_public_key(key)
    # And our verifier accepts no signature under them, the trivial one included.
    assert not VERIFIER.verify(key, Domain.TX, CHAIN, b"any message", TRIVIAL_SIGNATURE)


def test_the_trivial_signature_is_the_pitfall_the_check_exists_for() -> None:
    # cryptography accepts it under 0100..00 for any message (shared/testdata/README.md).
    key = bytes.fromhex("01" + "00" * 31)
    message = signed_message(Domain.TX, CHAIN, b"anything")
    Ed25519PublicKey.from_public_bytes(key).verify(TRIVIAL_SIGNATURE, message)  # no exception
    with pytest.raises(InvalidKeyError):
        validate_public_key(key)


def test_real_keys_are_accepted_and_malformed_ones_refused() -> None:
    assert validate_public_key(KEYS.public) == KEYS.public
    for bad in (KEYS.public[:31], KEYS.public + b"\x00", b""):
        with pytest.raises(InvalidKeyError, match="32 bytes"):
            validate_public_key(bad)
    with pytest.raises(InvalidKeyError):
        validate_public_key(b"\xff" * 32)  # not a canonical point encoding


def test_a_signature_verifies_over_exactly_what_was_signed() -> None:
    sig = Ed25519Signer(KEYS).sign(Domain.TX, CHAIN, b"body")
    assert VERIFIER.verify(KEYS.public, Domain.TX, CHAIN, b"body", sig)
    assert verify_ed25519(KEYS.public, Domain.TX, CHAIN, b"body", sig)
    assert not VERIFIER.verify(KEYS.public, Domain.TX, CHAIN, b"body ", sig)
    other = KeyPair.from_seed(b"\x07" * 32)
    assert not VERIFIER.verify(other.public, Domain.TX, CHAIN, b"body", sig)


@pytest.mark.parametrize(("signed", "checked"), list(permutations(Domain, 2)))
def test_a_signature_for_one_domain_is_never_valid_for_another(
    signed: Domain, checked: Domain
) -> None:
    sig = Ed25519Signer(KEYS).sign(signed, CHAIN, b"body")
    assert VERIFIER.verify(KEYS.public, signed, CHAIN, b"body", sig)
    assert not VERIFIER.verify(KEYS.public, checked, CHAIN, b"body", sig)


def test_domain_tags_are_versioned_and_none_is_a_prefix_of_another() -> None:
    tags = [d.value for d in Domain]
    assert all(t.startswith(b"consortium/v1/") and t.endswith(b"\x00") for t in tags)
    assert not any(a != b and b.startswith(a) for a in tags for b in tags)


def test_a_signature_for_one_network_is_never_valid_for_another() -> None:
    for domain in (Domain.TX, Domain.BLOCK, Domain.PBFT):
        sig = Ed25519Signer(KEYS).sign(domain, CHAIN, b"body")
        assert not VERIFIER.verify(KEYS.public, domain, OTHER_CHAIN, b"body", sig)


@settings(max_examples=60)
@given(st.binary(min_size=1, max_size=64), st.data())
def test_one_flipped_bit_anywhere_fails(body: bytes, data: st.DataObject) -> None:
    sig = Ed25519Signer(KEYS).sign(Domain.TX, CHAIN, body)
    assert VERIFIER.verify(KEYS.public, Domain.TX, CHAIN, body, sig)
    where = data.draw(st.sampled_from(["signature", "body", "chain", "key"]))
    target = {"signature": sig, "body": body, "chain": CHAIN, "key": KEYS.public}[where]
    bit = data.draw(st.integers(0, len(target) * 8 - 1))
    flipped = bytearray(target)
    flipped[bit // 8] ^= 1 << (bit % 8)
    args = {"signature": sig, "body": body, "chain": CHAIN, "key": KEYS.public}
    args[where] = bytes(flipped)
    assert not VERIFIER.verify(
        args["key"], Domain.TX, args["chain"], args["body"], args["signature"]
    )


def test_malformed_signatures_and_keys_return_false_without_raising() -> None:
    sig = Ed25519Signer(KEYS).sign(Domain.TX, CHAIN, b"body")
    for bad_sig in (b"", sig[:63], sig + b"\x00"):
        assert not VERIFIER.verify(KEYS.public, Domain.TX, CHAIN, b"body", bad_sig)
    for bad_key in (b"", KEYS.public[:31], b"\x00" * 33):
        assert not VERIFIER.verify(bad_key, Domain.TX, CHAIN, b"body", sig)
