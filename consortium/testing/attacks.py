"""Attacks on the client port by a stranger with no key, and the honest load they are measured
against (tests/e2e/test_attacks.py asserts on them; scripts/attack_figures.py prints the table in
docs/operations.md, "Client port attacks").

Each attack runs as its own process (`python -m consortium.testing.attacks KIND --net DIR`),
at a fixed rate, against every member's client port, and stops by itself after --seconds:

- blocks: every 1/rate s per member, a new connection writes BLOCK_REQUESTS pipelined `block`
  requests for one (big) height in one write, reads what comes for a second, and closes.
- idle:   rate = connections held open per member, each sending nothing; one the member closes
  is opened again a second later. Spread over IDLE_SOURCES loopback addresses (127.0.0.2 …), as
  from many hosts, so the per-address cap alone does not stop it; with more than the member's
  1,024 connections in all, every slot is the attacker's unless the member evicts. The honest
  load then opens a new client (new connections) for every batch (honest_load `fresh`): a
  client that connected before the attack proves nothing about the slots.
- flood:  rate = badly signed transactions a second per member (an admitted client's key, a
  random signature), FLOOD_BATCH per submit, over FLOOD_CONNECTIONS connections per member from
  each of FLOOD_SOURCES addresses (each opened again when the member closes it); replies are
  read and dropped.

run_scenario() drives a started network: honest load at a fixed rate, the attack in the
middle, then the attack again while every member is sent SIGTERM; its figures are measured
from the client side (a transaction counts when committed with its confirmations: f+1 receipts
in pbft).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from consortium.client.client import ConsortiumClient
from consortium.client.errors import ClientError
from consortium.crypto.codec import pack
from consortium.crypto.keys import KeyPair
from consortium.ledger.genesis import Genesis
from consortium.ledger.tx import Put, Transaction, op_to_array
from consortium.protocol.framing import encode_frames
from consortium.protocol.messages import BlockRequest, encode_request

ATTACKS = ("blocks", "idle", "flood")
BLOCK_REQUESTS = 3000
IDLE_SOURCES = 20  # 60 connections each at 1,200: under the per-address cap of 64
FLOOD_BATCH = 100
TICK_S = 0.1  # the honest load and the flood send every TICK_S
FLOOD_CONNECTIONS = 60  # flood connections per member and address (the cap is 64 per address)
FLOOD_SOURCES = 4  # ...from this many loopback addresses (127.0.0.1 …, the honest clients' first)
# Honest batches awaiting their outcome; a tick beyond it is skipped. Small (a second of
# load), so a stall of the member shows as a gap in the commits rather than as a backlog that
# commits later and averages out.
HONEST_IN_FLIGHT_MAX = 10


def _split(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)


async def _drain(stream: trio.SocketStream) -> None:
    """Read and drop until the member closes the connection."""
    try:
        while await stream.receive_some(1 << 16):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


async def _blocks(address: tuple[str, int], height: int, rate: float) -> None:
    frames = encode_frames(
        encode_request(BlockRequest(i, height)) for i in range(1, BLOCK_REQUESTS + 1)
    )

    async def once() -> None:
        try:
            stream = await trio.open_tcp_stream(*address)
        except OSError:
            return
        async with stream:
            with trio.move_on_after(1.0):
                try:
                    await stream.send_all(frames)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    return
                await _drain(stream)

    async with trio.open_nursery() as nursery:
        while True:
            nursery.start_soon(once)  # each lasts at most about a second: a bounded number
            await trio.sleep(1 / rate)


async def _idle(address: tuple[str, int], count: int) -> None:
    async def hold(source: str) -> None:
        while True:
            try:
                stream = await trio.open_tcp_stream(*address, local_address=source)
            except OSError:
                await trio.sleep(1.0)
                continue
            async with stream:
                await _drain(stream)
            await trio.sleep(1.0)

    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(hold, f"127.0.0.{2 + i % IDLE_SOURCES}")


def bad_transactions(genesis: Genesis, key: bytes, start: int, count: int) -> list[list[bytes]]:
    """`count` transactions in `key`'s name (an admitted client's public key: anyone can read
    it in genesis) with random signatures: each one costs a member a signature check."""
    expiry = int(time.time() * 1000) + 60_000
    op = [op_to_array(Put(b"flood", b""))]
    return [
        [pack([genesis.chain_id, key, b"%016d" % (start + i), expiry, op]), os.urandom(64)]
        for i in range(count)
    ]


async def _flood(genesis: Genesis, address: tuple[str, int], rate: float, source: str) -> None:
    key = genesis.clients[0].public_key if genesis.clients else genesis.members[0].public_key
    sent = 0
    per_tick = max(1, round(rate * TICK_S))
    while True:
        try:
            stream = await trio.open_tcp_stream(*address, local_address=source)
        except OSError:
            await trio.sleep(0.1)
            continue
        async with stream, trio.open_nursery() as nursery:
            nursery.start_soon(_drain, stream)
            try:
                while True:
                    txs: list[Any] = []
                    for j in range(0, per_tick, FLOOD_BATCH):
                        batch = bad_transactions(genesis, key, sent, min(FLOOD_BATCH, per_tick - j))
                        sent += len(batch)
                        txs.append(pack(["submit", sent, batch]))
                    deadline = trio.current_time() + TICK_S
                    await stream.send_all(encode_frames(txs))
                    await trio.sleep_until(deadline)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            nursery.cancel_scope.cancel()
        await trio.sleep(0.1)


async def attack(genesis: Genesis, kind: str, rate: float, seconds: float, height: int) -> None:
    addresses = [_split(m.client_address) for m in genesis.members]
    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for address in addresses:
                if kind == "blocks":
                    nursery.start_soon(_blocks, address, height, rate)
                elif kind == "idle":
                    nursery.start_soon(_idle, address, int(rate))
                else:
                    # Many connections, as a stranger would: one request in progress per
                    # connection, so one connection alone could never crowd anyone out.
                    count = FLOOD_CONNECTIONS * FLOOD_SOURCES
                    for i in range(count):
                        source = f"127.0.0.{1 + i % FLOOD_SOURCES}"
                        nursery.start_soon(_flood, genesis, address, rate / count, source)


def attack_process(
    directory: Path, kind: str, rate: float, seconds: float, height: int = 1
) -> subprocess.Popen[bytes]:
    """Start the attack as its own process; it stops by itself after `seconds`."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "consortium.testing.attacks",
            kind,
            "--net",
            str(directory),
            "--rate",
            str(rate),
            "--seconds",
            str(seconds),
            "--height",
            str(height),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def main(argv: Sequence[str] | None = None) -> int:
    from consortium.cli.network import load_client_setup

    parser = argparse.ArgumentParser(prog="python -m consortium.testing.attacks")
    parser.add_argument("kind", choices=ATTACKS)
    parser.add_argument("--net", type=Path, required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--height", type=int, default=1)
    args = parser.parse_args(argv)
    genesis = load_client_setup(args.net).genesis
    trio.run(attack, genesis, args.kind, args.rate, args.seconds, args.height)
    return 0


def commit_big_blocks(directory: Path) -> int:
    """Commit about 1.5 MB of transactions (the `block` attack's target); the height of the
    last block that holds them. AssertionError unless all commit."""
    from consortium.cli.network import load_client_setup

    setup = load_client_setup(directory)
    key = setup.keys()[0]
    expiry = int(time.time() * 1000) + 600_000

    async def main() -> int:
        txs = [
            Transaction.create(
                key,
                setup.genesis.chain_id,
                b"big%013d" % i,
                expiry,
                [Put(b"big%05d" % i, bytes([i]) * 30_000)],
            )
            for i in range(50)
        ]
        async with ConsortiumClient(setup.genesis, key) as client:
            outcomes = await client.submit_and_wait(txs, timeout_s=30)
        assert all(o.status == "committed" for o in outcomes), outcomes
        return max(o.height or 0 for o in outcomes)

    return trio.run(main)


# --- the honest side ------------------------------------------------------------------------


@dataclass
class Load:
    """Commit times (trio clock) of an honest load, and what it could not send."""

    committed: list[float] = field(default_factory=list)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (sent, latency)
    failed: int = 0
    skipped_ticks: int = 0

    def rate(self, start: float, end: float) -> float:
        return sum(1 for t in self.committed if start <= t < end) / (end - start)

    def min_rate(self, start: float, end: float, window: float = 1.0) -> float:
        """The lowest commit rate over `window` s within [start, end), in steps of 0.25 s."""
        rates = [
            self.rate(start + k * 0.25, start + k * 0.25 + window)
            for k in range(int((end - start - window) / 0.25) + 1)
        ]
        return min(rates, default=0.0)

    def p95_latency(self, start: float, end: float) -> float:
        """95th percentile of submit-to-decided for batches sent in [start, end); inf when
        none was decided."""
        got = sorted(lat for sent, lat in self.latencies if start <= sent < end)
        return got[int(0.95 * (len(got) - 1))] if got else float("inf")


async def honest_load(
    genesis: Genesis,
    keys: list[KeyPair],
    rate: float,
    load: Load,
    timeout_s: float = 30.0,
    fresh: bool = False,
) -> None:
    """Submit `rate` transactions a second (each TICK_S a batch, round-robin over `keys`)
    until cancelled, recording when each commits. `fresh`: each batch through a new client
    (its own new connections to every member), closed once the batch is decided."""
    per_tick = max(1, round(rate * TICK_S))
    expiry = int(time.time() * 1000) + 3_600_000
    in_flight = 0
    tx_n = 0

    async def batch(client: ConsortiumClient, key: KeyPair, txs: list[Transaction]) -> None:
        nonlocal in_flight
        sent = trio.current_time()
        try:
            if fresh:
                async with ConsortiumClient(genesis, key, retransmit_s=2.0) as new:
                    outcomes = await new.submit_and_wait(txs, timeout_s=timeout_s)
            else:
                outcomes = await client.submit_and_wait(txs, timeout_s=timeout_s)
            for outcome in outcomes:
                if outcome.status == "committed" and outcome.decided_at is not None:
                    load.committed.append(outcome.decided_at)
                    load.latencies.append((sent, outcome.decided_at - sent))
                else:
                    load.failed += 1
        except ClientError:  # e.g. no member took the new client's connections
            load.failed += len(txs)
        finally:
            in_flight -= 1

    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(ConsortiumClient(genesis, key, retransmit_s=2.0))
            for key in keys
        ]
        async with trio.open_nursery() as nursery:
            tick = 0
            next_at = trio.current_time()
            while True:
                if in_flight >= HONEST_IN_FLIGHT_MAX:
                    load.skipped_ticks += 1
                else:
                    k = tick % len(keys)
                    txs = []
                    for _ in range(per_tick):
                        tx_n += 1
                        txs.append(
                            Transaction.create(
                                keys[k],
                                genesis.chain_id,
                                b"h%015d" % tx_n,
                                expiry,
                                [Put(b"honest%08d" % tx_n, b"v" * 32)],
                            )
                        )
                    in_flight += 1
                    nursery.start_soon(batch, clients[k], keys[k], txs)
                tick += 1
                next_at += TICK_S
                await trio.sleep_until(next_at)


