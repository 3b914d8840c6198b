"""The offline audit: from the genesis file alone, every tampering is found at its height."""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from consortium.crypto.codec import pack, unpack, unpack_canonical
from consortium.crypto.signing import Domain
from consortium.ledger.audit import audit_ledger
from consortium.ledger.block import BlockHeader
from consortium.ledger.certificates import (
    RaftEntryCertificate,
    SignedVote,
    block_signature_body,
    commit_body,
)
from consortium.ledger.genesis import Genesis
from consortium.ledger.store import BlockStore
from consortium.ledger.tx import Put
from tests.ledger.chain_fixture import (
    CREATED_MS,
    ChainBuilder,
    block_signatures,
    certificate,
    checkpoint,
    make_genesis,
    vote,
)

HEIGHT = 4


def _build(path: Path, chain: ChainBuilder, signed: bool = True) -> Path:
    store = BlockStore.open(path, chain.genesis)
    store.append_blocks(chain.blocks)
    if signed and chain.genesis.mode == "pbft":
        for block, _, _ in chain.blocks:
            store.add_block_signatures(block.height, block_signatures(chain.genesis, block))
        store.put_checkpoint(checkpoint(chain.genesis, 2, chain.blocks[1][0].hash))
    store.close()
    return path


def _ledger(tmp_path: Path, mode: str = "pbft") -> tuple[Path, ChainBuilder]:
    chain = ChainBuilder(make_genesis(mode=mode))  # type: ignore[arg-type]
    for _ in range(HEIGHT):
        chain.add_puts(3)
    return _build(tmp_path / "ledger.sqlite", chain), chain


def _sql(path: Path, statement: str, *args: object) -> list[tuple[object, ...]]:
    db = sqlite3.connect(path)
    try:
        rows = db.execute(statement, args).fetchall()
        db.commit()
    finally:
        db.close()
    return rows


def _column(path: Path, column: str, height: int) -> bytes:
    ((value,),) = _sql(path, f"SELECT {column} FROM blocks WHERE height = ?", height)
    assert isinstance(value, bytes)
    return value


def _failure(path: Path, genesis: Genesis, height: int, reason: str) -> None:
    report = audit_ledger(path, genesis)
    assert not report.ok and report.problem is not None, "tampering went unnoticed"
    assert (report.problem.height, reason in report.problem.reason) == (height, True), (
        report.problem
    )
    assert report.height == height - 1  # the last height that passed everything


def test_a_good_ledger_passes_the_audit(tmp_path: Path) -> None:
    path, chain = _ledger(tmp_path)
    report = audit_ledger(path, chain.genesis)
    assert report.ok and report.problem is None
    assert report.height == HEIGHT and report.head_hash == chain.head.hash
    assert report.blocks_checked == HEIGHT + 1
    assert report.certificates_checked == HEIGHT + 1  # 4 commit certificates, 1 checkpoint


def test_the_audit_reads_without_writing(tmp_path: Path) -> None:
    path, chain = _ledger(tmp_path)
    before = path.read_bytes()
    path.chmod(0o444)
    try:
        assert audit_ledger(path, chain.genesis).ok
    finally:
        path.chmod(0o644)
    assert path.read_bytes() == before


def test_a_raft_ledger_is_audited_with_its_leader_certificates(tmp_path: Path) -> None:
    path, chain = _ledger(tmp_path, mode="raft")
    report = audit_ledger(path, chain.genesis)
    assert report.ok and report.height == HEIGHT and report.certificates_checked == HEIGHT
    # Everything else is still checked.
    _set_header(path, 3, state_root=b"\x03" * 32)
    _failure(path, chain.genesis, 3, "re-execution gives a different state_root")
    _set_header(path, 2, consensus=("raft", 1))
    _failure(path, chain.genesis, 2, "raft metadata ['raft', 1] is not (raft, term, index")


