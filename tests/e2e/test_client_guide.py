"""docs/client.md's Python examples, run in order as one script against a real 4-member
network of separate processes, so the guide cannot drift from the library."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from consortium.cli.network import LocalNetwork

pytestmark = pytest.mark.e2e

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "client.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


def test_the_client_guide_examples_run_against_a_real_network(
    network: LocalNetwork, tmp_path: Path
) -> None:
    blocks = python_blocks(GUIDE.read_text())
    assert len(blocks) >= 8, "the guide lost its examples"
    script = tmp_path / "guide.py"
    script.write_text("\n\n".join(blocks))
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "CONSORTIUM_NET": str(network.directory)},
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    out = result.stdout
    assert "pbft network of 4 members, f=1" in out
    assert "committed at height" in out
    assert "resubmitted: same receipt, executed once" in out
    assert "an id nobody has: pending" in out
    assert "fast read: b'hello'" in out
    assert "signed by  " in out  # describe() of the verified receipt
    assert re.search(r"^3 [0-9a-f]{16} \d+ txs signed by", out, flags=re.MULTILINE)
    assert "sync: committed" in out
    assert (network.directory / "order-17.receipt.json").exists()
