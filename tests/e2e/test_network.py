"""Four members as real processes over loopback TCP: agreement, audit, crash of a backup."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from consortium.cli.demo import drive, heights, wait_same_height
from consortium.cli.network import LocalNetwork, init_network, load_client_setup, node_homes
from consortium.ledger.genesis import Genesis
from consortium.ledger.store import BlockStore
from consortium.node.config import load_config
from tests.e2e.procs import cli

pytestmark = pytest.mark.e2e


def block_hashes(home: Path, genesis: Genesis) -> list[bytes]:
    store = BlockStore.open(home / "data" / "ledger.sqlite", genesis)
    try:
        hashes = [store.block_hash_at(h) for h in range(store.height + 1)]
    finally:
        store.close()
    assert all(h is not None for h in hashes)
    return [h for h in hashes if h is not None]


def test_four_members_order_transactions_from_several_clients_into_identical_ledgers(
    network: LocalNetwork,
) -> None:
    setup = load_client_setup(network.directory)
    genesis = setup.genesis
    committed, failed, _ = trio.run(drive, genesis, setup.keys(), 600, False)
    assert (committed, failed) == (600, 0)
    height = trio.run(wait_same_height, genesis, [0, 1, 2, 3], 20.0)
    assert height >= 1
    network.stop()

    chains = [block_hashes(home, genesis) for home in network.homes]
    assert len(chains[0]) == height + 1
    for chain in chains[1:]:
        assert chain == chains[0], "block hashes differ at some height"
    for home in network.homes:
        result = cli("ledger", "verify", "--home", str(home))
        assert result.returncode == 0, result.stderr + result.stdout
        assert "OK" in result.stdout


def test_a_backup_killed_under_load_leaves_three_committing_and_reopens_intact(
    network: LocalNetwork,
) -> None:
    setup = load_client_setup(network.directory)
    genesis = setup.genesis
    keys = setup.keys()

    async def scenario() -> tuple[int, int]:
        async with trio.open_nursery() as nursery:
            # Load from two clients while the third is used to observe; kill n4 mid-run.
            results: list[tuple[int, int, float]] = []

            async def load() -> None:
                results.append(await drive(genesis, keys[:2], 400, False))

            nursery.start_soon(load)
            await trio.sleep(0.5)
            network.kill("n4", signal.SIGKILL)
        committed, failed, _ = results[0]
        return committed, failed

    committed, failed = trio.run(scenario)
    assert (committed, failed) == (400, 0)
    before = trio.run(heights, genesis, [0, 1, 2])
    # The three survivors keep committing new transactions.
    more, more_failed, _ = trio.run(drive, genesis, keys[2:], 60, False)
    assert (more, more_failed) == (60, 0)
    after = trio.run(heights, genesis, [0, 1, 2])
    assert min(after.values()) > min(before.values())

    # Restarted, n4 reopens its store intact: it serves status at least at the height it had
    # durably reached (it then catches up by state transfer), and its ledger verifies.
    n4 = network.homes[3]
    killed_height = len(block_hashes(n4, genesis)) - 1
    network.start("n4")
    deadline = time.monotonic() + 20
    while True:
        try:
            status = trio.run(heights, genesis, [3])
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert status[3] >= killed_height
    network.stop()
    result = cli("ledger", "verify", "--home", str(n4))
    assert result.returncode == 0, result.stderr + result.stdout
    survivors = block_hashes(network.homes[0], genesis)
    mine = block_hashes(n4, genesis)
    assert len(mine) >= killed_height + 1
    assert mine == survivors[: len(mine)]


def test_the_cli_submits_reads_and_shows_status(network: LocalNetwork) -> None:
    net = str(network.directory)
    put = cli("tx", "submit", "put", "greeting", "hello", "--net", net)
    assert put.returncode == 0, put.stdout + put.stderr
    assert "status    committed" in put.stdout
    assert "confirmed by" in put.stdout
    get = cli("tx", "submit", "get", "greeting", "--net", net, "--json")
    assert get.returncode == 0, get.stdout + get.stderr
    assert '"hello"' in get.stdout
    cas = cli("tx", "submit", "cas", "greeting", "nope", "x", "--net", net)
    assert cas.returncode == 0  # ordered and committed, with a rejected receipt
    assert "cas_mismatch" in cas.stdout
    read = cli("read", "greeting", "--net", net)
    assert read.returncode == 0 and read.stdout.strip() == "hello", read.stdout + read.stderr
    status = cli("status", "--net", net)
    assert status.returncode == 0, status.stdout + status.stderr
    lines = status.stdout.splitlines()
    assert "n=4 f=1: 4 of 4 up" in lines[0]
    for name in ("n1", "n2", "n3", "n4"):
        assert any(line.startswith(name) for line in lines)
    network.kill("n3")
    status = cli("status", "--net", net)
    assert "3 of 4 up, tolerates 0 more" in status.stdout
    assert "unreachable" in status.stdout
    usage = cli("tx", "submit", "put", "only-a-key", "--net", net)
    assert usage.returncode == 2 and "usage" in usage.stderr


def test_a_second_start_of_a_running_member_refuses_and_the_first_keeps_committing(
    network: LocalNetwork,
) -> None:
    n2 = network.homes[1]
    running = network.procs["n2"].pid
    second = cli("node", "start", "--home", str(n2), timeout=30)
    assert second.returncode != 0
    assert second.stderr.strip() == (
        f"error: {n2 / 'data'} is in use by process {running} (another `node start` of n2?); "
        "stop it first"
    )
    assert network.procs["n2"].poll() is None  # the first one runs on
    setup = load_client_setup(network.directory)
    genesis = setup.genesis
    before = trio.run(heights, genesis, [1])[1]
    committed, failed, _ = trio.run(drive, genesis, setup.keys(), 60, False)
    assert (committed, failed) == (60, 0)
    assert trio.run(wait_same_height, genesis, [0, 1, 2, 3], 20.0) > before
    assert network.dead() == []


def wait_for_text(path: Path, text: str, proc: subprocess.Popen[bytes], timeout_s: float) -> str:
    """The content of `path` once it holds `text` (or the process has ended, or time is up)."""
    deadline = time.monotonic() + timeout_s
    while True:
        content = path.read_text()
        if text in content or proc.poll() is not None or time.monotonic() > deadline:
            return content
        time.sleep(0.1)


def test_up_says_when_each_member_is_ready_and_reports_one_that_fails_or_dies(
    tmp_path: Path,
) -> None:
    net = tmp_path / "net"
    init_network(net, members=4, clients=1)
    (net / "nodes" / "n2" / "config" / "node.toml").write_text("not toml [")
    out, err = tmp_path / "up.out", tmp_path / "up.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        up = subprocess.Popen(
            [sys.executable, "-m", "consortium", "up", "--net", str(net)],
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
        )
    try:
        shown = wait_for_text(out, "Ctrl-C stops all members.", up, 60.0)
        assert "started 3 of 4 members (n2 exited)" in shown, shown + err.read_text()
        for name in ("n1", "n3", "n4"):
            port = load_config(net / "nodes" / name).http_listen
            assert port is not None
            assert f"{name} ready: http 127.0.0.1:{port[1]} (ready: {name} at height" in shown
        assert "n2 ready" not in shown
        errors = err.read_text()
        assert "n2 exited with code 2; the end of its node.log:" in errors
        assert "not valid TOML" in errors
        # A member that dies later is reported too (its PID is in its data directory's lock).
        n3 = int((net / "nodes" / "n3" / "data" / "member.lock").read_text())
        os.kill(n3, signal.SIGKILL)
        assert "n3 exited with code -9" in wait_for_text(err, "n3 exited", up, 20.0)
        assert up.poll() is None  # two still run: up supervises on
        up.send_signal(signal.SIGINT)  # as Ctrl-C: every member stopped, in order
        assert up.wait(timeout=30) == 0
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    assert "stopped: n1 (0), n2 (2), n3 (-9), n4 (0)" in out.read_text()


def test_up_exits_non_zero_when_every_member_fails_to_start(tmp_path: Path) -> None:
    net = tmp_path / "net"
    init_network(net, members=3, clients=1, mode="raft")
    for home in node_homes(net):
        (home / "config" / "node.toml").write_text("not toml [")
    result = cli("up", "--net", str(net), timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    for name in ("n1", "n2", "n3"):
        assert f"{name} exited with code 2" in result.stderr
    assert "all members exited; none is running" in result.stderr
    assert "started" not in result.stdout
