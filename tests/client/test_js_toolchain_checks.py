"""The TypeScript client's toolchain checks in the Makefile and .ci/run: a missing or too old
Node.js is reported as one line naming what to install, also when node_modules is already
there (make test) and when installing Debian's nodejs did not bring a new enough one
(.ci/run). Run with a PATH of stand-ins: nothing is installed, no network is used."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _bin(tmp_path: Path, scripts: dict[str, str], tools: tuple[str, ...] = ()) -> Path:
    """A directory of stand-in commands (`scripts`: name -> shell body) and links to the real
    `tools`."""
    directory = tmp_path / "bin"
    directory.mkdir()
    for name, body in scripts.items():
        path = directory / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    for tool in tools:
        real = shutil.which(tool)
        assert real is not None, tool
        (directory / tool).symlink_to(real)
    return directory


def test_make_test_names_node_when_node_modules_outlived_it(tmp_path: Path) -> None:
    # A venv and a node_modules stamp that are up to date; no node, no npm on PATH.
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    pytest_stub = venv / "bin" / "pytest"
    pytest_stub.write_text(f"#!/bin/sh\necho pytest-ran >> {tmp_path / 'log'}\n")
    pytest_stub.chmod(0o755)
    (venv / ".installed").touch()
    js_stamp = tmp_path / "node_modules.stamp"
    js_stamp.touch()
    bin_dir = _bin(tmp_path, {})
    make = shutil.which("make")
    assert make is not None
    result = subprocess.run(
        [make, "-C", str(ROOT), "test", f"VENV={venv}", f"JS_STAMP={js_stamp}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PATH": str(bin_dir)},
    )
    out = result.stdout + result.stderr
    assert (tmp_path / "log").read_text() == "pytest-ran\n"  # (the stand-ins were used)
    assert result.returncode != 0
    assert "need Node.js 18 or newer with npm: sudo apt-get install nodejs npm" in out, out
    assert "not found" not in out, out


def test_ci_fails_in_one_line_when_the_installed_node_is_still_too_old(tmp_path: Path) -> None:
    log = tmp_path / "log"
    bin_dir = _bin(
        tmp_path,
        {
            "node": "echo 12",  # an old node first in PATH, whatever apt installs
            "npm": "exit 0",
            "apt-get": f"echo apt-get $* >> {log}",
            "make": f"echo make-ran >> {log}",
        },
        tools=("dirname",),
    )
    result = subprocess.run(
        ["/bin/bash", str(ROOT / ".ci" / "run")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PATH": str(bin_dir)},
    )
    ran = log.read_text()
    assert "apt-get install -y -q nodejs npm" in ran
    assert "make-ran" not in ran  # stopped before make check
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Node.js 18 or newer" in lines[0] and "major version 12" in lines[0]
    assert str(bin_dir / "node") in lines[0]
