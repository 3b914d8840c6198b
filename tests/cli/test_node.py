"""`consortium node start`: --log-level over node.toml and the environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from consortium.cli.main import app
from consortium.cli.network import init_network
from consortium.node import process
from consortium.node.config import NodeIdentity


@pytest.mark.parametrize(
    ("args", "env", "level"),
    [
        ([], {}, "info"),  # today's default: node.toml's (init writes info)
        ([], {"CONSORTIUM_NODE_LOG_LEVEL": "warning"}, "warning"),
        (["--log-level", "debug"], {"CONSORTIUM_NODE_LOG_LEVEL": "warning"}, "debug"),
        (["--log-level", "error"], {}, "error"),
    ],
)
def test_log_level_of_node_start(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    level: str,
) -> None:
    init_network(tmp_path / "net", members=4, clients=1)
    started: list[NodeIdentity] = []
    monkeypatch.setattr(process, "run_member", lambda identity, *parts: started.append(identity))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(
        app, ["node", "start", "--home", str(tmp_path / "net" / "nodes" / "n1"), *args]
    )
    assert result.exit_code == 0, result.output
    assert [i.config.log_level for i in started] == [level]


def test_an_unknown_log_level_is_refused_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["node", "start", "--home", str(tmp_path), "--log-level", "loud"]
    )
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        "error: Invalid value for '--log-level': 'loud' is not one of debug, info, warning, "
        "error (see `root node start --help`)"
    ]


def test_a_misspelt_environment_setting_stops_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    init_network(tmp_path / "net", members=4, clients=1)
    monkeypatch.setenv("CONSORTIUM_NODE_LOG_LEVL", "debug")
    result = CliRunner().invoke(
        app, ["node", "start", "--home", str(tmp_path / "net" / "nodes" / "n1")]
    )
    assert result.exit_code == 2
    assert len(result.output.splitlines()) == 1
    assert "CONSORTIUM_NODE_LOG_LEVL names no setting" in result.output


@pytest.mark.parametrize("lost", [False, True])
def test_node_check_counts_the_quorum_this_member_needs(tmp_path: Path, lost: bool) -> None:
    """A member counts itself in the quorum, unless it starts in recovery (its data lost):
    then it votes nothing until it has caught up, and the whole quorum must be its peers."""
    import shutil

    init_network(tmp_path / "net", members=4, clients=1)
    home = tmp_path / "net" / "nodes" / "n1"
    if lost:
        shutil.rmtree(home / "data")
    result = CliRunner().invoke(app, ["node", "check", "--home", str(home), "--timeout", "0.5"])
    assert result.exit_code == 0, result.output
    last = result.output.splitlines()[-1]
    if lost:
        assert last.startswith(
            "0 of 3 peers reachable; this member needs 3 of them for a quorum (3 of 4 members, "
            "not itself: it votes nothing while it recovers)"
        ), result.output
    else:
        assert last.startswith(
            "0 of 3 peers reachable; this member needs 2 of them for a quorum (3 of 4 members, "
            "itself included)"
        ), result.output
