"""Health, readiness, metrics and status on real member processes over loopback: a 4-member
pbft network started by the CLI's own code with the HTTP listener `consortium init` writes.
Scraped while healthy; then two members are killed and the survivors' /readyz turns 503 with a
"no quorum" reason naming them, and `consortium status --json` gives the fault budget."""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path

import pytest
import trio

from consortium.cli.demo import wait_until_up
from consortium.cli.network import LocalNetwork, init_network, load_client_setup
from consortium.ledger.genesis import Params
from consortium.node.config import load_config
from tests.e2e.procs import cli
from tests.e2e.test_faults import submit
from tests.node.exposition import parse

pytestmark = pytest.mark.e2e


def http_get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        reply = conn.getresponse()
        return reply.status, reply.read().decode()
    finally:
        conn.close()


def wait_for(port: int, path: str, status: int, timeout_s: float = 20.0) -> str:
    deadline = time.monotonic() + timeout_s
    last: tuple[int, str] = (0, "")
    while time.monotonic() < deadline:
        last = http_get(port, path)
        if last[0] == status:
            return last[1]
        time.sleep(0.2)
    raise AssertionError(f"{path} stayed {last[0]}, not {status}: {last[1]}")


def sample(families: dict[str, object], name: str, **labels: str) -> float:
    base = name
    for suffix in ("_count", "_sum", "_bucket"):
        if name not in families and name.endswith(suffix):
            base = name.removesuffix(suffix)
    family = families[base]
    total = 0.0
    for sample_name, sample_labels, value in family.samples:  # type: ignore[attr-defined]
        if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items()):
            total += value
    return total


def test_readiness_metrics_and_status_as_members_die(tmp_path: Path) -> None:
    directory = tmp_path / "net"
    init_network(directory, members=4, clients=1, params=Params(request_timeout_ms=1000))
    network = LocalNetwork(directory)
    setup = load_client_setup(directory)
    genesis = setup.genesis
    port = {home.name: load_config(home).http_listen[1] for home in network.homes}  # type: ignore[index]
    net = str(directory)
    network.start()
    try:
        trio.run(wait_until_up, genesis, 30.0)
        committed = trio.run(submit, genesis, setup.keys()[0], 100, "obs")
        assert len(committed) == 100
        for name, member_port in port.items():
            assert http_get(member_port, "/healthz")[0] == 200
            body = wait_for(member_port, "/readyz", 200)
            assert body.startswith(f"ready: {name}") and "n=4 f=1: 4 of 4 up" in body

        families = parse(http_get(port["n2"], "/metrics")[1])
        assert sample(families, "consortium_blocks_committed_total") >= 1
        assert sample(families, "consortium_txs_committed_total") == 100
        assert sample(families, "consortium_batch_txs_count") >= 1
        assert sample(families, "consortium_batch_txs_sum") == 100
        assert sample(families, "consortium_fsync_seconds_count") >= 1
        assert sample(families, "consortium_commit_latency_seconds_count") >= 1
        assert sample(families, "consortium_messages_sent_total", kind="prepare") >= 1
        assert sample(families, "consortium_messages_received_total", kind="commit") >= 1
        assert sample(families, "consortium_signature_verifications_total", kind="client") >= 1
        assert sample(families, "consortium_signature_verify_seconds_count", kind="protocol") >= 1
        assert sample(families, "consortium_peer_connected", peer="n1", direction="outbound") == 1
        assert sample(families, "consortium_ready") == 1
        assert sample(families, "consortium_is_primary") == 0  # n1 is the primary of view 0

        network.kill("n4")
        shown = json.loads(cli("status", "--json", "--net", net).stdout)
        assert shown["network"]["fault_budget"] == "n=4 f=1: 3 of 4 up, tolerates 0 more"
        assert shown["network"]["unreachable"] == ["n4"]
        assert shown["members"][3]["unreachable"] is True

        network.kill("n3")
        body = wait_for(port["n1"], "/readyz", 503)
        assert "no quorum: n3 and n4 unreachable" in body, body
        assert http_get(port["n1"], "/healthz")[0] == 200  # alive, just not ready
        families = parse(http_get(port["n1"], "/metrics")[1])
        assert sample(families, "consortium_ready") == 0
        assert sample(families, "consortium_peer_connected", peer="n3", direction="outbound") == 0

        result = cli("status", "--json", "--net", net)
        assert result.returncode == 0, result.stderr
        shown = json.loads(result.stdout)
        assert shown["network"]["fault_budget"].startswith(
            "n=4 f=1: 2 of 4 up, no quorum (3 needed)"
        )
        assert shown["network"]["unreachable"] == ["n3", "n4"]
        assert "no quorum: n3 and n4 unreachable" in shown["network"]["not_ready"]["n1"]
        n1 = shown["members"][0]
        assert n1["peer_state"]["n3"]["state"] == "unreachable"

        one = cli("status", "--member", "n2", "--net", net)
        assert one.returncode == 0, one.stderr
        assert "NOT READY:" in one.stdout and "no quorum: n3 and n4 unreachable" in one.stdout
        assert "n=4 f=1: 2 of 4 up" in one.stdout
        dead = cli("status", "--member", "n3", "--net", net)
        assert dead.returncode == 1 and "unreachable" in dead.stdout
        table = cli("status", "--watch", "--every", "0.2", "--count", "2", "--net", net)
        assert table.returncode == 0, table.stderr
        assert table.stdout.count("n=4 f=1: 2 of 4 up") == 2
    finally:
        network.stop()
