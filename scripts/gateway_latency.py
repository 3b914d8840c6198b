"""One transaction at a time through the HTTP/JSON gateways against the native client port, on
the same 4-member pbft network of real processes on loopback (docs/gateway.md, "Clients"):

    .venv/bin/python scripts/gateway_latency.py [--txs 200]

Each transaction is signed, submitted, and decided by f+1 distinct members' verified receipt
bundles; the time is from the submit call to the decision. The Python gateway client
(consortium/client/gateway.py) is used, with its one thread and HTTP/1.1 keep-alive connection
per member; the native client is SyncClient. Prints p50 and p99 of each, in ms.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import trio

from consortium.cli.demo import wait_until_up
from consortium.cli.network import LocalNetwork, init_network, load_client_setup
from consortium.client.gateway import GatewayClient, load_gateways
from consortium.client.sync import SyncClient
from consortium.ledger.tx import Put, Transaction


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--txs", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gateway-latency-") as tmp:
        directory = Path(tmp) / "net"
        init_network(directory, members=4, clients=1, gateway=True)
        setup = load_client_setup(directory)
        genesis, key = setup.genesis, setup.keys()[0]
        net = LocalNetwork(directory, log_level="warning")
        net.start()
        try:
            trio.run(wait_until_up, genesis, 30.0)
            gateway = GatewayClient(genesis, load_gateways(directory / "gateways.json", genesis))
            expiry = int(time.time() * 1000) + 600_000
            times: dict[str, list[float]] = {"gateway": [], "native": []}
            with SyncClient(genesis, key) as native:
                for i in range(2 * args.txs):
                    route = "gateway" if i % 2 == 0 else "native"  # interleaved: same conditions
                    tx = Transaction.create(
                        key, genesis.chain_id, b"%016d" % i, expiry, [Put(b"k%d" % i, b"v")]
                    )
                    started = time.perf_counter()
                    if route == "gateway":
                        outcome = gateway.submit(tx, timeout_s=30.0)
                    else:
                        [outcome] = native.submit_and_wait([tx], timeout_s=30.0)
                    assert outcome.status == "committed", (route, outcome)
                    times[route].append(time.perf_counter() - started)
        finally:
            net.stop()
    for route, values in times.items():
        p50, p99 = (_percentile(values, q) * 1000 for q in (0.5, 0.99))
        print(f"{route:8} {len(values)} one at a time: p50 {p50:.1f} ms, p99 {p99:.1f} ms")


if __name__ == "__main__":
    main()
