"""Store format 5 (docs/design/membership.md 2.2): the membership tables are written with the
blocks that change them and loaded at open equal to the executed state; the upgrade from
format 4 (and from 3 and 2 through it) is one transaction; the configuration chain is kept."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from consortium.crypto.codec import pack
from consortium.ledger.admission import ADMIT, ClientChange
from consortium.ledger.audit import audit_ledger
from consortium.ledger.certificates import CheckpointCertificate
from consortium.ledger.digests import MEMBERSHIP_TABLES, stored_digests, table_digest
from consortium.ledger.genesis import Genesis
from consortium.ledger.membership import AdmitClient, RemoveMember, RotateKey
from consortium.ledger.state import KeyValueState
from consortium.ledger.store import SCHEMA_VERSION, BlockStore, StoreError
from consortium.ledger.tx import ConfigChange, Put
from tests.ledger.chain_fixture import CREATED_MS, MEMBERS
from tests.ledger.membership_fixture import (
    HOUR_MS,
    PARAMS,
    SPARES,
    MemberChain,
    accepted,
    add_op,
    member_chain,
    v2_change,
    v2_tx,
)
from tests.ledger.test_admission import NEW, approve
from tests.ledger.test_store_integrity import _sql, format_4, rich_store


def same_membership(a: KeyValueState, b: KeyValueState) -> None:
    assert a.config == b.config
    assert a.configs == b.configs
    assert a.pending_member == b.pending_member
    assert a.used_keys == b.used_keys
    assert a.pending == b.pending
    assert a.admitted == b.admitted and a.changed_ms == b.changed_ms
    assert a.member_keys == b.member_keys and a.quorum == b.quorum
    assert a.state_root == b.state_root


def activation_checkpoints(chain: MemberChain, start: int = 0) -> list[CheckpointCertificate]:
    """pbft: the checkpoint certificates of the activation heights (the audit wants them)."""
    if chain.genesis.mode != "pbft":
        return []
    return [
        chain.checkpoint(block.height)
        for block, execution, _ in chain.blocks[start:]
        if execution.config_activated is not None
    ]


def _save(path: Path, chain: MemberChain, start: int) -> None:
    store = BlockStore.open(path, chain.genesis, member_changes=True)
    try:
        store.save(blocks=chain.blocks[start:], checkpoints=activation_checkpoints(chain, start))
        same_membership(store.app, chain.app)
    finally:
        store.close()


@pytest.mark.parametrize("mode", ["pbft", "raft"])
def test_the_membership_state_survives_a_reopen_at_every_step(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "ledger.sqlite"
    chain = member_chain(mode)  # type: ignore[arg-type]
    saved = 0

    def checkpoint() -> None:
        nonlocal saved
        _save(path, chain, saved)
        saved = len(chain.blocks)
        store = BlockStore.open(path, chain.genesis, member_changes=True)
        try:
            same_membership(store.app, chain.app)
            # and it executes the next block exactly as the in-memory state does
            ts = chain.head.timestamp_ms + 1
            tx = chain.tx(Put(b"probe", b"1"))
            assert store.app.execute(chain.head.height + 1, ts, (tx,)) == chain.app.execute(
                chain.head.height + 1, ts, (tx,)
            )
        finally:
            store.close()

    accepted(chain.add([v2_tx(chain, v2_change(chain, add_op(0)))]))
    checkpoint()  # pbft: pending; raft: in force
    admit = v2_change(chain, AdmitClient(NEW.public, "n"), kind="clients", nonce=b"c")
    accepted(chain.add([v2_tx(chain, admit)]))
    checkpoint()
    chain.run_to(chain.head.height + 2 * PARAMS.window)  # every change in force
    checkpoint()
    assert chain.app.config is not None and chain.app.config.epoch == 1
    rotate = v2_change(chain, RotateKey(1, SPARES[1].public), nonce=b"k")
    accepted(chain.add([v2_tx(chain, rotate)]))
    chain.run_to(chain.head.height + 2 * PARAMS.window)
    checkpoint()
    assert chain.app.config.epoch == 2 and len(chain.app.configs) == 3
    report = audit_ledger(path, chain.genesis, member_changes=True)
    assert report.ok, report.problem


def test_the_tables_hold_what_the_state_holds(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    chain = member_chain()
    accepted(chain.add([v2_tx(chain, v2_change(chain, RemoveMember(3), add_op(0)))]))
    _save(path, chain, 0)
    pending = _sql(path, "SELECT id, effective_height, change_id, value FROM pending_member_change")
    e, change_id, config = chain.app.pending_member  # type: ignore[misc]
    assert pending == [(0, e, change_id, config.encode())]
    chain.run_to(e)
    _save(path, chain, 1)
    assert _sql(path, "SELECT COUNT(*) FROM pending_member_change") == [(0,)]
    rows = _sql(path, "SELECT epoch, first_height, digest FROM configurations ORDER BY epoch")
    assert rows == [(0, 1, chain.app.configs[0][1].digest), (1, e + 1, config.digest)]
    kinds = dict(_sql(path, "SELECT key, kind FROM used_keys"))
    assert kinds[SPARES[0].public] == "member" and kinds[MEMBERS[3].public] == "member"
    assert {bytes(k) for k in kinds} == set(chain.app.used_keys)


def test_pending_client_changes_load_by_effective_height(tmp_path: Path) -> None:
    """A v1 change accepted after a v2 one takes effect first; the table keeps the order of
    acceptance and the load sorts them."""
    chain = member_chain()
    other = SPARES[5]
    v2 = v2_change(chain, AdmitClient(other.public, "v2"), kind="clients")
    accepted(chain.add([v2_tx(chain, v2)]))
    v1 = ClientChange.create(
        chain.genesis.chain_id,
        ADMIT,
        NEW.public,
        "v1",
        b"v1",
        CREATED_MS + HOUR_MS,
        created_ms=chain.head.timestamp_ms,
    )
    accepted(chain.add([chain.tx(ConfigChange(v1, approve(v1)))]))
    path = tmp_path / "ledger.sqlite"
    _save(path, chain, 0)
    store = BlockStore.open(path, chain.genesis, member_changes=True)
    try:
        assert [p.client_key for p in store.app.pending] == [NEW.public, other.public]
    finally:
        store.close()
    report = audit_ledger(
        path, chain.genesis, member_changes=True
    )  # the audit compares them in that order too
    assert report.ok, report.problem


def test_a_format_4_store_is_upgraded_at_open_in_one_transaction(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ledger.sqlite"
    chain = rich_store(path, member_change=False)
    want = stored_digests(sqlite3.connect(path))
    format_4(path)
    with caplog.at_level("INFO"):
        store = BlockStore.open(path, chain.genesis, member_changes=True)
    try:
        assert "upgraded to format 5" in caplog.text and store.fsync_count == 1
        assert _sql(path, "SELECT value FROM meta WHERE key = 'schema'") == [(SCHEMA_VERSION,)]
        # what re-execution gives: genesis members and clients, and the admitted key
        assert store.app.used_keys == chain.app.used_keys and NEW.public in store.app.used_keys
        same_membership(store.app, chain.app)
    finally:
        store.close()
    assert stored_digests(sqlite3.connect(path)) == want
    report = audit_ledger(path, chain.genesis, member_changes=True)
    assert report.ok, report.problem


def test_a_kill_during_the_upgrade_leaves_format_4(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ledger.sqlite"
    chain = rich_store(path, member_change=False)
    format_4(path)

    def killed(self: BlockStore) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(BlockStore, "_insert_genesis_membership", killed)
    with pytest.raises(KeyboardInterrupt):
        BlockStore.open(path, chain.genesis, member_changes=True)
    assert _sql(path, "SELECT value FROM meta WHERE key = 'schema'") == [(4,)]
    tables = {r[0] for r in _sql(path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert not tables & set(MEMBERSHIP_TABLES)
    assert audit_ledger(
        path, chain.genesis, member_changes=True
    ).ok  # a format-4 store audits as one
    monkeypatch.undo()
    BlockStore.open(path, chain.genesis, member_changes=True).close()
    assert _sql(path, "SELECT value FROM meta WHERE key = 'schema'") == [(SCHEMA_VERSION,)]
    assert audit_ledger(path, chain.genesis, member_changes=True).ok


def test_the_configuration_chain_is_written_read_and_digested(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    chain = member_chain()
    store = BlockStore.open(path, chain.genesis, member_changes=True)
    try:
        entry = pack([1, b"config", b"header", b"certificate"])
        store.put_config_chain(1, entry)
        store.put_config_chain(1, b"another")  # the first one stays
        store.save(config_chain=[(2, b"two")])
        assert store.config_chain() == [(1, entry), (2, b"two")]
        assert store.config_chain(2) == [(2, b"two")]
        assert store._digests["config_chain"] == table_digest(store._db, "config_chain")
        with pytest.raises(StoreError, match="epochs from 1"):
            store.put_config_chain(0, b"genesis has none")
    finally:
        store.close()
    BlockStore.open(path, chain.genesis, member_changes=True).close()  # its digest holds


def test_a_stored_configuration_that_does_not_decode_is_named(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    chain = member_chain()
    chain.add([])
    _save(path, chain, 0)
    db = sqlite3.connect(path)
    db.execute("UPDATE configurations SET value = ? WHERE epoch = 0", (b"\xc1",))
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="configuration 0 does not decode"):
        BlockStore.open(path, chain.genesis, member_changes=True, verify=False)


UPGRADE_CHILD = """
import sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from consortium.ledger.store import BlockStore
from tests.ledger.test_membership_store import rich_genesis