def _recode_cert(path: Path, height: int, edit: Callable[[list[object]], object]) -> None:
    cert = unpack(_column(path, "certificate", height))
    assert isinstance(cert, list)
    edited = edit(cert)
    _sql(path, "UPDATE blocks SET certificate = ? WHERE height = ?", edited, height)


def _flip_signature(cert: list[object]) -> bytes:
    votes = cert[4]
    assert isinstance(votes, list)
    sig = bytearray(votes[1][1])
    sig[10] ^= 0x01
    votes[1][1] = bytes(sig)
    return pack(cert)


def _drop_vote(cert: list[object]) -> bytes:
    votes = cert[4]
    assert isinstance(votes, list)
    votes.pop()
    return pack(cert)


def _duplicate_signer(cert: list[object]) -> bytes:
    votes = cert[4]
    assert isinstance(votes, list)
    votes[2] = votes[0]
    return pack(cert)


def _set_header(path: Path, height: int, **changes: object) -> None:
    """Rewrite a header consistently (its hash too) and drop the evidence that pinned the old
    hash (block signatures, a checkpoint), as a forger would: only later checks can tell."""
    _sql(path, "DELETE FROM block_signatures WHERE height = ?", height)
    _sql(path, "DELETE FROM checkpoints WHERE seq = ?", height)
    header = BlockHeader.from_array(unpack_canonical(_column(path, "header", height)))
    forged = replace(header, **changes)  # type: ignore[arg-type]
    _sql(
        path,
        "UPDATE blocks SET header = ?, hash = ? WHERE height = ?",
        forged.encode(),
        forged.hash,
        height,
    )


def _flip_body_byte(path: Path, chain: ChainBuilder) -> None:
    body = bytearray(_column(path, "body", 2))
    body[body.index(b"value")] ^= 0x01
    _sql(path, "UPDATE blocks SET body = ? WHERE height = 2", bytes(body))


def _flip_header_byte(path: Path, chain: ChainBuilder) -> None:
    header = bytearray(_column(path, "header", 2))
    header[40] ^= 0x01
    _sql(path, "UPDATE blocks SET header = ? WHERE height = 2", bytes(header))


def _forge_receipt(path: Path, chain: ChainBuilder) -> None:
    block = chain.blocks[1][0]
    receipts = list(block.receipts)
    receipts[0] = replace(receipts[0], status="rejected", reason="expired", results=())
    encoded = pack([r.to_array() for r in receipts])
    _sql(path, "UPDATE blocks SET receipts = ? WHERE height = 2", encoded)


def _bad_client_signature(path: Path, chain: ChainBuilder) -> None:
    # A whole consistent block (roots, certificate, state) around one forged client signature.
    other = ChainBuilder()
    other.add_puts(3)
    tx = other.tx(Put(b"x", b"y"))
    forged = replace(tx, signature=bytes(64))
    other.add([forged])
    path.unlink()
    _build(path, other, signed=False)


def _vote_for_another_view(path: Path, chain: ChainBuilder) -> None:
    block = chain.blocks[2][0]
    cert = certificate(chain.genesis, 3, _digest(block))
    stray = vote(chain.genesis, Domain.PBFT, commit_body(0, 1, 3, cert.digest, 3), 3)
    edited = replace(cert, votes=(*cert.votes[:2], stray))
    _sql(path, "UPDATE blocks SET certificate = ? WHERE height = 3", edited.encode())


def _non_member_signer(path: Path, chain: ChainBuilder) -> None:
    block = chain.blocks[2][0]
    cert = certificate(chain.genesis, 3, _digest(block))
    body = commit_body(0, 0, 3, cert.digest, 7)
    stray = SignedVote(body, vote(chain.genesis, Domain.PBFT, body, 0).signature)
    edited = replace(cert, votes=(*cert.votes[:2], stray))
    _sql(path, "UPDATE blocks SET certificate = ? WHERE height = 3", edited.encode())


def _digest(block: object) -> bytes:
    from consortium.ledger.block import batch_digest

    header = block.header  # type: ignore[attr-defined]
    return batch_digest(header.proposed_ms, [t.id for t in block.txs])  # type: ignore[attr-defined]


