"""Merkle trees over transaction ids, RFC 6962 §2.1: leaves hashed with a 0x00 prefix, interior
nodes with 0x01, and an odd node is never duplicated (the tree splits at the largest power of two
below n). The empty tree's root is SHA-256 of the empty string.
"""

from __future__ import annotations

from collections.abc import Sequence

from consortium.crypto.hashing import sha256

_LEAF = b"\x00"
_NODE = b"\x01"
EMPTY_ROOT = sha256(b"")


def leaf_hash(data: bytes) -> bytes:
    return sha256(_LEAF + data)


def node_hash(left: bytes, right: bytes) -> bytes:
    return sha256(_NODE + left + right)


def _split(n: int) -> int:
    """Largest power of two strictly less than n (n >= 2)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def _root_of_hashes(hashes: Sequence[bytes]) -> bytes:
    # Iterative bottom-up form of RFC 6962's recursive MTH: pairing left to right and carrying an
    # odd last node up unchanged gives exactly the largest-power-of-two split.
    level = list(hashes)
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    if not leaves:
        return EMPTY_ROOT
    return _root_of_hashes([leaf_hash(x) for x in leaves])


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """The audit path for leaf `index` (RFC 6962 §2.1.1), deepest sibling first."""
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf {index} not in a tree of {len(leaves)}")
    return _path(index, [leaf_hash(x) for x in leaves])


def _path(m: int, hashes: list[bytes]) -> list[bytes]:
    n = len(hashes)
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return [*_path(m, hashes[:k]), _root_of_hashes(hashes[k:])]
    return [*_path(m - k, hashes[k:]), _root_of_hashes(hashes[:k])]


def verify_inclusion(
    leaf: object, index: object, size: object, proof: Sequence[object], root: object
) -> bool:
    """RFC 9162 §2.1.3.2 verification of an inclusion proof; never raises on bad input (typed
    `object`: compiled, a wrong type would otherwise raise TypeError at the call)."""
    if not (isinstance(leaf, bytes) and isinstance(root, bytes)):
        return False
    if not (isinstance(index, int) and isinstance(size, int) and 0 <= index < size):
        return False
    fn, sn = index, size - 1
    r = leaf_hash(leaf)
    for p in proof:
        if not isinstance(p, bytes) or len(p) != 32 or sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


class MerkleTree:
    """All levels of one tree, so every inclusion proof of a block costs O(log n), not O(n).

    Levels are built bottom-up pairing left to right and carrying an odd last node up unchanged,
    which is exactly RFC 6962's largest-power-of-two split; a proof takes the sibling at each
    level where one exists.
    """

    __slots__ = ("_levels",)

    def __init__(self, leaves: Sequence[bytes]) -> None:
        level = [leaf_hash(x) for x in leaves]
        self._levels = [level]
        while len(level) > 1:
            nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                nxt.append(level[-1])
            self._levels.append(nxt)
            level = nxt

    @property
    def size(self) -> int:
        return len(self._levels[0])

    @property
    def root(self) -> bytes:
        return self._levels[-1][0] if self._levels[0] else EMPTY_ROOT

    def proof(self, index: int) -> list[bytes]:
        if not 0 <= index < self.size:
            raise IndexError(f"leaf {index} not in a tree of {self.size}")
        path: list[bytes] = []
        for level in self._levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):
                path.append(level[sibling])
            index //= 2
        return path
