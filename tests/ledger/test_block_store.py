"""The block store: durable, append-only, one fsync per save, re-verified when it opens."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from consortium.ledger.block import genesis_block
from consortium.ledger.genesis import Params
from consortium.ledger.state import build_block
from consortium.ledger.store import SCHEMA_VERSION, BlockStore, StoreError
from consortium.ledger.tx import Put
from tests.ledger.chain_fixture import (
    CREATED_MS,
    ChainBuilder,
    block_signatures,
    checkpoint,
    make_genesis,
    same_state,
    stored_state,
)


def _sql(path: Path, statement: str, *args: object) -> list[tuple[object, ...]]:
    db = sqlite3.connect(path)
    try:
        rows = db.execute(statement, args).fetchall()
        db.commit()
    finally:
        db.close()
    return rows


def _stored(tmp_path: Path, blocks: int = 3, txs: int = 2) -> tuple[Path, ChainBuilder]:
    chain = ChainBuilder()
    for _ in range(blocks):
        chain.add_puts(txs)
    path = tmp_path / "ledger.sqlite"
    store = BlockStore.open(path, chain.genesis)
    store.append_blocks(chain.blocks)
    store.close()
    return path, chain


# --- opening ---------------------------------------------------------------------------------


def test_a_new_store_holds_genesis_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    genesis = make_genesis()
    path = tmp_path / "data" / "ledger.sqlite"
    store = BlockStore.open(path, genesis)
    try:
        assert store.height == 0 and store.head == genesis_block(genesis).header
        assert store.block_hash_at(0) == genesis_block(genesis).hash
        assert store.fsync_count == 1  # tables, stamp and block 0 in one transaction
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert store.app.state_root == genesis_block(genesis).header.state_root
        assert stored_state(store) == ({}, {}) and store.latest_checkpoint() is None
    finally:
        store.close()
    assert _sql(path, "SELECT value FROM meta WHERE key = 'chain_id'") == [(genesis.chain_id,)]
    assert _sql(path, "SELECT value FROM meta WHERE key = 'schema'") == [(SCHEMA_VERSION,)]
    reopened = BlockStore.open(path, genesis)
    assert reopened.fsync_count == 0 and reopened.height == 0
    reopened.close()


def test_a_store_without_wal_is_refused(tmp_path: Path) -> None:
    # An in-memory database cannot use WAL: SQLite answers journal_mode=memory.
    with pytest.raises(StoreError, match="SQLite refused WAL mode \\(journal_mode is memory\\)"):
        BlockStore.open(Path(":memory:"), make_genesis())


class _NoFullSync:
    """A connection on which synchronous=FULL does not take (as on some exotic builds)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if sql == "PRAGMA synchronous=FULL":
            sql = "PRAGMA synchronous=NORMAL"
        return self._db.execute(sql, *args)  # type: ignore[arg-type]


def test_a_store_without_full_sync_is_refused(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "ledger.sqlite")
    try:
        store = BlockStore(_NoFullSync(db), tmp_path / "ledger.sqlite", make_genesis())  # type: ignore[arg-type]
        with pytest.raises(StoreError, match="refused synchronous=FULL \\(got 1\\)"):
            store._configure()
    finally:
        db.close()


def test_a_store_of_another_network_is_refused_naming_both(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ours = make_genesis()
    BlockStore.open(path, ours).close()
    other = make_genesis(Params(batch_txs_max=7))
    with pytest.raises(StoreError) as failure:
        BlockStore.open(path, other)
    message = str(failure.value)
    assert (
        f"data directory belongs to network {ours.chain_id.hex()[:8]}, "
        f"genesis is {other.chain_id.hex()[:8]}" in message
    )


def test_files_that_are_not_block_stores_are_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=r"garbage\.sqlite"):
        BlockStore.open(garbage, make_genesis())
    foreign = tmp_path / "foreign.sqlite"
    _sql(foreign, "CREATE TABLE people (name TEXT)")
    with pytest.raises(StoreError, match=r"not a block store .*people"):
        BlockStore.open(foreign, make_genesis())