def _forged_block_signature(path: Path, chain: ChainBuilder) -> None:
    body = block_signature_body(2, chain.blocks[1][0].hash, 3)
    _sql(path, "INSERT INTO block_signatures VALUES (2, ?, ?)", body, bytes(64))


def _block_signature_for_another_block(path: Path, chain: ChainBuilder) -> None:
    (sig,) = block_signatures(chain.genesis, chain.blocks[0][0], (3,))
    _sql(path, "INSERT INTO block_signatures VALUES (2, ?, ?)", sig.body, sig.signature)


def _checkpoint_for_another_hash(path: Path, chain: ChainBuilder) -> None:
    cert = checkpoint(chain.genesis, 3, chain.blocks[0][0].hash)
    _sql(path, "INSERT INTO checkpoints VALUES (3, ?)", cert.encode())


def _checkpoint_below_quorum(path: Path, chain: ChainBuilder) -> None:
    cert = checkpoint(chain.genesis, 3, chain.blocks[2][0].hash, (0, 1))
    _sql(path, "INSERT INTO checkpoints VALUES (3, ?)", cert.encode())


def _cut_below_checkpoint(path: Path, chain: ChainBuilder) -> None:
    store = BlockStore.open(path, chain.genesis)  # (the store keeps the checkpoints' digest)
    store.put_checkpoint(checkpoint(chain.genesis, HEIGHT, chain.head.hash))
    store.close()
    assert audit_ledger(path, chain.genesis).ok
    _sql(path, "DELETE FROM blocks WHERE height = ?", HEIGHT)
    _sql(path, "DELETE FROM block_signatures WHERE height = ?", HEIGHT)


TAMPERING: list[tuple[str, Callable[[Path, ChainBuilder], None], int, str]] = [
    ("a block body byte", _flip_body_byte, 2, "transaction Merkle root does not match"),
    ("a header byte", _flip_header_byte, 2, "stored block hash does not match the header"),
    ("a receipt", _forge_receipt, 2, "receipts Merkle root does not match"),
    (
        "a commit signature byte",
        lambda p, c: _recode_cert(p, 3, _flip_signature),
        3,
        "commit certificate: commit vote 1: bad signature by n2",
    ),
    (
        "a vote removed below quorum",
        lambda p, c: _recode_cert(p, 3, _drop_vote),
        3,
        "commit certificate: 2 distinct commit signatures, 3 needed",
    ),
    (
        "a duplicated signer",
        lambda p, c: _recode_cert(p, 3, _duplicate_signer),
        3,
        "commit vote 2: member n1 counted twice",
    ),
    (
        "a certificate for a wrong digest",
        lambda p, c: _sql(
            p,
            "UPDATE blocks SET certificate = ? WHERE height = 3",
            certificate(c.genesis, 3, b"\x05" * 32).encode(),
        ),
        3,
        "commit certificate is for another batch digest",
    ),
    (
        "a certificate for another seq",
        lambda p, c: _sql(
            p,
            "UPDATE blocks SET certificate = ? WHERE height = 3",
            certificate(c.genesis, 2, _digest(c.blocks[2][0])).encode(),
        ),
        3,
        "commit certificate is for seq 2, not 3",
    ),
    (
        "no certificate",
        lambda p, c: _sql(p, "UPDATE blocks SET certificate = NULL WHERE height = 3"),
        3,
        "no commit certificate",
    ),
    (
        "an undecodable certificate",
        lambda p, c: _sql(p, "UPDATE blocks SET certificate = ? WHERE height = 3", b"\xc1"),
        3,
        "commit certificate does not decode",
    ),
    ("a vote for another view", _vote_for_another_view, 3, "not for this (view, seq, digest)"),
    ("a signer outside genesis", _non_member_signer, 3, "signer 7 is not a member"),
    (
        "a wrong state root",
        lambda p, c: _set_header(p, 2, state_root=b"\x01" * 32),
        2,
        "re-execution gives a different state_root (stored 010101010101…",
    ),
    (
        "a wrong timestamp",
        lambda p, c: _set_header(p, 2, timestamp_ms=CREATED_MS + 999),
        2,
        "re-execution gives a different timestamp_ms (stored 1700000000999",
    ),
    (
        "pbft metadata for another seq",
        lambda p, c: _set_header(p, 2, consensus=("pbft", 3, CREATED_MS + 2)),
        2,
        "pbft metadata ['pbft', 3, 1700000000002] is not (pbft, 2, proposed_ms)",
    ),
    (
        "raft metadata on a pbft ledger",
        lambda p, c: _set_header(p, 2, consensus=("raft", 1, 2, CREATED_MS + 2)),
        2,
        "consensus metadata says 'raft', genesis says 'pbft'",
    ),
    (
        "a broken link",
        lambda p, c: _set_header(p, 2, prev_hash=b"\x02" * 32),
        2,
        "previous-hash link is broken",
    ),
    (
        "a missing block",
        lambda p, c: _sql(p, "DELETE FROM blocks WHERE height = 2"),
        2,
        "block 2 is missing (the next stored is 3)",
    ),
    ("a bad client signature", _bad_client_signature, 2, "has a bad client signature"),
    ("a forged block signature", _forged_block_signature, 2, "block vote 2: bad signature by n4"),
    (
        "a block signature for another block",
        _block_signature_for_another_block,
        2,
        "block signature: block vote 0 is not for this (height, block hash)",
    ),
    (
        "a checkpoint for another block",
        _checkpoint_for_another_hash,
        3,
        "checkpoint certificate certifies block hash",
    ),
    (
        "a checkpoint below quorum",
        _checkpoint_below_quorum,
        3,
        "checkpoint certificate: 2 distinct checkpoint signatures, 3 needed",
    ),
    (
        "blocks cut below a checkpoint",
        _cut_below_checkpoint,
        4,
        "blocks are missing",
    ),
]


