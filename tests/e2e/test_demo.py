"""`consortium demo`, the README's first command, in both modes (briefly): it must exit 0 only
with identical, verified ledgers, and say so."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.procs import cli

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("mode", ["pbft", "raft"])
def test_the_demo_runs_a_network_and_audits_every_ledger(tmp_path: Path, mode: str) -> None:
    result = cli(
        "demo", "--mode", mode, "--txs", "200", "--clients", "2", "--dir", str(tmp_path / "d"),
        timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"-member {mode.upper()} network" in out
    assert "200 committed, 0 not" in out
    assert out.count("verify OK") == (4 if mode == "pbft" else 3)
    assert "all ledgers identical and verified" in out
