"""Setting a member's store aside (node/preflight.py, set_store_aside): what a member whose
store a quorum proves wrong does before it starts again from peers. The old store is kept
whole (with its write-ahead log) under a dated name, the new one starts in recovery saying
why, and a write-ahead log left without its store is never replayed into a new one."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from consortium.cli.network import init_network
from consortium.ledger.state import build_block
from consortium.ledger.store import BlockStore
from consortium.node.config import NodeIdentity, load_identity
from consortium.node.datalock import DataDirInUse, lock_data_dir
from consortium.node.preflight import open_store, set_store_aside


@pytest.fixture
def identity(tmp_path: Path) -> NodeIdentity:
    init_network(tmp_path / "net", members=4, clients=1)
    return load_identity(tmp_path / "net" / "nodes" / "n1")


def grow(store: BlockStore, blocks: int) -> None:
    for _ in range(blocks):
        head = store.head
        block, execution = build_block(
            head, ("pbft", 0, head.height), head.timestamp_ms + 1, (), store.app
        )
        store.append_blocks([(block, execution, None)])


def test_the_store_is_kept_with_its_log_and_the_next_start_recovers_saying_why(
    identity: NodeIdentity,
) -> None:
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

    kept = set_store_aside(config, genesis, "diverged")
    held.close()
    assert kept.name.startswith("ledger.sqlite.diverged-")
    old = BlockStore.open(kept, genesis)  # whole: all five blocks, the last ones in its log
    assert old.height == 5
    old.close()
    fresh, recovering = open_store(config, genesis)
    try:
        assert fresh.height == 0
        assert recovering == f"a diverged store (kept as {kept.name})"
    finally:
        fresh.close()


def test_a_log_left_without_its_store_is_kept_aside_not_replayed(
    identity: NodeIdentity,
) -> None:
    config, genesis = identity.config, identity.genesis
    orphan = config.store_path.with_name("ledger.sqlite-wal")
    config.data_dir.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"not a log of the store about to be created")
    store, recovering = open_store(config, genesis)
    store.close()
    assert not orphan.exists()
    (kept,) = [p for p in config.data_dir.glob("ledger.sqlite.orphan-*")]
    assert kept.read_bytes() == b"not a log of the store about to be created"
    assert store.height == 0 and recovering is None  # (init marked the directory new)


def test_a_running_member_s_store_is_not_set_aside(
    identity: NodeIdentity,
) -> None:
    config, genesis = identity.config, identity.genesis
    store, _ = open_store(config, genesis)
    store.close()
    lock = lock_data_dir(config.data_dir, "n1")
    try:
        with pytest.raises(DataDirInUse):
            set_store_aside(config, genesis, "diverged")
    finally:
        lock.release()
    assert config.store_path.exists()
    assert not list(config.data_dir.glob("ledger.sqlite.diverged-*"))