@pytest.mark.parametrize(
    ("tamper", "height", "reason"),
    [t[1:] for t in TAMPERING],
    ids=[t[0] for t in TAMPERING],
)
def test_tampering_fails_the_audit_at_its_height_naming_the_problem(
    tmp_path: Path, tamper: Callable[[Path, ChainBuilder], None], height: int, reason: str
) -> None:
    path, chain = _ledger(tmp_path)
    tamper(path, chain)
    _failure(path, chain.genesis, height, reason)


@pytest.mark.parametrize(
    ("statement", "reason"),
    [
        ("UPDATE kv SET value = x'00' WHERE key = CAST('k0' AS BLOB)", "key-value table"),
        ("INSERT INTO kv VALUES (x'00', x'00')", "key-value table"),
        ("UPDATE tx_index SET expiry_ms = 0", "replay set (executed ids)"),
        ("INSERT INTO replay VALUES (x'00', 9223372036854775807)", "replay set (executed ids)"),
    ],
)
def test_the_tables_the_node_serves_must_equal_re_execution(
    tmp_path: Path, statement: str, reason: str
) -> None:
    path, chain = _ledger(tmp_path)
    _sql(path, statement)
    report = audit_ledger(path, chain.genesis)
    assert report.problem is not None and report.problem.height == HEIGHT
    assert reason in report.problem.reason and "differs from re-execution" in report.problem.reason
    assert report.height == HEIGHT  # every block itself is fine


def test_an_index_row_with_another_expiry_than_its_transaction_fails_at_its_block(
    tmp_path: Path,
) -> None:
    """(0 is allowed: a row of a store upgraded from format 3 after its id expired; the
    replay set compared after the last block catches a 0 where the expiry still matters)"""
    path, chain = _ledger(tmp_path)
    block = chain.blocks[1][0]
    tx = block.txs[0]
    _sql(path, "UPDATE tx_index SET expiry_ms = expiry_ms + 1 WHERE tx_id = ?", tx.id)
    _failure(path, chain.genesis, block.height, f"the expiry {tx.expiry_ms + 1}, not its own")