def test_a_store_of_another_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    BlockStore.open(path, make_genesis()).close()
    _sql(path, "UPDATE meta SET value = 1 WHERE key = 'schema'")
    with pytest.raises(StoreError, match="block store format 1, this version reads formats 2 to 5"):
        BlockStore.open(path, make_genesis())
    _sql(path, "UPDATE meta SET value = 6 WHERE key = 'schema'")  # a newer release's
    with pytest.raises(StoreError, match="block store format 6, this version reads formats 2 to 5"):
        BlockStore.open(path, make_genesis())


# --- appending -------------------------------------------------------------------------------


def test_appended_blocks_survive_a_reopen_with_their_state(tmp_path: Path) -> None:
    chain = ChainBuilder()
    chain.add_puts(3)
    chain.add([chain.tx(Put(b"k0", b"new")), chain.tx(Put(b"extra", b"1"))])
    chain.add([])  # an empty block (a null request) is a block too
    path = tmp_path / "ledger.sqlite"
    store = BlockStore.open(path, chain.genesis)
    store.append_blocks(chain.blocks[:1])
    store.append_blocks(chain.blocks[1:])
    assert store.head == chain.head and store.height == 3
    assert same_state(store, chain.app) and store.app.state_root == chain.app.state_root
    store.close()

    store = BlockStore.open(path, chain.genesis)
    try:
        assert store.head == chain.head
        assert same_state(store, chain.app)
        assert store.app.state_root == chain.app.state_root
        assert store.app.last_timestamp_ms == chain.head.timestamp_ms
        for block, _, cert in chain.blocks:
            stored = store.get_block(block.height)
            assert stored is not None
            assert stored.block == block and stored.certificate == cert
            assert stored.block_signatures == ()
            assert store.get_header(block.height) == block.header
            assert store.block_hash_at(block.height) == block.hash
        assert store.get_block(4) is None and store.get_header(4) is None
        assert store.block_hash_at(4) is None
    finally:
        store.close()


def test_the_reopened_state_executes_the_next_block_like_the_live_one(tmp_path: Path) -> None:
    path, chain = _stored(tmp_path)
    store = BlockStore.open(path, chain.genesis)
    try:
        replayed = chain.blocks[0][0].txs[0]
        txs = (replayed, chain.tx(Put(b"k0", b"after")))
        live, _ = build_block(
            chain.head, ("pbft", 4, CREATED_MS + 4), CREATED_MS + 4, txs, chain.app
        )
        again, _ = build_block(
            store.head, ("pbft", 4, CREATED_MS + 4), CREATED_MS + 4, txs, store.app
        )
        assert again == live
        assert [r.reason for r in again.receipts] == ["duplicate", ""]
    finally:
        store.close()


def test_a_node_that_applied_while_executing_is_not_applied_twice(tmp_path: Path) -> None:
    genesis = make_genesis()
    store = BlockStore.open(tmp_path / "ledger.sqlite", genesis)
    chain = ChainBuilder(genesis)
    try:
        items = []
        head = store.head
        for n in range(5):  # as the runtime does: execute and apply batch after batch, then save
            tx = chain.tx(Put(b"counter", b"%d" % n))
            block, execution = build_block(
                head, ("pbft", head.height + 1, CREATED_MS), CREATED_MS, (tx,), store.app
            )
            if n < 4:
                store.app.apply(execution)  # the last one is left for the store to apply
            items.append((block, execution, None))
            head = block.header
        fsyncs = store.fsync_count
        store.save(blocks=items)  # the app reflects 4 of these 5: only the last is applied
        assert store.fsync_count == fsyncs + 1
        assert stored_state(store)[0] == {b"counter": b"4"} and store.head == head
        assert store.app.kv.get(b"counter") == b"4"
        assert store.app.state_root == head.state_root
    finally:
        store.close()


