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

Membership (docs/design/membership.md 6.4). Re-execution carries the configurations, and every
height is judged by config(h), the configuration that orders it: step 4 requires a v2 change
with an `ok` receipt to carry its proofs of possession and a quorum of config(h)'s voters;
steps 5 to 7 check certificates, the raft leader (a voter) and block signatures against
config(h) (epoch-tagged pbft votes; legacy ones too at epoch 0 only); before step 8, a
stored header whose config_digest differs from re-execution's is named as a change applied at
the wrong height; in pbft, every activation height has a checkpoint certificate. With a
trust anchor (HEIGHT, HASH) the block at HEIGHT must hash to HASH, and a ledger ending below
it fails. Re-execution refuses member changes unless `member_changes`
(KeyValueState.member_changes), as this release's node does.

After the last block: a checkpoint certificate above the head means certified blocks were cut
off; the stored configurations, pending member change and used keys must equal re-execution,
and each stored configuration chain entry must be the ledger's configuration and header at its
activation, certified by the configuration before; the stored key-value table and replay set
(what the node serves and loads) must equal the re-executed state, and so must the admitted
clients and the pending client changes; the transaction index holds no row for an id no block
holds; every consensus record (records) decodes; and every table the node keeps a digest of
(digests.DIGESTED) matches it, so a deleted block signature, checkpoint certificate or
consensus record, which nothing above can miss, is named too. `verifier` checks member
signatures (commit and checkpoint certificates, block signatures); Ed25519 by default.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consortium.crypto.codec import WireFormatError, as_list, unpack, unpack_canonical
from consortium.crypto.signing import Domain, Ed25519Verifier, Verifier
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
    CommitCertificate,
    RaftEntryCertificate,
    SignedVote,
    decode_certificate,
    verify_block_signatures,
)
from consortium.ledger.digests import (
    DIGESTED,
    FORMAT_WITHOUT_DIGESTS,
    FORMAT_WITHOUT_MEMBERSHIP,
    MEMBERSHIP_TABLES,
    STORE_FORMAT,
    digested_tables,
    has_column,
    stored_digests,
    table_digest,
)
from consortium.ledger.genesis import Genesis
from consortium.ledger.membership import (
    CHAIN_ENTRY_BYTES_MAX,
    VOTER,
    Configuration,
    approval_problem,
    possession_problem,
)
from consortium.ledger.state import Execution, KeyValueState, build_block
from consortium.ledger.tx import ConfigChange, ConfigChangeV2

TrustAnchor = tuple[int, bytes]  # (height, block hash): `--trust HEIGHT:HASH`

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


def audit_ledger(
    db_path: Path,
    genesis: Genesis,
    verifier: Verifier | None = None,
    *,
    trust: TrustAnchor | None = None,
    member_changes: bool = False,
) -> AuditReport:
    """Audit the ledger file at `db_path` against `genesis`; reports, never raises, on a bad
    ledger. `trust`: the block at that height must have that hash, and the ledger must reach
    it. `member_changes`: re-execute as a node with KeyValueState.member_changes does (False
    in this release, as the node: a ledger that accepted a member change then fails)."""
    audit = _Audit(genesis, verifier or Ed25519Verifier(), trust, member_changes)
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


_TYPE_NAMES = {int: "an integer", bytes: "a blob", str: "text"}


def _cells(height: int, table: str, row: tuple[Any, ...], types: tuple[type, ...]) -> Any:
    """A row of `table` whose cells must be of `types` (as the store writes them): a tampered
    cell (TEXT for a BLOB, a REAL, NULL) is a named failure, never a TypeError or a silent
    conversion."""
    for i, (cell, kind) in enumerate(zip(row, types, strict=True)):
        if type(cell) is not kind:
            raise _Failed(
                height,
                f"a row of {table} holds {type(cell).__name__} {str(cell)[:16]!r} in column "
                f"{i + 1}, not {_TYPE_NAMES[kind]}",
            )
    return row


def _digest_of(encoded: bytes) -> bytes:
    from consortium.crypto.hashing import sha256

    return sha256(encoded)


def _short(data: bytes) -> str:
    return data.hex()[:12] + "…"