def test_a_ledger_of_another_network_fails_at_block_0(tmp_path: Path) -> None:
    path, chain = _ledger(tmp_path)
    other = replace(chain.genesis, chain_name="other")
    report = audit_ledger(path, other)
    assert report.problem is not None and report.problem.height == 0
    assert "header names chain" in report.problem.reason
    assert report.blocks_checked == 0


def test_what_is_not_a_ledger_is_reported_not_raised(tmp_path: Path) -> None:
    genesis = make_genesis()
    missing = audit_ledger(tmp_path / "missing.sqlite", genesis)
    assert missing.problem is not None and "cannot open" in missing.problem.reason
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not sqlite" * 100)
    report = audit_ledger(garbage, genesis)
    assert report.problem is not None and "cannot read" in report.problem.reason
    empty = tmp_path / "empty.sqlite"
    _sql(empty, "CREATE TABLE blocks (height, hash, header, body, receipts, certificate)")
    report = audit_ledger(empty, genesis)
    assert report.problem is not None and "no blocks" in report.problem.reason


class _AcceptsAnything:
    def verify(
        self, public_key: bytes, domain: Domain, chain_id: bytes, body: bytes, signature: bytes
    ) -> bool:
        return True


def test_an_injected_verifier_checks_members_but_clients_are_always_ed25519(
    tmp_path: Path,
) -> None:
    path, chain = _ledger(tmp_path)
    _recode_cert(path, 3, _flip_signature)
    assert audit_ledger(path, chain.genesis, _AcceptsAnything()).ok  # a stand-in decides
    _bad_client_signature(path, chain)
    report = audit_ledger(path, chain.genesis, _AcceptsAnything())
    assert report.problem is not None and "bad client signature" in report.problem.reason


@pytest.fixture(scope="module")
def clean_ledger(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Genesis]:
    path, chain = _ledger(tmp_path_factory.mktemp("clean"))
    return path, chain.genesis


_CELLS = [
    ("blocks", "hash", "height"),
    ("blocks", "header", "height"),
    ("blocks", "body", "height"),
    ("blocks", "receipts", "height"),
    ("blocks", "certificate", "height"),
    ("block_signatures", "body", "height"),
    ("block_signatures", "signature", "height"),
    ("checkpoints", "certificate", "seq"),
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_CELLS), st.integers(1, HEIGHT), st.integers(0, 10**6), st.integers(0, 7))
def test_any_flipped_bit_in_anything_stored_is_found(
    clean_ledger: tuple[Path, Genesis],
    cell: tuple[str, str, str],
    height: int,
    at: int,
    bit: int,
) -> None:
    clean, genesis = clean_ledger
    table, column, key = cell
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "ledger.sqlite"
        shutil.copyfile(clean, path)
        rows = _sql(path, f"SELECT {key}, {column} FROM {table} ORDER BY {key}")
        row_key, value = rows[height % len(rows)]
        assert isinstance(value, bytes)
        flipped = bytearray(value)
        flipped[at % len(flipped)] ^= 1 << bit
        try:
            _sql(
                path,
                f"UPDATE {table} SET {column} = ? WHERE {key} = ? AND {column} = ?",
                bytes(flipped),
                row_key,
                value,
            )
        except sqlite3.IntegrityError:
            # The flip made another row's primary key (a block signature body whose signer
            # bit now names the other signer of that height): such damage cannot be stored.
            assume(False)
        report = audit_ledger(path, genesis)
        assert not report.ok, (table, column, row_key)
        assert report.problem is not None and report.problem.height == row_key


