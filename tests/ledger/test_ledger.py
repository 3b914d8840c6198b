"""Transactions, the key-value application, genesis files, the block store and the audit."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from consortium.crypto.codec import WireFormatError, pack, unpack
from consortium.crypto.hashing import sha256
from consortium.crypto.keys import KeyPair
from consortium.ledger.audit import audit_ledger
from consortium.ledger.certificates import SignedVote
from consortium.ledger.genesis import Genesis, GenesisError, Params
from consortium.ledger.store import BlockStore, StoreError
from consortium.ledger.tx import CompareAndSet, Delete, Get, Put, Transaction
from tests.ledger.chain_fixture import CLIENT, CREATED_MS, ChainBuilder, certificate, make_genesis

# --- transactions ----------------------------------------------------------------------------


def test_transaction_round_trip_and_id_is_the_hash_of_the_unsigned_body() -> None:
    chain = ChainBuilder()
    tx = chain.tx(Put(b"a", b"1"), Delete(b"b"), CompareAndSet(b"c", None, b"2"), Get(b"d"))
    again = Transaction.decode(tx.encode(), chain.genesis.params)
    assert again == tx
    assert tx.id == sha256(tx.body)
    # A different signature (malleated, or forged) never makes a new id.
    assert replace(tx, signature=bytes(64)).id == tx.id


def test_transactions_with_bad_shape_are_refused() -> None:
    params = Params()
    chain = ChainBuilder()
    tx = chain.tx(Put(b"a", b"1"))
    body = unpack(tx.body)
    noncanonical = b"\xdc\x00\x05" + tx.body[1:]  # array16 header instead of fixarray
    with pytest.raises(WireFormatError, match="non-canonical"):
        Transaction.from_array([noncanonical, tx.signature], params)
    for bad in ([], [["put", b"k"]], [["nope", b"k"]]):
        with pytest.raises(WireFormatError):
            Transaction.from_array([pack([*body[:4], bad]), tx.signature], params)
    with pytest.raises(WireFormatError):
        Transaction.from_array([tx.body, b"short"], params)
    with pytest.raises(WireFormatError):
        Transaction.decode(b"\x00" * 10, params)
    big = Put(b"k", b"x" * (params.value_bytes_max + 1))
    with pytest.raises(WireFormatError):
        Transaction.decode(chain.tx(big).encode(), params)


# --- the application -------------------------------------------------------------------------


def test_key_value_operations_and_receipts() -> None:
    chain = ChainBuilder()
    chain.add([chain.tx(Put(b"a", b"1")), chain.tx(Put(b"b", b"2"))])
    block = chain.add(
        [
            chain.tx(Get(b"a"), Delete(b"b"), Get(b"b")),
            chain.tx(CompareAndSet(b"a", b"1", b"3")),
            chain.tx(CompareAndSet(b"a", b"1", b"4"), Put(b"z", b"never")),
        ]
    )
    ok, cas, mismatch = block.receipts
    assert (ok.status, ok.results) == ("ok", (b"1", True, None))
    assert (cas.status, cas.results) == ("ok", (True,))
    assert (mismatch.status, mismatch.reason) == ("rejected", "cas_mismatch")
    assert chain.app.get(b"a") == b"3"
    assert chain.app.get(b"z") is None  # the mismatching transaction changed nothing
    assert chain.app.get(b"b") is None


def test_replays_expired_and_unknown_clients_get_deterministic_rejections() -> None:
    chain = ChainBuilder()
    tx = chain.tx(Put(b"a", b"1"))
    first = chain.add([tx, tx])
    assert [r.reason for r in first.receipts] == ["", "duplicate"]
    again = chain.add([tx])
    assert again.receipts[0].reason == "duplicate"
    expired = chain.tx(Put(b"a", b"2"), expiry_ms=CREATED_MS - 1)
    too_far = chain.tx(Put(b"a", b"2"), expiry_ms=CREATED_MS + 10**9)
    stranger = chain.tx(Put(b"a", b"2"), signer=KeyPair.generate())
    block = chain.add([expired, too_far, stranger])
    assert [r.reason for r in block.receipts] == ["expired", "expiry_too_far", "unknown_client"]
    assert chain.app.get(b"a") == b"1"


def test_the_replay_set_forgets_ids_once_they_expire() -> None:
    chain = ChainBuilder()
    tx = chain.tx(Put(b"a", b"1"), expiry_ms=CREATED_MS + 100)
    chain.add([tx], proposed_ms=CREATED_MS + 10)
    assert tx.id in chain.app.replay
    block = chain.add([tx], proposed_ms=CREATED_MS + 1000)
    assert tx.id not in chain.app.replay
    assert block.receipts[0].reason == "expired"  # and it can never run again


def test_execution_is_deterministic() -> None:
    a, b = ChainBuilder(), ChainBuilder()
    for chain in (a, b):
        chain.add_puts(5)
        chain.add_puts(3)
    assert a.head == b.head


# --- genesis ---------------------------------------------------------------------------------


def test_genesis_json_round_trip_and_chain_id_ignores_formatting() -> None:
    genesis = make_genesis()
    text = genesis.to_json()
    assert Genesis.from_json(text).chain_id == genesis.chain_id
    reordered = json.dumps(dict(reversed(list(json.loads(text).items()))))
    assert Genesis.from_json(reordered).chain_id == genesis.chain_id
    assert genesis.n == 4 and genesis.f == 1 and genesis.quorum == 3


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(extra=1), "unknown key 'extra'"),
        (lambda d: d["params"].update(batch_size=3), "unknown parameter 'params.batch_size'"),
        (lambda d: d["params"].update(window=33), "multiple of"),
        (lambda d: d.update(mode="paxos"), "'mode' must be one of"),
        (lambda d: d["members"][0].update(public_key="00" * 32), "members\\[0\\].*small-order"),
        (lambda d: d["members"][1].update(peer_address="nowhere"), "host:port"),
        (lambda d: d["members"].pop(), "at least 4 members"),
        (lambda d: d["clients"][0].update(public_key="zz"), "64 hex characters"),
    ],
)
def test_bad_genesis_files_name_the_key_and_the_fix(edit: object, message: str) -> None:
    doc = json.loads(make_genesis().to_json())
    edit(doc)  # type: ignore[operator]
    with pytest.raises(GenesisError, match=message):
        Genesis.from_json(json.dumps(doc), where="g.json")


# --- the block store -------------------------------------------------------------------------


def test_store_appends_reopens_and_answers_first_receipts(tmp_path: Path) -> None:
    chain = ChainBuilder()
    tx = chain.tx(Put(b"a", b"1"))
    chain.add([tx])
    chain.add([tx, chain.tx(Put(b"b", b"2"))])  # a later duplicate
    path = tmp_path / "l.sqlite"
    store = BlockStore.open(path, chain.genesis)
    fsyncs = store.fsync_count
    store.save(blocks=chain.blocks[:1])
    store.save(blocks=chain.blocks[1:], records=[(b"r", b"1")])
    assert store.fsync_count == fsyncs + 2  # one per save, however much it holds
    store.close()
    store = BlockStore.open(path, chain.genesis)
    assert store.height == 2 and store.head == chain.head
    assert store.app.kv == {b"a": b"1", b"b": b"2"}
    receipt = store.receipt_of(tx.id)
    assert receipt is not None and receipt.height == 1 and receipt.status == "ok"
    assert store.load_records() == [(b"r", b"1")]
    store.save(records=[(b"r", None)])
    assert store.load_records() == []
    stored = store.get_block(2)
    assert stored is not None and stored.block.hash == chain.head.hash
    store.close()


def test_store_refuses_a_block_that_does_not_follow_and_writes_nothing(tmp_path: Path) -> None:
    chain = ChainBuilder()
    chain.add_puts(1)
    chain.add_puts(1)
    store = BlockStore.open(tmp_path / "l.sqlite", chain.genesis)
    with pytest.raises(StoreError, match="does not follow"):
        store.save(blocks=chain.blocks[1:])
    other = ChainBuilder()
    other.add([other.tx(Put(b"x", b"y"))], proposed_ms=CREATED_MS + 99)
    store.save(blocks=chain.blocks[:1])
    bad = replace(other.blocks[0][0], header=replace(other.blocks[0][0].header, height=2))
    with pytest.raises(StoreError, match="previous hash"):
        store.save(blocks=[(bad, other.blocks[0][1], None)])
    assert store.height == 1
    store.close()


def test_store_of_another_network_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    BlockStore.open(path, make_genesis()).close()
    other = make_genesis(Params(batch_txs_max=7))
    with pytest.raises(StoreError, match="belongs to network"):
        BlockStore.open(path, other)


def test_a_tampered_block_is_found_when_the_store_opens(tmp_path: Path) -> None:
    chain = ChainBuilder()
    for _ in range(3):
        chain.add_puts(2)
    path = tmp_path / "l.sqlite"
    store = BlockStore.open(path, chain.genesis)
    store.save(blocks=chain.blocks)
    store.close()
    db = sqlite3.connect(path)
    (body,) = db.execute("SELECT body FROM blocks WHERE height = 2").fetchone()
    at = bytes(body).index(b"value")
    db.execute(
        "UPDATE blocks SET body = ? WHERE height = 2",
        (bytes(body)[:at] + b"Value" + bytes(body)[at + 5 :],),
    )
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="damaged at height 2"):
        BlockStore.open(path, chain.genesis)


CRASH_SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.ledger.chain_fixture import ChainBuilder
from consortium.ledger.store import BlockStore
chain = ChainBuilder()
store = BlockStore.open(Path({path!r}), chain.genesis)
print("ready", flush=True)
while True:
    chain.add_puts(20)
    store.save(blocks=chain.blocks[-1:])
"""