def test_hot_reads_see_the_committed_ledger_while_a_write_is_staged(tmp_path: Path) -> None:
    """State misses and known ids read on a second, read-only connection: while a write is
    staged (its COMMIT, the fsync, may be running on a worker thread) they see the committed
    ledger and do not wait for the writer's lock; the staged block's values are pinned in the
    cache meanwhile, so execution still sees them."""
    genesis = make_genesis()
    store = BlockStore.open(tmp_path / "ledger.sqlite", genesis)
    chain = ChainBuilder(genesis)
    try:
        tx = chain.tx(Put(b"k", b"v"))
        head = store.head
        block, execution = build_block(
            head, ("pbft", head.height + 1, CREATED_MS), CREATED_MS, (tx,), store.app
        )
        store.app.apply(execution)
        assert store.stage(blocks=[(block, execution, None)])
        assert store.known_tx_ids([tx.id]) == set()  # not committed yet
        assert store.app.kv.get(b"k") == b"v"  # pinned: applied, not durable
        store.commit_staged()
        store.finish_staged()
        assert store.known_tx_ids([tx.id]) == {tx.id}
        assert store.app.kv.pinned == 0 and store.app.kv.get(b"k") == b"v"
    finally:
        store.close()


def test_an_application_out_of_step_with_the_store_is_refused(tmp_path: Path) -> None:
    chain = ChainBuilder()
    chain.add_puts(1)
    chain.add_puts(1)
    store = BlockStore.open(tmp_path / "ledger.sqlite", chain.genesis)
    try:
        store.app.apply(chain.blocks[0][1])
        store.app.apply(chain.blocks[1][1])
        with pytest.raises(StoreError, match="application state is neither at the head"):
            store.save(blocks=chain.blocks[:1])
        assert store.height == 0
    finally:
        store.close()


def _refused(tmp_path: Path, bad: list[object], match: str) -> None:
    chain = ChainBuilder()
    chain.add_puts(1)
    path = tmp_path / "ledger.sqlite"
    store = BlockStore.open(path, chain.genesis)
    store.append_blocks(chain.blocks)
    fsyncs, app_root = store.fsync_count, store.app.state_root
    with pytest.raises(StoreError, match=match):
        store.save(blocks=bad, records=[(b"r", b"must not be written")])  # type: ignore[arg-type]
    assert store.fsync_count == fsyncs and store.height == 1
    assert store.app.state_root == app_root and store.load_records() == []
    store.close()
    reopened = BlockStore.open(path, chain.genesis)
    assert reopened.height == 1 and reopened.load_records() == []
    assert _sql(path, "SELECT count(*) FROM blocks") == [(2,)]
    reopened.close()


def _next_blocks(count: int) -> ChainBuilder:
    chain = ChainBuilder()
    for _ in range(count):
        chain.add_puts(1)
    return chain


def test_a_block_at_the_wrong_height_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    chain = _next_blocks(3)
    _refused(tmp_path, chain.blocks[2:], "block 3 does not follow the head at 1; nothing written")


def test_a_block_with_the_wrong_previous_hash_is_refused(tmp_path: Path) -> None:
    chain = _next_blocks(2)
    block, execution, cert = chain.blocks[1]
    forged = replace(block, header=replace(block.header, prev_hash=b"\x07" * 32))
    _refused(tmp_path, [(forged, execution, cert)], "previous hash is not the hash of block 1")


def test_a_block_of_another_chain_is_refused(tmp_path: Path) -> None:
    chain = _next_blocks(2)
    block, execution, cert = chain.blocks[1]
    forged = replace(block, header=replace(block.header, chain_id=b"\x07" * 32))
    _refused(tmp_path, [(forged, execution, cert)], "block 2 names chain 07070707")


def test_a_block_that_does_not_match_its_execution_is_refused(tmp_path: Path) -> None:
    chain = _next_blocks(2)
    block, execution, cert = chain.blocks[1]
    other = replace(execution, state_root=b"\x01" * 32)
    _refused(tmp_path, [(block, other, cert)], "does not match the Execution")


