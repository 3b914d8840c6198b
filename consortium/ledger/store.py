"""The block store: embedded SQLite, append-only, crash-safe.

Rules:
- WAL mode with synchronous=FULL, both asserted at open: every COMMIT is durable (one fsync of
  the WAL) before `save` returns. `fsync_count` counts those commits.
- One `save` = one transaction = one fsync, whatever it holds: new blocks with their
  certificates, block signatures, stable checkpoint certificates, state writes, the executed-id
  index and the consensus core's records. fsyncs are grouped per core step, never one per
  transaction.
- Append-only: a block whose height is not head+1, whose previous hash is not the head's hash or
  whose chain id differs is refused with nothing written. Block rows are never updated.
- After a crash (kill -9) the database reopens to the last whole block, since a block, its state
  writes and the applied position commit together. On open the stored chain is re-verified
  (links, Merkle roots) and the application state is loaded.
- The data directory is stamped with the chain id; a store of another network is refused.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from consortium.crypto.codec import WireFormatError, unpack_canonical
from consortium.ledger.block import (
    Block,
    BlockHeader,
    Receipt,
    decode_receipts,
    decode_txs,
    genesis_block,
    genesis_state_root,
)
from consortium.ledger.certificates import CheckpointCertificate, SignedVote
from consortium.ledger.genesis import Genesis
from consortium.ledger.state import Execution, KeyValueState

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY,
    hash BLOB NOT NULL,
    header BLOB NOT NULL,
    body BLOB NOT NULL,
    receipts BLOB NOT NULL,
    certificate BLOB
);
CREATE TABLE IF NOT EXISTS block_signatures (
    height INTEGER NOT NULL,
    body BLOB NOT NULL,
    signature BLOB NOT NULL,
    PRIMARY KEY (height, body)
);
CREATE TABLE IF NOT EXISTS checkpoints (seq INTEGER PRIMARY KEY, certificate BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS tx_index (
    tx_id BLOB PRIMARY KEY, height INTEGER NOT NULL, idx INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS replay (tx_id BLOB PRIMARY KEY, expiry_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS replay_by_expiry ON replay (expiry_ms);
CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS records (key BLOB PRIMARY KEY, value BLOB NOT NULL);
"""


class StoreError(Exception):
    """The store cannot be used as asked; the message says what is wrong and what to do."""


@dataclass(frozen=True, slots=True)
class StoredBlock:
    block: Block
    certificate: bytes | None
    block_signatures: tuple[SignedVote, ...]


BlockItem = tuple[Block, Execution, bytes | None]


