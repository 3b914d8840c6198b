"""End-to-end fixtures: real member processes on loopback, started from the CLI's own code."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from consortium.cli.network import LocalNetwork, init_network
from consortium.ledger.genesis import Params
from tests.e2e.procs import running


@pytest.fixture
def network(tmp_path: Path) -> Iterator[LocalNetwork]:
    directory = tmp_path / "net"
    init_network(directory, members=4, clients=3, params=Params(request_timeout_ms=2000))
    with running(directory) as net:
        yield net
