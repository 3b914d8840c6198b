"""Member fakes for the client service: a FakeNode with what ClientService needs of a member
over a real BlockStore, `members` serving such nodes on real ClientServers on 127.0.0.1, and
a probe of the event loop. Shared by the member's tests (tests/node) and the client's follow
tests (tests/client), which follow these members."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from consortium.crypto.codec import unpack
from consortium.crypto.signing import Domain, Ed25519Signer
from consortium.ledger.block import Receipt
from consortium.ledger.certificates import SignedVote, block_signature_body
from consortium.ledger.genesis import Genesis
from consortium.ledger.store import BlockStore
from consortium.node.client_port import ClientConnection
from consortium.node.runtime import Node
from consortium.node.service import ClientService
from consortium.protocol.messages import encode_followed_block
from tests.ledger.chain_fixture import MEMBERS, ChainBuilder, make_genesis

GENESIS = make_genesis()
HOST = "127.0.0.1"


@dataclass
class _Config:
    tls_client: bool = False
    client_connections_per_source: int = 64


@dataclass
class FakeNode:
    """What ClientService needs of a member: its store, index, key, genesis, block hook."""

    me: int
    store: BlockStore
    genesis: Genesis = GENESIS
    config: _Config = field(default_factory=_Config)
    tls: Any = None
    client_listen: tuple[str, int] = (HOST, 0)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("test.follow"))
    listeners: list[Any] = field(default_factory=list)
    client_tls_status: Any = None
    client_port_events: Any = None

    def add_block_listener(self, listener: Any) -> None:
        self.listeners.append(listener)

    def first_receipt_bundle(self, tx_id: bytes) -> list[Any] | None:
        return None

    def leader_hint(self) -> int | None:
        return None  # (pbft: no member is the one to submit to)

    def expiry_now_ms(self) -> int:
        return int(time.time() * 1000)

    def own_block_signature(self, height: int) -> SignedVote:
        block_hash = self.store.block_hash_at(height)
        assert block_hash is not None
        body = block_signature_body(height, block_hash, self.me)
        return SignedVote(
            body, Ed25519Signer(MEMBERS[self.me]).sign(Domain.BLOCK, self.genesis.chain_id, body)
        )

    def append(self, builder: ChainBuilder, start: int) -> None:
        """Store builder's blocks from index `start`, and tell the listeners they are durable,
        as runtime does."""
        items = builder.blocks[start:]
        self.store.append_blocks(items)
        for block, _, _ in items:
            for listener in self.listeners:
                listener.durable(block, self.own_block_signature(block.height))


class ReceiptNode(FakeNode):
    """FakeNode with the real member's receipt lookups (runtime.Node)."""

    first_receipt_bundle = Node.first_receipt_bundle  # type: ignore[assignment]


def open_store(tmp_path: Path, name: str) -> BlockStore:
    return BlockStore.open(tmp_path / f"{name}.sqlite", GENESIS)


class TamperingService(ClientService):
    """Sends blocks whose receipts do not match their header (a lying member)."""

    def _block_frame(self, follow_id: int, height: int) -> bytes:
        stored = self.node.store.get_block(height)
        assert stored is not None
        block = stored.block
        receipts = tuple(
            Receipt(r.tx_id, "rejected", "forged", (), r.height, r.index) for r in block.receipts
        )
        vote = self.node.own_block_signature(height)
        return encode_followed_block(follow_id, block.header, receipts, vote)


@asynccontextmanager
async def members(
    tmp_path: Path, chains: list[ChainBuilder], services: list[type[ClientService]] | None = None
) -> AsyncIterator[tuple[list[FakeNode], dict[int, tuple[str, int]]]]:
    nodes = []
    addresses = {}
    try:
        async with trio.open_nursery() as nursery:
            for i, chain in enumerate(chains):
                node = FakeNode(i, open_store(tmp_path, f"m{i}"))
                nodes.append(node)
                node.append(chain, 0)
                service = (services or [ClientService] * len(chains))[i](node)  # type: ignore[arg-type]
                port = await nursery.start(service.run)
                addresses[i] = (HOST, port)
            try:
                yield nodes, addresses
            finally:
                nursery.cancel_scope.cancel()
    finally:
        # Only once the nursery has ended: a `block` read still running on a worker thread
        # (its task waits for it, cancelled or not) must not find its store closed under it,
        # which crashed the interpreter (as Node.run closes its store after its nursery).
        for node in nodes:
            node.store.close()


async def max_gap_while(work: object, period_s: float = 0.005) -> float:
    """Run `work` (an async callable) while a probe task sleeps `period_s` in a loop, as the
    core loop ticks; the most CPU time the process spent between two ticks of the probe: how
    long the work kept the event loop from the core (the loop frozen).

    CPU time, not wall time: on a loaded machine the process also waits for a core, which the
    wall clock counts though nothing here caused it (a 0.1 s wall gap failed at load average 8
    on 2 cores). Work done on the loop between two ticks costs the same CPU whatever the load,
    and the probe's sleep costs none. Every thread of the process counts, so work moved to a
    worker thread that holds the GIL is not hidden. The objects the test session made before
    are frozen meanwhile (gc.freeze): a full collection of that heap (~50 ms in a pytest
    worker) is not the work's doing, the collection of what the work allocates still counts."""
    gaps: list[float] = []

    async def probe(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            t = time.process_time()
            await trio.sleep(period_s)
            gaps.append(time.process_time() - t)

    gc.freeze()
    try:
        with trio.fail_after(60):  # a hang fails the test rather than hanging the run
            async with trio.open_nursery() as nursery:
                await nursery.start(probe)
                await trio.sleep(0.02)
                await work()  # type: ignore[operator]
                await trio.sleep(0.02)
                nursery.cancel_scope.cancel()
    finally:
        gc.unfreeze()
    return max(gaps)


def last_reply(conn: ClientConnection) -> list[object]:
    return unpack(conn._queue[-1])  # type: ignore[no-any-return]