async def _client_port_events(genesis: Genesis, key: KeyPair) -> dict[str, int]:
    """The members' client port counters, summed (evidence that the attack reached them)."""
    total: dict[str, int] = {}
    async with ConsortiumClient(genesis, key) as client:
        for i in range(genesis.n):
            try:
                doc = await client.status(i, 5.0)
            except Exception:  # a member that does not answer adds nothing
                continue
            for event, count in dict(doc.get("client_port", {})).items():
                total[event] = total.get(event, 0) + int(count)
    return total


@dataclass
class Figures:
    kind: str
    mode: str
    attack_rate: float
    honest_rate: float
    before: float = 0.0
    during: float = 0.0
    after: float = 0.0
    during_min: float = 0.0  # the lowest 1-s honest commit rate during the attack
    p95_before_s: float = 0.0  # honest submit-to-commit latency, 95th percentile
    p95_during_s: float = 0.0
    bad_signatures_per_s: float = 0.0  # checked (and failed) per member, over the attack
    back_to_speed_s: float | None = None
    sigterm_s: float = 0.0
    not_stopped: list[str] = field(default_factory=list)
    events: dict[str, int] = field(default_factory=dict)  # client port counters, all members

    @property
    def baseline(self) -> float:
        """The rate before, as "during" and "after" are judged against it: at most the rate
        the honest clients offer. A window before can count more (batches that waited while
        the clients connected commit in it: 443 tx/s of a 350 tx/s load on a loaded CI
        machine), and no later window can reach that with nothing left waiting."""
        return min(self.before, self.honest_rate)