def test_after_kill_9_the_store_reopens_to_the_last_whole_block(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    root = str(Path(__file__).parents[2])
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASH_SCRIPT.format(root=root, path=str(path))],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"ready"
    time.sleep(1.0)
    proc.kill()
    proc.wait()
    proc.stdout.close()
    genesis = make_genesis()
    store = BlockStore.open(path, genesis)  # re-verifies the chain
    height = store.height
    assert height > 0
    store.close()
    assert audit_ledger(path, genesis).ok


# --- the audit -------------------------------------------------------------------------------


def _ledger(tmp_path: Path, blocks: int = 4) -> tuple[Path, ChainBuilder]:
    chain = ChainBuilder()
    for _ in range(blocks):
        chain.add_puts(3)
    path = tmp_path / "l.sqlite"
    store = BlockStore.open(path, chain.genesis)
    store.save(blocks=chain.blocks)
    store.close()
    return path, chain


def _edit(path: Path, sql: str, *args: object) -> None:
    db = sqlite3.connect(path)
    db.execute(sql, args)
    db.commit()
    db.close()


def test_a_good_ledger_passes_the_audit(tmp_path: Path) -> None:
    path, chain = _ledger(tmp_path)
    report = audit_ledger(path, chain.genesis)
    assert report.ok and report.height == 4 and report.head_hash == chain.head.hash
    assert report.certificates_checked == 4


