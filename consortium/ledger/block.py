"""Blocks, receipts and batch digests.

A block header is what every honest member derives identically from the agreed batch, so block
hashes agree at every height: chain id, height, previous hash, timestamp (max of the proposed
timestamp and the previous block's, so it is monotonic across pipelining and view changes),
the RFC 6962 Merkle root of the transaction ids, the state root after execution, the Merkle root
of the receipts, and consensus metadata (pbft: mode, sequence number, proposed timestamp; raft:
mode, term, index, proposed timestamp). The view a batch committed in differs between replicas and
never enters the hash. Block hash = SHA-256 of the canonical header. Block 0 is genesis.

A 9th field, config_digest, is present exactly when the configuration in force after the block
(ledger/membership.py) has epoch >= 1, and is then its digest (docs/design/membership.md 2.1).
Epoch-0 headers commit to the genesis configuration through the chain id, so a network that
never changes members keeps 8-field headers, byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from consortium.crypto.codec import (
    WireFormatError,
    as_bytes,
    as_int,
    as_list,
    as_str,
    digest_of,
    pack,
)
from consortium.crypto.hashing import sha256
from consortium.crypto.merkle import EMPTY_ROOT, merkle_root
from consortium.ledger.genesis import Genesis, Params
from consortium.ledger.tx import Transaction

ZERO_HASH = b"\x00" * 32


def batch_digest(proposed_ms: int, tx_ids: list[bytes] | tuple[bytes, ...]) -> bytes:
    """What PBFT agrees on: the ordered transaction ids and the proposed timestamp."""
    return digest_of(["batch", proposed_ms, list(tx_ids)])


@dataclass(frozen=True, slots=True)
class BlockHeader:
    chain_id: bytes
    height: int
    prev_hash: bytes
    timestamp_ms: int
    tx_root: bytes
    state_root: bytes
    receipts_root: bytes
    consensus: tuple[
        str | int, ...
    ]  # ("pbft", seq, proposed_ms) | ("raft", term, index, proposed_ms)
    # The digest of the configuration in force after this block when its epoch is >= 1
    config_digest: bytes | None = None

    def to_array(self) -> list[Any]:
        a: list[Any] = [
            self.chain_id,
            self.height,
            self.prev_hash,
            self.timestamp_ms,
            self.tx_root,
            self.state_root,
            self.receipts_root,
            list(self.consensus),
        ]
        if self.config_digest is not None:
            a.append(self.config_digest)
        return a

    def encode(self) -> bytes:
        return pack(self.to_array())

    @property
    def hash(self) -> bytes:
        return sha256(self.encode())

    @property
    def proposed_ms(self) -> int:
        v = self.consensus[-1] if len(self.consensus) > 1 else self.timestamp_ms
        assert isinstance(v, int)
        return v

    @classmethod
    def from_array(cls, v: Any) -> BlockHeader:
        a = as_list(v, what="block header")
        if len(a) not in (8, 9):
            raise WireFormatError(f"block header: expected 8 or 9 fields, got {len(a)}")
        cons = as_list(a[7], what="consensus")
        if not cons or not all(isinstance(x, str | int) and not isinstance(x, bool) for x in cons):
            raise WireFormatError("consensus: expected a mode and integers")
        as_str(cons[0], "consensus mode", max_len=16)
        return cls(
            chain_id=as_bytes(a[0], "chain_id", size=32),
            height=as_int(a[1], "height"),
            prev_hash=as_bytes(a[2], "prev_hash", size=32),
            timestamp_ms=as_int(a[3], "timestamp_ms"),
            tx_root=as_bytes(a[4], "tx_root", size=32),
            state_root=as_bytes(a[5], "state_root", size=32),
            receipts_root=as_bytes(a[6], "receipts_root", size=32),
            consensus=tuple(cons),
            config_digest=as_bytes(a[8], "config_digest", size=32) if len(a) == 9 else None,
        )


OK = "ok"
REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Receipt:
    """The deterministic result of one transaction in one block."""

    tx_id: bytes
    status: str  # "ok" | "rejected"
    reason: str  # "" when ok; duplicate | expired | expiry_too_far | unknown_client | ...
    results: tuple[bytes | bool | None, ...]  # one per op: get -> value, del -> existed, ...
    height: int
    index: int

    def to_array(self) -> list[Any]:
        return [self.tx_id, self.status, self.reason, list(self.results), self.height, self.index]

    def encode(self) -> bytes:
        return pack(self.to_array())

    @classmethod
    def from_array(cls, v: Any) -> Receipt:
        a = as_list(v, 6, "receipt")
        results = as_list(a[3], what="results")
        for r in results:
            if not (r is None or isinstance(r, bytes | bool)):
                raise WireFormatError("receipt results: expected bytes, bool or nil")
        status = as_str(a[1], "status", max_len=16)
        if status not in (OK, REJECTED):
            raise WireFormatError(f"receipt status: {status!r}")
        return cls(
            tx_id=as_bytes(a[0], "tx_id", size=32),
            status=status,
            reason=as_str(a[2], "reason", max_len=64),
            results=tuple(results),
            height=as_int(a[4], "height"),
            index=as_int(a[5], "index"),
        )


def receipts_root(receipts: list[Receipt] | tuple[Receipt, ...]) -> bytes:
    return merkle_root([r.encode() for r in receipts]) if receipts else EMPTY_ROOT


@dataclass(frozen=True, slots=True)
class Block:
    header: BlockHeader
    txs: tuple[Transaction, ...]
    receipts: tuple[Receipt, ...]

    @property
    def height(self) -> int:
        return self.header.height

    @property
    def hash(self) -> bytes:
        return self.header.hash

    def encode_body(self) -> bytes:
        return pack([t.to_array() for t in self.txs])

    def encode_receipts(self) -> bytes:
        return pack([r.to_array() for r in self.receipts])

    def check_roots(self) -> str | None:
        """Stateless self-consistency; returns what is wrong, or None."""
        if merkle_root([t.id for t in self.txs]) != self.header.tx_root:
            return "transaction Merkle root does not match the header"
        if receipts_root(self.receipts) != self.header.receipts_root:
            return "receipts Merkle root does not match the header"
        if len(self.receipts) != len(self.txs):
            return "receipt count differs from transaction count"
        for i, (t, r) in enumerate(zip(self.txs, self.receipts, strict=True)):
            if r.tx_id != t.id or r.index != i or r.height != self.header.height:
                return f"receipt {i} does not belong to transaction {i}"
        return None


def decode_txs(data: bytes, params: Params) -> tuple[Transaction, ...]:
    from consortium.crypto.codec import unpack_canonical

    arr = as_list(unpack_canonical(data), what="block body")
    return tuple(Transaction.from_array(t, params) for t in arr)


def decode_receipts(data: bytes) -> tuple[Receipt, ...]:
    from consortium.crypto.codec import unpack_canonical

    arr = as_list(unpack_canonical(data), what="receipts")
    return tuple(Receipt.from_array(r) for r in arr)


def genesis_state_root(chain_id: bytes) -> bytes:
    return digest_of(["state-genesis", chain_id])


def genesis_block(genesis: Genesis) -> Block:
    chain_id = genesis.chain_id
    header = BlockHeader(
        chain_id=chain_id,
        height=0,
        prev_hash=ZERO_HASH,
        timestamp_ms=genesis.created_ms,
        tx_root=EMPTY_ROOT,
        state_root=genesis_state_root(chain_id),
        receipts_root=EMPTY_ROOT,
        consensus=("genesis",),
    )
    return Block(header, (), ())