BEFORE_S = 5.0
ATTACK_S = 8.0
AFTER_S = 6.0
RECOVERED_FRACTION = 0.8  # "full speed": at least this fraction of the rate before


async def scenario(
    directory: Path,
    genesis: Genesis,
    keys: list[KeyPair],
    procs: dict[str, subprocess.Popen[bytes]],
    kind: str,
    attack_rate: float,
    honest_rate: float,
    height: int = 1,
) -> Figures:
    """Honest load for BEFORE_S, then with the attack for ATTACK_S, then AFTER_S without; then
    the attack again and SIGTERM to every member: how long until the last one exits."""
    figures = Figures(kind, genesis.mode, attack_rate, honest_rate)
    load = Load()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(honest_load, genesis, keys, honest_rate, load, 30.0, kind == "idle")
        t0 = trio.current_time()
        await trio.sleep(BEFORE_S)
        attacker = attack_process(directory, kind, attack_rate, ATTACK_S, height)
        try:
            await trio.sleep(ATTACK_S)
        finally:
            attacker.kill()
            attacker.wait()
        t_end = trio.current_time()
        await trio.sleep(AFTER_S)
        nursery.cancel_scope.cancel()
    # (from t0 + 2 s: the first second's batches commit late, while the clients connect, and
    # counted in the window they overstated the rate before)
    figures.before = load.rate(t0 + 2.0, t0 + BEFORE_S)
    figures.during = load.rate(t0 + BEFORE_S + 1.0, t_end)
    figures.during_min = load.min_rate(t0 + BEFORE_S + 1.0, t_end)
    figures.p95_before_s = load.p95_latency(t0 + 2.0, t0 + BEFORE_S)
    figures.p95_during_s = load.p95_latency(t0 + BEFORE_S + 1.0, t_end - 1.0)
    figures.after = load.rate(t_end + 2.0, t_end + 5.0)
    step = 0.25
    for k in range(int((AFTER_S - 1.0) / step) + 1):
        at = t_end + k * step
        if load.rate(at, at + 1.0) >= RECOVERED_FRACTION * figures.baseline:
            figures.back_to_speed_s = k * step
            break
    figures.events = await _client_port_events(genesis, keys[0])
    figures.bad_signatures_per_s = figures.events.get("bad_signatures", 0) / genesis.n / ATTACK_S
    # SIGTERM during the attack.
    attacker = attack_process(directory, kind, attack_rate, 30.0, height)
    try:
        await trio.sleep(2.0)
        started = time.monotonic()
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = started + 10.0
        # Polled: the members are other processes' children of ours, with nothing to wait on
        # in trio but their exit status.
        for _ in range(500):
            if time.monotonic() >= deadline or all(p.poll() is not None for p in procs.values()):
                break
            await trio.sleep(0.02)
        figures.sigterm_s = time.monotonic() - started
        figures.not_stopped = [n for n, p in procs.items() if p.poll() is None]
    finally:
        attacker.kill()
        attacker.wait()
    return figures


if __name__ == "__main__":
    raise SystemExit(main())
