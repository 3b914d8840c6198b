"""Running the CLI as a separate process, the way an operator would."""

from __future__ import annotations

import subprocess
import sys


def cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run `consortium ARGS` as a separate process, the way an operator would."""
    return subprocess.run(
        [sys.executable, "-m", "consortium", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