def _cert(path: Path, height: int) -> list[object]:
    db = sqlite3.connect(path)
    (raw,) = db.execute("SELECT certificate FROM blocks WHERE height = ?", (height,)).fetchone()
    db.close()
    value = unpack(bytes(raw))
    assert isinstance(value, list)
    return value


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ("signature", "bad signature"),
        ("below_quorum", "2 distinct commit signatures, 3 needed"),
        ("duplicate_signer", "counted twice"),
        ("wrong_digest", "another batch digest"),
        ("missing", "no commit certificate"),
    ],
)
def test_a_broken_commit_certificate_fails_the_audit_at_its_height(
    tmp_path: Path, tamper: str, reason: str
) -> None:
    path, chain = _ledger(tmp_path)
    cert = _cert(path, 3)
    votes = cert[4]
    assert isinstance(votes, list)
    if tamper == "signature":
        votes[0][1] = bytes([votes[0][1][0] ^ 1]) + votes[0][1][1:]
    elif tamper == "below_quorum":
        votes.pop()
    elif tamper == "duplicate_signer":
        votes[2] = votes[0]
    elif tamper == "wrong_digest":
        other = certificate(chain.genesis, 3, b"\x05" * 32)
        cert = ["pbft-commit", *other.to_array()]
    new = None if tamper == "missing" else pack(cert)
    _edit(path, "UPDATE blocks SET certificate = ? WHERE height = 3", new)
    report = audit_ledger(path, chain.genesis)
    assert not report.ok
    assert report.problem is not None and report.problem.height == 3
    assert reason in report.problem.reason


