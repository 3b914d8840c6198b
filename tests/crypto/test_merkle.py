"""RFC 6962 Merkle trees against a straightforward recursive reference (§2.1 MTH, §2.1.1 PATH)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consortium.crypto.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    inclusion_proof,
    merkle_root,
    verify_inclusion,
)


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _k(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def reference_root(leaves: list[bytes]) -> bytes:
    """MTH(D[n]) exactly as RFC 6962 §2.1 writes it."""
    n = len(leaves)
    if n == 0:
        return _h(b"")
    if n == 1:
        return _h(b"\x00" + leaves[0])
    k = _k(n)
    return _h(b"\x01" + reference_root(leaves[:k]) + reference_root(leaves[k:]))


def reference_path(m: int, leaves: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) exactly as RFC 6962 §2.1.1 writes it."""
    n = len(leaves)
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return [*reference_path(m, leaves[:k]), reference_root(leaves[k:])]
    return [*reference_path(m - k, leaves[k:]), reference_root(leaves[:k])]


def _leaves(n: int) -> list[bytes]:
    return [b"leaf %d" % i for i in range(n)]


def test_the_empty_tree_is_the_hash_of_nothing() -> None:
    assert merkle_root([]) == EMPTY_ROOT == _h(b"")
    assert MerkleTree([]).root == EMPTY_ROOT
    assert MerkleTree([]).size == 0


@pytest.mark.parametrize("n", range(71))
def test_root_and_every_proof_match_the_rfc_6962_reference(n: int) -> None:
    leaves = _leaves(n)
    root = merkle_root(leaves)
    assert root == reference_root(leaves)
    tree = MerkleTree(leaves)
    assert tree.root == root and tree.size == n
    for i in range(n):
        proof = tree.proof(i)
        assert proof == reference_path(i, leaves)
        assert inclusion_proof(leaves, i) == proof
        assert verify_inclusion(leaves[i], i, n, proof, root)


@pytest.mark.parametrize("n", range(1, 71))
def test_every_proof_fails_for_a_wrong_index_leaf_root_or_size(n: int) -> None:
    leaves = _leaves(n)
    tree = MerkleTree(leaves)
    root = tree.root
    # Trees of other sizes: the first leaves shared, then more of the same kind.
    others = {s: MerkleTree(_leaves(s)) for s in range(1, n + 4) if s != n}
    for i in range(n):
        proof = tree.proof(i)
        assert not verify_inclusion(leaves[i] + b"!", i, n, proof, root)
        assert not verify_inclusion(leaves[i], i, n, proof, _h(root))
        for j in {i - 1, i + 1, i ^ 1, n - 1 - i, 0, n - 1} - {i}:
            if 0 <= j < n:
                assert not verify_inclusion(leaves[i], j, n, proof, root)
        for size, other in others.items():
            if size <= i:
                continue
            # Against the root of a tree of that size, a proof for size n never verifies...
            assert not verify_inclusion(leaves[i], i, size, proof, other.root)
            # ...and against the true root it fails whenever the path has another length.
            if len(other.proof(i)) != len(proof):
                assert not verify_inclusion(leaves[i], i, size, proof, root)
        assert not verify_inclusion(leaves[i], i, i, proof, root)  # index must be below size
        assert not verify_inclusion(leaves[i], i, 0, proof, root)
        assert not verify_inclusion(leaves[i], -1, n, proof, root)
        assert not verify_inclusion(leaves[i], i, n, [*proof, root], root)
        if proof:
            assert not verify_inclusion(leaves[i], i, n, proof[:-1], root)


def test_an_odd_leaf_is_never_duplicated() -> None:
    assert merkle_root([b"a", b"b", b"c"]) != merkle_root([b"a", b"b", b"c", b"c"])


def test_a_leaf_can_not_pose_as_an_interior_node() -> None:
    # The 0x00/0x01 prefixes keep a two-leaf tree's root from being a leaf of another tree.
    a, b = b"a", b"b"
    interior = _h(b"\x00" + a) + _h(b"\x00" + b)
    assert merkle_root([interior]) != merkle_root([a, b])


def test_proof_indices_outside_the_tree_raise_index_error() -> None:
    tree = MerkleTree(_leaves(3))
    for bad in (-1, 3):
        with pytest.raises(IndexError):
            tree.proof(bad)
        with pytest.raises(IndexError):
            inclusion_proof(_leaves(3), bad)


def test_malformed_proof_elements_are_refused_without_raising() -> None:
    leaves = _leaves(5)
    proof = inclusion_proof(leaves, 2)
    root = merkle_root(leaves)
    assert not verify_inclusion(leaves[2], 2, 5, [proof[0][:31], *proof[1:]], root)
    assert not verify_inclusion(leaves[2], 2, 5, ["x" * 32, *proof[1:]], root)  # type: ignore[list-item]


@given(
    st.lists(st.binary(max_size=12), min_size=1, max_size=80, unique=True),
    st.data(),
)
def test_random_trees_prove_every_leaf_and_refuse_every_tampering(
    leaves: list[bytes], data: st.DataObject
) -> None:
    n = len(leaves)
    i = data.draw(st.integers(0, n - 1), label="index")
    tree = MerkleTree(leaves)
    proof = tree.proof(i)
    assert tree.root == reference_root(leaves)
    assert verify_inclusion(leaves[i], i, n, proof, tree.root)
    j = data.draw(st.integers(0, n - 1), label="other index")
    if j != i:
        assert not verify_inclusion(leaves[i], j, n, proof, tree.root)
    if leaves[j] != leaves[i]:
        assert not verify_inclusion(leaves[j], i, n, proof, tree.root)
    if proof:
        k = data.draw(st.integers(0, len(proof) - 1), label="proof element")
        bit = data.draw(st.integers(0, 255), label="bit")
        flipped = bytearray(proof[k])
        flipped[bit // 8] ^= 1 << (bit % 8)
        bad = [*proof[:k], bytes(flipped), *proof[k + 1 :]]
        assert not verify_inclusion(leaves[i], i, n, bad, tree.root)
