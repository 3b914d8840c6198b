"""Peer fakes: PeerNetworks run on port 0 over real sockets on 127.0.0.1, and what an operator
can observe of them. Shared by the peer transport's tests and the TLS tests."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from consortium.crypto.codec import unpack
from consortium.crypto.keys import KeyPair
from consortium.crypto.signing import Ed25519Signer, Ed25519Verifier
from consortium.ledger.genesis import Genesis
from consortium.node.transport import PeerNetwork
from consortium.protocol.framing import FrameReader
from tests.ledger.chain_fixture import MEMBERS, make_genesis

GENESIS = make_genesis()
HOST = "127.0.0.1"
NOWHERE = (HOST, 1)  # nothing listens there: connection refused at once
STRANGER = KeyPair.from_seed(hashlib.sha256(b"not a member").digest())


class Members:
    """Runs PeerNetworks on port 0, each in its own cancel scope, and tells each the others'
    ports as they become known (so a member can be stopped and restarted on its port)."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.nets: dict[int, PeerNetwork] = {}
        self.ports: dict[int, int] = {}
        self._scopes: dict[int, trio.CancelScope] = {}

    async def start(
        self,
        i: int,
        *,
        genesis: Genesis = GENESIS,
        keys: KeyPair | None = None,
        port: int = 0,
        **options: Any,
    ) -> PeerNetwork:
        net = PeerNetwork(
            genesis,
            i,
            Ed25519Signer(keys or MEMBERS[i]),
            Ed25519Verifier(),
            listen=(HOST, port),
            peer_addresses={
                j: (HOST, self.ports[j]) if j in self.ports else NOWHERE
                for j in range(genesis.n)
                if j != i
            },
            frame_bytes_max=options.pop("frame_bytes_max", 1 << 20),
            **options,
        )
        await self._nursery.start(self._run, i, net)
        self.nets[i] = net
        self.ports[i] = net.listen_port
        for j, other in self.nets.items():
            if j != i:
                other.set_peer_address(i, (HOST, net.listen_port))
        return net

    async def _run(self, i: int, net: PeerNetwork, *, task_status: trio.TaskStatus[None]) -> None:
        with trio.CancelScope() as scope:
            self._scopes[i] = scope
            await net.run(task_status=task_status)

    def stop(self, i: int) -> None:
        self._scopes.pop(i).cancel()
        del self.nets[i]


@asynccontextmanager
async def members() -> AsyncIterator[Members]:
    async with trio.open_nursery() as nursery:
        yield Members(nursery)
        nursery.cancel_scope.cancel()


async def until(predicate: Callable[[], bool]) -> None:
    """Poll what an operator can observe; callers bound it with fail_after."""
    while not predicate():  # noqa: ASYNC110 (no event to wait for: operators poll too)
        await trio.sleep(0.01)


def linked(nets: list[PeerNetwork]) -> Callable[[], bool]:
    """Every net's outbound and inbound connection to every other net in `nets` is up."""
    indices = {n.me for n in nets}

    def check() -> bool:
        for n in nets:
            for p in n.peer_status():
                if p["index"] in indices and not (
                    p["outbound_connected"] and p["inbound_connected"]
                ):
                    return False
        return True

    return check


async def receive_until(net: PeerNetwork, wanted: set[tuple[int, bytes]]) -> None:
    """Receive until every wanted (sender, body) arrived; other frames are skipped."""
    missing = set(wanted)
    while missing:
        sender, body = await net.inbound.receive()
        net.consumed(body)
        missing.discard((sender, body))


async def exchange(nets: list[PeerNetwork]) -> None:
    """Every net broadcasts a fresh token; each other net gets it, from the right sender."""
    await until(linked(nets))
    token = secrets.token_hex(4).encode()
    for n in nets:
        n.broadcast(b"%d:%s" % (n.me, token))
    for n in nets:
        await receive_until(n, {(m.me, b"%d:%s" % (m.me, token)) for m in nets if m is not n})


async def closed_by_peer(stream: trio.SocketStream) -> list[Any]:
    """Read until the other side closes; what it sent before, decoded."""
    got: list[Any] = []
    reader = FrameReader(stream, 1 << 16)
    try:
        while (frame := await reader.read()) is not None:
            got.append(unpack(frame))
    except trio.BrokenResourceError:
        pass
    return got