def test_a_changed_state_root_is_caught_by_re_execution(tmp_path: Path) -> None:
    from consortium.crypto.codec import unpack_canonical
    from consortium.ledger.block import BlockHeader

    path, chain = _ledger(tmp_path)
    db = sqlite3.connect(path)
    (raw,) = db.execute("SELECT header FROM blocks WHERE height = 2").fetchone()
    header = BlockHeader.from_array(unpack_canonical(bytes(raw)))
    forged = replace(header, state_root=b"\x01" * 32)
    db.execute(
        "UPDATE blocks SET header = ?, hash = ? WHERE height = 2", (forged.encode(), forged.hash)
    )
    db.commit()
    db.close()
    report = audit_ledger(path, chain.genesis)
    assert report.problem is not None and report.problem.height in (2, 3)
    assert "state_root" in report.problem.reason or "previous-hash" in report.problem.reason


def test_a_forged_block_signature_fails_the_audit(tmp_path: Path) -> None:
    path, chain = _ledger(tmp_path)
    store = BlockStore.open(path, chain.genesis)
    from consortium.ledger.certificates import block_signature_body

    body = block_signature_body(2, chain.blocks[1][0].hash, 1)
    store.add_block_signatures(2, [SignedVote(body, bytes(64))])
    store.close()
    report = audit_ledger(path, chain.genesis)
    assert report.problem is not None and report.problem.height == 2
    assert "block signature" in report.problem.reason
    assert CLIENT.public in chain.genesis.client_keys()


def test_cutting_blocks_below_a_checkpoint_certificate_fails_the_audit(tmp_path: Path) -> None:
    from consortium.crypto.signing import Domain, Ed25519Signer
    from consortium.ledger.certificates import CheckpointCertificate, checkpoint_body
    from tests.ledger.chain_fixture import MEMBERS

    path, chain = _ledger(tmp_path)
    block_hash = chain.blocks[3][0].hash
    votes = []
    for s in (0, 1, 2):
        body = checkpoint_body(4, block_hash, s)
        sig = Ed25519Signer(MEMBERS[s]).sign(Domain.PBFT, chain.genesis.chain_id, body)
        votes.append(SignedVote(body, sig))
    store = BlockStore.open(path, chain.genesis)
    store.put_checkpoint(CheckpointCertificate(4, block_hash, tuple(votes)))
    store.close()
    assert audit_ledger(path, chain.genesis).ok
    _edit(path, "DELETE FROM blocks WHERE height = ?", 4)
    report = audit_ledger(path, chain.genesis)
    assert not report.ok and report.problem is not None
    assert "blocks are missing" in report.problem.reason


def test_a_tampered_key_value_table_fails_the_audit(tmp_path: Path) -> None:
    path, chain = _ledger(tmp_path)
    _edit(path, "UPDATE kv SET value = ? WHERE key = ?", b"forged", b"k0")
    report = audit_ledger(path, chain.genesis)
    assert report.problem is not None and "key-value table" in report.problem.reason
