"""Every command's error paths that are cheap to reach (bad --net, missing files, members that
do not run, bad arguments, damaged configuration) end the same way: a non-zero exit, stderr
exactly one line starting with "error:", and never a traceback (the CLI's rule: an expected
failure reaches people as one line; cli/common.py and cli/main.py)."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from typer.testing import CliRunner

from consortium.cli.common import run_trio
from consortium.cli.main import app
from consortium.cli.network import init_network
from consortium.client.errors import ClientError

TX_ID = "ab" * 32


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("errors") / "net"
    init_network(directory, members=4, clients=1)
    return directory  # no member runs: every port refuses


def _bad_home(net: Path, where: Path, damage: Callable[[Path], None]) -> Path:
    home = where / "home"
    shutil.copytree(net / "nodes" / "n1", home)
    damage(home / "config")
    return home


def _append_bytes(path: Path, data: bytes) -> None:
    path.write_bytes(path.read_bytes() + data)


def _same_ports(config: Path) -> None:
    toml = (config / "node.toml").read_text()
    peer = re.search(r'^peer = "([^"]+)"', toml, re.M)
    assert peer is not None
    (config / "node.toml").write_text(
        re.sub(r'^client = "[^"]+"', f'client = "{peer.group(1)}"', toml, flags=re.M)
    )


def _huge_window(config: Path) -> None:
    doc = json.loads((config / "genesis.json").read_text())
    doc["params"]["window"] = 10**30
    (config / "genesis.json").write_text(json.dumps(doc))


# what is damaged -> (how, what the one line says)
DAMAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "node.toml not UTF-8": (
        lambda c: _append_bytes(c / "node.toml", b"\xff\xfe"),
        "node.toml: not UTF-8 text",
    ),
    "peer port = client port": (_same_ports, "'listen.peer' and 'listen.client' are both port"),
    "genesis.json not UTF-8": (
        lambda c: (c / "genesis.json").write_bytes(b"\xff\xfe{}"),
        "genesis.json: not UTF-8 text",
    ),
    "genesis nested 200,000 deep": (
        lambda c: (c / "genesis.json").write_text(
            '{"members": ' + "[" * 200_000 + "]" * 200_000 + "}"
        ),
        "genesis.json: not a genesis file: JSON nested too deeply",
    ),
    "window = 10**30": (_huge_window, "params.window (1,000,000,"),
}


def _commands(net: Path, tmp: Path) -> list[list[str]]:
    missing = str(tmp / "missing")
    n = str(net)
    home = str(net / "nodes" / "n1")
    out = str(tmp / "out.json")
    return [
        # no such network directory
        ["read", "k", "--net", missing],
        ["status", "--net", missing],
        ["tx", "submit", "put", "k", "v", "--net", missing],
        ["tx", "status", TX_ID, "--net", missing],
        ["tx", "receipt", TX_ID, "--out", out, "--net", missing],
        ["ledger", "follow", "--net", missing],
        ["client", "list", "--net", missing],
        ["client", "submit", missing, "--net", n],
        ["client", "sign", missing, "--home", home],
        ["leader", "transfer", "--to", "n2", "--net", missing],
        # missing homes and files
        ["node", "check", "--home", missing],
        ["node", "cert", "--home", missing],
        ["node", "backup", "--home", missing, "--to", out],
        ["ledger", "verify", "--home", missing],
        ["ledger", "verify", "--db", missing],
        ["tx", "verify-receipt", missing, "--net", n],
        ["init", "--dir", n],  # exists already
        # bad arguments
        ["tx", "submit", "frob", "k", "--net", n],
        ["tx", "submit", "put", "k", "--net", n],
        ["tx", "submit", "put", "k", "v", "--client", "9", "--net", n],
        ["tx", "status", "zz", "--net", n],
        ["ledger", "follow", "--from", "-1", "--net", n],
        ["ledger", "follow", "--count", "0", "--net", n],
        ["leader", "transfer", "--to", "n2", "--net", n],  # pbft: refused
        ["client", "propose-admit", "--key", "zz", "--net", n, "--out", out],
        # members that do not run
        ["read", "k", "--net", n, "--timeout", "0.3"],
        ["tx", "submit", "put", "k", "v", "--net", n],
        ["tx", "status", TX_ID, "--net", n],
    ]


def _check_one_line(args: list[str]) -> str:
    result = CliRunner().invoke(app, args)
    shown = f"{args}: exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert result.exit_code not in (0, None), shown
    assert "Traceback" not in result.stdout + result.stderr, shown
    assert not isinstance(result.exception, AssertionError | TypeError | ValueError), shown
    lines = result.stderr.splitlines()
    if result.exit_code in (3, 4):  # pending/unknown, unreachable: an outcome on stdout
        assert not lines, shown
        assert re.search(r"^status    (pending|unknown|unreachable)", result.stdout, re.M), shown
        return result.stdout
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    return lines[0]


def test_every_command_fails_with_one_line(net: Path, tmp_path: Path) -> None:
    for args in _commands(net, tmp_path):
        _check_one_line(args)


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_configuration_is_one_line_naming_the_file(
    damage: str, net: Path, tmp_path: Path
) -> None:
    how, says = DAMAGES[damage]
    home = _bad_home(net, tmp_path, how)
    for args in (["node", "check", "--home", str(home)], ["node", "start", "--home", str(home)]):
        line = _check_one_line(args)
        assert line.startswith(f"error: {home}/config/") and says in line, line


def test_ctrl_c_on_ledger_follow_ends_quietly_with_130(
    net: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C reaches trio.run as KeyboardInterrupt, raised inside the client's nursery (so
    wrapped in an exception group): no traceback, no output, exit 130 as shells expect."""
    from consortium.client.client import ConsortiumClient

    async def interrupted(self: ConsortiumClient) -> ConsortiumClient:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            raise KeyboardInterrupt

    monkeypatch.setattr(ConsortiumClient, "__aenter__", interrupted)
    result = CliRunner().invoke(app, ["ledger", "follow", "--net", str(net)])
    assert result.exit_code == 130, (result.stdout, result.stderr, result.exception)
    assert result.stdout == result.stderr == ""