def test_a_raft_leader_certificate_is_checked_offline(tmp_path: Path) -> None:
    path, chain = _ledger(tmp_path, mode="raft")
    good = bytes(_column(path, "certificate", 2))
    cert = RaftEntryCertificate.decode(good)
    # A signature by another member than the one the certificate names.
    forged = replace(cert, leader=1).encode()
    _sql(path, "UPDATE blocks SET certificate = ? WHERE height = 2", forged)
    _failure(path, chain.genesis, 2, "leader certificate: bad entry signature by n2")
    # A valid certificate of another entry.
    other = bytes(_column(path, "certificate", 3))
    _sql(path, "UPDATE blocks SET certificate = ? WHERE height = 2", other)
    _failure(path, chain.genesis, 2, "leader certificate is for term 1 index 4, the block says")
    _sql(path, "UPDATE blocks SET certificate = NULL WHERE height = 2")
    _failure(path, chain.genesis, 2, "no leader certificate stored for this block")
    _sql(path, "UPDATE blocks SET certificate = ? WHERE height = 2", b"\x93junk")
    _failure(path, chain.genesis, 2, "leader certificate does not decode")


# --- every table the node relies on -----------------------------------------------------------


def test_a_good_store_with_every_table_filled_passes_the_audit(tmp_path: Path) -> None:
    from tests.ledger.test_store_integrity import rich_store

    path = tmp_path / "ledger.sqlite"
    chain = rich_store(path)  # (it holds member changes: re-executed with them enabled)
    assert audit_ledger(path, chain.genesis, member_changes=True).ok


@pytest.mark.parametrize("how", ["edit", "delete", "add"])
@pytest.mark.parametrize(
    "table",
    [
        "kv",
        "replay",
        "clients",
        "pending_client_changes",
        "client_changed",
        "tx_index",
        "block_signatures",
        "checkpoints",
        "records",
    ],
)
def test_the_audit_names_a_changed_row_of_any_table(tmp_path: Path, table: str, how: str) -> None:
    from tests.ledger.test_store_integrity import edit_row, rich_store

    path = tmp_path / "ledger.sqlite"
    chain = rich_store(path)
    edit_row(path, table, how)
    report = audit_ledger(path, chain.genesis, member_changes=True)
    assert not report.ok and report.problem is not None
    # Named by the table's own name, or by the deeper check that found it first.
    words = {
        "kv": "key-value table",
        "replay": "replay set",
        "clients": "admitted clients",
        "pending_client_changes": "pending client changes",
        "client_changed": "last client changes",
        "block_signatures": "block signature",
        "checkpoints": "checkpoint",
    }
    reason = report.problem.reason
    assert f"({table})" in reason or words.get(table, "@") in reason, reason


def test_the_audit_names_a_deleted_transaction_index_row_with_its_height(tmp_path: Path) -> None:
    path, chain = _ledger(tmp_path)
    tx = chain.blocks[1][0].txs[0]
    _sql(path, "DELETE FROM tx_index WHERE tx_id = ?", tx.id)
    _sql(path, "DELETE FROM meta WHERE key LIKE 'digest/%'")  # (as a store from before digests)
    _failure(path, chain.genesis, 2, "is missing from the transaction index (tx_index)")


def test_the_audit_names_a_transaction_index_row_pointing_elsewhere(tmp_path: Path) -> None:
    path, chain = _ledger(tmp_path)
    tx = chain.blocks[1][0].txs[0]
    _sql(path, "DELETE FROM meta WHERE key LIKE 'digest/%'")
    _sql(path, "UPDATE tx_index SET height = 1 WHERE tx_id = ?", tx.id)
    _failure(path, chain.genesis, 2, "executed here, but the transaction index (tx_index) says")


def test_the_audit_names_an_undecodable_consensus_record(tmp_path: Path) -> None:
    path, chain = _ledger(tmp_path)
    _sql(path, "DELETE FROM meta WHERE key LIKE 'digest/%'")
    _sql(path, "INSERT INTO records VALUES (?, ?)", b"pbft/view", b"\xc1")
    report = audit_ledger(path, chain.genesis)
    assert report.problem is not None and report.problem.height == chain.head.height
    assert "the consensus record b'pbft/view' (records) does not decode" in report.problem.reason
