"""The store's table digests: every write keeps them right, and an edited, added or deleted row
of any table the member relies on is refused at open, naming the table."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from consortium.crypto.codec import pack
from consortium.crypto.keys import KeyPair
from consortium.ledger.admission import ADMIT
from consortium.ledger.audit import audit_ledger, stored_replay
from consortium.ledger.backup import backup_store
from consortium.ledger.certificates import SignedVote
from consortium.ledger.digests import (
    DIGEST_KEY,
    DIGESTED,
    MEMBERSHIP_TABLES,
    stored_digests,
    table_digest,
)
from consortium.ledger.genesis import Genesis
from consortium.ledger.membership import AdmitClient
from consortium.ledger.store import SCHEMA_VERSION, BlockStore, StoreDamaged, StoreError
from consortium.ledger.tx import Delete, Put
from tests.ledger.chain_fixture import (
    CREATED_MS,
    ChainBuilder,
    block_signatures,
    checkpoint,
)
from tests.ledger.membership_fixture import add_op, member_chain, v2_change, v2_tx
from tests.ledger.test_admission import NEW, change, config_tx, new_chain


def _scanned(store: BlockStore) -> dict[str, int]:
    return {t: table_digest(store._db, t) for t in DIGESTED}


PRUNED = KeyPair.from_seed(hashlib.sha256(b"a client admitted long ago").digest())


def rich_store(path: Path, *, member_change: bool = True) -> ChainBuilder:
    """A closed store at `path` with a row in every digested table (a member change pending,
    a configuration chain entry)."""
    chain = member_chain()
    chain.add([chain.tx(Put(b"a", b"1")), chain.tx(Put(b"b", b"2"))])
    chain.add([config_tx(chain, change(chain, ADMIT, NEW.public))])
    entries: list[tuple[int, bytes]] = []
    checkpoints = [checkpoint(chain.genesis, 2, chain.blocks[1][0].hash)]
    if member_change:  # (a store of format 4 or before cannot hold one)
        chain.add([v2_tx(chain, v2_change(chain, add_op(0)))])
        e = chain.app.pending_member[0]  # type: ignore[index]
        chain.run_to(e)  # in force: a chain entry, certified by the genesis configuration
        certificate = chain.checkpoint(e)
        checkpoints.append(certificate)
        config = chain.app.config
        assert config is not None and config.epoch == 1
        entries.append((1, pack([1, config.encode(), chain.head.encode(), certificate.encode()])))
        chain.add([v2_tx(chain, v2_change(chain, add_op(1), nonce=b"2"))])  # and one pending
        admit = v2_change(chain, AdmitClient(PRUNED.public, "p"), kind="clients", nonce=b"3")
        chain.add([v2_tx(chain, admit)])  # and a pending client change again
        assert chain.app.pending_member
    assert chain.app.pending and chain.app.changed_ms
    store = BlockStore.open(path, chain.genesis)
    try:
        block = chain.blocks[1][0]
        store.save(
            blocks=chain.blocks,
            records=[(b"pbft/view", pack([1, 1, 0])), (b"pbft/log/1", pack([b"entry"]))],
            block_signatures=[(2, v) for v in block_signatures(chain.genesis, block)],
            checkpoints=checkpoints,
            config_chain=entries,
        )
        assert store._digests == _scanned(store)
    finally:
        store.close()
    return chain


def _sql(path: Path, statement: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    db = sqlite3.connect(path)
    try:
        rows = db.execute(statement, args).fetchall()
        db.commit()
    finally:
        db.close()
    return rows


def _changed(value: object) -> object:
    if isinstance(value, bytes):
        return b"\x00" + value
    if isinstance(value, int):
        return value + 1000
    assert isinstance(value, str)
    return value + "x"


def _one_row(path: Path, table: str) -> tuple[list[str], tuple[object, ...]]:
    columns = list(DIGESTED[table][0])
    rows = _sql(path, f"SELECT {', '.join(columns)} FROM {table} LIMIT 1")
    assert rows, f"the fixture leaves {table} empty"
    return columns, rows[0]


def edit_row(path: Path, table: str, how: str) -> None:
    columns, row = _one_row(path, table)
    where = " AND ".join(f"{c} = ?" for c in columns)
    if how == "edit":
        last = columns[-1]
        _sql(path, f"UPDATE {table} SET {last} = ? WHERE {where}", (_changed(row[-1]), *row))
    elif how == "delete":
        _sql(path, f"DELETE FROM {table} WHERE {where}", row)
    else:
        marks = ", ".join("?" * len(columns))
        _sql(path, f"INSERT INTO {table} VALUES ({marks})", tuple(_changed(v) for v in row))


@pytest.mark.parametrize("how", ["edit", "delete", "add"])
@pytest.mark.parametrize("table", list(DIGESTED))
def test_a_changed_row_of_any_table_is_refused_at_open_naming_the_table(
    tmp_path: Path, table: str, how: str
) -> None:
    path = tmp_path / "ledger.sqlite"
    chain = rich_store(path)
    BlockStore.open(path, chain.genesis).close()  # clean before the change
    if (table, how) == ("pending_member_change", "add"):
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):  # the schema holds one row
            edit_row(path, table, how)
        return
    edit_row(path, table, how)
    with pytest.raises(StoreDamaged) as caught:
        BlockStore.open(path, chain.genesis)
    assert caught.value.tables == (table,)
    message = str(caught.value)
    assert f"{DIGESTED[table][1]} ({table}) does not match its digest: edited or damaged" in message
    assert "consortium node refetch --home HOME" in message and "\n" not in message
    assert "--home n2`" in caught.value.advice("n2")


def test_two_damaged_tables_are_both_named(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    chain = rich_store(path)
    edit_row(path, "kv", "edit")
    edit_row(path, "records", "delete")
    with pytest.raises(StoreDamaged, match=r"\(kv\), the consensus records \(records\) do not"):
        BlockStore.open(path, chain.genesis)


def test_a_deleted_digest_row_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    chain = rich_store(path)
    _sql(path, "DELETE FROM meta WHERE key = ?", (DIGEST_KEY + "tx_index",))
    with pytest.raises(StoreDamaged, match=r"\(tx_index\)"):
        BlockStore.open(path, chain.genesis)


def test_writes_upserts_pruning_and_rollbacks_keep_the_digests_right(tmp_path: Path) -> None:
    chain = new_chain()
    path = tmp_path / "ledger.sqlite"
    store = BlockStore.open(path, chain.genesis)
    try:
        dup = chain.tx(Put(b"x", b"1"))
        chain.add([dup, chain.tx(Put(b"a", b"1")), chain.tx(Put(b"b", b"1"))])
        chain.add([dup, chain.tx(Put(b"a", b"2")), chain.tx(Delete(b"b"))])  # upserts, delete
        store.save(blocks=chain.blocks, records=[(b"view", b"1")])
        assert store._digests == _scanned(store)
        # A refused write after some of its rows went in: the rollback drops their deltas.
        done = len(chain.blocks)
        chain.add([chain.tx(Put(b"a", b"3"))])
        bad = SignedVote(object(), b"sig")  # type: ignore[arg-type]
        before = dict(store._digests)
        with pytest.raises(StoreError, match="nothing written"):
            store.save(blocks=chain.blocks[done:], block_signatures=[(3, bad)])
        assert store._digests == before == _scanned(store)
        store.save(blocks=chain.blocks[done:], records=[(b"view", b"2"), (b"gone", None)])
        # A client change's id goes into the replay table (a transaction's stays in tx_index).
        done = len(chain.blocks)
        chain.add([config_tx(chain, change(chain, ADMIT, PRUNED.public))])
        store.save(blocks=chain.blocks[done:])
        # Far later: every id expired, so the write prunes the replay table (the DELETE).
        later = CREATED_MS + 3_600_001
        replay_before = store._db.execute("SELECT COUNT(*) FROM replay").fetchone()[0]
        done = len(chain.blocks)
        chain.add([chain.tx(Put(b"c", b"1"), expiry_ms=later + 60_000)], proposed_ms=later)
        store.save(blocks=chain.blocks[done:], records=[(b"view", None)])
        assert store._db.execute("SELECT COUNT(*) FROM replay").fetchone()[0] < replay_before
        done = len(chain.blocks)
        chain.add([config_tx(chain, change(chain, ADMIT, NEW.public, expiry_ms=later + 60_000))])
        sigs = block_signatures(chain.genesis, chain.blocks[-1][0])
        store.save(blocks=chain.blocks[done:], block_signatures=[(chain.head.height, sigs[0])])
        store.save(
            block_signatures=[(chain.head.height, v) for v in sigs],  # one new, one kept
            checkpoints=[checkpoint(chain.genesis, chain.head.height, chain.head.hash)],
        )
        assert store._digests == _scanned(store) == stored_digests(store._db)
    finally:
        store.close()
    BlockStore.open(path, chain.genesis).close()  # reopens clean


def format_4(path: Path) -> None:
    """The store as format 4 left it (a store that never changed members): no membership
    tables, nor their digests."""
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT COUNT(*) FROM configurations").fetchone() == (1,)
        assert db.execute("SELECT COUNT(*) FROM pending_member_change").fetchone() == (0,)
        for table in MEMBERSHIP_TABLES:
            db.execute(f"DROP TABLE {table}")
            db.execute("DELETE FROM meta WHERE key = ?", (DIGEST_KEY + table,))
        db.execute("UPDATE meta SET value = 4 WHERE key = 'schema'")
        db.commit()
    finally:
        db.close()


def _format_3(path: Path, genesis: Genesis) -> None:
    """The store as format 3 left it: tx_index without expiry_ms, the replay table holding
    every consumed id not yet expired at the head (each write deleted the expired ones), the
    digests over those tables."""
    store = BlockStore.open(path, genesis)
    now = store.head.timestamp_ms
    store.close()
    format_4(path)
    _sql(
        path,
        "INSERT INTO replay SELECT tx_id, expiry_ms FROM tx_index "
        "WHERE executed = 1 AND expiry_ms >= ?",
        (now,),
    )
    _sql(path, "ALTER TABLE tx_index DROP COLUMN expiry_ms")
    db = sqlite3.connect(path)
    try:
        for table in ("tx_index", "replay"):
            digest = table_digest(db, table).to_bytes(32, "big")
            db.execute("UPDATE meta SET value = ? WHERE key = ?", (digest, DIGEST_KEY + table))
        db.execute("UPDATE meta SET value = 3 WHERE key = 'schema'")
        db.commit()
    finally:
        db.close()


def _format_2(path: Path, genesis: Genesis) -> None:
    """The store as a version before table digests left it."""
    _format_3(path, genesis)
    _sql(path, "DELETE FROM meta WHERE key >= ? AND key < ?", (DIGEST_KEY, "digest0"))
    _sql(path, "UPDATE meta SET value = 2 WHERE key = 'schema'")


def test_a_store_of_format_3_has_its_replay_ids_moved_into_the_index_at_its_first_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Executed again after the upgrade, an id judges as before it: a duplicate while its
    expiry is ahead, expired after; one expired before the upgrade keeps expiry 0 in its
    index row (only an expiry at or after a block's time makes a replay)."""
    chain = new_chain()
    short = chain.tx(Put(b"s", b"1"), expiry_ms=CREATED_MS + 100)
    long = chain.tx(Put(b"l", b"1"), expiry_ms=CREATED_MS + 100_000)
    chain.add([short, long], proposed_ms=CREATED_MS + 10)
    chain.add([config_tx(chain, change(chain, ADMIT, NEW.public))], proposed_ms=CREATED_MS + 500)
    path = tmp_path / "ledger.sqlite"
    store = BlockStore.open(path, chain.genesis)
    store.save(blocks=chain.blocks)
    want = stored_replay(store._db, store.head.timestamp_ms)
    store.close()
    assert short.id not in want and long.id in want and len(want) == 3  # and the change id
    _format_3(path, chain.genesis)
    assert len(_sql(path, "SELECT tx_id FROM replay")) == 3
    with caplog.at_level("INFO"):
        store = BlockStore.open(path, chain.genesis)
    try:
        assert "upgraded to format 4" in caplog.text and "upgraded to format 5" in caplog.text
        assert store.fsync_count == 2  # each upgrade its own transaction
        assert _sql(path, "SELECT value FROM meta WHERE key = 'schema'") == [(SCHEMA_VERSION,)]
        assert stored_replay(store._db, store.head.timestamp_ms) == want
        assert len(_sql(path, "SELECT tx_id FROM replay")) == 1  # the change id alone
        assert _sql(path, "SELECT expiry_ms FROM tx_index WHERE tx_id = ?", (short.id,)) == [(0,)]
        assert store._digests == _scanned(store) == stored_digests(store._db)
        again = chain.app.execute(3, CREATED_MS + 1_000, (short, long))
        assert store.app.execute(3, CREATED_MS + 1_000, (short, long)) == again
        assert [r.reason for r in again.receipts] == ["expired", "duplicate"]
    finally:
        store.close()
    assert audit_ledger(path, chain.genesis).ok
    BlockStore.open(path, chain.genesis).close()  # reopens clean, as format 4


