"""End-to-end fixtures: real member processes on loopback, started from the CLI's own code."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from consortium.cli.demo import wait_until_up
from consortium.cli.network import LocalNetwork, init_network, load_client_setup
from consortium.ledger.genesis import Params


@pytest.fixture
def network(tmp_path: Path) -> Iterator[LocalNetwork]:
    directory = tmp_path / "net"
    init_network(directory, members=4, clients=3, params=Params(request_timeout_ms=2000))
    net = LocalNetwork(directory)
    net.start()
    try:
        trio.run(wait_until_up, load_client_setup(directory).genesis, 30.0)
        yield net
    finally:
        net.stop()