class BlockStore:
    def __init__(self, db: sqlite3.Connection, path: Path, genesis: Genesis) -> None:
        self._db = db
        self.path = path
        self.genesis = genesis
        self.fsync_count = 0
        self._head: BlockHeader = genesis_block(genesis).header
        self.app = KeyValueState(
            genesis.chain_id,
            genesis.params,
            genesis.client_keys(),
            genesis_state_root(genesis.chain_id),
        )

    # --- opening ----------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, genesis: Genesis, *, verify: bool = True) -> BlockStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # check_same_thread=False: the node may run the fsync on a worker thread; only one
            # task ever uses the connection at a time.
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            db.execute("PRAGMA synchronous=FULL")
            sync = db.execute("PRAGMA synchronous").fetchone()[0]
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot open the block store: {exc}") from None
        if str(mode).lower() != "wal" or sync != 2:
            db.close()
            raise StoreError(
                f"{path}: the store needs WAL mode with synchronous=FULL (got {mode}, {sync}); "
                "is the file on a filesystem that supports WAL?"
            )
        store = cls(db, path, genesis)
        try:
            store._init(verify)
        except BaseException:
            db.close()
            raise
        return store

    def _init(self, verify: bool) -> None:
        db = self._db
        try:
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: not a block store ({exc})") from None
        chain_id = self.genesis.chain_id
        row = db.execute("SELECT value FROM meta WHERE key = 'chain_id'").fetchone()
        if row is None:
            g = genesis_block(self.genesis)
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO meta VALUES ('chain_id', ?)", (chain_id,))
            db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            db.execute(
                "INSERT INTO blocks VALUES (0, ?, ?, ?, ?, NULL)",
                (g.hash, g.header.encode(), g.encode_body(), g.encode_receipts()),
            )
            db.execute("COMMIT")
            self.fsync_count += 1
        elif bytes(row[0]) != chain_id:
            raise StoreError(
                f"{self.path}: this data directory belongs to network {bytes(row[0]).hex()[:8]}…, "
                f"but genesis is {chain_id.hex()[:8]}…; point data_dir elsewhere or use the "
                "right genesis.json"
            )
        if verify:
            self._verify_chain()
        self._load_head_and_state()

    def _verify_chain(self) -> None:
        expected_prev = b""
        g = genesis_block(self.genesis)
        rows = self._db.execute(
            "SELECT height, hash, header, body, receipts FROM blocks ORDER BY height"
        )
        for expected_height, (height, stored_hash, header_bytes, body, receipts) in enumerate(rows):
            problem = self._check_row(
                height, bytes(stored_hash), bytes(header_bytes), bytes(body), bytes(receipts)
            )
            if problem is None and height != expected_height:
                problem = f"height {expected_height} is missing"
            if problem is None:
                header = BlockHeader.from_array(unpack_canonical(bytes(header_bytes)))
                if height == 0 and header != g.header:
                    problem = "block 0 is not this genesis"
                elif height > 0 and header.prev_hash != expected_prev:
                    problem = "previous-hash link is broken"
                expected_prev = header.hash
            if problem is not None:
                raise StoreError(
                    f"{self.path}: stored chain is damaged at height {height}: {problem}; "
                    "run `consortium ledger verify` for a full report"
                )

    def _check_row(
        self, height: int, stored_hash: bytes, header_bytes: bytes, body: bytes, receipts: bytes
    ) -> str | None:
        try:
            header = BlockHeader.from_array(unpack_canonical(header_bytes))
            block = Block(header, decode_txs(body, self.genesis.params), decode_receipts(receipts))
        except WireFormatError as exc:
            return f"undecodable block ({exc})"
        if header.height != height:
            return f"header says height {header.height}"
        if header.chain_id != self.genesis.chain_id:
            return "header names another chain"
        if header.hash != stored_hash:
            return "block hash does not match its header"
        return block.check_roots()

    def _load_head_and_state(self) -> None:
        db = self._db
        row = db.execute("SELECT header FROM blocks ORDER BY height DESC LIMIT 1").fetchone()
        self._head = BlockHeader.from_array(unpack_canonical(bytes(row[0])))
        kv = {bytes(k): bytes(v) for k, v in db.execute("SELECT key, value FROM kv")}
        replay = {
            bytes(t): int(e)
            for t, e in db.execute(
                "SELECT tx_id, expiry_ms FROM replay WHERE expiry_ms >= ?",
                (self._head.timestamp_ms,),
            )
        }
        state_root = self._head.state_root
        self.app = KeyValueState(
            self.genesis.chain_id,
            self.genesis.params,
            self.genesis.client_keys(),
            state_root,
            kv=kv,
            replay=replay,
            last_timestamp_ms=self._head.timestamp_ms,
        )

    # --- reading ----------------------------------------------------------------------------

    @property
    def head(self) -> BlockHeader:
        return self._head

    @property
    def height(self) -> int:
        return self._head.height

    def get_header(self, height: int) -> BlockHeader | None:
        row = self._db.execute("SELECT header FROM blocks WHERE height = ?", (height,)).fetchone()
        return None if row is None else BlockHeader.from_array(unpack_canonical(bytes(row[0])))

    def block_hash_at(self, height: int) -> bytes | None:
        row = self._db.execute("SELECT hash FROM blocks WHERE height = ?", (height,)).fetchone()
        return None if row is None else bytes(row[0])

    def get_block(self, height: int) -> StoredBlock | None:
        row = self._db.execute(
            "SELECT header, body, receipts, certificate FROM blocks WHERE height = ?", (height,)
        ).fetchone()
        if row is None:
            return None
        header = BlockHeader.from_array(unpack_canonical(bytes(row[0])))
        block = Block(
            header, decode_txs(bytes(row[1]), self.genesis.params), decode_receipts(bytes(row[2]))
        )
        sigs = tuple(
            SignedVote(bytes(b), bytes(s))
            for b, s in self._db.execute(
                "SELECT body, signature FROM block_signatures WHERE height = ? ORDER BY body",
                (height,),
            )
        )
        return StoredBlock(block, None if row[3] is None else bytes(row[3]), sigs)

    def receipt_of(self, tx_id: bytes) -> Receipt | None:
        row = self._db.execute(
            "SELECT height, idx FROM tx_index WHERE tx_id = ?", (tx_id,)
        ).fetchone()
        if row is None:
            return None
        rec = self._db.execute("SELECT receipts FROM blocks WHERE height = ?", (row[0],)).fetchone()
        return decode_receipts(bytes(rec[0]))[int(row[1])]

    def latest_checkpoint(self) -> CheckpointCertificate | None:
        row = self._db.execute(
            "SELECT certificate FROM checkpoints ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        return CheckpointCertificate.from_array(unpack_canonical(bytes(row[0])))

    def load_records(self, prefix: bytes = b"") -> list[tuple[bytes, bytes]]:
        rows = self._db.execute("SELECT key, value FROM records ORDER BY key").fetchall()
        return [(bytes(k), bytes(v)) for k, v in rows if bytes(k).startswith(prefix)]

    # --- writing ----------------------------------------------------------------------------

    def save(
        self,
        *,
        blocks: list[BlockItem] | None = None,
        records: list[tuple[bytes, bytes | None]] | None = None,
        block_signatures: list[tuple[int, SignedVote]] | None = None,
        checkpoints: list[CheckpointCertificate] | None = None,
        apply: bool = False,
    ) -> None:
        """One transaction, one fsync. `apply=True` also applies each block's Execution to
        `self.app` after the commit (the node applies as it executes, so it passes False)."""
        blocks = blocks or []
        head = self._head
        for block, _, _ in blocks:
            h = block.header
            if h.chain_id != self.genesis.chain_id:
                raise StoreError(f"block {h.height} names another chain; nothing written")
            if h.height != head.height + 1:
                raise StoreError(
                    f"block {h.height} does not follow the head at {head.height}; nothing written"
                )
            if h.prev_hash != head.hash:
                raise StoreError(
                    f"block {h.height}'s previous hash is not the hash of block {head.height}; "
                    "nothing written"
                )
            head = h
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for block, execution, certificate in blocks:
                h = block.header
                db.execute(
                    "INSERT INTO blocks VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        h.height,
                        h.hash,
                        h.encode(),
                        block.encode_body(),
                        block.encode_receipts(),
                        certificate,
                    ),
                )
                db.executemany(
                    "INSERT OR IGNORE INTO tx_index VALUES (?, ?, ?)",
                    [(t.id, h.height, i) for i, t in enumerate(block.txs)],
                )
                db.executemany(
                    "INSERT OR REPLACE INTO replay VALUES (?, ?)", list(execution.consumed)
                )
                puts = [(k, v) for k, v in execution.writes.items() if v is not None]
                dels = [(k,) for k, v in execution.writes.items() if v is None]
                if puts:
                    db.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?)", puts)
                if dels:
                    db.executemany("DELETE FROM kv WHERE key = ?", dels)
            if blocks:
                # Forget expired ids: they are rejected as expired anyway.
                db.execute("DELETE FROM replay WHERE expiry_ms < ?", (head.timestamp_ms,))
            for height, vote in block_signatures or []:
                db.execute(
                    "INSERT OR IGNORE INTO block_signatures VALUES (?, ?, ?)",
                    (height, vote.body, vote.signature),
                )
            for cp in checkpoints or []:
                db.execute("INSERT OR IGNORE INTO checkpoints VALUES (?, ?)", (cp.seq, cp.encode()))
            for key, value in records or []:
                if value is None:
                    db.execute("DELETE FROM records WHERE key = ?", (key,))
                else:
                    db.execute("INSERT OR REPLACE INTO records VALUES (?, ?)", (key, value))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.fsync_count += 1
        self._head = head
        if apply:
            for _, execution, _ in blocks:
                self.app.apply(execution)

    def append_blocks(self, items: list[BlockItem]) -> None:
        self.save(blocks=items, apply=True)

    def add_block_signatures(self, height: int, votes: list[SignedVote]) -> None:
        self.save(block_signatures=[(height, v) for v in votes])

    def put_checkpoint(self, cert: CheckpointCertificate) -> None:
        self.save(checkpoints=[cert])

    def close(self) -> None:
        self._db.close()