def test_one_bad_block_in_a_save_refuses_the_whole_save(tmp_path: Path) -> None:
    chain = _next_blocks(3)
    good, bad = chain.blocks[1], chain.blocks[2]
    forged = replace(bad[0], header=replace(bad[0].header, height=9))
    _refused(tmp_path, [good, (forged, bad[1], bad[2])], "block 9 does not follow the head at 2")


def test_two_stores_racing_on_one_file_cannot_both_append(tmp_path: Path) -> None:
    chain = _next_blocks(1)
    path = tmp_path / "ledger.sqlite"
    first = BlockStore.open(path, chain.genesis)
    second = BlockStore.open(path, chain.genesis)
    first.append_blocks(chain.blocks)
    with pytest.raises(StoreError, match="another process"):
        second.append_blocks(chain.blocks)
    first.close()
    second.close()


# --- what is stored beside blocks ------------------------------------------------------------


def test_receipt_of_answers_the_first_executed_receipt_even_after_later_duplicates(
    tmp_path: Path,
) -> None:
    chain = ChainBuilder()
    tx = chain.tx(Put(b"a", b"1"))
    chain.add([tx, tx])  # a duplicate in the same block
    chain.add([chain.tx(Put(b"b", b"2")), tx])  # and in a later one
    path = tmp_path / "ledger.sqlite"
    store = BlockStore.open(path, chain.genesis)
    store.append_blocks(chain.blocks)
    receipt = store.receipt_of(tx.id)
    assert receipt is not None
    assert (receipt.height, receipt.index, receipt.status, receipt.reason) == (1, 0, "ok", "")
    assert store.receipt_of(b"\x00" * 32) is None
    store.close()
    reopened = BlockStore.open(path, chain.genesis)
    assert reopened.receipt_of(tx.id) == receipt
    reopened.close()


def test_a_transaction_rejected_before_it_executed_is_answered_with_its_execution(
    tmp_path: Path,
) -> None:
    ttl = Params().tx_ttl_max_ms
    chain = ChainBuilder()
    early = chain.tx(Put(b"a", b"1"), expiry_ms=CREATED_MS + ttl + 5_000)
    store = BlockStore.open(tmp_path / "ledger.sqlite", chain.genesis)
    try:
        chain.add([early], proposed_ms=CREATED_MS + 1)  # too far in the future, for now
        store.append_blocks(chain.blocks[-1:])
        first = store.receipt_of(early.id)
        assert first is not None and first.reason == "expiry_too_far"
        chain.add([early], proposed_ms=CREATED_MS + 10_000)  # later it is within the ttl
        chain.add([early], proposed_ms=CREATED_MS + 10_001)  # and then a duplicate
        store.append_blocks(chain.blocks[-2:])
        executed = store.receipt_of(early.id)
        assert executed is not None
        assert (executed.height, executed.status) == (2, "ok")
        assert store.app.get(b"a") == b"1"
    finally:
        store.close()


def test_records_are_saved_overwritten_deleted_and_loaded_by_prefix(tmp_path: Path) -> None:
    store = BlockStore.open(tmp_path / "ledger.sqlite", make_genesis())
    try:
        store.save(
            records=[
                (b"view", b"1"),
                (b"vote/1", b"a"),
                (b"vote/2", b"b"),
                (b"vote\xff\xff", b"c"),
                (b"votf", b"d"),
                (b"\xff", b"e"),
            ]
        )
        store.save(records=[(b"view", b"2"), (b"vote/1", None), (b"absent", None)])
        assert store.load_records() == [
            (b"view", b"2"),
            (b"vote/2", b"b"),
            (b"vote\xff\xff", b"c"),
            (b"votf", b"d"),
            (b"\xff", b"e"),
        ]
        assert store.load_records(b"vote") == [(b"vote/2", b"b"), (b"vote\xff\xff", b"c")]
        assert store.load_records(b"vote\xff") == [(b"vote\xff\xff", b"c")]
        assert store.load_records(b"\xff") == [(b"\xff", b"e")]
        assert store.load_records(b"nothing") == []
    finally:
        store.close()


