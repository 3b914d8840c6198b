"""`consortium node refetch`: the ledger is set aside (never deleted), only while the member is
stopped, and the next start is a lost-state start (recovery, state transfer)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from typer.testing import CliRunner

from consortium.cli.main import app
from consortium.cli.network import init_network
from consortium.ledger.state import build_block
from consortium.ledger.store import LOST_STATE, BlockStore
from consortium.node.config import load_config, load_identity
from consortium.node.datalock import lock_data_dir
from consortium.node.genesis import load_genesis
from consortium.node.preflight import NEW_MARK, open_store
from consortium.node.refetch import start_over


def _member(tmp_path: Path) -> Path:
    init_network(tmp_path / "net", members=4, clients=1, mode="pbft")
    home = tmp_path / "net" / "nodes" / "n1"
    config = load_config(home)
    store, _ = open_store(config, load_genesis(config.genesis_path))  # as a first start does
    store.close()
    assert not (config.data_dir / NEW_MARK).exists()
    return home


def test_refetch_sets_the_ledger_aside_and_the_next_start_recovers(tmp_path: Path) -> None:
    home = _member(tmp_path)
    config = load_config(home)
    before = config.store_path.read_bytes()
    result = CliRunner().invoke(app, ["node", "refetch", "--home", str(home)])
    assert result.exit_code == 0, result.output
    assert "re-fetches the ledger from the other members" in result.output
    (aside,) = config.data_dir.glob("ledger.damaged-*.sqlite")
    assert aside.read_bytes()[:100] == before[:100] and not config.store_path.exists()
    store = BlockStore.open(aside, load_genesis(config.genesis_path))  # whole, with its WAL
    store.close()
    store, recovering = open_store(config, load_genesis(config.genesis_path))
    store.close()
    assert recovering == LOST_STATE


def test_refetch_refuses_while_the_member_runs_and_without_a_ledger(tmp_path: Path) -> None:
    home = _member(tmp_path)
    config = load_config(home)
    lock = lock_data_dir(config.data_dir, "n1")  # as a running member holds it
    try:
        result = CliRunner().invoke(app, ["node", "refetch", "--home", str(home)])
    finally:
        lock.release()
    assert result.exit_code == 1 and "is in use by process" in result.output
    assert config.store_path.exists()
    assert CliRunner().invoke(app, ["node", "refetch", "--home", str(home)]).exit_code == 0
    again = CliRunner().invoke(app, ["node", "refetch", "--home", str(home)])
    assert again.exit_code == 1 and "no ledger to set aside" in again.output


def grow(store: BlockStore, blocks: int) -> None:
    for _ in range(blocks):
        head = store.head
        block, execution = build_block(
            head, ("pbft", 0, head.height), head.timestamp_ms + 1, (), store.app
        )
        store.append_blocks([(block, execution, None)])


def test_a_diverged_member_starts_over_with_its_ledger_kept_whole_and_a_mark_saying_why(
    tmp_path: Path,
) -> None:
    """start_over: what node/process.py does for a member a quorum proved diverged."""
    identity = load_identity(_member(tmp_path))
    config, genesis = identity.config, identity.genesis
    store, _ = open_store(config, genesis)
    grow(store, 3)
    store.close()
    # An open reader keeps the write-ahead log from being checkpointed away at close.
    held = sqlite3.connect(config.store_path)
    held.execute("PRAGMA journal_mode=WAL")
    store = BlockStore.open(config.store_path, genesis)
    grow(store, 2)
    store.close()
    assert config.store_path.with_name("ledger.sqlite-wal").exists()

    held.close()
    kept = start_over(config, genesis, "diverged")
    assert kept.name.startswith("ledger.diverged-") and kept.suffix == ".sqlite"
    old = BlockStore.open(kept, genesis)  # whole: all five blocks, the last ones in its log
    assert old.height == 5
    old.close()
    fresh, recovering = open_store(config, genesis)
    try:
        assert fresh.height == 0
        assert recovering == f"a diverged store (set aside as {kept.name})"
    finally:
        fresh.close()