real = BlockStore._insert_genesis_membership

def slow(self):
    real(self)  # the tables exist and hold their rows, uncommitted
    print("inside", flush=True)
    time.sleep(60)

BlockStore._insert_genesis_membership = slow
BlockStore.open(Path({path!r}), rich_genesis())
"""


def rich_genesis() -> Genesis:
    """The genesis of `rich_store`'s chains (for a child process)."""
    return member_chain().genesis


def test_a_kill_9_inside_the_upgrade_leaves_format_4(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "ledger.sqlite"
    chain = rich_store(path, member_change=False)
    format_4(path)
    root = str(Path(__file__).parents[2])
    child = UPGRADE_CHILD.format(root=root, path=str(path))
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == b"inside"
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert _sql(path, "SELECT value FROM meta WHERE key = 'schema'") == [(4,)]
    tables = {r[0] for r in _sql(path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert not tables & set(MEMBERSHIP_TABLES)
    store = BlockStore.open(path, chain.genesis, member_changes=True)
    try:
        same_membership(store.app, chain.app)
    finally:
        store.close()
    assert _sql(path, "SELECT value FROM meta WHERE key = 'schema'") == [(SCHEMA_VERSION,)]
    assert audit_ledger(path, chain.genesis, member_changes=True).ok


@pytest.mark.parametrize("dropped", [*MEMBERSHIP_TABLES, "all"])
def test_a_format_5_store_without_a_membership_table_fails_the_audit(
    tmp_path: Path, dropped: str
) -> None:
    """The stamp decides which tables must be there: dropping one with its digest row is
    refused by the audit as by the store (not skipped as a store of format 4)."""
    from consortium.ledger.digests import DIGEST_KEY
    from consortium.ledger.store import StoreDamaged

    path = tmp_path / "ledger.sqlite"
    chain = member_chain()
    accepted(chain.add([v2_tx(chain, v2_change(chain, add_op(0)))]))
    e = chain.app.pending_member[0]  # type: ignore[index]
    chain.run_to(e + 1)
    _save(path, chain, 0)
    config, header = chain.app.configs[1][1], chain.blocks[e - 1][0].header
    entry = pack([1, config.encode(), header.encode(), chain.checkpoint(e).encode()])
    store = BlockStore.open(path, chain.genesis, member_changes=True)
    store.put_config_chain(1, entry)
    store.close()
    assert audit_ledger(path, chain.genesis, member_changes=True).ok
    tables = MEMBERSHIP_TABLES if dropped == "all" else (dropped,)
    for table in tables:
        _sql(path, f"DROP TABLE {table}")
        _sql(path, "DELETE FROM meta WHERE key = ?", (DIGEST_KEY + table,))
    report = audit_ledger(path, chain.genesis, member_changes=True)
    assert not report.ok and report.problem is not None
    assert report.problem.reason.startswith(f"the store is of format {SCHEMA_VERSION} but has no")
    assert all(t in report.problem.reason for t in tables), report.problem.reason
    with pytest.raises(StoreDamaged):
        BlockStore.open(path, chain.genesis)


def test_a_store_stamped_4_with_membership_tables_fails_the_audit(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    chain = member_chain()
    chain.add([])
    _save(path, chain, 0)
    _sql(path, "UPDATE meta SET value = 4 WHERE key = 'schema'")
    report = audit_ledger(path, chain.genesis, member_changes=True)
    assert report.problem is not None
    assert report.problem.reason == "the store is of format 4 but has membership tables (format 5)"
