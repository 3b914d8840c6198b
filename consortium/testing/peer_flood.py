"""TESTS ONLY: a stranger with no key floods every member's peer port with idle connections
(tests/e2e/test_peer_attacks.py; the figures in docs/operations.md, "Peer port limits"):

    python -m consortium.testing.peer_flood --net DIR [--connections 100] [--rate 100]
        [--sources 10] --seconds S

Per member it keeps up to `connections` connections open that send nothing, and opens them
(the first ones, and again each one the member closes) at a fixed `rate` a second, so the
churn a member sees is at most that rate whatever it does. They come from `sources` loopback
addresses, 127.0.0.1 (the address the members dial each other from) first, then 127.0.0.2 and
on, as from several hosts: with the defaults that is 10 connections per address, over the per
address limit, and 100 in all, over the global one, so both evictions fire. It stops by itself
after `seconds`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import trio

from consortium.ledger.genesis import Genesis

CONNECTIONS = 100  # held per member
RATE = 100.0  # connections opened a second per member (first opens and re-opens alike)
SOURCES = 10  # loopback addresses they come from


class _Pacer:
    """Hands out opening times RATE a second apart: a fixed rate, never a burst."""

    def __init__(self, rate: float) -> None:
        self.step = 1 / rate
        self.next_at = 0.0

    async def wait(self) -> None:
        now = trio.current_time()
        at = max(now, self.next_at)
        self.next_at = at + self.step
        await trio.sleep_until(at)


async def _hold(address: tuple[str, int], source: str, pacer: _Pacer) -> None:
    """One connection slot: open, send nothing, wait for the member to close it, again."""
    while True:
        await pacer.wait()
        try:
            stream = await trio.open_tcp_stream(*address, local_address=source)
        except OSError:  # the member is down (restarting): try again at the next turn
            continue
        async with stream:
            try:
                while await stream.receive_some(4096):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass


async def flood(
    genesis: Genesis, connections: int, rate: float, sources: int, seconds: float
) -> None:
    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for member in genesis.members:
                host, port = member.peer_address.rsplit(":", 1)
                pacer = _Pacer(rate)
                for i in range(connections):
                    source = f"127.0.0.{1 + i % sources}"
                    nursery.start_soon(_hold, (host, int(port)), source, pacer)


def main(argv: Sequence[str] | None = None) -> int:
    from consortium.cli.network import load_client_setup

    parser = argparse.ArgumentParser(prog="python -m consortium.testing.peer_flood")
    parser.add_argument("--net", type=Path, required=True)
    parser.add_argument("--connections", type=int, default=CONNECTIONS)
    parser.add_argument("--rate", type=float, default=RATE)
    parser.add_argument("--sources", type=int, default=SOURCES)
    parser.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args(argv)
    genesis = load_client_setup(args.net).genesis
    trio.run(flood, genesis, args.connections, args.rate, args.sources, args.seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
