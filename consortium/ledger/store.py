"""The block store: embedded SQLite, append-only, crash-safe.

Rules and invariants:
- WAL mode with synchronous=FULL, both asserted at open (StoreError if SQLite did not take them):
  every COMMIT is durable (one fsync of the WAL) before `save` returns. `fsync_count` counts
  those commits, for the "fsyncs per block" metric.
- One `save` = one transaction = one fsync, whatever it holds: new blocks with their
  certificates, block signatures, stable checkpoint certificates, the state writes, the replay
  set (client change ids; a transaction's replay entry is its index row), the transaction
  index, the applied height and the consensus core's records. fsyncs are grouped per core
  step, never one per transaction. A save with nothing in it writes nothing.
- Append-only: a block whose height is not head+1, whose previous hash is not the head's hash,
  whose chain id differs or that does not match its Execution is refused before anything is
  written. Block rows are only ever INSERTed (never UPDATEd, REPLACEd or DELETEd).
- The head block, the kv table, the replay set and meta.applied_height always commit together,
  so after a crash (kill -9 at any moment) the store reopens to the last whole block with the
  state after exactly that block. At open, applied_height must equal the head's height and
  block 0 must be this genesis; with verify=True the whole stored chain is re-checked (height
  continuity, stored hash = header hash, previous-hash links, transaction and receipt Merkle
  roots) and the first broken height is named.
- The transaction index maps an id to its first *executed* receipt: the first occurrence is
  recorded, a later occurrence never replaces an executed one (a later copy is a `duplicate`),
  and only an occurrence that executed may replace an earlier one that did not (a transaction
  rejected as expiry_too_far that executes later). Its row also holds the transaction's
  expiry: an executed row is the id's entry in the replay set (format 4; the replay table
  keeps the consumed ids that are no transaction's, a client change's), so a block writes one
  random-key row per transaction for both, and none is ever deleted for expiring.
- `self.app` is the application state at the head. `save` applies each block's Execution after
  the commit unless the application already reflects it: the node applies as it executes (so the
  next batch of a step runs on top), and the state root, a hash chain with one value per
  position, tells how far the application is.
- The admitted clients (`clients`, genesis clients at block 0), the client changes waiting
  for their effective height (`pending_client_changes`, in the order they were accepted) and
  the block time of each key's last accepted change (`client_changed`) are application state:
  written with the block that changes them, loaded at open.
- The configurations (`configurations`: every one, with the first height it orders), a pbft
  member change waiting for its effective height (`pending_member_change`, at most one) and
  every key that was ever a member's or a client's (`used_keys`) are application state too
  (format 5, docs/design/membership.md 2.2): written with the block that changes them, loaded
  at open. `config_chain` holds each activation's chain entry, evidence beside the ledger like
  `checkpoints`, written by the node (`put_config_chain`) and served from here.
- The data directory is stamped with the chain id; a store of another network is refused.
- The record RECOVERY_MARK_KEY (in the records table, beside the core's own records, so it is
  written and deleted in the same transactions) says the member must start in recovery: its
  consensus records may be older than what it sent. `node backup` puts it in every copy, the
  node puts it in a store it creates in a data directory not marked new, in the transaction
  that creates the store (`created_mark`: a mark written after it, a kill between the two
  left an unmarked store and the next start was a normal one), and deletes it in the write
  that follows the core's leaving recovery (node/preflight.py, node/runtime.py).
- Per-block work is proportional to the block (indexed lookups and inserts only); memory holds
  the application state and the replay set, nothing else that grows with the chain.
- Table digests. Every table the member relies on besides `blocks` (DIGESTED) has a digest in
  meta (`digest/<table>`): the sum mod 2^256 of SHA-256 over a canonical, length-prefixed
  encoding of the table's name and each row (row_digest), so it does not depend on row order
  and moves by one row's hash per inserted, updated or deleted row. TEMP triggers on the
  writer connection (they exist only there: an operator's sqlite3 session needs none of our
  code) report each row change to a Python function that accumulates per-table deltas; the
  new digests go into meta in the same transaction as the writes, and a rollback drops the
  deltas. At open (with verify=True) every digested table is scanned and compared, before the
  member votes: a row edited, added or deleted since the member wrote it (disk rot, an
  operator's slip, an edit by hand) is refused naming the table (StoreDamaged), with the two
  ways back: a backup, or `consortium node refetch`. A store from a version without digests
  gets them computed from its tables at its first open (logged). What it does not detect:
  someone who edits a table and recomputes its digest. Whoever can do that can also replace
  the member's code or key: they own the member; the digest is against accidents and slips,
  and `ledger verify` (re-execution from genesis) is the deep check.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from consortium.crypto.codec import WireFormatError, pack, unpack_canonical
from consortium.ledger.admission import ADMIT, PendingChange
from consortium.ledger.block import (
    Block,
    BlockHeader,
    Receipt,
    decode_receipts,
    decode_txs,
    genesis_block,
)
from consortium.ledger.certificates import CheckpointCertificate, SignedVote
from consortium.ledger.digests import (
    DIGEST_KEY,
    DIGEST_MOD,
    DIGESTED,
    FORMAT_SEPARATE_REPLAY,
    FORMAT_WITHOUT_DIGESTS,
    FORMAT_WITHOUT_MEMBERSHIP,
    MEMBERSHIP_TABLES,
    ROW_FUNCTION,
    STORE_FORMAT,
    digested_tables,
    has_column,
    row_digest,
    stored_digests,
    table_digest,
)
from consortium.ledger.genesis import Genesis
from consortium.ledger.membership import (
    CHAIN_ENTRY_BYTES_MAX,
    Configuration,
    genesis_configuration,
)
from consortium.ledger.state import (
    CLIENT_KEY,
    MEMBER_KEY,
    CachedTable,
    Execution,
    KeyValueState,
    PendingMember,
)

log = logging.getLogger(__name__)

# 3: table digests (format 2 had none; upgraded at open after an audit). 4: executed ids judged
# for replays by the transaction index's expiry_ms, the replay table keeping only the ids that
# are no transaction's (client change ids); format 3 is upgraded at open (_fold_replay).
# 5: the membership tables (configurations, pending_member_change, used_keys, config_chain);
# format 4 is upgraded at open (_add_membership_tables).
SCHEMA_VERSION = STORE_FORMAT
# Start in recovery (module rules); the value says from what, in words for `status`.
RECOVERY_MARK_KEY = b"node/recovering"
RESTORED_BACKUP = "a restored backup"
LOST_STATE = "lost state (an empty data directory)"
PAGE_CACHE_KB = 32 * 1024  # SQLite's page cache per store
READER_CACHE_KB = 8 * 1024  # and the reader connection's (state misses, known ids)
STATE_CACHE_MAX = 65_536  # key-value and replay entries cached in memory (each table)
STATE_CACHE_BYTES_MAX = 64 << 20  # and at most this many bytes of keys and values (each table)
_SYNCHRONOUS_FULL = 2  # what `PRAGMA synchronous` reports for FULL

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)",
    """CREATE TABLE IF NOT EXISTS blocks (
        height INTEGER PRIMARY KEY,
        hash BLOB NOT NULL,
        header BLOB NOT NULL,
        body BLOB NOT NULL,
        receipts BLOB NOT NULL,
        certificate BLOB
    )""",
    """CREATE TABLE IF NOT EXISTS block_signatures (
        height INTEGER NOT NULL,
        body BLOB NOT NULL,
        signature BLOB NOT NULL,
        PRIMARY KEY (height, body)
    ) WITHOUT ROWID""",
    "CREATE TABLE IF NOT EXISTS checkpoints (seq INTEGER PRIMARY KEY, certificate BLOB NOT NULL)",
    """CREATE TABLE IF NOT EXISTS tx_index (
        tx_id BLOB PRIMARY KEY,
        height INTEGER NOT NULL,
        idx INTEGER NOT NULL,
        executed INTEGER NOT NULL,
        expiry_ms INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS replay (
        tx_id BLOB PRIMARY KEY, expiry_ms INTEGER NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS replay_by_expiry ON replay (expiry_ms)",
    "CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS records (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID",
)
# Admitted clients, added after format 2 first shipped: a store without them is given them at
# open (it can only have the genesis clients: nothing could change them before).
_CLIENT_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS clients (key BLOB PRIMARY KEY, label TEXT NOT NULL) WITHOUT ROWID",
    """CREATE TABLE IF NOT EXISTS pending_client_changes (
        seq INTEGER PRIMARY KEY, change_id BLOB NOT NULL UNIQUE, value BLOB NOT NULL
    )""",
    # key -> block time (ms) of its last accepted change; added after the two above (a store
    # without it had no accepted change in the current change format: given it empty at open)
    "CREATE TABLE IF NOT EXISTS client_changed (key BLOB PRIMARY KEY, ms INTEGER NOT NULL) "
    "WITHOUT ROWID",
)