def test_blocks_and_records_share_one_transaction_and_one_fsync(tmp_path: Path) -> None:
    chain = _next_blocks(2)
    store = BlockStore.open(tmp_path / "ledger.sqlite", chain.genesis)
    try:
        fsyncs = store.fsync_count
        store.save(
            blocks=chain.blocks,
            records=[(b"view", b"0")],
            block_signatures=[(2, v) for v in block_signatures(chain.genesis, chain.blocks[1][0])],
            checkpoints=[checkpoint(chain.genesis, 2, chain.head.hash)],
        )
        assert store.fsync_count == fsyncs + 1
        store.save(records=[(b"view", b"1")])
        assert store.fsync_count == fsyncs + 2
        store.save()  # nothing to write: no transaction, no fsync
        store.save(blocks=[], records=[])
        assert store.fsync_count == fsyncs + 2
    finally:
        store.close()


def test_block_signatures_and_checkpoints_are_idempotent(tmp_path: Path) -> None:
    path, chain = _stored(tmp_path)
    block = chain.blocks[1][0]
    votes = block_signatures(chain.genesis, block, (0, 2))
    store = BlockStore.open(path, chain.genesis)
    try:
        store.add_block_signatures(2, votes)
        store.add_block_signatures(2, votes[:1])
        stored = store.get_block(2)
        assert stored is not None and sorted(
            stored.block_signatures, key=lambda v: v.body
        ) == sorted(votes, key=lambda v: v.body)
        first = checkpoint(chain.genesis, 2, block.hash)
        store.put_checkpoint(first)
        store.put_checkpoint(checkpoint(chain.genesis, 2, block.hash, (1, 2, 3)))
        assert store.latest_checkpoint() == first
        later = checkpoint(chain.genesis, 3, chain.head.hash)
        store.put_checkpoint(later)
        assert store.latest_checkpoint() == later
    finally:
        store.close()


def test_an_executed_id_is_a_replay_until_its_expiry_also_after_a_reopen(tmp_path: Path) -> None:
    """Format 4: an executed transaction's replay entry is its index row (never deleted, its
    expiry just passes); the replay table keeps no transaction's id. Executed again, the same
    transaction is a duplicate before its expiry and expired after it, from a reopened store
    (its state read through the cache from the tables) exactly as in memory."""
    chain = ChainBuilder()
    short = chain.tx(Put(b"a", b"1"), expiry_ms=CREATED_MS + 100)
    long = chain.tx(Put(b"b", b"1"), expiry_ms=CREATED_MS + 100_000)
    chain.add([short, long], proposed_ms=CREATED_MS + 10)
    chain.add([], proposed_ms=CREATED_MS + 1_000)
    path = tmp_path / "ledger.sqlite"
    store = BlockStore.open(path, chain.genesis)
    store.append_blocks(chain.blocks)
    store.close()
    assert _sql(path, "SELECT tx_id FROM replay") == []
    assert sorted(_sql(path, "SELECT tx_id, expiry_ms FROM tx_index WHERE executed = 1")) == sorted(
        [(short.id, CREATED_MS + 100), (long.id, CREATED_MS + 100_000)]
    )
    reopened = BlockStore.open(path, chain.genesis)
    try:
        assert stored_state(reopened)[1] == {long.id: CREATED_MS + 100_000}
        again = build_block(
            reopened.head,
            ("pbft", 3, CREATED_MS + 2_000),
            CREATED_MS + 2_000,
            (short, long),
            reopened.app,
        )[1]
        assert [r.reason for r in again.receipts] == ["expired", "duplicate"]
        in_memory = chain.app.execute(3, CREATED_MS + 2_000, (short, long))
        assert again == in_memory
    finally:
        reopened.close()