class _Audit:
    def __init__(
        self,
        genesis: Genesis,
        verifier: Verifier,
        trust: TrustAnchor | None,
        member_changes: bool = False,
    ) -> None:
        self.trust = trust
        self.member_changes = member_changes
        self.app: KeyValueState | None = None
        self._accepted_at: dict[bytes, int] = {}  # member change id -> height that accepted it
        self._activated_at: tuple[int, int] | None = None  # (E, epoch) of the last activation
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
        self.schema: object = None  # the format stamped in meta (None: no stamp)

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
        self.schema = None if schema is None else schema[0]
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
        app = KeyValueState.for_genesis(
            g, genesis.header.state_root, member_changes=self.member_changes
        )
        self.app = app
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
                self._activation(db, header, execution)
            self._anchor(header)
            prev = header
            self.height = height
            self.head_hash = header.hash
            self.blocks += 1
        if prev is None:
            raise _Failed(0, "the ledger holds no blocks, not even genesis")
        if self.trust is not None and prev.height < self.trust[0]:
            raise _Failed(
                prev.height,
                f"the ledger ends at height {prev.height} and does not reach the trust anchor "
                f"at height {self.trust[0]}",
            )
        self._checkpoints_above(db, prev.height)
        self._served_state(db, prev, app)
        self._membership_state(db, prev, app)
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

    def _config(self, height: int) -> Configuration:
        """config(h), from re-execution so far (blocks below h)."""
        assert self.app is not None
        return self.app.config_at(height)

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
            if isinstance(op, ConfigChangeV2) and block.receipts[i].status == "ok":
                config = self._config(block.height)
                change = op.change
                problem = possession_problem(change, op.possessions)
                if problem is not None:
                    raise _Failed(
                        block.height,
                        f"change {_short(change.id)} (transaction {i}) accepted at "
                        f"{block.height} without valid proofs of possession: {problem.detail}",
                    )
                problem = approval_problem(config, change.encode(), op.approvals)
                if problem is not None:
                    raise _Failed(
                        block.height,
                        f"change {_short(change.id)} (transaction {i}) accepted at "
                        f"{block.height} without a quorum of configuration {config.epoch}: "
                        f"{problem.detail}",
                    )
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
        problem = self._certificate_problem(cert, self._config(height))
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
        problem = self._raft_problem(cert, self._config(height))
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
            votes, header.height, header.hash, self._config(header.height), self.verifier, 0
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
        problem = self._certificate_problem(cert, self._config(seq))
        if problem:
            raise _Failed(seq, f"checkpoint certificate: {problem}")
        self.certificates += 1
        return cert

    def _re_execute(self, block: Block, prev: BlockHeader, app: KeyValueState) -> Execution:
        stored = block.header
        pending = app.pending_member
        rebuilt, execution = build_block(prev, stored.consensus, stored.proposed_ms, block.txs, app)
        if rebuilt.header.config_digest != stored.config_digest:
            raise _Failed(stored.height, self._wrong_height(stored, rebuilt.header, pending))
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
        if execution.member_accepted is not None:
            self._accepted_at[execution.member_accepted[1]] = stored.height
        return execution

    def _wrong_height(
        self, stored: BlockHeader, rebuilt: BlockHeader, pending: tuple[int, bytes, Any] | None
    ) -> str:
        """Why header h's configuration differs from re-execution's, in the design's words."""
        assert self.app is not None
        h = stored.height
        committed = (
            "no configuration change"
            if stored.config_digest is None
            else f"configuration {_short(stored.config_digest)}"
        )
        c: int | str
        if pending is not None:  # a pbft change waiting for its E
            c = self._accepted_at.get(pending[1], "?")
            effective = pending[0]
        else:  # the change activated last, as re-execution has it
            epoch = self.app.config_at(h + 1).epoch
            effective = self.app.configs.get(epoch, (h + 1, None))[0] - 1
            c = max((at for at in self._accepted_at.values() if at <= effective), default="?")
        if stored.config_digest is not None and rebuilt.config_digest is not None:
            return (
                f"header {h} commits {committed}, re-execution gives configuration "
                f"{_short(rebuilt.config_digest)}: not the configuration the accepted changes "
                "make"
            )
        if rebuilt.config_digest is None and pending is None and not self._accepted_at:
            return (
                f"header {h} commits {committed}, but no configuration change was accepted: "
                "re-execution gives none"
            )
        return (
            f"configuration change accepted at {c} applied at the wrong height: header {h} "
            f"commits {committed}, the rules put it at {effective}"
        )

    def _activation(
        self, db: sqlite3.Connection, header: BlockHeader, execution: Execution
    ) -> None:
        """pbft: a block above an activation height E needs the checkpoint certificate of E
        stored (the next configuration starts from it, and only then orders E+1). Block E
        alone may wait for it: a member writes the certificate after the block."""
        if header.consensus[0] != "pbft":
            return
        if self._activated_at is not None:
            e, epoch = self._activated_at
            self._activated_at = None
            row = db.execute("SELECT 1 FROM checkpoints WHERE seq = ?", (e,)).fetchone()
            if row is None:
                raise _Failed(
                    header.height,
                    f"configuration {epoch} was activated at {e} and orders this block, but no "
                    f"checkpoint certificate of {e} is stored",
                )
        if execution.config_activated is not None:
            self._activated_at = (header.height, execution.config_activated.epoch)

    def _anchor(self, header: BlockHeader) -> None:
        if (
            self.trust is not None
            and header.height == self.trust[0]
            and header.hash != self.trust[1]
        ):
            raise _Failed(
                header.height,
                f"block {header.height} hashes to {_short(header.hash)}, the trust anchor "
                f"says {_short(self.trust[1])}",
            )

    # --- certificates by configuration ------------------------------------------------------

    def _certificate_problem(
        self, cert: CommitCertificate | CheckpointCertificate, config: Configuration
    ) -> str | None:
        """A commit or checkpoint certificate judged by `config`, the configuration that
        orders its seq: Q distinct voters of it, each vote naming its epoch. `stored=True`: at
        epoch 0 a certificate written before protocol 3 may also hold legacy bodies without
        the epoch (ledger/certificates.py)."""
        return cert.verify(config, self.verifier, stored=True)

    def _raft_problem(self, cert: RaftEntryCertificate, config: Configuration) -> str | None:
        """The leader of a raft entry is a voter of config(h) (learners never campaign, so
        never lead) and signed it with its key there."""
        if config.epoch == 0:
            return cert.verify(self.genesis, self.verifier)  # (genesis: voters only)
        member = config.member(cert.leader)
        if member is None:
            return f"leader {cert.leader} is not a member of configuration {config.epoch}"
        if member.role != VOTER:
            return (
                f"leader {member.name} is a learner of configuration {config.epoch}: learners "
                "never lead"
            )
        if not self.verifier.verify(
            member.public_key, Domain.RAFT_ENTRY, self.chain_id, cert.body, cert.signature
        ):
            return f"bad entry signature by {member.name}"
        return None

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
        if not stored and self.schema == FORMAT_WITHOUT_DIGESTS:
            return
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        # The format stamped decides whether the membership tables must be there (as
        # BlockStore.open does): a dropped table with its digest row is no way around it. (A
        # store from before client changes lacks its client tables; the store makes them.)
        absent = [
            t for t in digested_tables(self.schema) if t in MEMBERSHIP_TABLES and t not in tables
        ]
        if absent:
            named = ", ".join(f"{DIGESTED[t][1]} ({t})" for t in absent)
            raise _Failed(head, f"the store is of format {self.schema!r} but has no table {named}")
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

    def _membership_state(
        self, db: sqlite3.Connection, head: BlockHeader, app: KeyValueState
    ) -> None:
        """The membership tables (format 5) equal re-execution, and each configuration chain
        entry is the ledger's configuration and header at its activation, certified by the
        configuration before it. A store of an earlier format has none of them."""
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        absent = [t for t in MEMBERSHIP_TABLES if t not in tables]
        if isinstance(self.schema, int) and self.schema <= FORMAT_WITHOUT_MEMBERSHIP:
            if len(absent) < len(MEMBERSHIP_TABLES):  # (an upgrade cut short rolls back whole)
                raise _Failed(
                    head.height,
                    f"the store is of format {self.schema} but has membership tables (format 5)",
                )
            return
        if absent:
            raise _Failed(
                head.height,
                f"the store is of format {self.schema} but has no table {', '.join(absent)}",
            )
        h = head.height
        stored_configs: dict[int, tuple[int, bytes]] = {}
        for row in db.execute("SELECT epoch, first_height, digest, value FROM configurations"):
            epoch, first, digest, value = _cells(h, "configurations", row, (int, int, bytes, bytes))
            stored_configs[epoch] = (first, value)
            if digest != _digest_of(value):
                raise _Failed(h, f"the stored configuration {epoch}'s digest is wrong")
        if stored_configs != {e: (f, c.encode()) for e, (f, c) in app.configs.items()}:
            raise _Failed(h, "the stored configurations (configurations) differ from re-execution")
        row = db.execute(
            "SELECT effective_height, change_id, value FROM pending_member_change"
        ).fetchone()
        stored_pending = (
            None if row is None else _cells(h, "pending_member_change", row, (int, bytes, bytes))
        )
        want = app.pending_member
        if stored_pending != (None if want is None else (want[0], want[1], want[2].encode())):
            raise _Failed(
                h,
                "the stored pending member change (pending_member_change) differs from "
                "re-execution",
            )
        stored_used = dict(
            _cells(h, "used_keys", row, (bytes, str))
            for row in db.execute("SELECT key, kind FROM used_keys")
        )
        if stored_used != app.used_keys:
            raise _Failed(h, "the stored used keys (used_keys) differ from re-execution")
        for row in db.execute("SELECT epoch, entry FROM config_chain ORDER BY epoch"):
            epoch, entry = _cells(h, "config_chain", row, (int, bytes))
            problem = self._chain_entry_problem(db, epoch, entry, app)
            if problem is not None:
                raise _Failed(h, f"configuration chain entry {epoch}: {problem}")

    def _chain_entry_problem(
        self, db: sqlite3.Connection, epoch: int, entry: bytes, app: KeyValueState
    ) -> str | None:
        """[epoch, configuration, header, certificate] (docs/design/membership.md 6.1), checked
        against the ledger alone: no chain logic is needed here."""
        try:
            a = as_list(unpack_canonical(entry, max_len=CHAIN_ENTRY_BYTES_MAX), 4, "chain entry")
        except WireFormatError as exc:
            return f"does not decode: {exc}"
        if (
            type(a[0]) is not int
            or a[0] != epoch
            or epoch not in app.configs
            or epoch - 1 not in app.configs
        ):
            return "names no configuration re-execution activated"
        first, config = app.configs[epoch]
        at = first - 1
        if a[1] != config.encode():
            return "its configuration is not the ledger's"
        row = db.execute("SELECT header FROM blocks WHERE height = ?", (at,)).fetchone()
        if row is None or not isinstance(row[0], bytes) or a[2] != row[0]:
            return f"its header is not the ledger's at the activation height {at}"
        try:
            header = BlockHeader.from_array(unpack_canonical(row[0]))
        except WireFormatError as exc:
            return f"the ledger's header at {at} does not decode: {exc}"
        previous = app.configs[epoch - 1][1]
        if not isinstance(a[3], bytes):
            return "its certificate is not bytes"
        try:
            if previous.mode == "pbft":
                cert = CheckpointCertificate.from_array(unpack_canonical(a[3]))
                if (cert.seq, cert.block_hash) != (at, header.hash):
                    return f"its certificate is not for block {at}"
                return self._certificate_problem(cert, previous)
            pair = as_list(unpack_canonical(a[3]), 2, "raft chain certificate")
            vote = SignedVote.from_array(pair)
        except WireFormatError as exc:
            return f"its certificate does not decode: {exc}"
        return verify_block_signatures((vote,), at, header.hash, previous, self.verifier, 1)

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
            # The table keeps acceptance order; the state orders by (effective height,
            # acceptance): a v1 change accepted after a v2 one may take effect first (as the
            # store loads them).
            stored_pending.sort(key=lambda p: p.effective_height)
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