def test_a_kill_between_the_two_upgrades_of_a_format_2_store_leaves_it_at_format_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Format 2 is audited and given digests (format 3) in one transaction, then folded to 4
    in another: a stop between them leaves a store stamped 3 with format 3's layout, which
    the next open folds (it used to be stamped 4 already, and then never folded)."""
    path = tmp_path / "ledger.sqlite"
    chain = rich_store(path, member_change=False)
    _format_2(path, chain.genesis)

    def killed(self: BlockStore) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(BlockStore, "_fold_replay", killed)
    with pytest.raises(KeyboardInterrupt):
        BlockStore.open(path, chain.genesis)
    assert _sql(path, "SELECT value FROM meta WHERE key = 'schema'") == [(3,)]
    monkeypatch.undo()
    store = BlockStore.open(path, chain.genesis)
    try:
        assert _sql(path, "SELECT value FROM meta WHERE key = 'schema'") == [(SCHEMA_VERSION,)]
        assert store._digests == _scanned(store)
    finally:
        store.close()
    assert audit_ledger(path, chain.genesis).ok


def test_a_store_stamped_4_with_the_layout_of_3_is_folded_at_open(tmp_path: Path) -> None:
    """(what the bug above left behind: repaired, not failed on its first block)"""
    path = tmp_path / "ledger.sqlite"
    chain = rich_store(path, member_change=False)
    _format_3(path, chain.genesis)
    _sql(path, "UPDATE meta SET value = 4 WHERE key = 'schema'")
    BlockStore.open(path, chain.genesis).close()
    columns = [r[1] for r in _sql(path, "PRAGMA table_info(tx_index)")]
    assert "expiry_ms" in columns
    assert audit_ledger(path, chain.genesis).ok


def test_the_fold_checks_its_two_tables_even_when_the_open_trusts_the_digests(
    tmp_path: Path,
) -> None:
    """verify=False trusts the stored digests; the fold writes the two digests anew from what
    the tables hold, so it checks them first: damage is never blessed."""
    path = tmp_path / "ledger.sqlite"
    chain = rich_store(path, member_change=False)
    _format_3(path, chain.genesis)
    edit_row(path, "replay", "edit")
    with pytest.raises(StoreDamaged, match=r"\(replay\)"):
        BlockStore.open(path, chain.genesis, verify=False)
    assert _sql(path, "SELECT value FROM meta WHERE key = 'schema'") == [(3,)]


def test_the_audit_names_a_format_newer_than_it_reads(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    chain = rich_store(path)
    _sql(path, "UPDATE meta SET value = ? WHERE key = 'schema'", (SCHEMA_VERSION + 1,))
    report = audit_ledger(path, chain.genesis)
    assert report.problem is not None
    assert f"of format {SCHEMA_VERSION + 1}, newer than this release reads" in (
        report.problem.reason
    )


def test_a_store_of_format_3_that_does_not_match_its_digests_is_not_upgraded(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.sqlite"
    chain = rich_store(path, member_change=False)
    _format_3(path, chain.genesis)
    edit_row(path, "replay", "edit")
    with pytest.raises(StoreDamaged, match=r"\(replay\)"):
        BlockStore.open(path, chain.genesis)
    assert _sql(path, "SELECT value FROM meta WHERE key = 'schema'") == [(3,)]


def test_a_store_of_format_2_is_audited_then_given_digests_at_its_first_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ledger.sqlite"
    chain = rich_store(path, member_change=False)
    want = stored_digests(sqlite3.connect(path))
    _format_2(path, chain.genesis)
    with caplog.at_level("INFO"):
        store = BlockStore.open(path, chain.genesis)
    assert "auditing the whole ledger once" in caplog.text
    assert "audited clean; upgraded to format 3" in caplog.text
    assert "upgraded to format 4" in caplog.text and "upgraded to format 5" in caplog.text
    assert store.fsync_count == 3
    store.close()
    assert stored_digests(sqlite3.connect(path)) == want
    assert _sql(path, "SELECT value FROM meta WHERE key = 'schema'") == [(SCHEMA_VERSION,)]
    edit_row(path, "kv", "edit")  # and they are checked from then on
    with pytest.raises(StoreDamaged, match=r"\(kv\)"):
        BlockStore.open(path, chain.genesis)


def test_a_store_of_format_2_whose_state_was_edited_is_not_blessed(tmp_path: Path) -> None:
    """Before digests, an edited state could only be found by re-execution: the upgrade
    audits first, so damage from before the upgrade is not taken as the truth."""
    path = tmp_path / "ledger.sqlite"
    chain = rich_store(path, member_change=False)
    _format_2(path, chain.genesis)
    edit_row(path, "kv", "edit")
    with pytest.raises(StoreError, match=r"format 2 is upgraded only if it audits clean"):
        BlockStore.open(path, chain.genesis)
    assert _sql(path, "SELECT value FROM meta WHERE key = 'schema'") == [(2,)]


def test_deleting_every_digest_is_no_way_around_them(tmp_path: Path) -> None:
    """(review: a store without digest rows was taken for one from before digests, and
    whatever its tables held was blessed)"""
    path = tmp_path / "ledger.sqlite"
    chain = rich_store(path)
    edit_row(path, "kv", "edit")
    _sql(path, "DELETE FROM meta WHERE key >= ? AND key < ?", (DIGEST_KEY, "digest0"))
    with pytest.raises(StoreDamaged) as refused:
        BlockStore.open(path, chain.genesis)
    assert set(refused.value.tables) == set(DIGESTED)


def test_a_backup_copy_opens_clean_with_its_mark(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    chain = rich_store(path)
    backup_store(path, tmp_path / "copy.sqlite", chain.genesis)
    store = BlockStore.open(tmp_path / "copy.sqlite", chain.genesis)
    assert store.recovery_mark() is not None
    store.close()


def test_an_operators_sqlite_session_needs_none_of_our_code(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    chain = rich_store(path)
    store = BlockStore.open(path, chain.genesis)
    try:
        # The triggers are TEMP (the store's connection only): a write from another session
        # does not call our function (it would fail: no such function), it only goes unseen.
        _sql(path, "UPDATE kv SET value = ? WHERE key = ?", (b"9", b"a"))
    finally:
        store.close()
    with pytest.raises(StoreDamaged, match=r"\(kv\)"):
        BlockStore.open(path, chain.genesis)