def test_no_statement_of_a_save_scans_a_whole_table(tmp_path: Path) -> None:
    path, chain = _stored(tmp_path, blocks=2)
    chain.add_puts(3)
    store = BlockStore.open(path, chain.genesis)
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    try:
        store.save(
            blocks=chain.blocks[-1:],
            records=[(b"view", b"1"), (b"old", None)],
            block_signatures=[(3, block_signatures(chain.genesis, chain.blocks[-1][0])[0])],
            checkpoints=[checkpoint(chain.genesis, 3, chain.head.hash)],
        )
    finally:
        store._db.set_trace_callback(None)
    probe = sqlite3.connect(path)
    try:
        for statement in statements:
            if statement.split()[0].upper() in ("BEGIN", "COMMIT"):
                continue
            plan = probe.execute(f"EXPLAIN QUERY PLAN {statement}").fetchall()
            scans = [row[-1] for row in plan if str(row[-1]).startswith("SCAN")]
            assert not scans, (statement, scans)
        assert any(s.startswith("DELETE FROM replay") for s in statements)
    finally:
        probe.close()
        store.close()


# --- re-verification at open -----------------------------------------------------------------


def test_a_tampered_block_byte_makes_open_fail_naming_the_height(tmp_path: Path) -> None:
    path, chain = _stored(tmp_path)
    ((body,),) = _sql(path, "SELECT body FROM blocks WHERE height = 2")
    assert isinstance(body, bytes)
    at = body.index(b"value")
    _sql(path, "UPDATE blocks SET body = ? WHERE height = 2", body[:at] + b"V" + body[at + 1 :])
    with pytest.raises(StoreError, match="damaged at height 2: transaction Merkle root"):
        BlockStore.open(path, chain.genesis)
    # Without verification it opens (the head is intact); the audit reports the rest.
    BlockStore.open(path, chain.genesis, verify=False).close()


@pytest.mark.parametrize(
    ("column", "height", "match"),
    [
        ("header", 1, "damaged at height 1: stored block hash does not match"),
        ("receipts", 3, "damaged at height 3: receipts Merkle root"),
        ("hash", 2, "damaged at height 2: stored block hash does not match"),
    ],
)
def test_any_tampered_column_makes_open_fail_naming_the_height(
    tmp_path: Path, column: str, height: int, match: str
) -> None:
    path, chain = _stored(tmp_path)
    ((value,),) = _sql(path, f"SELECT {column} FROM blocks WHERE height = ?", height)
    assert isinstance(value, bytes)
    flipped = value[:-1] + bytes([value[-1] ^ 1])
    _sql(path, f"UPDATE blocks SET {column} = ? WHERE height = ?", flipped, height)
    with pytest.raises(StoreError, match=match):
        BlockStore.open(path, chain.genesis)


def test_a_missing_or_cut_block_is_found_at_open(tmp_path: Path) -> None:
    path, chain = _stored(tmp_path)
    _sql(path, "DELETE FROM blocks WHERE height = 2")
    with pytest.raises(StoreError, match="damaged at height 2: block 2 is missing"):
        BlockStore.open(path, chain.genesis)
    path, chain = _stored(tmp_path / "cut")
    _sql(path, "DELETE FROM blocks WHERE height = 3")  # the head: state no longer matches it
    with pytest.raises(StoreError, match="damaged at height 2: the applied height is 3"):
        BlockStore.open(path, chain.genesis, verify=False)


def test_a_broken_link_is_found_at_open(tmp_path: Path) -> None:
    path, chain = _stored(tmp_path)
    block = chain.blocks[1][0]
    forged = replace(block.header, prev_hash=b"\x05" * 32)
    _sql(
        path,
        "UPDATE blocks SET header = ?, hash = ? WHERE height = 2",
        forged.encode(),
        forged.hash,
    )
    with pytest.raises(StoreError, match="damaged at height 2: previous-hash link is broken"):
        BlockStore.open(path, chain.genesis)
