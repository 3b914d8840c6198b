"""TLS on every port, with real member processes over loopback: the same agreement and audit as
without it, and a member left without TLS is explained in the status and logs of both sides."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from consortium.cli.bench import _leader
from consortium.cli.demo import wait_same_height, wait_until_up
from consortium.cli.network import LocalNetwork, init_network, load_client_setup
from consortium.client import ClientError, ConsortiumClient
from consortium.crypto.keys import KeyPair
from consortium.ledger.genesis import Genesis, Mode, Params
from consortium.ledger.store import BlockStore
from consortium.ledger.tx import Put
from tests.e2e.procs import cli

pytestmark = pytest.mark.e2e


def block_hashes(home: Path, genesis: Genesis) -> list[bytes | None]:
    store = BlockStore.open(home / "data" / "ledger.sqlite", genesis)
    try:
        return [store.block_hash_at(h) for h in range(store.height + 1)]
    finally:
        store.close()


async def submit_all(genesis: Genesis, keys: list[KeyPair], per_client: int) -> int:
    """Every client submits `per_client` transactions over TLS; how many committed."""
    committed = 0

    async def one(ci: int, k: KeyPair) -> None:
        nonlocal committed
        async with ConsortiumClient(genesis, k, tls_keys=k, connect_timeout_s=5) as client:
            for start in range(0, per_client, 50):
                txs = [
                    client.make_tx([Put(b"c%d/k%d" % (ci, start + j), b"v")])
                    for j in range(min(50, per_client - start))
                ]
                for outcome in await client.submit_and_wait(txs, timeout_s=30):
                    committed += outcome.status == "committed"

    async with trio.open_nursery() as nursery:
        for ci, k in enumerate(keys):
            nursery.start_soon(one, ci, k)
    return committed


async def plain_status(genesis: Genesis) -> str:
    async with ConsortiumClient(genesis, connect_timeout_s=2) as client:
        try:
            await client.status(0, timeout_s=3)
        except ClientError as exc:
            return str(exc)
    return "answered without TLS"


@pytest.mark.parametrize(("mode", "members"), [("pbft", 4), ("raft", 3)])
def test_a_tls_network_commits_into_identical_ledgers_that_verify(
    tmp_path: Path, mode: Mode, members: int
) -> None:
    directory = tmp_path / "net"
    init_network(
        directory,
        members=members,
        clients=3,
        mode=mode,
        params=Params(request_timeout_ms=2000),
        tls=True,
    )
    setup = load_client_setup(directory)
    genesis, keys, options = setup.genesis, setup.keys(), setup.client_options()
    with LocalNetwork(directory) as net:
        net.start()
        trio.run(wait_until_up, genesis, 30.0, options)
        trio.run(_leader, genesis, options)
        assert trio.run(submit_all, genesis, keys[:2], 150) == 300
        # The CLI finds TLS in client.toml.
        result = cli("tx", "submit", "put", "hello", "tls", "--net", str(directory))
        assert result.returncode == 0, result.stderr + result.stdout
        status = cli("status", "--net", str(directory), "--json")
        assert status.returncode == 0, status.stderr
        for doc in json.loads(status.stdout)["members"]:
            assert doc["tls"]["peer"] is True and doc["tls"]["client"] is True, doc["tls"]
            assert all(p["outbound_connected"] and p["tls"] for p in doc["peers"])
            assert doc["transport"].get("handshake_tls_failed", 0) == 0
        # A client without TLS is told what to change, not left hanging.
        assert "requires TLS on its client port" in trio.run(plain_status, genesis)
        height = trio.run(wait_same_height, genesis, list(range(members)), 20.0, options)
        assert height >= 1
        net.stop()
        chains = [block_hashes(home, genesis) for home in net.homes]
        assert len(chains[0]) == height + 1 and None not in chains[0]
        assert all(chain == chains[0] for chain in chains[1:])
        for home in net.homes:
            result = cli("ledger", "verify", "--home", str(home))
            assert result.returncode == 0, result.stderr + result.stdout


def test_a_member_without_tls_among_tls_members_is_explained_on_both_sides(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "net"
    init_network(directory, members=4, clients=1, tls=True)
    toml = directory / "nodes" / "n4" / "config" / "node.toml"
    toml.write_text(toml.read_text().replace("peer = true", "peer = false"))
    setup = load_client_setup(directory)
    genesis, options = setup.genesis, setup.client_options()

    def explained(statuses: list[dict[str, Any]]) -> bool:
        n1, n4 = statuses[0], statuses[3]
        return (
            "requires TLS" in str(n4.get("peers", [{}])[0].get("last_error"))
            and "n4 dialed without TLS" in str(n1.get("tls", {}).get("last_mismatch"))
            and "answered without TLS" in str(n1.get("peers", [{}] * 3)[2].get("last_error"))
        )

    with LocalNetwork(directory) as net:
        net.start()
        trio.run(wait_until_up, genesis, 30.0, options)
        for _ in range(100):
            status = cli("status", "--net", str(directory), "--json")
            docs = json.loads(status.stdout)["members"]
            if explained(docs):
                break
            time.sleep(0.1)
        assert explained(docs), json.dumps(docs, indent=1)[:4000]
        assert docs[0]["tls"]["peer"] is True and docs[3]["tls"]["peer"] is False
        net.stop()
    n1_log = (directory / "nodes" / "n1" / "node.log").read_text()
    n4_log = (directory / "nodes" / "n4" / "node.log").read_text()
    assert "n4 dialed without TLS" in n1_log
    assert "requires TLS on its peer port" in n4_log
