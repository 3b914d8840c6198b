"""The offline audit: check a member's ledger from the genesis file alone.

Read-only and independent of the node: it opens the SQLite file with mode=ro, never goes through
BlockStore (which refuses a damaged store; the audit reports instead) and trusts nothing in it.
It streams the blocks once, holding only the re-executed application state. For each height, in
this order, it stops at the first failure and names the height and the problem:

    1. continuity: the next stored block is the next height;
    2. the header decodes canonically, names this height and this chain, and hashes to the
       stored hash; block 0 is exactly genesis_block(genesis); the previous-hash link holds;
    3. the body and receipts decode; the tx and receipts Merkle roots (Block.check_roots);
    4. every transaction names this chain and carries a valid client signature (always real
       Ed25519: clients sign with Ed25519 even where a simulator stands in for members); a
       client change with an `ok` receipt carries valid approvals of a quorum of distinct
       members and a valid client key (re-execution would catch it too; this names why);
    5. consensus metadata matches the genesis mode; pbft: ("pbft", seq, proposed_ms) with
       seq = height and a commit certificate that decodes, is for this seq and for the batch
       digest of these tx ids and proposed timestamp, with a quorum of distinct members' valid
       COMMIT signatures; raft: ("raft", term, index, proposed_ms) with the proposing
       leader's valid signature over (chain id, term, index, batch digest), and (term, index)
       growing along the ledger as in one log;
    6. every stored block signature is a valid signature by a member over this height and hash;
    7. a stored checkpoint certificate at this seq is valid and certifies this block's hash;
    8. re-execution from genesis (a fresh KeyValueState, build_block) reproduces the header
       exactly; the report names the field that differs.

    9. every transaction is in the transaction index (tx_index) where the node records it:
       an occurrence that executed at (height, index), executed; one that did not, at an
       earlier occurrence of the same id or at a later one that executed.

After the last block: a checkpoint certificate above the head means certified blocks were cut
off; the stored key-value table and replay set (what the node serves and loads) must equal the
re-executed state, and so must the admitted clients and the pending client changes; the
transaction index holds no row for an id no block holds; every consensus record (records)
decodes; and every table the node keeps a digest of (digests.DIGESTED) matches it, so a deleted
block signature, checkpoint certificate or consensus record, which nothing above can miss, is
named too. `verifier`
checks member signatures (commit and checkpoint certificates,
block signatures); Ed25519 by default.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consortium.crypto.codec import WireFormatError, unpack, unpack_canonical
from consortium.crypto.signing import Ed25519Verifier, Verifier
from consortium.ledger.admission import PendingChange, check_approvals, check_client_key
from consortium.ledger.block import (
    ZERO_HASH,
    Block,
    BlockHeader,
    batch_digest,
    decode_receipts,
    decode_txs,
    genesis_block,
)
from consortium.ledger.certificates import (
    CheckpointCertificate,
    RaftEntryCertificate,
    SignedVote,
    decode_certificate,
    verify_block_signatures,
)
from consortium.ledger.digests import (
    DIGESTED,
    FORMAT_WITHOUT_DIGESTS,
    STORE_FORMAT,
    has_column,
    stored_digests,
    table_digest,
)
from consortium.ledger.genesis import Genesis
from consortium.ledger.membership import genesis_configuration
from consortium.ledger.state import Execution, KeyValueState, build_block
from consortium.ledger.tx import ConfigChange

_HEADER_FIELDS = (
    "chain_id",
    "height",
    "prev_hash",
    "timestamp_ms",
    "tx_root",
    "state_root",
    "receipts_root",
    "consensus",
)


@dataclass(frozen=True, slots=True)
class AuditProblem:
    height: int
    reason: str


@dataclass(frozen=True, slots=True)
class AuditReport:
    ok: bool
    height: int  # the last height that passed every check
    head_hash: bytes  # its block hash
    blocks_checked: int
    certificates_checked: int  # commit and checkpoint certificates
    problem: AuditProblem | None


class _Failed(Exception):
    def __init__(self, height: int, reason: str) -> None:
        super().__init__(reason)
        self.height = height
        self.reason = reason


def audit_ledger(db_path: Path, genesis: Genesis, verifier: Verifier | None = None) -> AuditReport:
    """Audit the ledger file at `db_path` against `genesis`; reports, never raises, on a bad
    ledger."""
    audit = _Audit(genesis, verifier or Ed25519Verifier())
    try:
        db = sqlite3.connect(f"{Path(db_path).resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return audit.report(AuditProblem(0, f"cannot open {db_path}: {exc}"))
    try:
        audit.run(db)
    except _Failed as failed:
        return audit.report(AuditProblem(failed.height, failed.reason))
    except sqlite3.Error as exc:
        return audit.report(
            AuditProblem(audit.height + 1, f"cannot read {db_path} as a ledger: {exc}")
        )
    finally:
        db.close()
    return audit.report(None)


def _short(data: bytes) -> str:
    return data.hex()[:12] + "…"


class _Audit:
    def __init__(self, genesis: Genesis, verifier: Verifier) -> None:
        self._raft_point = (0, 0)  # (term, index) of the last raft block checked
        self.genesis = genesis
        self.verifier = verifier
        self.client_verifier = Ed25519Verifier()
        self.chain_id = genesis.chain_id
        self.height = -1
        self.head_hash = ZERO_HASH
        self.blocks = 0
        self.certificates = 0
        self.indexed = 0  # tx_index rows met at the position they point at
        self.index_expiry = False  # the store's tx_index has expiry_ms (format 4)

    def report(self, problem: AuditProblem | None) -> AuditReport:
        return AuditReport(
            ok=problem is None,
            height=max(self.height, 0),
            head_hash=self.head_hash,
            blocks_checked=self.blocks,
            certificates_checked=self.certificates,
            problem=problem,
        )

    def run(self, db: sqlite3.Connection) -> None:
        db.execute("BEGIN")  # one snapshot of the store for the whole audit (WAL: no writer waits)
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        schema = (
            db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if "meta" in tables
            else None
        )
        if schema is not None and isinstance(schema[0], int) and schema[0] > STORE_FORMAT:
            raise _Failed(
                0,
                f"the store is of format {schema[0]}, newer than this release reads "
                f"({STORE_FORMAT}): audit it with the release that wrote it",
            )
        # (format 4: each transaction's expiry in its index row, its replay entry once executed)
        self.index_expiry = "tx_index" in tables and has_column(db, "tx_index", "expiry_ms")
        g = self.genesis
        genesis = genesis_block(g)
        app = KeyValueState.for_genesis(g, genesis.header.state_root)
        prev: BlockHeader | None = None
        rows = db.execute(
            "SELECT height, hash, header, body, receipts, certificate FROM blocks ORDER BY height"
        )
        for height, stored_hash, header_b, body_b, receipts_b, cert_b in rows:
            expected = 0 if prev is None else prev.height + 1
            if height != expected:
                raise _Failed(
                    expected, f"block {expected} is missing (the next stored is {height})"
                )
            header = self._header(height, stored_hash, header_b)
            if prev is None:
                if (
                    header != genesis.header
                    or body_b != genesis.encode_body()
                    or receipts_b != genesis.encode_receipts()
                ):
                    raise _Failed(0, "block 0 is not the genesis block of this genesis file")
                block = genesis
            else:
                if header.prev_hash != prev.hash:
                    raise _Failed(
                        height,
                        f"previous-hash link is broken: prev_hash {_short(header.prev_hash)} but "
                        f"block {prev.height} hashes to {_short(prev.hash)}",
                    )
                block = self._body(header, body_b, receipts_b)
                self._transactions(block)
                self._consensus(block, cert_b)
            self._block_signatures(db, header)
            self._checkpoint_at(db, header)
            if prev is not None:
                execution = self._re_execute(block, prev, app)
                self._tx_index(db, block, execution)
            prev = header
            self.height = height
            self.head_hash = header.hash
            self.blocks += 1
        if prev is None:
            raise _Failed(0, "the ledger holds no blocks, not even genesis")
        self._checkpoints_above(db, prev.height)
        self._served_state(db, prev, app)
        self._tx_index_extra(db, prev.height)
        self._records(db, prev.height)
        self._digests(db, prev.height)

    # --- per-block checks -------------------------------------------------------------------

    def _header(self, height: int, stored_hash: Any, header_b: Any) -> BlockHeader:
        try:
            header = BlockHeader.from_array(unpack_canonical(header_b))
        except WireFormatError as exc:
            raise _Failed(height, f"header does not decode: {exc}") from None
        if header.height != height:
            raise _Failed(height, f"header says height {header.height}")
        if header.chain_id != self.chain_id:
            raise _Failed(
                height,
                f"header names chain {_short(header.chain_id)}, genesis is {_short(self.chain_id)}",
            )
        if header.hash != stored_hash:
            raise _Failed(height, "stored block hash does not match the header")
        return header

    def _body(self, header: BlockHeader, body_b: Any, receipts_b: Any) -> Block:
        try:
            txs = decode_txs(body_b, self.genesis.params)
        except WireFormatError as exc:
            raise _Failed(header.height, f"block body does not decode: {exc}") from None
        try:
            receipts = decode_receipts(receipts_b)
        except WireFormatError as exc:
            raise _Failed(header.height, f"receipts do not decode: {exc}") from None
        block = Block(header, txs, receipts)
        problem = block.check_roots()
        if problem:
            raise _Failed(header.height, problem)
        return block

    def _transactions(self, block: Block) -> None:
        for i, tx in enumerate(block.txs):
            if tx.chain_id != self.chain_id:
                raise _Failed(
                    block.height, f"transaction {i} ({_short(tx.id)}) names another chain"
                )
            if not tx.verify_signature(self.client_verifier):
                raise _Failed(
                    block.height, f"transaction {i} ({_short(tx.id)}) has a bad client signature"
                )
            op = tx.ops[0]
            if isinstance(op, ConfigChange) and block.receipts[i].status == "ok":
                g = self.genesis
                members = [m.public_key for m in g.members]
                refusal = check_client_key(op.change.client_key, members) or check_approvals(
                    op.change, op.approvals, members, g.quorum
                )
                if refusal is not None:
                    raise _Failed(
                        block.height,
                        f"transaction {i} ({_short(tx.id)}) was accepted as a client change "
                        f"({op.change.kind}) but {refusal.detail}",
                    )

    def _consensus(self, block: Block, cert_b: Any) -> None:
        header = block.header
        height = header.height
        cons = header.consensus
        mode = cons[0]
        if mode != self.genesis.mode:
            raise _Failed(
                height, f"consensus metadata says {mode!r}, genesis says {self.genesis.mode!r}"
            )
        if mode == "raft":
            if len(cons) != 4 or not all(isinstance(x, int) and x >= 0 for x in cons[1:]):
                raise _Failed(
                    height, f"raft metadata {list(cons)} is not (raft, term, index, proposed_ms)"
                )
            self._raft_certificate(block, cert_b)
            return
        if len(cons) != 3 or cons[1] != height or not isinstance(cons[2], int) or cons[2] < 0:
            raise _Failed(
                height, f"pbft metadata {list(cons)} is not (pbft, {height}, proposed_ms)"
            )
        if cert_b is None:
            raise _Failed(height, "no commit certificate stored for this block")
        try:
            cert = decode_certificate(cert_b)
        except WireFormatError as exc:
            raise _Failed(height, f"commit certificate does not decode: {exc}") from None
        if cert.seq != height:
            raise _Failed(height, f"commit certificate is for seq {cert.seq}, not {height}")
        digest = batch_digest(cons[2], [t.id for t in block.txs])
        if cert.digest != digest:
            raise _Failed(
                height,
                f"commit certificate is for another batch digest ({_short(cert.digest)}; these "
                f"transactions and proposed timestamp give {_short(digest)})",
            )
        problem = cert.verify(genesis_configuration(self.genesis), self.verifier, stored=True)
        if problem:
            raise _Failed(height, f"commit certificate: {problem}")
        self.certificates += 1

    def _raft_certificate(self, block: Block, cert_b: Any) -> None:
        """The proposing leader's signature over (chain id, term, index, batch digest); and
        (term, index) only grow along the ledger, as entries of one Raft log must."""
        header = block.header
        height = header.height
        term, index, proposed_ms = (int(x) for x in header.consensus[1:])
        if cert_b is None:
            raise _Failed(height, "no leader certificate stored for this block")
        try:
            cert = RaftEntryCertificate.decode(bytes(cert_b))
        except WireFormatError as exc:
            raise _Failed(height, f"leader certificate does not decode: {exc}") from None
        if (cert.term, cert.index) != (term, index):
            raise _Failed(
                height,
                f"leader certificate is for term {cert.term} index {cert.index}, the block says "
                f"term {term} index {index}",
            )
        digest = batch_digest(proposed_ms, [t.id for t in block.txs])
        if cert.digest != digest:
            raise _Failed(
                height,
                f"leader certificate is for another batch digest ({_short(cert.digest)}; these "
                f"transactions and proposed timestamp give {_short(digest)})",
            )
        problem = cert.verify(self.genesis, self.verifier)
        if problem:
            raise _Failed(height, f"leader certificate: {problem}")
        if term < self._raft_point[0] or index <= self._raft_point[1]:
            raise _Failed(
                height,
                f"raft (term {term}, index {index}) does not follow the previous block's "
                f"(term {self._raft_point[0]}, index {self._raft_point[1]}): terms never "
                "decrease and indexes always increase along one log",
            )
        self._raft_point = (term, index)
        self.certificates += 1

    def _block_signatures(self, db: sqlite3.Connection, header: BlockHeader) -> None:
        votes = tuple(
            SignedVote(bytes(b), bytes(s))
            for b, s in db.execute(
                "SELECT body, signature FROM block_signatures WHERE height = ? ORDER BY body",
                (header.height,),
            )
        )
        problem = verify_block_signatures(
            votes, header.height, header.hash, genesis_configuration(self.genesis), self.verifier, 0
        )
        if problem:
            raise _Failed(header.height, f"block signature: {problem}")

    def _checkpoint_at(self, db: sqlite3.Connection, header: BlockHeader) -> None:
        row = db.execute(
            "SELECT certificate FROM checkpoints WHERE seq = ?", (header.height,)
        ).fetchone()
        if row is None:
            return
        cert = self._checkpoint(header.height, row[0])
        if cert.block_hash != header.hash:
            raise _Failed(
                header.height,
                f"checkpoint certificate certifies block hash {_short(cert.block_hash)}, the "
                f"stored block hashes to {_short(header.hash)}",
            )

    def _checkpoint(self, seq: int, cert_b: Any) -> CheckpointCertificate:
        try:
            cert = CheckpointCertificate.from_array(unpack_canonical(cert_b))
        except WireFormatError as exc:
            raise _Failed(seq, f"checkpoint certificate does not decode: {exc}") from None
        if cert.seq != seq:
            raise _Failed(seq, f"checkpoint certificate is for seq {cert.seq}, stored at {seq}")
        problem = cert.verify(genesis_configuration(self.genesis), self.verifier, stored=True)
        if problem:
            raise _Failed(seq, f"checkpoint certificate: {problem}")
        self.certificates += 1
        return cert

    def _re_execute(self, block: Block, prev: BlockHeader, app: KeyValueState) -> Execution:
        stored = block.header
        rebuilt, execution = build_block(prev, stored.consensus, stored.proposed_ms, block.txs, app)
        if rebuilt.header != stored:
            for name in _HEADER_FIELDS:
                want, got = getattr(rebuilt.header, name), getattr(stored, name)
                if want != got:
                    shown = (
                        f"stored {_short(got)}, re-executed {_short(want)}"
                        if isinstance(got, bytes)
                        else f"stored {got!r}, re-executed {want!r}"
                    )
                    raise _Failed(stored.height, f"re-execution gives a different {name} ({shown})")
        if rebuilt.receipts != block.receipts:
            raise _Failed(stored.height, "stored receipts differ from re-execution")
        app.apply(execution)
        return execution

    def _tx_index(self, db: sqlite3.Connection, block: Block, execution: Execution) -> None:
        """Each transaction of the block where the node's transaction index records it (the
        store's rule: the first executed occurrence; else the first occurrence)."""
        if not block.txs:
            return
        height = block.height
        ids = list({tx.id for tx in block.txs})
        rows: dict[bytes, tuple[int, int, int]] = {}
        expiries: dict[bytes, int] = {}
        expiry = "expiry_ms" if self.index_expiry else "NULL"
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for tid, h, i, e, x in db.execute(
                f"SELECT tx_id, height, idx, executed, {expiry} FROM tx_index "
                f"WHERE tx_id IN ({marks})",
                chunk,
            ):
                rows[bytes(tid)] = (int(h), int(i), int(e))
                if x is not None:
                    expiries[bytes(tid)] = int(x)
        consumed = {tid for tid, _ in execution.consumed}
        seen: set[bytes] = set()
        for index, tx in enumerate(block.txs):
            executed = tx.id in consumed and tx.id not in seen
            seen.add(tx.id)
            row = rows.get(tx.id)
            what = f"transaction {index} ({_short(tx.id)})"
            if row is None:
                raise _Failed(height, f"{what} is missing from the transaction index (tx_index)")
            # Its expiry (0 only in a row of a store upgraded from format 3 after the id left
            # the replay set then; the replay set is compared after the last block).
            if expiries.get(tx.id, tx.expiry_ms) not in (tx.expiry_ms, 0):
                raise _Failed(
                    height,
                    f"the transaction index (tx_index) gives {what} the expiry "
                    f"{expiries[tx.id]}, not its own {tx.expiry_ms}",
                )
            at, here = (row[0], row[1]), (height, index)
            if executed and row != (height, index, 1):
                raise _Failed(
                    height,
                    f"{what} executed here, but the transaction index (tx_index) says "
                    f"height {row[0]} index {row[1]}" + ("" if row[2] else ", not executed"),
                )
            if not executed:
                if at == here and row[2]:
                    raise _Failed(
                        height,
                        f"the transaction index (tx_index) says {what} executed; it did not",
                    )
                if at > here and not row[2]:
                    raise _Failed(
                        height,
                        f"the transaction index (tx_index) points {what} at a later occurrence "
                        f"(height {row[0]} index {row[1]}) that did not execute either",
                    )
                if at < here and not self._holds(db, block, at, tx.id):
                    raise _Failed(
                        height,
                        f"the transaction index (tx_index) points {what} at height {row[0]} "
                        f"index {row[1]}, which holds another transaction",
                    )
            if at == here:
                self.indexed += 1

    def _holds(
        self, db: sqlite3.Connection, block: Block, at: tuple[int, int], tx_id: bytes
    ) -> bool:
        """Whether position `at` (at or below `block`) holds `tx_id` (its receipt says)."""
        if at[0] == block.height:
            receipts = block.receipts
        else:
            row = db.execute("SELECT receipts FROM blocks WHERE height = ?", (at[0],)).fetchone()
            if row is None:
                return False
            try:
                receipts = decode_receipts(row[0])
            except WireFormatError:
                return False
        return 0 <= at[1] < len(receipts) and receipts[at[1]].tx_id == tx_id

    # --- after the last block ---------------------------------------------------------------

    def _checkpoints_above(self, db: sqlite3.Connection, head: int) -> None:
        row = db.execute(
            "SELECT seq FROM checkpoints WHERE seq > ? ORDER BY seq LIMIT 1", (head,)
        ).fetchone()
        if row is not None:
            raise _Failed(
                int(row[0]),
                f"a checkpoint certificate certifies seq {row[0]}, above the ledger head at "
                f"{head}: blocks are missing",
            )

    def _tx_index_extra(self, db: sqlite3.Connection, head: int) -> None:
        (total,) = db.execute("SELECT COUNT(*) FROM tx_index").fetchone()
        if int(total) != self.indexed:
            raise _Failed(
                head,
                f"the transaction index (tx_index) holds {int(total) - self.indexed} rows for "
                "ids no block holds",
            )

    def _records(self, db: sqlite3.Connection, head: int) -> None:
        # The consensus cores' records (pbft/, raft/) are msgpack; others are not ours to read.
        for key, value in db.execute(
            "SELECT key, value FROM records WHERE key >= ? AND key < ? OR key >= ? AND key < ?",
            (b"pbft/", b"pbft0", b"raft/", b"raft0"),
        ):
            try:
                unpack(bytes(value))
            except (WireFormatError, TypeError) as exc:
                raise _Failed(
                    head, f"the consensus record {bytes(key)!r} (records) does not decode: {exc}"
                ) from None

    def _digests(self, db: sqlite3.Connection, head: int) -> None:
        """Each table against its digest in meta. A store of format 2 (before digests) has
        none; one of a later format must have every one (deleting them is no way around it)."""
        stored = stored_digests(db)
        schema = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if not stored and schema is not None and schema[0] == FORMAT_WITHOUT_DIGESTS:
            return
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        wrong = [
            t
            for t in DIGESTED
            if t in tables and (t not in stored or table_digest(db, t) != stored[t])
        ]
        if wrong:
            named = ", ".join(f"{DIGESTED[t][1]} ({t})" for t in wrong)
            raise _Failed(
                head,
                f"{named} {'does' if len(wrong) == 1 else 'do'} not match "
                f"{'its digest' if len(wrong) == 1 else 'their digests'}: a row edited, added "
                "or deleted since the member wrote it",
            )

    def _served_state(self, db: sqlite3.Connection, head: BlockHeader, app: KeyValueState) -> None:
        """The tables the node serves reads from and reloads at start must be what re-execution
        gives (the state root cannot show it: it commits to the history of writes)."""
        stored_kv = {bytes(k): bytes(v) for k, v in db.execute("SELECT key, value FROM kv")}
        if stored_kv != app.kv:
            raise _Failed(head.height, "the stored key-value table differs from re-execution")
        try:
            stored = stored_replay(db, head.timestamp_ms)
        except ValueError as exc:
            raise _Failed(head.height, str(exc)) from None
        if stored != app.replay:
            raise _Failed(
                head.height, "the stored replay set (executed ids) differs from re-execution"
            )
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "clients" in tables:
            stored_clients = {
                bytes(k): str(label) for k, label in db.execute("SELECT key, label FROM clients")
            }
            try:
                stored_pending = [
                    PendingChange.from_array(unpack_canonical(bytes(v)))
                    for (v,) in db.execute("SELECT value FROM pending_client_changes ORDER BY seq")
                ]
            except WireFormatError as exc:
                raise _Failed(
                    head.height, f"a stored pending client change (pending_client_changes): {exc}"
                ) from None
        else:  # a store from before client changes: it can hold only the genesis clients
            stored_clients = {c.public_key: c.name for c in self.genesis.clients}
            stored_pending = []
        if stored_clients != app.admitted:
            raise _Failed(head.height, "the stored admitted clients differ from re-execution")
        if stored_pending != list(app.pending):
            raise _Failed(head.height, "the stored pending client changes differ from re-execution")
        stored_changed: dict[bytes, int] = {}
        if "client_changed" in tables:
            stored_changed = {
                bytes(k): int(ms) for k, ms in db.execute("SELECT key, ms FROM client_changed")
            }
        if stored_changed != app.changed_ms:
            raise _Failed(
                head.height,
                "the stored times of the keys' last client changes differ from re-execution",
            )


def stored_replay(db: sqlite3.Connection, now_ms: int) -> dict[bytes, int]:
    """The replay set a store holds for a block at `now_ms`: each consumed id whose expiry is
    not before it. Format 4: an executed transaction's id in the transaction index, any other
    in the replay table; before: all of them in the replay table. ValueError if an id is in
    both."""
    found = {
        bytes(t): int(e)
        for t, e in db.execute(
            "SELECT tx_id, expiry_ms FROM replay WHERE expiry_ms >= ?", (now_ms,)
        )
    }
    if has_column(db, "tx_index", "expiry_ms"):
        executed = "SELECT tx_id, expiry_ms FROM tx_index WHERE executed = 1 AND expiry_ms >= ?"
        for t, e in db.execute(executed, (now_ms,)):
            if bytes(t) in found:
                raise ValueError(
                    f"the id {_short(bytes(t))} is in both the replay table and the "
                    "transaction index (tx_index)"
                )
            found[bytes(t)] = int(e)
    return found
