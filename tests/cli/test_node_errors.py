"""A member's fatal error inside the Trio nurseries (trio wraps a task's exception in an
exception group) reaches the operator as its one-line message: `node start` (node/process.py)
and the command line (cli/main.py) find it in the group (node/errors.py, first_leaf) and exit
with it, instead of printing a group traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio.lowlevel

from consortium.ledger.store import StoreError
from consortium.node.errors import first_leaf


def test_the_first_store_error_is_found_in_nested_groups() -> None:
    disk = StoreError("ledger.sqlite: write failed, nothing written (disk I/O error)")
    group = BaseExceptionGroup(
        "tasks", [RuntimeError("other"), BaseExceptionGroup("core", [disk, StoreError("2nd")])]
    )
    assert first_leaf(group, (StoreError,)) is disk


def test_a_group_without_a_known_error_is_left_as_it_is() -> None:
    group = BaseExceptionGroup("tasks", [RuntimeError("bug"), KeyError("k")])
    assert first_leaf(group, (StoreError, OSError)) is group


# --- review 6 -----------------------------------------------------------------------------


def test_a_programming_error_in_a_member_task_is_not_reported_as_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """first_leaf also pulls ValueError and OSError out of the group, and node_start's
    `except ValueError` was meant for start-up input: a bug raising ValueError in any member
    task after hours of running now exits 2 (usage) with its bare message and no traceback
    (node.run logs none), and any OSError reads "cannot start member". A runtime failure must
    keep its traceback and must not look like a usage error."""
    import trio
    from typer.testing import CliRunner

    from consortium.cli.main import app
    from consortium.cli.network import init_network
    from consortium.node import runtime

    init_network(tmp_path / "net", members=4, clients=1, mode="pbft")

    class _Node:
        async def run(
            self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
        ) -> None:
            task_status.started()
            await trio.lowlevel.checkpoint()
            raise ValueError("too many values to unpack (expected 2)")  # a bug, not input

    monkeypatch.setattr(runtime, "make_node", lambda *a, **k: _Node())
    result = CliRunner().invoke(
        app, ["node", "start", "--home", str(tmp_path / "net" / "nodes" / "n1")]
    )
    assert result.exit_code != 2, result.output


def test_a_store_error_in_a_member_task_reaches_the_operator_as_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The nursery wraps the task's error in an exception group; the command line (cli/main.py)
    finds the store error in it and shows its message alone, exit 1, no traceback."""
    import trio
    from typer.testing import CliRunner

    from consortium.cli.main import app
    from consortium.cli.network import init_network
    from consortium.node import runtime

    init_network(tmp_path / "net", members=4, clients=1, mode="pbft")

    class _Node:
        async def run(
            self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
        ) -> None:
            task_status.started()
            await trio.lowlevel.checkpoint()
            raise StoreError("ledger.sqlite: write failed, nothing written (disk I/O error)")

    monkeypatch.setattr(runtime, "make_node", lambda *a, **k: _Node())
    result = CliRunner().invoke(
        app, ["node", "start", "--home", str(tmp_path / "net" / "nodes" / "n1")]
    )
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1] == (
        "error: ledger.sqlite: write failed, nothing written (disk I/O error)"
    )
    assert "Traceback" not in result.output and "ExceptionGroup" not in result.output


def test_a_member_that_diverges_again_after_re_fetching_stops_with_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first divergence sets the ledger aside and runs again from an empty store; the
    second, in this process or any later start (the mark in the data directory), stops with
    exit 2, which the systemd unit does not restart: no loop of full re-fetches, each keeping
    one more copy of the ledger. An operator's `node refetch` clears the mark."""
    from typer.testing import CliRunner

    from consortium.cli.main import app
    from consortium.cli.network import init_network
    from consortium.node import runtime
    from consortium.node.config import load_identity
    from consortium.node.errors import MemberDiverged
    from consortium.node.preflight import open_store
    from consortium.node.refetch import REFETCHED_MARK

    init_network(tmp_path / "net", members=4, clients=1, mode="pbft")
    home = tmp_path / "net" / "nodes" / "n1"
    identity = load_identity(home)
    data = identity.config.data_dir
    store, _ = open_store(identity.config, identity.genesis)
    store.close()
    runs: list[int] = []

    class _Diverging:
        async def run(
            self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
        ) -> None:
            runs.append(1)
            task_status.started()
            await trio.lowlevel.checkpoint()
            raise MemberDiverged("at seq 8 this member executed block aa, a quorum certified bb")

    monkeypatch.setattr(runtime, "make_node", lambda *a, **k: _Diverging())
    first = CliRunner().invoke(app, ["node", "start", "--home", str(home)])
    assert first.exit_code == 2, first.output
    line = first.output.strip().splitlines()[-1]
    assert line.startswith("error: diverged from the network again (at seq 8"), line
    assert "after re-fetching the ledger" in line and "report it" in line
    assert len(runs) == 2  # it ran again once, from an empty store
    assert len(list(data.glob("ledger.diverged-*.sqlite"))) == 1
    assert (data / REFETCHED_MARK).exists()

    later = CliRunner().invoke(app, ["node", "start", "--home", str(home)])
    assert later.exit_code == 2, later.output
    assert len(runs) == 3 and len(list(data.glob("ledger.diverged-*.sqlite"))) == 1

    refetch = CliRunner().invoke(app, ["node", "refetch", "--home", str(home)])
    assert refetch.exit_code == 0, refetch.output
    assert not (data / REFETCHED_MARK).exists()


def test_node_check_finds_a_damaged_table_as_node_start_would(tmp_path: Path) -> None:
    """(review: node check said ok for a store that node start then refused)"""
    import sqlite3

    from typer.testing import CliRunner

    from consortium.cli.main import app
    from consortium.cli.network import init_network
    from consortium.node.config import load_identity
    from consortium.node.preflight import open_store

    init_network(tmp_path / "net", members=4, clients=1, mode="pbft")
    home = tmp_path / "net" / "nodes" / "n1"
    identity = load_identity(home)
    store, _ = open_store(identity.config, identity.genesis)
    store.close()
    args = ["node", "check", "--home", str(home), "--timeout", "0.2"]
    clean = CliRunner().invoke(app, args)
    assert "every table matching its digest" in clean.output, clean.output
    db = sqlite3.connect(identity.config.store_path)
    db.execute("INSERT INTO kv VALUES (?, ?)", (b"planted", b"x"))
    db.commit()
    db.close()
    damaged = CliRunner().invoke(app, args)
    assert damaged.exit_code == 1, damaged.output
    line = damaged.output.strip().splitlines()[-1]
    assert "the state table (kv) does not match its digest" in line, line
    assert f"consortium node refetch --home {home}`" in line, line
