"""The offline audit: check a member's ledger from the genesis file alone.

Read-only and independent of the node: it opens the SQLite file with mode=ro and trusts nothing
in it. In order, stopping at the first failure with its height and a precise reason:

    block 0 is this genesis; each header decodes canonically, names this chain, follows the
    previous height and hash; the stored hash is the header's; tx and receipts Merkle roots;
    every client signature and chain id; the commit certificate (pbft: Q distinct members'
    valid COMMIT signatures for this seq and the batch digest of these txs and proposed
    timestamp); every stored block signature; then re-execution from genesis reproduces each
    header exactly (timestamp, state root, receipts root); finally each stored checkpoint
    certificate is valid and certifies the stored block hash at its seq.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from consortium.crypto.codec import WireFormatError, unpack_canonical
from consortium.crypto.signing import Ed25519Verifier, Verifier
from consortium.ledger.block import (
    Block,
    BlockHeader,
    batch_digest,
    decode_receipts,
    decode_txs,
    genesis_block,
    genesis_state_root,
)
from consortium.ledger.certificates import (
    CheckpointCertificate,
    SignedVote,
    decode_certificate,
    verify_block_signatures,
)
from consortium.ledger.genesis import Genesis
from consortium.ledger.state import KeyValueState, build_block


@dataclass(frozen=True, slots=True)
class AuditProblem:
    height: int
    reason: str


@dataclass(frozen=True, slots=True)
class AuditReport:
    ok: bool
    height: int
    head_hash: bytes
    blocks_checked: int
    certificates_checked: int
    problem: AuditProblem | None


class _Failed(Exception):
    def __init__(self, height: int, reason: str) -> None:
        super().__init__(reason)
        self.height = height
        self.reason = reason


def audit_ledger(db_path: Path, genesis: Genesis, verifier: Verifier | None = None) -> AuditReport:
    verifier = verifier or Ed25519Verifier()
    state = _Audit(genesis, verifier)
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return state.report(AuditProblem(0, f"cannot open {db_path}: {exc}"))
    try:
        state.run(db)
    except _Failed as failed:
        return state.report(AuditProblem(failed.height, failed.reason))
    except sqlite3.DatabaseError as exc:
        return state.report(AuditProblem(state.height + 1, f"unreadable store: {exc}"))
    finally:
        db.close()
    return state.report(None)


class _Audit:
    def __init__(self, genesis: Genesis, verifier: Verifier) -> None:
        self.genesis = genesis
        self.verifier = verifier
        self.chain_id = genesis.chain_id
        self.height = -1
        self.head_hash = b"\x00" * 32
        self.blocks = 0
        self.certificates = 0
        self.hashes: dict[int, bytes] = {}

    def report(self, problem: AuditProblem | None) -> AuditReport:
        return AuditReport(
            problem is None,
            max(self.height, 0),
            self.head_hash,
            self.blocks,
            self.certificates,
            problem,
        )

    def run(self, db: sqlite3.Connection) -> None:
        g = self.genesis
        app = KeyValueState(
            self.chain_id, g.params, g.client_keys(), genesis_state_root(self.chain_id)
        )
        prev: BlockHeader | None = None
        rows = db.execute(
            "SELECT height, hash, header, body, receipts, certificate FROM blocks ORDER BY height"
        )
        for height, stored_hash, header_b, body_b, receipts_b, cert_b in rows:
            expected = 0 if prev is None else prev.height + 1
            if height != expected:
                raise _Failed(expected, f"block {expected} is missing (next stored is {height})")
            block = self._decode(height, bytes(header_b), bytes(body_b), bytes(receipts_b))
            header = block.header
            if header.hash != bytes(stored_hash):
                raise _Failed(height, "stored block hash does not match the header")
            if prev is None:
                if header != genesis_block(g).header:
                    raise _Failed(0, "block 0 is not the genesis of this genesis file")
            else:
                self._check_block(block, prev, None if cert_b is None else bytes(cert_b))
                rebuilt, execution = build_block(
                    prev, header.consensus, header.proposed_ms, block.txs, app
                )
                self._compare(rebuilt.header, header)
                if rebuilt.receipts != block.receipts:
                    raise _Failed(height, "stored receipts differ from re-execution")
                app.apply(execution)
            self._check_block_signatures(db, height, header.hash)
            prev = header
            self.height = height
            self.head_hash = header.hash
            self.hashes[height] = header.hash
            self.blocks += 1
        if prev is None:
            raise _Failed(0, "the ledger holds no blocks (not even genesis)")
        # The tables the node serves reads from must be what re-execution gives.
        stored_kv = {bytes(k): bytes(v) for k, v in db.execute("SELECT key, value FROM kv")}
        if stored_kv != app.kv:
            raise _Failed(prev.height, "the stored key-value table differs from re-execution")
        self._check_checkpoints(db)

    def _decode(self, height: int, header_b: bytes, body_b: bytes, receipts_b: bytes) -> Block:
        try:
            header = BlockHeader.from_array(unpack_canonical(header_b))
            block = Block(
                header, decode_txs(body_b, self.genesis.params), decode_receipts(receipts_b)
            )
        except WireFormatError as exc:
            raise _Failed(height, f"block does not decode: {exc}") from None
        if header.height != height:
            raise _Failed(height, f"header says height {header.height}")
        if header.chain_id != self.chain_id:
            raise _Failed(height, "header names another chain")
        return block

    def _check_block(self, block: Block, prev: BlockHeader, cert_b: bytes | None) -> None:
        header = block.header
        height = header.height
        if header.prev_hash != prev.hash:
            raise _Failed(height, "previous-hash link is broken")
        problem = block.check_roots()
        if problem:
            raise _Failed(height, problem)
        for i, tx in enumerate(block.txs):
            if tx.chain_id != self.chain_id:
                raise _Failed(height, f"transaction {i} names another chain")
            if not tx.verify_signature(self.verifier):
                raise _Failed(
                    height, f"transaction {i} ({tx.id.hex()[:12]}…) has a bad client signature"
                )
        mode = header.consensus[0] if header.consensus else None
        if mode != self.genesis.mode:
            raise _Failed(
                height, f"consensus metadata says {mode!r}, genesis says {self.genesis.mode}"
            )
        if mode == "pbft":
            self._check_commit_certificate(block, cert_b)

    def _check_commit_certificate(self, block: Block, cert_b: bytes | None) -> None:
        header = block.header
        height = header.height
        if len(header.consensus) != 3 or header.consensus[1] != height:
            raise _Failed(
                height, f"pbft metadata {list(header.consensus)} is not (pbft, {height}, ts)"
            )
        if cert_b is None:
            raise _Failed(height, "no commit certificate")
        try:
            cert = decode_certificate(cert_b)
        except WireFormatError as exc:
            raise _Failed(height, f"commit certificate does not decode: {exc}") from None
        if cert.seq != height:
            raise _Failed(height, f"commit certificate is for seq {cert.seq}")
        digest = batch_digest(header.proposed_ms, [t.id for t in block.txs])
        if cert.digest != digest:
            raise _Failed(height, "commit certificate is for another batch digest")
        problem = cert.verify(self.genesis, self.verifier)
        if problem:
            raise _Failed(height, f"commit certificate: {problem}")
        self.certificates += 1

    def _check_block_signatures(
        self, db: sqlite3.Connection, height: int, block_hash: bytes
    ) -> None:
        votes = tuple(
            SignedVote(bytes(b), bytes(s))
            for b, s in db.execute(
                "SELECT body, signature FROM block_signatures WHERE height = ?", (height,)
            )
        )
        for vote in votes:
            problem = verify_block_signatures(
                (vote,), height, block_hash, self.genesis, self.verifier, 1
            )
            if problem:
                raise _Failed(height, f"block signature: {problem}")

    def _check_checkpoints(self, db: sqlite3.Connection) -> None:
        for seq, cert_b in db.execute("SELECT seq, certificate FROM checkpoints ORDER BY seq"):
            try:
                cert = CheckpointCertificate.from_array(unpack_canonical(bytes(cert_b)))
            except WireFormatError as exc:
                raise _Failed(seq, f"checkpoint certificate does not decode: {exc}") from None
            if cert.seq != seq:
                raise _Failed(seq, f"checkpoint certificate is for seq {cert.seq}")
            problem = cert.verify(self.genesis, self.verifier)
            if problem:
                raise _Failed(seq, f"checkpoint certificate: {problem}")
            stored = self.hashes.get(seq)
            if stored is None:
                raise _Failed(
                    seq,
                    f"a checkpoint certificate certifies seq {seq}, above the ledger head at "
                    f"{self.height}: blocks are missing",
                )
            if stored != cert.block_hash:
                raise _Failed(seq, "checkpoint certificate certifies another block hash")
            self.certificates += 1

    def _compare(self, rebuilt: BlockHeader, stored: BlockHeader) -> None:
        if rebuilt == stored:
            return
        for name in ("timestamp_ms", "tx_root", "state_root", "receipts_root", "consensus"):
            if getattr(rebuilt, name) != getattr(stored, name):
                raise _Failed(stored.height, f"re-execution gives a different {name}")
        raise _Failed(stored.height, "re-execution gives a different header")
