"""Opening a member's store at start (node/preflight.py, open_store): a write-ahead log left
without its store (a process killed while setting the store aside) is kept aside, never
replayed into the store created in its place."""

from __future__ import annotations

from pathlib import Path

import pytest

from consortium.cli.network import init_network
from consortium.node.config import NodeIdentity, load_identity
from consortium.node.preflight import open_store


@pytest.fixture
def identity(tmp_path: Path) -> NodeIdentity:
    init_network(tmp_path / "net", members=4, clients=1)
    return load_identity(tmp_path / "net" / "nodes" / "n1")


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