# Members (format 5, docs/design/membership.md 2.2): derived state, then evidence.
_MEMBERSHIP_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS configurations (
        epoch INTEGER PRIMARY KEY, first_height INTEGER NOT NULL, digest BLOB NOT NULL,
        value BLOB NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS pending_member_change (
        id INTEGER PRIMARY KEY CHECK (id = 0), effective_height INTEGER NOT NULL,
        change_id BLOB NOT NULL, value BLOB NOT NULL
    )""",
    "CREATE TABLE IF NOT EXISTS used_keys (key BLOB PRIMARY KEY, kind TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS config_chain (epoch INTEGER PRIMARY KEY, entry BLOB NOT NULL)",
)
CONFIG_CHAIN_ENTRY_BYTES_MAX = (
    CHAIN_ENTRY_BYTES_MAX  # a configuration (<= 512 kB), a header, a certificate
)

# The first occurrence of an id is recorded; only an executed occurrence may replace one that
# did not execute, and nothing replaces an executed one. expiry_ms is the transaction's (the id
# hashes it: every occurrence has the same).
_INDEX_TX = """
INSERT INTO tx_index (tx_id, height, idx, executed, expiry_ms) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (tx_id) DO UPDATE SET height = excluded.height, idx = excluded.idx, executed = 1,
    expiry_ms = excluded.expiry_ms
WHERE tx_index.executed = 0 AND excluded.executed = 1
"""
# The replay set (ledger/state.py): an executed transaction's id with its expiry, from the
# transaction index; any other consumed id (a client change's) from the replay table.
_REPLAY_ONE = (
    "SELECT expiry_ms FROM tx_index WHERE tx_id = ?1 AND executed = 1 "
    "UNION ALL SELECT expiry_ms FROM replay WHERE tx_id = ?1"
)


class StoreError(Exception):
    """The store cannot be used as asked; the message says what is wrong and what to do."""


class StoreDamaged(StoreError):
    """Tables that do not match their digests (`tables`): refused at open. The message names
    them and the ways back; `advice(home)` says it with the member's home filled in."""

    def __init__(self, path: Path, tables: Sequence[str]) -> None:
        self.path = path
        self.tables = tuple(tables)
        super().__init__(self.advice(None))

    def advice(self, home: Path | str | None) -> str:
        named = ", ".join(f"{DIGESTED[t][1]} ({t})" for t in self.tables)
        verb = "does" if len(self.tables) == 1 else "do"
        digests = "its digest" if len(self.tables) == 1 else "their digests"
        return (
            f"{self.path}: {named} {verb} not match {digests}: edited or damaged since the "
            "member wrote it; the member will not vote on it. Either restore a backup taken "
            "before the damage (docs/operations.md, Restoring) or re-fetch the ledger from the "
            f"other members: `consortium node refetch --home {home or 'HOME'}`, then start it"
        )


@dataclass(frozen=True, slots=True)
class StoredBlock:
    block: Block
    certificate: bytes | None
    block_signatures: tuple[SignedVote, ...]


BlockItem = tuple[Block, Execution, bytes | None]
Record = tuple[bytes, bytes | None]


class BlockStore:
    """Use `BlockStore.open`. One writing connection, used by one task at a time (its COMMIT may
    run on a worker thread, Node._write), and a read-only one for the hot reads (_open_reader)."""

    def __init__(
        self,
        db: sqlite3.Connection,
        path: Path,
        genesis: Genesis,
        *,
        member_changes: bool = False,
    ) -> None:
        self._db = db
        self.path = path
        self.genesis = genesis
        self.member_changes = member_changes  # KeyValueState.member_changes, for its app
        self.fsync_count = 0
        self.last_commit_s = 0.0  # how long the last save's COMMIT (its fsync) took
        # What stage() wrote, for commit_staged()/finish_staged(): (head, blocks, applied, mark)
        self._staged: tuple[BlockHeader, list[BlockItem], int, tuple[int, int]] | None = None
        self._reader = db  # open() replaces it with the read-only connection (_open_reader)
        # Table digests (module rules): committed, and the deltas the triggers report for the
        # transaction in progress (cleared at each BEGIN, dropped by a rollback).
        self._digests: dict[str, int] = {}
        self._schema: object = SCHEMA_VERSION  # as stamped in meta (_check_meta)
        self._deltas: dict[str, int] = {}
        self._staged_digests: dict[str, int] | None = None
        self._head: BlockHeader = genesis_block(genesis).header
        self.app = KeyValueState.for_genesis(
            genesis, self._head.state_root, member_changes=member_changes
        )

    # --- opening ----------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: Path,
        genesis: Genesis,
        *,
        verify: bool = True,
        created_mark: str | None = None,
        member_changes: bool = False,
    ) -> BlockStore:
        """Open (or create, writing block 0) the store for `genesis`; see the module rules.
        `created_mark`: if this creates the store, the RECOVERY_MARK_KEY record it carries
        from the transaction that creates it (node/preflight.py, open_store).
        `member_changes`: its state's KeyValueState.member_changes (False in this release)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # check_same_thread=False: the node may run a save on a worker thread; only one task
            # ever uses the connection at a time. isolation_level=None: we issue BEGIN/COMMIT.
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot open the block store: {exc}") from None
        store: BlockStore | None = None
        try:
            store = cls(db, path, genesis, member_changes=member_changes)
            store._configure()
            store._reader = _open_reader(path)
            store._init(verify, created_mark)
        except BaseException:
            if store is not None and store._reader is not db:
                store._reader.close()
            db.close()
            raise
        return store

    def _configure(self) -> None:
        db = self._db
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            db.execute("PRAGMA synchronous=FULL")
            # Pages of the indexes every block inserts into (tx ids, replay, keys: random keys)
            # stay in memory instead of being read back from the OS per insert; bounded.
            db.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KB}")
            sync = db.execute("PRAGMA synchronous").fetchone()[0]
        except sqlite3.Error as exc:
            raise StoreError(
                f"{self.path}: cannot open the block store ({exc}); is it a block store file?"
            ) from None
        if str(mode).lower() != "wal":
            raise StoreError(
                f"{self.path}: SQLite refused WAL mode (journal_mode is {mode}); put the data "
                "directory on a local filesystem that supports shared memory"
            )
        if sync != _SYNCHRONOUS_FULL:
            raise StoreError(
                f"{self.path}: SQLite refused synchronous=FULL (got {sync}); the store cannot "
                "promise durability, so it will not run"
            )

    def _init(self, verify: bool, created_mark: str | None) -> None:
        db = self._db
        try:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "meta" not in tables:
                if tables:
                    raise StoreError(
                        f"{self.path}: this SQLite file is not a block store (it holds "
                        f"{', '.join(sorted(tables))}); point data_dir at an empty directory"
                    )
                if self._create(created_mark):
                    self.fsync_count += 1
            self._check_meta()
            if "meta" in tables and not {"clients", "client_changed"} <= tables:
                self._add_client_tables()
            self._load_head()
            if verify:
                self._verify_chain()
            self._check_digests(verify)
            # (a store stamped 4 without the column: none this release writes, but the fold
            # repairs one rather than fail on its first block)
            if self._schema == FORMAT_SEPARATE_REPLAY or not has_column(
                db, "tx_index", "expiry_ms"
            ):
                self._fold_replay()
            if self._schema == FORMAT_WITHOUT_MEMBERSHIP:
                self._add_membership_tables()
            self._install_triggers()
            self._load_state()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot read the block store: {exc}") from None

    def _create(self, mark: str | None) -> bool:
        """Create the tables and block 0, and the recovery mark if any, in one transaction
        (False if another process did)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA + _CLIENT_SCHEMA + _MEMBERSHIP_SCHEMA:
                db.execute(statement)
            if db.execute("SELECT 1 FROM meta WHERE key = 'chain_id'").fetchone() is not None:
                db.execute("ROLLBACK")
                return False
            self._insert_genesis_clients()
            self._insert_genesis_membership()
            g = genesis_block(self.genesis)
            db.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [
                    ("chain_id", g.header.chain_id),
                    ("schema", SCHEMA_VERSION),
                    ("applied_height", 0),
                ],
            )
            db.execute(
                "INSERT INTO blocks VALUES (0, ?, ?, ?, ?, NULL)",
                (g.hash, g.header.encode(), g.encode_body(), g.encode_receipts()),
            )
            if mark is not None:
                db.execute(
                    "INSERT INTO records (key, value) VALUES (?, ?)",
                    (RECOVERY_MARK_KEY, mark.encode()),
                )
            db.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [(DIGEST_KEY + t, table_digest(db, t).to_bytes(32, "big")) for t in DIGESTED],
            )
            db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        return True

    def _check_digests(self, verify: bool) -> None:
        """Compare every digested table with its digest in meta (module rules); a store of
        format 2 gets them now, if it audits clean. verify=False trusts the stored digests. A
        store of this format with a digest missing is damaged, all of them missing too (else
        deleting the digest rows would have the start bless whatever the tables hold)."""
        db = self._db
        stored = stored_digests(db)
        if self._schema == FORMAT_WITHOUT_DIGESTS:
            self._upgrade_to_digests()
            return
        tables = digested_tables(self._schema)
        missing = [t for t in tables if t not in stored]
        if missing:
            raise StoreDamaged(self.path, missing)  # (its digest row was deleted)
        if verify:
            wrong = [t for t in tables if table_digest(db, t) != stored[t]]
            if wrong:
                raise StoreDamaged(self.path, wrong)
        self._digests = {t: stored[t] for t in tables}

    def _upgrade_to_digests(self) -> None:
        """A store of format 2, from a version without table digests: its tables are taken
        as they are only if the whole ledger audits clean (ledger/audit.py: every block
        re-executed from genesis, and the stored state, replay set, clients and index compared
        with the result), then stamped with digests and format 3 in one transaction. Once, and
        slow (the audit checks every signature): said in the log."""
        from consortium.ledger.audit import audit_ledger  # (audit imports this module)

        db = self._db
        log.warning(
            "%s: a store of format 2 (before table digests): auditing the whole ledger once "
            "before it is trusted and upgraded",
            self.path,
        )
        report = audit_ledger(self.path, self.genesis, member_changes=self.member_changes)
        if not report.ok:
            raise StoreError(
                f"{self.path}: a store of format 2 is upgraded only if it audits clean, and it "
                f"does not: {report.problem}; the member will not vote on it. Re-fetch the "
                "ledger from the other members: `consortium node refetch --home HOME`, then "
                "start it"
            )
        self._digests = {t: table_digest(db, t) for t in digested_tables(self._schema)}
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [(DIGEST_KEY + t, d.to_bytes(32, "big")) for t, d in self._digests.items()],
            )
            # Format 3's layout: the fold to 4 is the next step (_init), its own transaction.
            db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (FORMAT_SEPARATE_REPLAY,))
            db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self._schema = FORMAT_SEPARATE_REPLAY
        self.fsync_count += 1
        log.warning("%s: audited clean; upgraded to format 3 (table digests)", self.path)

    def _fold_replay(self) -> None:
        """Format 3 -> 4, in one transaction: tx_index gains expiry_ms, set from the replay
        table for the executed ids it holds (0 for an id whose expiry had passed: only an
        expiry at or after a block's time makes an id a replay), and those ids leave the replay
        table, which keeps the client change ids. Each block then writes one random-key row
        per transaction fewer, and deletes none (an index row's expiry just passes). The two
        tables must match their digests first, whatever `verify` said: their digests are
        written anew from what they hold."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            stored = stored_digests(db)
            damaged = [t for t in ("tx_index", "replay") if table_digest(db, t) != stored.get(t)]
            if damaged:
                raise StoreDamaged(self.path, damaged)
            db.execute("ALTER TABLE tx_index ADD COLUMN expiry_ms INTEGER NOT NULL DEFAULT 0")
            db.execute(
                "UPDATE tx_index SET expiry_ms = "
                "(SELECT r.expiry_ms FROM replay r WHERE r.tx_id = tx_index.tx_id) "
                "WHERE executed = 1 AND tx_id IN (SELECT tx_id FROM replay)"
            )
            db.execute(
                "DELETE FROM replay WHERE EXISTS (SELECT 1 FROM tx_index t "
                "WHERE t.tx_id = replay.tx_id AND t.executed = 1)"
            )
            digests = {t: table_digest(db, t) for t in ("tx_index", "replay")}
            db.executemany(
                "UPDATE meta SET value = ? WHERE key = ?",
                [(d.to_bytes(32, "big"), DIGEST_KEY + t) for t, d in digests.items()],
            )
            db.execute(
                "UPDATE meta SET value = ? WHERE key = 'schema'", (FORMAT_WITHOUT_MEMBERSHIP,)
            )
            db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self._digests.update(digests)
        self._schema = FORMAT_WITHOUT_MEMBERSHIP
        self.fsync_count += 1
        log.warning("%s: upgraded to format 4 (the replay set's ids in tx_index)", self.path)

    def _add_membership_tables(self) -> None:
        """Format 4 -> 5, in one transaction (docs/design/membership.md 2.2): the membership
        tables, the genesis configuration (a store of format 4 never changed members: nothing
        could), used_keys from the genesis members and clients and every key with an accepted
        client change (client_changed: exactly what re-execution gives), their digests, and
        the stamp. A stop before the COMMIT leaves format 4, upgraded at the next open."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _MEMBERSHIP_SCHEMA:
                db.execute(statement)
            self._insert_genesis_membership()
            db.execute(
                "INSERT INTO used_keys (key, kind) SELECT key, ? FROM client_changed WHERE true "
                "ON CONFLICT (key) DO NOTHING",
                (CLIENT_KEY,),
            )
            digests = {t: table_digest(db, t) for t in MEMBERSHIP_TABLES}
            db.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [(DIGEST_KEY + t, d.to_bytes(32, "big")) for t, d in digests.items()],
            )
            db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (SCHEMA_VERSION,))
            db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self._digests.update(digests)
        self._schema = SCHEMA_VERSION
        self.fsync_count += 1
        log.warning("%s: upgraded to format 5 (the membership tables)", self.path)

    def _insert_genesis_membership(self) -> None:
        """The genesis configuration (epoch 0, ordering from height 1) and its members' and
        the genesis clients' keys as used."""
        db = self._db
        config = genesis_configuration(self.genesis)
        db.execute(
            "INSERT INTO configurations (epoch, first_height, digest, value) VALUES (0, 1, ?, ?)",
            (config.digest, config.encode()),
        )
        rows = {c.public_key: CLIENT_KEY for c in self.genesis.clients}
        rows.update({m.public_key: MEMBER_KEY for m in self.genesis.members})
        db.executemany(
            "INSERT INTO used_keys (key, kind) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
            list(rows.items()),
        )

    def _install_triggers(self) -> None:
        """TEMP triggers on the writer connection: each row a write inserts, updates (upserts
        included) or deletes moves its table's delta by the row's digest (module rules)."""

        def on_row(table: str, sign: int, *row: object) -> None:
            deltas = self._deltas
            deltas[table] = deltas.get(table, 0) + sign * row_digest(table, row)

        db = self._db
        db.create_function(ROW_FUNCTION, -1, on_row, deterministic=True)
        for table, (columns, _) in DIGESTED.items():
            old = ", ".join(f"OLD.{c}" for c in columns)
            new = ", ".join(f"NEW.{c}" for c in columns)
            f = ROW_FUNCTION
            db.execute(
                f"CREATE TEMP TRIGGER IF NOT EXISTS digest_{table}_insert AFTER INSERT ON "
                f"main.{table} BEGIN SELECT {f}('{table}', 1, {new}); END"
            )
            db.execute(
                f"CREATE TEMP TRIGGER IF NOT EXISTS digest_{table}_update AFTER UPDATE ON "
                f"main.{table} BEGIN SELECT {f}('{table}', -1, {old}), {f}('{table}', 1, {new}); "
                "END"
            )
            db.execute(
                f"CREATE TEMP TRIGGER IF NOT EXISTS digest_{table}_delete AFTER DELETE ON "
                f"main.{table} BEGIN SELECT {f}('{table}', -1, {old}); END"
            )

    def _write_digests(self) -> dict[str, int]:
        """Fold this transaction's deltas into the digests and write the changed ones into
        meta (in the transaction); the digests as they will be once it commits."""
        new = dict(self._digests)
        changed = []
        for table, delta in self._deltas.items():
            if delta % DIGEST_MOD:
                new[table] = (new.get(table, 0) + delta) % DIGEST_MOD
                changed.append((new[table].to_bytes(32, "big"), DIGEST_KEY + table))
        self._deltas.clear()
        if changed:
            self._db.executemany("UPDATE meta SET value = ? WHERE key = ?", changed)
        return new

    def _insert_genesis_clients(self) -> None:
        self._db.executemany(
            "INSERT INTO clients (key, label) VALUES (?, ?)",
            [(c.public_key, c.name) for c in self.genesis.clients],
        )

    def _add_client_tables(self) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            exists = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='clients'"
            ).fetchone()
            for statement in _CLIENT_SCHEMA:
                db.execute(statement)
            if exists is None:
                self._insert_genesis_clients()
            db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self.fsync_count += 1

    def _meta(self, key: str) -> object:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _check_meta(self) -> None:
        chain_id = self.genesis.chain_id
        stamped = self._meta("chain_id")
        if not isinstance(stamped, bytes):
            raise StoreError(f"{self.path}: the block store has no chain id stamp; it is damaged")
        if stamped != chain_id:
            raise StoreError(
                f"{self.path}: data directory belongs to network {stamped.hex()[:8]}, genesis is "
                f"{chain_id.hex()[:8]}; use that network's genesis.json or another data directory"
            )
        schema = self._meta("schema")
        self._schema = schema
        if schema not in (
            SCHEMA_VERSION,
            FORMAT_WITHOUT_MEMBERSHIP,
            FORMAT_SEPARATE_REPLAY,
            FORMAT_WITHOUT_DIGESTS,
        ):
            raise StoreError(
                f"{self.path}: block store format {schema!r}, this version reads formats "
                f"{FORMAT_WITHOUT_DIGESTS} to {SCHEMA_VERSION}; move the data directory away "
                "and let the node catch up"
            )

    def _damaged(self, height: int, problem: str) -> StoreError:
        return StoreError(
            f"{self.path}: stored chain is damaged at height {height}: {problem}; "
            "run `consortium ledger verify` for a full report"
        )

    def _load_head(self) -> None:
        db = self._db
        row = db.execute(
            "SELECT height, header FROM blocks ORDER BY height DESC LIMIT 1"
        ).fetchone()
        if row is None:
            raise StoreError(f"{self.path}: the block store holds no blocks; it is damaged")
        height = int(row[0])
        self._head = self._decode_header(height, row[1])
        applied = self._meta("applied_height")
        if applied != height:
            raise self._damaged(
                height, f"the applied height is {applied!r} but the last block is {height}"
            )
        first = db.execute("SELECT hash FROM blocks WHERE height = 0").fetchone()
        if first is None or first[0] != genesis_block(self.genesis).hash:
            raise self._damaged(0, "block 0 is not this genesis")

    def _verify_chain(self) -> None:
        """Stream the chain once: continuity, hashes, links, Merkle roots; name the height."""
        genesis_header = genesis_block(self.genesis).header
        prev_hash = b""
        rows = self._db.execute(
            "SELECT height, hash, header, body, receipts FROM blocks ORDER BY height"
        )
        for expected, (height, stored_hash, header_b, body_b, receipts_b) in enumerate(rows):
            if height != expected:
                raise self._damaged(expected, f"block {expected} is missing")
            problem = self._check_row(height, stored_hash, header_b, body_b, receipts_b)
            if problem is None:
                header = BlockHeader.from_array(unpack_canonical(header_b))
                if height == 0 and header != genesis_header:
                    problem = "block 0 is not this genesis"
                elif height > 0 and header.prev_hash != prev_hash:
                    problem = "previous-hash link is broken"
                prev_hash = header.hash
            if problem is not None:
                raise self._damaged(height, problem)

    def _check_row(
        self, height: int, stored_hash: bytes, header_b: bytes, body_b: bytes, receipts_b: bytes
    ) -> str | None:
        try:
            header = BlockHeader.from_array(unpack_canonical(header_b))
            txs = decode_txs(body_b, self.genesis.params)
            receipts = decode_receipts(receipts_b)
        except WireFormatError as exc:
            return f"block does not decode ({exc})"
        if header.height != height:
            return f"header says height {header.height}"
        if header.chain_id != self.genesis.chain_id:
            return "header names another chain"
        if header.hash != stored_hash:
            return "stored block hash does not match its header"
        return Block(header, txs, receipts).check_roots()

    def _load_state(self) -> None:
        db = self._db
        head = self._head
        reader = self._reader

        # The key-value state and the replay set stay in the store: read through a bounded
        # cache, so memory does not grow with the state (ledger/state.py, CachedTable). An
        # executed transaction's id stays in the index and is judged by its expiry there (a
        # replay only if the expiry is at or after the block's time); the replay table's other
        # ids are deleted at the next write once expired, and judged by their expiry until then.
        # Read on the reader connection (the committed state): what a write in progress holds
        # is pinned in the cache, never read, and the reads do not wait for its fsync.
        def load_value(key: bytes) -> bytes | None:
            row = reader.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
            return None if row is None else bytes(row[0])

        def load_expiry(tx_id: bytes) -> int | None:
            row = reader.execute(_REPLAY_ONE, (tx_id,)).fetchone()
            return None if row is None else int(row[0])

        def load_values(keys: list[bytes]) -> dict[bytes, bytes]:
            return {
                bytes(k): bytes(v) for k, v in _select_in(reader, "key, value FROM kv", "key", keys)
            }

        def load_expiries(tx_ids: list[bytes]) -> dict[bytes, int]:
            rows = _select_in(reader, "tx_id, executed, expiry_ms FROM tx_index", "tx_id", tx_ids)
            found = {bytes(t): int(e) for t, executed, e in rows if executed}
            rest = [t for t in tx_ids if t not in found]
            for t, e in _select_in(reader, "tx_id, expiry_ms FROM replay", "tx_id", rest):
                found[bytes(t)] = int(e)
            return found

        kv: CachedTable[bytes] = CachedTable(
            load_value, STATE_CACHE_MAX, load_values, STATE_CACHE_BYTES_MAX
        )
        replay: CachedTable[int] = CachedTable(
            load_expiry, STATE_CACHE_MAX, load_expiries, STATE_CACHE_BYTES_MAX
        )
        admitted = {
            bytes(k): str(label) for k, label in db.execute("SELECT key, label FROM clients")
        }
        try:
            pending = [
                PendingChange.from_array(unpack_canonical(bytes(v)))
                for (v,) in db.execute("SELECT value FROM pending_client_changes ORDER BY seq")
            ]
        except WireFormatError as exc:
            raise self._damaged(
                head.height, f"a pending client change does not decode ({exc})"
            ) from None
        changed_ms = {
            bytes(k): int(ms) for k, ms in db.execute("SELECT key, ms FROM client_changed")
        }
        configs, pending_member = self._load_membership()
        used_keys = {
            bytes(k): str(kind) for k, kind in db.execute("SELECT key, kind FROM used_keys")
        }
        self.app = KeyValueState.for_genesis(
            self.genesis,
            head.state_root,
            admitted=admitted,
            pending=pending,
            changed_ms=changed_ms,
            kv=kv,
            replay=replay,
            last_timestamp_ms=head.timestamp_ms,
            configs=configs,
            pending_member=pending_member,
            used_keys=used_keys,
            member_changes=self.member_changes,
        )

    def _load_membership(
        self,
    ) -> tuple[dict[int, tuple[int, Configuration]], PendingMember | None]:
        db = self._db
        height = self._head.height
        configs: dict[int, tuple[int, Configuration]] = {}
        for epoch, first, digest, value in db.execute(
            "SELECT epoch, first_height, digest, value FROM configurations ORDER BY epoch"
        ):
            config = self._configuration(height, bytes(value), f"configuration {epoch}")
            if config.epoch != epoch or config.digest != bytes(digest):
                raise self._damaged(height, f"configuration {epoch} is not the one stored for it")
            configs[int(epoch)] = (int(first), config)
        if 0 not in configs or configs[0][1] != genesis_configuration(self.genesis):
            raise self._damaged(height, "the stored configurations do not start at genesis's")
        row = db.execute(
            "SELECT effective_height, change_id, value FROM pending_member_change"
        ).fetchone()
        pending: PendingMember | None = None
        if row is not None:
            config = self._configuration(height, bytes(row[2]), "the pending configuration")
            pending = (int(row[0]), bytes(row[1]), config)
        return configs, pending

    def _configuration(self, height: int, value: bytes, what: str) -> Configuration:
        try:
            return Configuration.decode(value)
        except WireFormatError as exc:
            raise self._damaged(height, f"{what} does not decode ({exc})") from None

    # --- reading ----------------------------------------------------------------------------

    @property
    def head(self) -> BlockHeader:
        return self._head

    @property
    def height(self) -> int:
        return self._head.height

    def _decode_header(self, height: int, data: bytes) -> BlockHeader:
        try:
            return BlockHeader.from_array(unpack_canonical(data))
        except WireFormatError as exc:
            raise self._damaged(height, f"header does not decode ({exc})") from None

    def get_header(self, height: int) -> BlockHeader | None:
        row = self._db.execute("SELECT header FROM blocks WHERE height = ?", (height,)).fetchone()
        return None if row is None else self._decode_header(height, row[0])

    def block_hash_at(self, height: int) -> bytes | None:
        row = self._db.execute("SELECT hash FROM blocks WHERE height = ?", (height,)).fetchone()
        return None if row is None else bytes(row[0])

    def get_block(self, height: int) -> StoredBlock | None:
        return self._block_from(self._db, height)

    def read_block(self, height: int) -> StoredBlock | None:
        """get_block for a worker thread: on a read-only connection of its own, opened and
        closed here (a few hundred µs beside a block's decode), so it never shares the writing
        connection with the task that writes, nor sees a write not yet committed."""
        db = _open_reader(self.path)
        try:
            return self._block_from(db, height)
        finally:
            db.close()

    def read_tx_position(self, tx_id: bytes) -> tuple[int, int] | None:
        """Where `tx_id`'s first receipt is, (height, index), or None; for a worker thread, as
        read_block (the explorer's lookups by id, node/explorer)."""
        db = _open_reader(self.path)
        try:
            row = db.execute(
                "SELECT height, idx FROM tx_index WHERE tx_id = ?", (tx_id,)
            ).fetchone()
        finally:
            db.close()
        return None if row is None else (int(row[0]), int(row[1]))

    def _block_from(self, db: sqlite3.Connection, height: int) -> StoredBlock | None:
        row = db.execute(
            "SELECT header, body, receipts, certificate FROM blocks WHERE height = ?", (height,)
        ).fetchone()
        if row is None:
            return None
        header = self._decode_header(height, row[0])
        try:
            block = Block(header, decode_txs(row[1], self.genesis.params), decode_receipts(row[2]))
        except WireFormatError as exc:
            raise self._damaged(height, f"block does not decode ({exc})") from None
        sigs = tuple(
            SignedVote(bytes(b), bytes(s))
            for b, s in db.execute(
                "SELECT body, signature FROM block_signatures WHERE height = ? ORDER BY body",
                (height,),
            )
        )
        return StoredBlock(block, None if row[3] is None else bytes(row[3]), sigs)

    def raw_block(self, height: int) -> tuple[bytes, bytes, bytes] | None:
        """A stored block's hash, header bytes and receipts bytes as stored (canonical msgpack,
        so they can be sent on without decoding; the transactions are not read)."""
        row = self._db.execute(
            "SELECT hash, header, receipts FROM blocks WHERE height = ?", (height,)
        ).fetchone()
        return None if row is None else (bytes(row[0]), bytes(row[1]), bytes(row[2]))

    def block_receipts(self, height: int) -> tuple[BlockHeader, tuple[Receipt, ...]] | None:
        """A stored block's header and receipts, decoded without its transactions."""
        raw = self.raw_block(height)
        if raw is None:
            return None
        header = self._decode_header(height, raw[1])
        try:
            return header, decode_receipts(raw[2])
        except WireFormatError as exc:
            raise self._damaged(height, f"receipts do not decode ({exc})") from None

    def block_signatures(self, height: int) -> tuple[SignedVote, ...]:
        """The member block signatures stored for `height`."""
        return tuple(
            SignedVote(bytes(b), bytes(s))
            for b, s in self._db.execute(
                "SELECT body, signature FROM block_signatures WHERE height = ? ORDER BY body",
                (height,),
            )
        )

    def receipt_positions(self, tx_ids: Sequence[bytes]) -> dict[bytes, tuple[int, int]]:
        """Where the first executed receipt of each of `tx_ids` in the ledger is: id ->
        (height, index) (one indexed query per 500 ids; ids not in the ledger are absent)."""
        return {
            bytes(row[0]): (int(row[1]), int(row[2]))
            for row in _select_in(self._db, "tx_id, height, idx FROM tx_index", "tx_id", tx_ids)
        }

    def known_tx_ids(self, tx_ids: Sequence[bytes]) -> set[bytes]:
        """Which of `tx_ids` occur in the durable ledger (one indexed query per 500 ids; on
        the reader connection, so a submission never waits for a write's fsync)."""
        return {
            bytes(row[0])
            for row in _select_in(self._reader, "tx_id FROM tx_index", "tx_id", tx_ids)
        }

    def receipt_of(self, tx_id: bytes) -> Receipt | None:
        """The first executed receipt of `tx_id` (if no occurrence executed: the first one)."""
        db = self._db
        row = db.execute("SELECT height, idx FROM tx_index WHERE tx_id = ?", (tx_id,)).fetchone()
        if row is None:
            return None
        height, index = int(row[0]), int(row[1])
        rec = db.execute("SELECT receipts FROM blocks WHERE height = ?", (height,)).fetchone()
        try:
            receipts = decode_receipts(rec[0]) if rec is not None else ()
        except WireFormatError as exc:
            raise self._damaged(height, f"receipts do not decode ({exc})") from None
        if index >= len(receipts) or receipts[index].tx_id != tx_id:
            raise self._damaged(height, f"the transaction index points at a wrong receipt {index}")
        return receipts[index]

    def latest_checkpoint(self) -> CheckpointCertificate | None:
        row = self._db.execute(
            "SELECT seq, certificate FROM checkpoints ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        try:
            return CheckpointCertificate.from_array(unpack_canonical(row[1]))
        except WireFormatError as exc:
            raise self._damaged(row[0], f"checkpoint certificate does not decode ({exc})") from None

    def recovery_mark(self) -> str | None:
        """What this member recovers from (the RECOVERY_MARK_KEY record), or None."""
        row = self._db.execute(
            "SELECT value FROM records WHERE key = ?", (RECOVERY_MARK_KEY,)
        ).fetchone()
        return None if row is None else bytes(row[0]).decode("utf-8", "replace")

    def load_records(self, prefix: bytes = b"") -> list[tuple[bytes, bytes]]:
        """Records whose key starts with `prefix`, in key order (an indexed range scan)."""
        upper = _prefix_end(prefix)
        if upper is None:
            cursor = self._db.execute(
                "SELECT key, value FROM records WHERE key >= ? ORDER BY key", (prefix,)
            )
        else:
            cursor = self._db.execute(
                "SELECT key, value FROM records WHERE key >= ? AND key < ? ORDER BY key",
                (prefix, upper),
            )
        return [(bytes(k), bytes(v)) for k, v in cursor]

    # --- writing ----------------------------------------------------------------------------

    def save(
        self,
        *,
        blocks: Sequence[BlockItem] = (),
        records: Sequence[Record] = (),
        block_signatures: Sequence[tuple[int, SignedVote]] = (),
        checkpoints: Sequence[CheckpointCertificate] = (),
        config_chain: Sequence[tuple[int, bytes]] = (),
    ) -> None:
        """One transaction, one fsync, for everything given (a record value None deletes the
        key); then apply the blocks' Executions that `self.app` does not reflect yet. A refused
        block leaves everything unwritten."""
        if self.stage(
            blocks=blocks,
            records=records,
            block_signatures=block_signatures,
            checkpoints=checkpoints,
            config_chain=config_chain,
        ):
            self.commit_staged()
            self.finish_staged()

    def stage(
        self,
        *,
        blocks: Sequence[BlockItem] = (),
        records: Sequence[Record] = (),
        block_signatures: Sequence[tuple[int, SignedVote]] = (),
        checkpoints: Sequence[CheckpointCertificate] = (),
        config_chain: Sequence[tuple[int, bytes]] = (),
    ) -> bool:
        """`save` in three steps, so the fsync can run off the caller's thread: write
        everything in one open transaction (False: nothing to write, no transaction open);
        then `commit_staged()` (the fsync; the only step that may run on a worker thread, while
        the owner of the store does nothing else with it but read); then `finish_staged()`."""
        assert self._staged is None, "a staged write is still open"
        new_head = self._check_blocks(blocks)
        applied = self._applied_prefix(blocks)
        for epoch, entry in config_chain:
            if (
                epoch < 1
                or not isinstance(entry, bytes)
                or len(entry) > CONFIG_CHAIN_ENTRY_BYTES_MAX
            ):
                raise StoreError(
                    f"config chain entry of epoch {epoch}: epochs from 1, entries of bytes up to "
                    f"{CONFIG_CHAIN_ENTRY_BYTES_MAX}; nothing written"
                )
        if not (blocks or records or block_signatures or checkpoints or config_chain):
            return False
        db = self._db
        try:
            self._deltas.clear()
            db.execute("BEGIN IMMEDIATE")
            for block, execution, certificate in blocks:
                self._write_block(block, execution, certificate)
            if blocks:
                # Forget ids whose expiry passed (the app prunes the same ones after applying).
                db.execute("DELETE FROM replay WHERE expiry_ms < ?", (new_head.timestamp_ms,))
                db.execute(
                    "UPDATE meta SET value = ? WHERE key = 'applied_height'", (new_head.height,)
                )
            db.executemany(
                "INSERT OR IGNORE INTO block_signatures VALUES (?, ?, ?)",
                [(height, v.body, v.signature) for height, v in block_signatures],
            )
            db.executemany(
                "INSERT OR IGNORE INTO checkpoints VALUES (?, ?)",
                [(cp.seq, cp.encode()) for cp in checkpoints],
            )
            db.executemany("INSERT OR IGNORE INTO config_chain VALUES (?, ?)", config_chain)
            db.executemany(
                "INSERT INTO records VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [(k, v) for k, v in records if v is not None],
            )
            db.executemany(
                "DELETE FROM records WHERE key = ?", [(k,) for k, v in records if v is None]
            )
            self._staged_digests = self._write_digests()
        except BaseException as exc:
            self._failed(exc)
        self._staged = (new_head, list(blocks), applied, self.app.write_mark())
        return True

    def commit_staged(self) -> None:
        """COMMIT the staged transaction: the fsync (WAL, synchronous=FULL)."""
        assert self._staged is not None, "nothing staged"
        try:
            committing = time.perf_counter()
            self._db.execute("COMMIT")
            self.last_commit_s = time.perf_counter() - committing
            if self._staged_digests is not None:
                self._digests, self._staged_digests = self._staged_digests, None
        except BaseException as exc:
            self._staged = None
            self._failed(exc)

    def finish_staged(self) -> None:
        """After the commit: the new head, and the blocks' Executions applied and durable."""
        assert self._staged is not None and not self._db.in_transaction, "nothing committed"
        new_head, blocks, applied, mark = self._staged
        self._staged = None
        self.fsync_count += 1
        self._head = new_head
        for _, execution, _ in blocks[applied:]:
            self.app.apply(execution)
        if applied < len(blocks):
            mark = self.app.write_mark()  # (the app was at the head: nothing applied after)
        for _, execution, _ in blocks:
            # Blocks applied after this write was staged (their own write comes next) keep
            # what they changed pinned, even a value changed back to what this write holds.
            self.app.durable(execution, mark)

    def _failed(self, exc: BaseException) -> NoReturn:
        """Roll back and say why the write failed (nothing of it is written)."""
        self._rollback()
        if isinstance(exc, sqlite3.IntegrityError):
            raise StoreError(
                f"{self.path}: write refused, nothing written ({exc}); is another process using "
                "this data directory?"
            ) from None
        if isinstance(exc, sqlite3.Error):
            raise StoreError(
                f"{self.path}: write failed, nothing written ({exc}); check free disk space and "
                "permissions"
            ) from None
        raise exc

    def _rollback(self) -> None:
        self._deltas.clear()
        self._staged_digests = None
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def _check_blocks(self, blocks: Sequence[BlockItem]) -> BlockHeader:
        """The head after `blocks`, or StoreError if one does not follow or is inconsistent."""
        head = self._head
        for block, execution, certificate in blocks:
            h = block.header
            if h.chain_id != self.genesis.chain_id:
                raise StoreError(
                    f"block {h.height} names chain {h.chain_id.hex()[:8]}, this store holds "
                    f"{self.genesis.chain_id.hex()[:8]}; nothing written"
                )
            if h.height != head.height + 1:
                raise StoreError(
                    f"block {h.height} does not follow the head at {head.height}; nothing written"
                )
            if h.prev_hash != head.hash:
                raise StoreError(
                    f"block {h.height}'s previous hash is not the hash of block {head.height}; "
                    "nothing written"
                )
            if (
                execution.state_root != h.state_root
                or execution.timestamp_ms != h.timestamp_ms
                or execution.receipts != block.receipts
            ):
                raise StoreError(
                    f"block {h.height} does not match the Execution given with it; nothing written"
                )
            if certificate is not None and not isinstance(certificate, bytes):
                raise StoreError(f"block {h.height}: a certificate must be bytes; nothing written")
            head = h
        return head

    def _applied_prefix(self, blocks: Sequence[BlockItem]) -> int:
        """How many of `blocks` the application already reflects, read off its state root."""
        if not blocks:
            return 0
        root = self.app.state_root
        if root == self._head.state_root:
            return 0
        for i, (block, _, _) in enumerate(blocks):
            if block.header.state_root == root:
                return i + 1
        raise StoreError(
            f"the application state is neither at the head ({self._head.height}) nor at one of "
            "the blocks being saved; nothing written"
        )

    def _write_block(self, block: Block, execution: Execution, certificate: bytes | None) -> None:
        db = self._db
        h = block.header
        db.execute(
            "INSERT INTO blocks (height, hash, header, body, receipts, certificate) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                h.height,
                h.hash,
                h.encode(),
                block.encode_body(),
                block.encode_receipts(),
                certificate,
            ),
        )
        consumed = {tid for tid, _ in execution.consumed}
        seen: set[bytes] = set()
        index_rows = []
        for i, tx in enumerate(block.txs):
            # Within a block an id executes at most once, at its first occurrence.
            executed = tx.id in consumed and tx.id not in seen
            seen.add(tx.id)
            index_rows.append((tx.id, h.height, i, int(executed), tx.expiry_ms))
        db.executemany(_INDEX_TX, index_rows)
        # The index row of an executed transaction is its replay entry; the replay table holds
        # the other consumed ids (client changes'): any id not flagged executed above (the
        # same ids as those not in this block's transactions; said this way so the two
        # tables together hold every consumed id whatever the flags).
        flagged = {row[0] for row in index_rows if row[3]}
        others = [(tid, exp) for tid, exp in execution.consumed if tid not in flagged]
        if others:
            db.executemany(
                "INSERT INTO replay VALUES (?, ?) "
                "ON CONFLICT (tx_id) DO UPDATE SET expiry_ms = excluded.expiry_ms",
                others,
            )
        db.executemany(
            "INSERT INTO kv VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [(k, v) for k, v in execution.writes.items() if v is not None],
        )
        db.executemany(
            "DELETE FROM kv WHERE key = ?", [(k,) for k, v in execution.writes.items() if v is None]
        )
        if execution.activated or execution.recorded:
            self._write_client_changes(execution)
        if execution.used:
            db.executemany(
                "INSERT INTO used_keys (key, kind) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                execution.used,
            )
        if execution.member_accepted is not None and execution.config_activated is None:
            effective, change_id, config = execution.member_accepted
            db.execute(
                "INSERT INTO pending_member_change VALUES (0, ?, ?, ?)",
                (effective, change_id, config.encode()),
            )
        if execution.config_activated is not None:
            config = execution.config_activated
            db.execute("DELETE FROM pending_member_change")
            db.execute(
                "INSERT INTO configurations (epoch, first_height, digest, value) "
                "VALUES (?, ?, ?, ?)",
                (config.epoch, h.height + 1, config.digest, config.encode()),
            )

    def _write_client_changes(self, execution: Execution) -> None:
        db = self._db
        for p in execution.activated:
            db.execute("DELETE FROM pending_client_changes WHERE change_id = ?", (p.change_id,))
            if p.kind == ADMIT:
                db.execute(
                    "INSERT INTO clients VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET label = excluded.label",
                    (p.client_key, p.label),
                )
            else:
                db.execute("DELETE FROM clients WHERE key = ?", (p.client_key,))
        db.executemany(
            "INSERT INTO pending_client_changes (change_id, value) VALUES (?, ?)",
            [(p.change_id, pack(p.to_array())) for p in execution.recorded],
        )
        db.executemany(
            "INSERT INTO client_changed VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET ms = excluded.ms",
            [(p.client_key, execution.timestamp_ms) for p in execution.recorded],
        )

    def append_blocks(self, items: list[BlockItem]) -> None:
        """The same as save(blocks=items)."""
        self.save(blocks=items)

    def add_block_signatures(self, height: int, votes: list[SignedVote]) -> None:
        """Idempotent: a vote already stored for (height, body) is kept as it is."""
        self.save(block_signatures=[(height, v) for v in votes])

    def put_checkpoint(self, cert: CheckpointCertificate) -> None:
        """Idempotent: the first certificate stored for a seq is kept."""
        self.save(checkpoints=[cert])

    def put_config_chain(self, epoch: int, entry: bytes) -> None:
        """Store the chain entry of `epoch`'s activation (docs/design/membership.md 6.1),
        written whole as the node built or verified it; idempotent: the first entry stored
        for an epoch is kept. (`save(config_chain=...)` writes it with other things.)"""
        self.save(config_chain=[(epoch, entry)])

    def config_chain(self, from_epoch: int = 1, limit: int = 1024) -> list[tuple[int, bytes]]:
        """The stored chain entries from `from_epoch` on, by epoch, at most `limit`."""
        return [
            (int(epoch), bytes(entry))
            for epoch, entry in self._db.execute(
                "SELECT epoch, entry FROM config_chain WHERE epoch >= ? ORDER BY epoch LIMIT ?",
                (from_epoch, limit),
            )
        ]

    def close(self) -> None:
        self._reader.close()
        self._db.close()


def _open_reader(path: Path) -> sqlite3.Connection:
    """A second, read-only connection for the hot reads (state misses, known ids): in WAL
    mode it reads the last committed state while the writer's COMMIT (its fsync) runs on a
    worker thread, where reads on the writer's connection would wait for its lock."""
    try:
        reader = sqlite3.connect(
            path.absolute().as_uri() + "?mode=ro",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
        )
        reader.execute(f"PRAGMA cache_size=-{READER_CACHE_KB}")
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot open the block store for reading: {exc}") from None
    return reader


def _select_in(
    db: sqlite3.Connection, what: str, column: str, keys: Sequence[bytes]
) -> list[tuple[Any, ...]]:
    """SELECT `what` WHERE `column` IN keys, one indexed query per 500 keys."""
    rows: list[tuple[Any, ...]] = []
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        marks = ",".join("?" * len(chunk))
        rows += db.execute(f"SELECT {what} WHERE {column} IN ({marks})", chunk).fetchall()
    return rows


def _prefix_end(prefix: bytes) -> bytes | None:
    """The smallest byte string above every string that starts with `prefix` (None: none)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])
