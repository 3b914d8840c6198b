"""`consortium tx`: what the commands say when no member can be reached, and when no member
holds an id (verdicts that say what happened, not "pending" for everything)."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from consortium.cli.common import EXIT_PENDING, EXIT_UNREACHABLE
from consortium.cli.main import app
from consortium.cli.network import init_network
from consortium.cli.tx import _finish
from consortium.client.outcome import TxOutcome


@pytest.fixture
def net(tmp_path: Path) -> Path:
    directory = tmp_path / "net"
    init_network(directory, members=4, clients=1)
    return directory  # no member runs: every client port refuses


def test_submit_with_no_member_reachable_says_so_at_once(net: Path) -> None:
    result = CliRunner().invoke(app, ["tx", "submit", "put", "k", "v", "--net", str(net)])
    assert result.exit_code == EXIT_UNREACHABLE, result.output
    assert "status    unreachable (no member reachable: n1: " in result.output, result.output
    assert "may still commit" not in result.output
    assert "submitted " not in result.output  # it was handed to no one


def test_status_with_no_member_reachable_says_so(net: Path) -> None:
    result = CliRunner().invoke(app, ["tx", "status", "ab" * 32, "--net", str(net)])
    assert result.exit_code == EXIT_UNREACHABLE, result.output
    assert "status    unreachable (no member reachable: n1: " in result.output, result.output


def test_an_id_unknown_to_every_member_is_said_so(
    net: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = TxOutcome(b"\xab" * 32, "unknown", reason="unknown to all 4 members: none holds")
    with pytest.raises(typer.Exit) as exit_:
        _finish(outcome, net, as_json=False)
    assert exit_.value.exit_code == EXIT_PENDING
    out = capsys.readouterr().out
    assert "status    unknown (unknown to all 4 members" in out, out
    assert "may still commit; check" not in out
