"""The TypeScript client (clients/js) against a real 4-member network through the members' HTTP/JSON
gateways (docs/gateway.md): `consortium init --gateway` writes the network and net/gateways.json,
the members run as separate processes on 127.0.0.1, and clients/js/test/live.test.ts submits a
transaction through every gateway, waits for f+1 verified receipts, checks the receipt document
offline against genesis.json, and checks that a tampered and a forged document are refused; the
document it leaves is then checked by the Python CLI (`consortium tx verify-receipt`).

Twice: over http://, and on a network written by `init --gateway --tls` (https:// gateways,
mutual TLS 1.3), where the client presents the files `consortium client tls-files` wrote for
its key and pins each member's certificate key to genesis (the live test also swaps two
members' URLs and sees both refused by the pin, the transaction decided by the other two).

Needs Node 18+ and `npm ci` run once in clients/js (the build is offline): `make check` sees to
both, and this test fails naming the command when either is missing (never skips)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from consortium.cli.network import LocalNetwork, load_client_setup
from tests.e2e.procs import cli, running

pytestmark = pytest.mark.e2e

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "js"


@pytest.fixture(params=["http", "https"])
def gateway_network(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalNetwork]:
    directory = tmp_path / "net"
    tls = ["--tls"] if request.param == "https" else []
    init = cli("init", "--dir", str(directory), "--members", "4", "--gateway", *tls)
    assert init.returncode == 0, init.stderr + init.stdout
    setup = load_client_setup(directory)
    with running(directory, setup.client_options(setup.key(1))) as net:
        yield net


def _toolchain() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node is not None and npm is not None, (
        "Node.js 18 or newer (node and npm) is needed: sudo apt-get install nodejs npm"
    )
    assert (CLIENT / "node_modules").is_dir(), (
        f"run `npm ci` in {CLIENT} first (installs the client's pinned dependencies)"
    )
    return node, npm


def test_the_typescript_client_commits_through_the_gateways(
    gateway_network: LocalNetwork,
) -> None:
    node, npm = _toolchain()
    directory = gateway_network.directory
    gateways = json.loads((directory / "gateways.json").read_text())
    genesis = load_client_setup(directory).genesis
    assert gateways["chain_id"] == genesis.chain_id.hex()
    assert sorted(g["member"] for g in gateways["gateways"]) == sorted(
        m.name for m in genesis.members
    )
    env = {**os.environ, "CONSORTIUM_NET": str(directory)}
    env.pop("CONSORTIUM_TLS_FILES", None)
    if all(g["url"].startswith("https://") for g in gateways["gateways"]):
        # What a non-Python client needs for mutual TLS, for client.toml's first key.
        files = directory / "tls-files"
        written = cli(
            "client", "tls-files", "--key", str(directory / "clients" / "c1.pem"),
            "--genesis", str(directory / "genesis.json"), "--out", str(files),
        )  # fmt: skip
        assert written.returncode == 0, written.stdout + written.stderr
        env["CONSORTIUM_TLS_FILES"] = str(files)
    else:
        assert all(g["url"].startswith("http://") for g in gateways["gateways"])
    build = subprocess.run(
        [npm, "run", "build"], cwd=CLIENT, capture_output=True, text=True, timeout=300, check=False
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    result = subprocess.run(
        [node, "--test", "dist/test/live.test.js"],
        cwd=CLIENT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    out = result.stdout + result.stderr
    logs = "\n".join(
        f"{name}: {line}"
        for name in gateway_network.procs
        for line in gateway_network.log_tail(name)
    )
    assert result.returncode == 0, out[-5000:] + "\n" + logs
    assert "# pass 1" in out and "# fail 0" in out, out[-3000:]
    assert "# skipped 0" in out and "SKIP" not in out, "the live test did not run: " + out[-3000:]
    # The document the TypeScript client wrote, checked by the Python verifier.
    document = directory / "js-live.receipt.json"
    verified = cli(
        "tx", "verify-receipt", str(document), "--genesis", str(directory / "genesis.json")
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert json.loads(document.read_text())["status"] == "ok"
