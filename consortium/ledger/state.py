"""The application: a deterministic state machine behind a small interface, and the default
key-value store.

Execution of one agreed batch, given the previous header, is a pure function of the batch and the
state, so every honest member derives the same receipts, state root and block. State-dependent
failures are deterministic `rejected` receipts that change nothing:

    unknown_client   the signing key is not an admitted client
    wrong_chain      the body names another chain (also refused before ordering)
    duplicate        the id already executed (in an earlier block, or earlier in this block)
    expired          expiry_ms < block timestamp
    expiry_too_far   expiry_ms - block timestamp > tx_ttl_max_ms
    cas_mismatch     a compare-and-set found another value (the whole transaction is undone)

Replay protection is by id: an id executes at most once. Only unexpired ids need remembering
(an expired id is rejected anyway), so the replay set is bounded by tx_ttl_max_ms times the rate.

State root. Deviation from a Merkleised state: the root is a hash chain over each block's state
changes, root_h = H("state", root_{h-1}, sorted writes, ids consumed). It commits to the whole
state (two replicas with equal roots applied identical histories from genesis), updates in time
proportional to the block's writes, never to the size of the state, and is recomputed by the
offline audit. It does not give per-key proofs against the root; receipts carry Merkle proofs
against the block instead.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Protocol

from consortium.crypto.codec import digest_of
from consortium.crypto.merkle import merkle_root
from consortium.ledger.block import (
    OK,
    REJECTED,
    Block,
    BlockHeader,
    Receipt,
    receipts_root,
)
from consortium.ledger.genesis import Params
from consortium.ledger.tx import CompareAndSet, Delete, Get, Put, Transaction


@dataclass(frozen=True, slots=True)
class Execution:
    """The outcome of executing one block, before it is applied."""

    receipts: tuple[Receipt, ...]
    writes: dict[bytes, bytes | None]  # key -> new value (None: deleted)
    consumed: tuple[tuple[bytes, int], ...]  # (tx id, expiry_ms) now in the replay set
    state_root: bytes
    timestamp_ms: int


class Application(Protocol):
    @property
    def state_root(self) -> bytes: ...

    def execute(
        self, height: int, timestamp_ms: int, txs: tuple[Transaction, ...]
    ) -> Execution: ...

    def apply(self, execution: Execution) -> None: ...


@dataclass
class KeyValueState:
    """The default application. `execute` is pure; `apply` commits an Execution."""

    chain_id: bytes
    params: Params
    clients: frozenset[bytes]
    state_root: bytes
    kv: dict[bytes, bytes] = field(default_factory=dict)
    replay: dict[bytes, int] = field(default_factory=dict)  # unexpired executed id -> expiry
    _expiry_heap: list[tuple[int, bytes]] = field(default_factory=list)
    last_timestamp_ms: int = 0

    def __post_init__(self) -> None:
        self._expiry_heap = [(exp, tid) for tid, exp in self.replay.items()]
        heapq.heapify(self._expiry_heap)

    def get(self, key: bytes) -> bytes | None:
        return self.kv.get(key)

    def execute(self, height: int, timestamp_ms: int, txs: tuple[Transaction, ...]) -> Execution:
        writes: dict[bytes, bytes | None] = {}
        consumed: list[tuple[bytes, int]] = []
        seen_here: set[bytes] = set()
        receipts: list[Receipt] = []
        ttl_max = self.params.tx_ttl_max_ms

        def current(key: bytes) -> bytes | None:
            return writes[key] if key in writes else self.kv.get(key)

        for index, tx in enumerate(txs):
            reason = ""
            if tx.chain_id != self.chain_id:
                reason = "wrong_chain"
            elif tx.client_key not in self.clients:
                reason = "unknown_client"
            elif tx.id in seen_here or (
                tx.id in self.replay and self.replay[tx.id] >= timestamp_ms
            ):
                reason = "duplicate"
            elif tx.expiry_ms < timestamp_ms:
                reason = "expired"
            elif tx.expiry_ms - timestamp_ms > ttl_max:
                reason = "expiry_too_far"
            results: list[bytes | bool | None] = []
            if not reason:
                local: dict[bytes, bytes | None] = {}

                def read(key: bytes, local: dict[bytes, bytes | None] = local) -> bytes | None:
                    return local[key] if key in local else current(key)

                for op in tx.ops:
                    match op:
                        case Put(key=k, value=v):
                            local[k] = v
                            results.append(None)
                        case Delete(key=k):
                            results.append(read(k) is not None)
                            local[k] = None
                        case CompareAndSet(key=k, expected=e, new=n):
                            if read(k) != e:
                                reason = "cas_mismatch"
                                break
                            local[k] = n
                            results.append(True)
                        case Get(key=k):
                            results.append(read(k))
                if not reason:
                    writes.update(local)
            if reason in ("", "cas_mismatch"):
                # The id is spent whether or not its operations applied: it executed.
                seen_here.add(tx.id)
                consumed.append((tx.id, tx.expiry_ms))
            if reason:
                receipts.append(Receipt(tx.id, REJECTED, reason, (), height, index))
            else:
                receipts.append(Receipt(tx.id, OK, "", tuple(results), height, index))

        root = digest_of(
            [
                "state",
                self.state_root,
                [[k, writes[k]] for k in sorted(writes)],
                [tid for tid, _ in consumed],
            ]
        )
        return Execution(tuple(receipts), writes, tuple(consumed), root, timestamp_ms)

    def apply(self, execution: Execution) -> None:
        for k, v in execution.writes.items():
            if v is None:
                self.kv.pop(k, None)
            else:
                self.kv[k] = v
        for tid, exp in execution.consumed:
            self.replay[tid] = exp
            heapq.heappush(self._expiry_heap, (exp, tid))
        self.state_root = execution.state_root
        self.last_timestamp_ms = execution.timestamp_ms
        self._prune(execution.timestamp_ms)

    def _prune(self, now_ms: int) -> None:
        """Forget ids whose expiry has passed: they would be rejected as expired anyway."""
        heap = self._expiry_heap
        while heap and heap[0][0] < now_ms:
            exp, tid = heapq.heappop(heap)
            if self.replay.get(tid) == exp:
                del self.replay[tid]


def build_block(
    prev: BlockHeader,
    consensus: tuple[str | int, ...],
    proposed_ms: int,
    txs: tuple[Transaction, ...],
    app: Application,
) -> tuple[Block, Execution]:
    """Execute an agreed batch on top of `prev`; pure with respect to `app` (call app.apply)."""
    height = prev.height + 1
    timestamp_ms = max(proposed_ms, prev.timestamp_ms)
    execution = app.execute(height, timestamp_ms, txs)
    header = BlockHeader(
        chain_id=prev.chain_id,
        height=height,
        prev_hash=prev.hash,
        timestamp_ms=timestamp_ms,
        tx_root=merkle_root([t.id for t in txs]),
        state_root=execution.state_root,
        receipts_root=receipts_root(execution.receipts),
        consensus=consensus,
    )
    return Block(header, txs, execution.receipts), execution
