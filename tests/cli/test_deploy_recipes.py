"""The deployment recipes in deploy/ say what the CLI accepts: the systemd unit's ExecStart and
the Containerfile's ENTRYPOINT parse as `consortium` commands, their paths and ports agree
with each other and with the CLI's defaults, and the unit passes `systemd-analyze verify`."""

from __future__ import annotations

import configparser
import inspect
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from consortium.cli.main import app
from consortium.cli.net import init

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "consortium-node@.service"
CONTAINERFILE = REPO / "deploy" / "Containerfile"


def accepted(argv: list[str]) -> str:
    """Run `consortium ARGV` in-process for a home that does not exist here: the CLI must
    accept every argument and fail only in the command itself, at reading node.toml. Returns
    the output."""
    result = CliRunner().invoke(app, argv)
    assert "No such option" not in result.output and "Usage:" not in result.output, result.output
    assert result.exit_code == 2, result.output
    assert "cannot read node config" in result.output, result.output
    return result.output


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def test_accepted_fails_for_what_the_cli_refuses() -> None:
    for argv in (
        ["node", "start", "--home", "/nonexistent", "--bogus"],
        ["node", "start"],  # --home is required
        ["node", "sart", "--home", "/nonexistent"],
    ):
        with pytest.raises(AssertionError):
            accepted(argv)
    assert "/nonexistent/config/node.toml" in accepted(["node", "start", "--home", "/nonexistent"])


def test_the_systemd_unit_runs_node_start_on_the_members_state_directory() -> None:
    service = unit()["Service"]
    argv = shlex.split(service["ExecStart"].replace("%i", "n1"))
    assert argv[0] == "/opt/consortium/bin/consortium"
    assert argv[1:4] == ["node", "start", "--home"]
    assert argv[4] == "/var/lib/consortium/n1"
    assert not Path(argv[4]).exists()
    assert "/var/lib/consortium/n1/config/node.toml" in accepted(argv[1:])
    assert service["StateDirectory"] == "consortium/%i"  # systemd creates that very home
    assert service["WorkingDirectory"] == "/var/lib/consortium/%i"
    assert service["Type"] in ("exec", "simple")
    assert service["User"] == "consortium"
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "2"  # config errors exit 2: no restart loop
    assert int(service["LimitNOFILE"]) >= 4096
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert service[key] == value, key
    help_text = subprocess.run(
        [sys.executable, "-m", "consortium", *argv[1:3], "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert help_text.returncode == 0 and "--home" in help_text.stdout


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze not found: apt-get install systemd"
    # The same unit with ExecStart pointing at this checkout's console script, which exists.
    console = Path(sys.executable).with_name("consortium")
    assert console.exists(), console
    text = UNIT.read_text().replace("/opt/consortium/bin/consortium", str(console))
    (tmp_path / "consortium-node@.service").write_text(text)
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / "consortium-node@n1.service")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # It warns (exit 0) about keys it does not know or values it ignores: none allowed.
    assert "consortium-node@" not in result.stderr, result.stderr


def containerfile() -> dict[str, list[str]]:
    instructions: dict[str, list[str]] = {}
    logical = ""
    for line in CONTAINERFILE.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        logical += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            if logical.strip():
                keyword, _, rest = logical.strip().partition(" ")
                instructions.setdefault(keyword.upper(), []).append(rest.strip())
            logical = ""
    return instructions


def test_the_containerfile_runs_node_start_as_a_non_root_user_on_its_volume() -> None:
    c = containerfile()
    assert c["FROM"] == ["python:3.11-slim"]
    assert c["USER"] and c["USER"][-1] not in ("root", "0")
    entrypoint = json.loads(c["ENTRYPOINT"][-1])
    assert entrypoint[:4] == ["consortium", "node", "start", "--home"]
    assert entrypoint[4:] == c["VOLUME"] == ["/home/consortium"]
    assert not Path(entrypoint[4]).exists()
    accepted(entrypoint[1:])
    for copy in c["COPY"]:
        for source in copy.split()[:-1]:
            assert (REPO / source).exists(), f"COPY {source}: no such path in the repository"
    assert any("pip install /src" in r for r in c["RUN"])
    # The ports it exposes are the CLI's defaults for peers and clients.
    defaults = {n: p.default for n, p in inspect.signature(init).parameters.items()}
    exposed = sorted(int(p) for p in c["EXPOSE"][-1].split())
    assert exposed == sorted([defaults["peer_port"], defaults["client_port"]])
