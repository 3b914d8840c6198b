"""Running the CLI and the members as separate processes, the way an operator would."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio

from consortium.cli.demo import wait_until_up
from consortium.cli.network import LocalNetwork, load_client_setup


def cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run `consortium ARGS` as a separate process, the way an operator would."""
    return subprocess.run(
        [sys.executable, "-m", "consortium", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextmanager
def running(directory: Path, options: dict[str, Any] | None = None) -> Iterator[LocalNetwork]:
    """The members of the network written in `directory`, each its own process, up (every
    one answers status; `options`: the client's, e.g. its TLS key) until the block ends."""
    net = LocalNetwork(directory)
    net.start()
    try:
        trio.run(wait_until_up, load_client_setup(directory).genesis, 30.0, options)
        yield net
    finally:
        net.stop()