def test_an_expected_error_a_nursery_wrapped_reaches_the_command_as_itself() -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            raise ClientError("member n2 refused the transfer")

    with pytest.raises(ClientError, match="refused the transfer"):
        run_trio(main)


def test_a_bug_in_a_nursery_keeps_its_traceback() -> None:
    async def main() -> None:
        async with trio.open_nursery():
            raise ZeroDivisionError

    with pytest.raises(BaseExceptionGroup):
        run_trio(main)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["tx", "submit", "--bogus"], "error: No such option: --bogus (see `consortium tx submit"),
        (["bogus"], "error: No such command 'bogus'. (see `consortium --help`)"),
        (["status", "--timeout", "soon"], "error: Invalid value for '--timeout'"),
        (["ledger", "verify", "--home"], "error: Option '--home' requires an argument."),
    ],
)
def test_a_usage_error_is_one_line_naming_the_help_exit_2(args: list[str], says: str) -> None:
    result = CliRunner().invoke(app, args, prog_name="consortium")
    assert result.exit_code == 2, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(says), result.stderr


def test_a_group_without_a_command_still_shows_its_help() -> None:
    result = CliRunner().invoke(app, ["tx"], prog_name="consortium")
    assert "Usage: consortium tx [OPTIONS] COMMAND" in result.stdout + result.stderr
    assert "error:" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (
            b'genesis = "genesis.json"\nkeys = ["clients/\xff.key"]\n',
            "not UTF-8 text (byte 42 is 0xff)",
        ),
        (b"keys = [", "not valid TOML"),
    ],
)
def test_a_damaged_client_toml_is_one_line_naming_it(
    content: bytes, says: str, net: Path, tmp_path: Path
) -> None:
    directory = tmp_path / "net"
    shutil.copytree(net, directory)
    (directory / "client.toml").write_bytes(content)
    for args in (["status", "--net", str(directory)], ["read", "k", "--net", str(directory)]):
        line = _check_one_line(args)
        assert line.startswith(f"error: {directory}/client.toml: ") and says in line, line
