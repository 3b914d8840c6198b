"""Keys, signatures over exact bytes, the canonical codec and RFC 6962 Merkle trees."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consortium.crypto.codec import WireFormatError, pack, unpack, unpack_canonical
from consortium.crypto.keys import InvalidKeyError, KeyPair, validate_public_key
from consortium.crypto.merkle import (
    MerkleTree,
    inclusion_proof,
    merkle_root,
    verify_inclusion,
)
from consortium.crypto.signing import Domain, Ed25519Signer, Ed25519Verifier

DATA = Path(__file__).parents[1] / "data"


def _lines(name: str) -> list[str]:
    return [
        line.split()[0]
        for line in (DATA / name).read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


# --- keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize("hex_key", _lines("ed25519-small-order-keys.txt"))
def test_small_order_public_keys_are_refused_at_enrolment(hex_key: str) -> None:
    with pytest.raises(InvalidKeyError, match="small-order"):
        validate_public_key(bytes.fromhex(hex_key))


def test_the_trivial_signature_does_not_verify_under_a_small_order_key() -> None:
    # cryptography accepts R = identity, S = 0 under 0100..00 for any message; libsodium does not.
    key = bytes.fromhex("01" + "00" * 31)
    trivial = bytes.fromhex("01" + "00" * 63)
    assert not Ed25519Verifier().verify(key, Domain.TX, b"c" * 32, b"anything", trivial)


def test_generated_keys_are_valid_and_wrong_lengths_are_refused() -> None:
    assert validate_public_key(KeyPair.generate().public)
    with pytest.raises(InvalidKeyError):
        validate_public_key(b"\x01" * 31)


def test_key_files_are_mode_0600_and_round_trip(tmp_path: Path) -> None:
    keys = KeyPair.generate()
    path = tmp_path / "k.pem"
    keys.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert KeyPair.load(path).public == keys.public


def test_passphrase_protected_keys(tmp_path: Path) -> None:
    keys = KeyPair.generate()
    path = tmp_path / "k.pem"
    keys.save(path, b"correct horse")
    assert b"ENCRYPTED" in path.read_bytes()
    assert KeyPair.load(path, b"correct horse").public == keys.public
    with pytest.raises(InvalidKeyError, match="passphrase"):
        KeyPair.load(path)
    with pytest.raises(InvalidKeyError, match="passphrase is wrong"):
        KeyPair.load(path, b"wrong")


def test_a_world_readable_key_file_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    KeyPair.generate().save(path)
    os.chmod(path, 0o644)
    with pytest.raises(InvalidKeyError, match="chmod 600"):
        KeyPair.load(path)


def test_a_file_that_is_not_a_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    path.write_bytes(b"not a key")
    os.chmod(path, 0o600)
    with pytest.raises(InvalidKeyError, match="not a PKCS#8"):
        KeyPair.load(path)


# --- signatures ------------------------------------------------------------------------------


def test_signatures_are_bound_to_domain_chain_and_exact_bytes() -> None:
    keys = KeyPair.generate()
    signer, verifier = Ed25519Signer(keys), Ed25519Verifier()
    chain = b"c" * 32
    sig = signer.sign(Domain.TX, chain, b"body")
    assert verifier.verify(keys.public, Domain.TX, chain, b"body", sig)
    assert not verifier.verify(keys.public, Domain.BLOCK, chain, b"body", sig)
    assert not verifier.verify(keys.public, Domain.TX, b"d" * 32, b"body", sig)
    assert not verifier.verify(keys.public, Domain.TX, chain, b"bodz", sig)
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    assert not verifier.verify(keys.public, Domain.TX, chain, b"body", flipped)
    assert not verifier.verify(keys.public, Domain.TX, chain, b"body", sig[:63])
    assert not verifier.verify(b"\x00" * 31, Domain.TX, chain, b"body", sig)


# --- the canonical codec ---------------------------------------------------------------------


def test_every_noncanonical_encoding_is_refused_and_the_canonical_one_decodes() -> None:
    encodings = [bytes.fromhex(h) for h in _lines("msgpack-noncanonical.txt")]
    canonical = {pack(1), pack("a")}
    for data in encodings:
        assert unpack(data) in (1, "a")
        if data in canonical:
            assert unpack_canonical(data) in (1, "a")
        else:
            with pytest.raises(WireFormatError, match="non-canonical"):
                unpack_canonical(data)


def test_floats_and_maps_are_not_part_of_the_wire_format() -> None:
    with pytest.raises(WireFormatError):
        unpack_canonical(pack([1.5]))
    with pytest.raises(WireFormatError):
        unpack(pack({"a": 1}))


@given(st.binary(max_size=200))
def test_garbage_raises_only_wire_format_error(data: bytes) -> None:
    with contextlib.suppress(WireFormatError):
        unpack(data)
    with contextlib.suppress(WireFormatError):
        unpack_canonical(data)


values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.binary() | st.text(),
    lambda inner: st.lists(inner, max_size=5),
    max_leaves=20,
)


@given(values)
def test_canonical_round_trip(value: object) -> None:
    assert unpack_canonical(pack(value)) == value


# --- Merkle trees ----------------------------------------------------------------------------


def _reference_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 §2.1 MTH, written recursively as in the RFC."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    left, right = _reference_root(leaves[:k]), _reference_root(leaves[k:])
    return hashlib.sha256(b"\x01" + left + right).digest()


@pytest.mark.parametrize("n", range(71))
def test_merkle_root_matches_rfc_6962_and_every_proof_verifies(n: int) -> None:
    leaves = [b"leaf %d" % i for i in range(n)]
    root = merkle_root(leaves)
    assert root == _reference_root(leaves)
    tree = MerkleTree(leaves)
    assert tree.root == root
    for i in range(n):
        proof = tree.proof(i)
        assert proof == inclusion_proof(leaves, i)
        assert verify_inclusion(leaves[i], i, n, proof, root)
        assert not verify_inclusion(leaves[i] + b"x", i, n, proof, root)
        assert not verify_inclusion(leaves[i], i, i, proof, root)  # size must exceed index
        if n > 1:
            assert not verify_inclusion(leaves[i], (i + 1) % n, n, proof, root)
        assert not verify_inclusion(leaves[i], i, n, proof, b"\x00" * 32)


def test_an_odd_leaf_is_never_duplicated() -> None:
    a, b, c = b"a", b"b", b"c"
    assert merkle_root([a, b, c]) != merkle_root([a, b, c, c])


@given(st.lists(st.binary(max_size=8), min_size=1, max_size=40), st.data())
def test_proofs_for_random_trees(leaves: list[bytes], data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(leaves) - 1))
    tree = MerkleTree(leaves)
    assert verify_inclusion(leaves[i], i, len(leaves), tree.proof(i), tree.root)
