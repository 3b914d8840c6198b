"""One member as a process (node/process.py): once it runs, its log says which release runs
and which settings came from the environment."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import consortium
from consortium.cli.network import init_network
from consortium.node import process
from consortium.node.config import load_identity


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger("consortium")
    saved = (list(root.handlers), root.level, root.propagate)
    yield
    root.handlers[:], root.level, root.propagate = saved[0], saved[1], saved[2]


class _Member:
    """Stands in for runtime.Node: starts, then stops the process as SIGTERM would."""

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        os.kill(os.getpid(), signal.SIGTERM)  # caught by run_member's signal receiver
        await trio.sleep_forever()


def test_the_running_line_names_version_and_environment_settings(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    restore_logging: None,
) -> None:
    init_network(tmp_path / "net", members=4, clients=1)
    home = tmp_path / "net" / "nodes" / "n3"
    monkeypatch.setenv("CONSORTIUM_NODE_LOG_FORMAT", "text")
    monkeypatch.setenv("CONSORTIUM_NODE_LIMITS_CLIENT_CONNECTIONS_PER_SOURCE", "99")
    monkeypatch.setattr(process.runtime, "make_node", lambda *args, **kwargs: _Member())
    process.run_member(load_identity(home))
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith(
        f"consortium {consortium.version()} running member n3; from the environment: "
        "CONSORTIUM_NODE_LIMITS_CLIENT_CONNECTIONS_PER_SOURCE=99, CONSORTIUM_NODE_LOG_FORMAT=text"
    ), lines
    assert "signal 15: stopping" in lines[1]
    monkeypatch.delenv("CONSORTIUM_NODE_LOG_FORMAT")
    monkeypatch.delenv("CONSORTIUM_NODE_LIMITS_CLIENT_CONNECTIONS_PER_SOURCE")
    process.run_member(load_identity(home))
    first = capsys.readouterr().err.splitlines()[0]
    assert first.endswith(f"consortium {consortium.version()} running member n3"), first
