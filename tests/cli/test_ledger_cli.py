"""`consortium ledger verify --home` audits the ledger the member's node.toml names (its
data_dir), not a default path beside it."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from consortium.cli.main import app
from consortium.cli.network import init_network
from consortium.ledger.store import BlockStore
from consortium.node.config import load_config
from consortium.node.genesis import load_genesis


def test_verify_home_audits_the_ledger_node_toml_names(tmp_path: Path) -> None:
    init_network(tmp_path / "net", members=4, clients=1)
    home = tmp_path / "net" / "nodes" / "n1"
    config = load_config(home)
    toml = home / "config" / "node.toml"
    toml.write_text(toml.read_text().replace('data_dir = "data"', 'data_dir = "elsewhere"'))
    moved = load_config(home).store_path
    assert moved != config.store_path and moved.parent.name == "elsewhere"
    # A good ledger at the default path, none at the configured one: the audit must not pass.
    config.store_path.parent.mkdir(parents=True, exist_ok=True)
    BlockStore.open(config.store_path, load_genesis(config.genesis_path)).close()
    result = CliRunner().invoke(app, ["ledger", "verify", "--home", str(home)])
    assert result.exit_code != 0
    assert f"{moved}: no ledger file" in result.output
    # The configured ledger is the one audited.
    moved.parent.mkdir(parents=True, exist_ok=True)
    BlockStore.open(moved, load_genesis(config.genesis_path)).close()
    result = CliRunner().invoke(app, ["ledger", "verify", "--home", str(home)])
    assert result.exit_code == 0, result.output
    assert str(moved) in result.output
