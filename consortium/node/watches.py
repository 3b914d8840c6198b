"""Receipt watches: which client connections wait for which transactions' receipts, pushed as
each block executes (node/executor.py's Executed effect) and answered for duplicates once the
block is durable. Owned by the client service (service.py), which hands the member its
executed/durable hooks; bounded in total, per connection, and in time."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from consortium.crypto.merkle import MerkleTree
from consortium.ledger.block import Block, Receipt
from consortium.ledger.certificates import SignedVote
from consortium.protocol.messages import encode_block_receipts

WATCHED_TXS_MAX = 200_000  # transactions with a waiting client, over all connections
WATCH_SCAN_BLOCKS = 64  # how often (in blocks) watches of expired transactions are forgotten
# Watches by id (a client following ids it did not submit here) carry no expiry a block could
# judge, and anyone reaching the client port may send them: they get a fixed age and a share of
# WATCHED_TXS_MAX, so strangers watching random ids never make submits "overloaded".
ID_WATCH_AGE_S = 600.0  # a watch by id is forgotten after this (the client asks again)
ID_WATCHES_SHARE = 4  # watches by id take at most WATCHED_TXS_MAX // this, node-wide


class ReceiptWatches:
    """Connections (each keeps the ids it watches in `conn.watched`) waiting for receipts."""

    def __init__(self, first_receipt_bundle: Callable[[bytes], list[Any] | None]) -> None:
        self._first_receipt_bundle = first_receipt_bundle  # one id's first bundle, from the store
        # tx id -> connections waiting for its receipt (bounded in total)
        self._watchers: dict[bytes, list[Any]] = {}
        self.count = 0
        self._watch_expiry: dict[bytes, int] = {}  # watched id -> its transaction's expiry
        # Watches by id: (id, connection) -> (monotonic deadline, connection), oldest first
        # (one fixed age, so insertion order is deadline order); counted per connection too.
        self._id_watches: dict[tuple[bytes, int], tuple[float, Any]] = {}
        # per connection, its watches by id, oldest first (so the fullest can give one up)
        self._id_watches_by_conn: dict[int, OrderedDict[bytes, None]] = {}
        self._blocks_since_scan = 0
        # Watched duplicates of each executed block, answered once it is durable (by height).
        self._duplicates: dict[int, list[tuple[bytes, list[Any]]]] = {}

    def watch(self, tx_id: bytes, conn: Any, expiry_ms: int | None = None) -> bool:
        """Push `tx_id`'s receipt to `conn` (which keeps the ids it watches in `conn.watched`)
        when its block executes; with `expiry_ms` (a submitted transaction's), forget the watch
        once a block's time has passed it (the transaction can never execute then). False when
        too many are watched."""
        if self.count >= WATCHED_TXS_MAX:
            return False
        conns = self._watchers.setdefault(tx_id, [])
        if conn not in conns:
            conns.append(conn)
            conn.watched.add(tx_id)
            self.count += 1
        elif expiry_ms is not None:
            self._forget_id_watch(tx_id, conn)  # submitted now: it expires with the transaction
        if expiry_ms is not None:
            self._watch_expiry[tx_id] = max(expiry_ms, self._watch_expiry.get(tx_id, 0))
        return True

    def watch_id(self, tx_id: bytes, conn: Any, per_connection_max: int) -> bool:
        """A watch by id (no transaction submitted here): like `watch`, but forgotten after
        ID_WATCH_AGE_S and within its own share of the node-wide bound (at most
        WATCHED_TXS_MAX // ID_WATCHES_SHARE, and `per_connection_max` per connection), so
        submits keep room. False when that share is full."""
        now_s = time.monotonic()
        self._forget_aged_id_watches(now_s)
        if tx_id in conn.watched:
            return True  # already watched (by id, or submitted: which expires on its own)
        mine = len(self._id_watches_by_conn.get(id(conn), ()))
        if mine >= per_connection_max:
            return False
        if len(
            self._id_watches
        ) >= WATCHED_TXS_MAX // ID_WATCHES_SHARE and not self._share_id_watch(mine):
            return False
        if not self.watch(tx_id, conn):
            return False
        self._id_watches[(tx_id, id(conn))] = (now_s + ID_WATCH_AGE_S, conn)
        self._id_watches_by_conn.setdefault(id(conn), OrderedDict())[tx_id] = None
        return True

    def _share_id_watch(self, mine: int) -> bool:
        """The share of watches by id is full: a connection holding fewer than the fullest one
        (by two or more) takes the fullest one's oldest watch, so whoever fills the share
        cannot lock others out (max-min fair); the evicted client watches again or asks for
        the receipt. False when the asker already holds its fair part."""
        fullest = max(self._id_watches_by_conn.items(), key=lambda kv: len(kv[1]), default=None)
        if fullest is None or len(fullest[1]) < mine + 2:
            return False
        conn_id, watched = fullest
        tx_id = next(iter(watched))
        _, conn = self._id_watches[(tx_id, conn_id)]
        self.unwatch_connection(conn, {tx_id})
        return True

    def _forget_id_watch(self, tx_id: bytes, conn: Any) -> None:
        if self._id_watches.pop((tx_id, id(conn)), None) is not None:
            watched = self._id_watches_by_conn[id(conn)]
            del watched[tx_id]
            if not watched:
                del self._id_watches_by_conn[id(conn)]

    def _forget_aged_id_watches(self, now_s: float) -> None:
        """Watches by id older than ID_WATCH_AGE_S (oldest first: stops at the first young one)."""
        while self._id_watches:
            (tx_id, _), (deadline_s, conn) = next(iter(self._id_watches.items()))
            if deadline_s > now_s:
                return
            self.unwatch_connection(conn, {tx_id})

    def unwatch_connection(self, conn: Any, tx_ids: set[bytes]) -> None:
        for tx_id in tx_ids:
            conns = self._watchers.get(tx_id)
            conn.watched.discard(tx_id)
            self._forget_id_watch(tx_id, conn)
            if conns and conn in conns:
                conns.remove(conn)
                self.count -= 1
                if not conns:
                    del self._watchers[tx_id]
                    self._watch_expiry.pop(tx_id, None)

    def _unwatch(self, tx_id: bytes) -> list[Any]:
        """Every connection watching `tx_id`, no longer watching it."""
        conns = self._watchers.pop(tx_id, None) or []
        self._watch_expiry.pop(tx_id, None)
        self.count -= len(conns)
        for conn in conns:
            conn.watched.discard(tx_id)
            self._forget_id_watch(tx_id, conn)
        return conns

    def _forget_expired_watches(self, block_ms: int) -> None:
        """Watches of transactions that expired before this block's time: they cannot execute
        any more, so no receipt will come (the client sees them pending and resubmits or gives
        up). Scanned every WATCH_SCAN_BLOCKS blocks, bounded by WATCHED_TXS_MAX."""
        self._blocks_since_scan += 1
        if self._blocks_since_scan < WATCH_SCAN_BLOCKS:
            return
        self._blocks_since_scan = 0
        for tx_id in [t for t, exp in self._watch_expiry.items() if exp < block_ms]:
            self._unwatch(tx_id)

    def executed(self, block: Block, vote: SignedVote) -> bool:
        """Push the receipts watched in `block` as soon as it executed, before its write: one
        "receipts" frame per connection (header and block signature once, each receipt with
        its Merkle proof); whether any was pushed. Watched duplicates are answered once the
        block is durable (durable()), with the first receipt of their id.

        Why before the write: the transaction is already committed and its block fixed. In
        pbft 2f+1 members prepared the batch durably before any COMMIT left, so it commits
        at this sequence number in every later view and re-executes to the same block (its
        timestamp is the proposal's); in raft the entry is durable on a majority. A member
        that loses power before writing the block rebuilds the same one. So under load, where
        the write runs on a worker thread (runtime.Node._write), a client holds a true receipt one
        fsync sooner; only a lookup on this member in that window says "pending"."""
        by_conn: dict[int, tuple[Any, list[Receipt]]] = {}
        duplicates: list[tuple[bytes, list[Any]]] = []
        for index, tx in enumerate(block.txs):
            if tx.id not in self._watchers:
                continue
            conns = self._unwatch(tx.id)
            receipt = block.receipts[index]
            if receipt.reason == "duplicate":
                duplicates.append((tx.id, conns))
                continue
            for conn in conns:
                by_conn.setdefault(id(conn), (conn, []))[1].append(receipt)
        if by_conn:
            tree = MerkleTree([r.encode() for r in block.receipts])
            for conn, receipts in by_conn.values():
                conn.push_block_receipts(encode_block_receipts(block.header, vote, tree, receipts))
        if duplicates:
            self._duplicates.setdefault(block.height, []).extend(duplicates)
        return bool(by_conn)

    def durable(self, block: Block, vote: SignedVote) -> None:
        """After `block`'s write: answer watched duplicates with the first receipt of their
        id (a later copy of an id that already executed is never reported as its result; the
        first may be in a block of the same write), expire watches."""
        # With the ids watched while the write ran (a watch checks the store first, which did
        # not have this block yet): answered now.
        self.executed(block, vote)
        for tx_id, conns in self._duplicates.pop(block.height, []):
            first = self._first_receipt_bundle(tx_id)
            if first is not None:
                for conn in conns:
                    conn.push_receipt(first)
        self._forget_expired_watches(block.header.timestamp_ms)
        self._forget_aged_id_watches(time.monotonic())
