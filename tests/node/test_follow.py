"""Following committed blocks: the member side (ClientService over a real BlockStore, real
ClientServers on 127.0.0.1) and the client side (ConsortiumClient.follow), in one process.

n = 4, f = 1: in pbft the client yields a block once f+1 = 2 members sent the same one.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from consortium.crypto.codec import unpack
from consortium.crypto.signing import Domain, Ed25519Signer, Ed25519Verifier
from consortium.ledger.block import Receipt
from consortium.ledger.certificates import SignedVote, block_signature_body
from consortium.ledger.genesis import Genesis
from consortium.ledger.store import BlockStore
from consortium.ledger.tx import Put
from consortium.node import api, follow
from consortium.node.client import ClientError, ConsortiumClient
from consortium.node.follow import CommittedBlock, Follower, FollowStream
from consortium.node.framing import FrameReader, encode_frames
from consortium.node.receipts import verify_receipt
from consortium.node.service import ClientService
from tests.ledger.chain_fixture import MEMBERS, ChainBuilder, make_genesis, vote

GENESIS = make_genesis()
HOST = "127.0.0.1"


def build_chain(blocks: int, *, salt: bytes = b"", txs_per_block: int = 3) -> ChainBuilder:
    builder = ChainBuilder(genesis=GENESIS)
    for h in range(blocks):
        builder.add(
            [builder.tx(Put(b"k%d-%d%s" % (h, i, salt), b"v")) for i in range(txs_per_block)]
        )
    return builder


@dataclass
class _Config:
    tls_client: bool = False


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
    _on_block: list[Any] = field(default_factory=list)
    client_tls_status: Any = None

    def unwatch_connection(self, conn: object, tx_ids: set[bytes]) -> None:
        pass

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
        """Store builder's blocks from index `start`, and tell the hooks, as runtime does."""
        items = builder.blocks[start:]
        self.store.append_blocks(items)
        for block, _, _ in items:
            for hook in self._on_block:
                hook(block)


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
        return api.encode_followed_block(follow_id, block.header, receipts, vote)


@asynccontextmanager
async def members(
    tmp_path: Path, chains: list[ChainBuilder], services: list[type[ClientService]] | None = None
) -> AsyncIterator[tuple[list[FakeNode], dict[int, tuple[str, int]]]]:
    nodes = []
    addresses = {}
    async with trio.open_nursery() as nursery:
        for i, chain in enumerate(chains):
            node = FakeNode(i, open_store(tmp_path, f"m{i}"))
            node.append(chain, 0)
            service = (services or [ClientService] * len(chains))[i](node)  # type: ignore[arg-type]
            port = await nursery.start(service.run)
            addresses[i] = (HOST, port)
            nodes.append(node)
        try:
            yield nodes, addresses
        finally:
            nursery.cancel_scope.cancel()
            for node in nodes:
                node.store.close()


async def take(client: ConsortiumClient, from_height: int, count: int) -> list[CommittedBlock]:
    got: list[CommittedBlock] = []
    async with aclosing(client.follow(from_height, credit=4)) as blocks:
        async for block in blocks:
            got.append(block)
            if len(got) == count:
                break
    return got


async def _max_gap_while(work: object, period_s: float = 0.005) -> float:
    """Run `work` (an async callable) while a probe task sleeps `period_s` in a loop, as the
    core loop ticks; the longest the probe waited beyond its sleep (the event loop frozen)."""
    gaps: list[float] = []

    async def probe(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            t = time.perf_counter()
            await trio.sleep(period_s)
            gaps.append(time.perf_counter() - t - period_s)

    async with trio.open_nursery() as nursery:
        await nursery.start(probe)
        await trio.sleep(0.02)
        await work()  # type: ignore[operator]
        await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    return max(gaps)


def _last_reply(conn: api.ClientConnection) -> list[object]:
    return unpack(conn._queue[-1])  # type: ignore[no-any-return]


def _forked_blocks(salt: bytes, count: int, signer: int) -> list[api.FollowedBlock]:
    fork = build_chain(count, salt=salt, txs_per_block=1)
    out = []
    for block, _, _ in fork.blocks:
        body = block_signature_body(block.height, block.hash, signer)
        sig = vote(GENESIS, Domain.BLOCK, body, signer)
        out.append(api.FollowedBlock(0, block.header, block.receipts, sig))
    return out


# --- the wire --------------------------------------------------------------------------------


def test_follow_requests_and_blocks_round_trip_and_are_bounded() -> None:
    req = api.FollowRequest(5, 10, 64)
    assert api.decode_request(api.encode_request(req), 1 << 20) == req
    credit = api.CreditRequest(6, 5, 3)
    assert api.decode_request(api.encode_request(credit), 1 << 20) == credit
    stop = api.UnfollowRequest(7, 5)
    assert api.decode_request(api.encode_request(stop), 1 << 20) == stop
    for bad in (
        ["follow", 1, 0, 0],  # no credit
        ["follow", 1, 0, api.FOLLOW_CREDIT_MAX + 1],
        ["follow", 1, -1, 5],
        ["credit", 1, 0, 5],
    ):
        with pytest.raises(api.RequestError) as info:
            api.decode_request(api.pack(bad), 1 << 20)
        assert info.value.req_id == 1
    block = build_chain(1).blocks[0][0]
    vote = SignedVote(block_signature_body(1, block.hash, 2), b"s" * 64)
    frame = api.encode_followed_block(5, block.header, block.receipts, vote)
    decoded = api.decode_response(frame, 1 << 20)
    assert decoded == api.FollowedBlock(5, block.header, block.receipts, vote)


def test_verify_followed_checks_roots_and_the_senders_signature() -> None:
    block = build_chain(1).blocks[0][0]
    verifier = Ed25519Verifier()

    def followed(receipts: tuple[Receipt, ...], signer: int, as_member: int) -> api.FollowedBlock:
        body = block_signature_body(block.height, block.hash, as_member)
        sig = Ed25519Signer(MEMBERS[signer]).sign(Domain.BLOCK, GENESIS.chain_id, body)
        return api.FollowedBlock(1, block.header, receipts, SignedVote(body, sig))

    assert api.verify_followed(followed(block.receipts, 2, 2), GENESIS, verifier, 2) is None
    assert "not n2's" in str(
        api.verify_followed(followed(block.receipts, 2, 2), GENESIS, verifier, 1)
    )
    assert "bad block signature by n2" in str(
        api.verify_followed(followed(block.receipts, 3, 1), GENESIS, verifier, 1)
    )
    assert "tx root" in str(
        api.verify_followed(followed(block.receipts[:2], 2, 2), GENESIS, verifier, 2)
    )
    swapped = (block.receipts[1], block.receipts[0], *block.receipts[2:])
    assert "does not belong" in str(
        api.verify_followed(followed(swapped, 2, 2), GENESIS, verifier, 2)
    )
    forged = tuple(Receipt(r.tx_id, "rejected", "x", (), r.height, r.index) for r in block.receipts)
    assert "receipts root" in str(api.verify_followed(followed(forged, 2, 2), GENESIS, verifier, 2))


# --- the member side -------------------------------------------------------------------------


async def test_a_member_sends_no_more_than_the_credit_then_resumes_and_goes_live(
    tmp_path: Path,
) -> None:
    chain = build_chain(10)
    async with members(tmp_path, [chain]) as (nodes, addresses):
        stream = await trio.open_tcp_stream(*addresses[0])
        reader = FrameReader(stream, 1 << 20)

        async def send(msg: list[Any]) -> None:
            await stream.send_all(encode_frames([api.pack(msg)]))

        async def frames(count: int, within_s: float = 5.0) -> list[Any]:
            out = []
            with trio.move_on_after(within_s):
                while len(out) < count:
                    frame = await reader.read()
                    assert frame is not None
                    out.append(api.decode_response(frame, 1 << 20))
            return out

        await send(["follow", 3, 2, 3])
        first = await frames(4)
        assert first[0] == api.OkReply(3, 10)  # the head height
        assert [b.header.height for b in first[1:]] == [2, 3, 4]
        for b in first[1:]:
            assert api.verify_followed(b, GENESIS, Ed25519Verifier(), 0) is None
        assert await frames(1, within_s=0.3) == []  # out of credit: nothing more
        await send(["credit", 4, 3, 100])
        rest = await frames(1 + 6)
        assert rest[0] == api.OkReply(4, None)
        assert [b.header.height for b in rest[1:]] == list(range(5, 11))
        assert [b.header.hash for b in rest[1:]] == [blk.hash for blk, _, _ in chain.blocks[4:10]]
        # Caught up: a block that executes now is sent at once.
        for _ in range(2):
            chain.add([chain.tx(Put(b"live", b"1"))])
        nodes[0].append(chain, 10)
        live = await frames(2, within_s=2.0)
        assert [b.header.height for b in live] == [11, 12]
        await send(["unfollow", 5, 3])
        assert await frames(1) == [api.OkReply(5, None)]
        chain.add([chain.tx(Put(b"after", b"1"))])
        nodes[0].append(chain, 12)
        assert await frames(1, within_s=0.3) == []  # unfollowed: nothing more
        await send(["credit", 6, 3, 1])
        [reply] = await frames(1)
        assert isinstance(reply, api.ErrorReply) and "no follow 3" in reply.message
        await stream.aclose()


async def test_a_follower_that_does_not_read_costs_bounded_memory_then_is_cut_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No socket: a connection nobody drains. The follow stops reading the store once the
    connection holds FOLLOW_QUEUE_BYTES unsent, and ends after FOLLOW_PAUSE_MAX_S."""
    monkeypatch.setattr(api, "FOLLOW_QUEUE_BYTES", 4000)
    monkeypatch.setattr(api, "FOLLOW_PAUSE_MAX_S", 0.5)
    chain = build_chain(40)
    node = FakeNode(1, open_store(tmp_path, "m1"))
    node.append(chain, 0)
    service = ClientService(node)  # type: ignore[arg-type]
    conn = api.ClientConnection(1, "test", frames_max=10_000)
    frame_bytes = len(service._block_frame(1, 1))
    async with trio.open_nursery() as nursery:
        service._nursery = nursery
        await service.handle(conn, api.FollowRequest(9, 1, api.FOLLOW_CREDIT_MAX))
        await trio.sleep(0.2)
        queued = conn.queued_bytes
        assert 4000 < queued <= 4000 + frame_bytes + 64  # paused at the bound, not at 40 blocks
        await trio.sleep(0.1)
        assert conn.queued_bytes == queued  # and stays paused
        with trio.fail_after(3):
            while service._follows.get(conn.id):  # noqa: ASYNC110
                await trio.sleep(0.05)
    last = unpack(conn._queue[-1])
    assert last[0] == 9 and last[1] == "error" and "paused" in last[2]
    node.store.close()


async def test_follows_per_connection_are_bounded(tmp_path: Path) -> None:
    node = FakeNode(0, open_store(tmp_path, "m0"))
    service = ClientService(node)  # type: ignore[arg-type]
    conn = api.ClientConnection(1, "test", frames_max=10_000)
    async with trio.open_nursery() as nursery:
        service._nursery = nursery
        for i in range(api.FOLLOWS_PER_CONNECTION_MAX + 1):
            await service.handle(conn, api.FollowRequest(i + 1, 1, 1))
        replies = [unpack(f) for f in conn._queue]
        assert [r[1] for r in replies].count("ok") == api.FOLLOWS_PER_CONNECTION_MAX
        assert "at most" in replies[-1][2]
        service.disconnected(conn)  # ends them all
        await trio.sleep(0.05)
        assert not service._follows
    node.store.close()


# --- the client side -------------------------------------------------------------------------


async def test_the_client_yields_blocks_in_order_once_f_plus_1_members_agree(
    tmp_path: Path,
) -> None:
    honest = build_chain(6)
    liar = build_chain(6, salt=b"-fork")  # its own valid chain, signed by its own key
    chains = [honest, honest, liar, honest]
    async with (
        members(tmp_path, chains) as (nodes, addresses),
        ConsortiumClient(GENESIS, addresses=addresses) as client,
    ):
        got = await take(client, 1, 6)
        assert [b.height for b in got] == [1, 2, 3, 4, 5, 6]
        assert [b.block_hash for b in got] == [blk.hash for blk, _, _ in honest.blocks]
        for b in got:
            assert len(b.signers) >= 2 and 2 not in b.signers  # never the liar's fork
            assert b.tx_ids == [r.tx_id for r in b.receipts]
        for earlier, later in itertools.pairwise(got):
            assert later.header.prev_hash == earlier.block_hash
        # Any receipt of a followed block is a receipt document that verifies offline.
        assert verify_receipt(got[3].receipt_proof(1), GENESIS) is None

        # Live: blocks appended after the follow started arrive in order.
        async def grow() -> None:
            await trio.sleep(0.2)
            for _ in range(3):
                honest.add([honest.tx(Put(b"more", b"1"))])
            for i in (0, 1, 3):
                nodes[i].append(honest, 6)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(grow)
            with trio.fail_after(10):
                live = await take(client, 7, 3)
        assert [b.block_hash for b in live] == [blk.hash for blk, _, _ in honest.blocks[6:]]


async def test_without_f_plus_1_matching_copies_nothing_is_yielded(tmp_path: Path) -> None:
    honest = build_chain(3)
    fork = build_chain(3, salt=b"-fork")
    other = build_chain(3, salt=b"-other")
    services: list[type[ClientService]] = [ClientService, ClientService, TamperingService]
    async with (
        members(tmp_path, [honest, fork, other], services) as (_, addresses),
        ConsortiumClient(GENESIS, addresses=addresses) as client,
    ):
        # n1 honest, n2 a fork, n3 another fork with forged receipts: no two members agree.
        with trio.move_on_after(1.5) as scope:
            await take(client, 1, 1)
        assert scope.cancelled_caught
        assert client.counters["follow_invalid"] >= 1  # n3's forged receipts were caught


async def test_raft_follows_one_member_and_moves_on_when_it_goes(tmp_path: Path) -> None:
    raft = make_genesis(mode="raft")
    builder = ChainBuilder(genesis=raft)
    for h in range(4):
        builder.add([builder.tx(Put(b"r%d" % h, b"v"))])
    nodes = []
    addresses = {}
    async with trio.open_nursery() as nursery:
        scopes = []
        for i in range(3):
            node = FakeNode(i, BlockStore.open(tmp_path / f"r{i}.sqlite", raft), genesis=raft)
            node.append(builder, 0)
            scope = trio.CancelScope()
            scopes.append(scope)

            async def serve(
                node: FakeNode = node,
                scope: trio.CancelScope = scope,
                *,
                task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
            ) -> None:
                with scope:
                    await ClientService(node).run(task_status=task_status)  # type: ignore[arg-type]

            addresses[i] = (HOST, await nursery.start(serve))
            nodes.append(node)
        async with ConsortiumClient(raft, addresses=addresses) as client:
            follower = Follower(client, 1, credit=8)

            async def next_blocks(count: int) -> list[CommittedBlock]:
                got: list[CommittedBlock] = []
                with trio.fail_after(10):
                    while len(got) < count:
                        follower.tend()
                        block = follower.decided()
                        if block is not None:
                            got.append(block)
                        else:
                            await trio.sleep(0.02)
                return got

            first = await next_blocks(4)
            assert [b.block_hash for b in first] == [blk.hash for blk, _, _ in builder.blocks]
            assert len(follower.streams) == 1  # one member is enough in raft
            [serving] = follower.streams
            scopes[serving].cancel()  # that member goes away; the others go on
            for _ in range(2):
                builder.add([builder.tx(Put(b"later", b"v"))])
            for i, node in enumerate(nodes):
                if i != serving:
                    node.append(builder, 4)
            later = await next_blocks(2)
            assert [b.height for b in later] == [5, 6]
            assert [b.block_hash for b in later] == [blk.hash for blk, _, _ in builder.blocks[4:]]
            assert later[0].header.prev_hash == first[-1].block_hash
            assert len(follower.streams) == 1 and serving not in follower.streams
            assert later[0].signers != (serving,)
            follower.close()
        nursery.cancel_scope.cancel()
    for node in nodes:
        node.store.close()


async def test_the_client_holds_a_bounded_number_of_blocks_when_the_consumer_stops(
    tmp_path: Path,
) -> None:
    chain = build_chain(60, txs_per_block=1)
    async with (
        members(tmp_path, [chain] * 4) as (_, addresses),
        ConsortiumClient(GENESIS, addresses=addresses) as client,
    ):
        follower = Follower(client, 1, credit=4)
        for _ in range(40):  # nobody takes decided blocks
            follower.tend()
            await trio.sleep(0.02)
        held = sum(len(c) for c in follower.pending.values())
        assert 0 < len(follower.pending) <= 2 * 4 + 1
        assert held <= 4 * (2 * 4 + 1)
        for stream in follower.streams.values():
            assert stream.next_height <= 1 + 2 * 4 + 1
        follower.close()


async def test_blocks_received_but_not_yet_taken_count_against_the_credit() -> None:
    """Blocks that arrive between two tends sit in the stream's queue with its next_height not
    yet advanced: a top-up judged by next_height alone granted credit for them again, and under
    load (blocks arriving 3, then 4, then 4 between tends) one member ran 11 heights ahead with
    a credit of 4. The consumer takes nothing here, so at most about 2 x credit are ever held."""
    credit = 4
    client = ConsortiumClient(GENESIS)
    member = 0
    client._members[member].online = True
    follower = Follower(client, 1, credit)
    follower.tend()
    stream = follower.streams[member]
    blocks = _forked_blocks(b"-untaken", 4 * credit, member)
    sent = 0
    for burst in (3, 4, 4, 4):  # as many as the member may send, then a tend
        for block in blocks[sent : sent + min(burst, stream.granted)]:
            stream.receive(block)
            sent += 1
        follower.tend()
    assert not stream.ended
    assert sent <= 2 * credit - 1, f"granted credit for {sent} blocks, consumer at 1"
    assert stream.next_height - 1 == sent and len(follower.pending) == sent


async def test_a_block_that_does_not_link_to_the_previous_one_is_an_error(
    tmp_path: Path,
) -> None:
    chain = build_chain(3)
    async with (
        members(tmp_path, [chain] * 4) as (_, addresses),
        ConsortiumClient(GENESIS, addresses=addresses) as client,
    ):
        follower = Follower(client, 1, credit=8)
        follower.prev_hash = b"\x42" * 32  # as if block 0 had another hash
        with pytest.raises(ClientError, match="does not link to block 0"):
            with trio.fail_after(5):
                while True:
                    follower.tend()
                    follower.decided()
                    await trio.sleep(0.02)
        follower.close()


def test_a_followed_block_spliced_from_stored_bytes_is_the_encoded_block(tmp_path: Path) -> None:
    """The member sends a stored block's header and receipts bytes as stored (no decode): the
    frame must be exactly what encoding the decoded block gives."""
    node = FakeNode(0, open_store(tmp_path, "m0"))
    node.append(build_chain(2, txs_per_block=5), 0)
    raw = node.store.raw_block(2)
    stored = node.store.get_block(2)
    assert raw is not None and stored is not None
    vote = node.own_block_signature(2)
    spliced = api.encode_followed_block_raw(7, raw[1], raw[2], vote)
    block = stored.block
    assert spliced == api.encode_followed_block(7, block.header, block.receipts, vote)
    node.store.close()


async def test_follows_are_bounded_on_the_member_not_only_per_connection(tmp_path: Path) -> None:
    """At most service.FOLLOWS_MAX follows run on a member, whatever the connections. The slots
    are shared max-min fairly: a newcomer takes the newest follow of the fullest connection
    (which is told why), and a connection already holding its part is refused."""
    from consortium.node import service as service_module

    node = FakeNode(0, open_store(tmp_path, "m0"))
    node.append(build_chain(1), 0)
    svc = ClientService(node)  # type: ignore[arg-type]
    per_conn = api.FOLLOWS_PER_CONNECTION_MAX
    conns = [
        api.ClientConnection(i + 1, "follower", frames_max=1000)
        for i in range(service_module.FOLLOWS_MAX // per_conn + 1)
    ]
    async with trio.open_nursery() as nursery:
        svc._nursery = nursery
        for conn in conns[:-1]:
            for f in range(per_conn):
                await svc.handle(conn, api.FollowRequest(f + 1, 1, 1))
        newcomer = conns[-1]
        await svc.handle(newcomer, api.FollowRequest(1, 1, 1))
        running = sum(len(f) for f in svc._follows.values())

        # The newcomer keeps asking: it gets slots while others hold two more than it does.
        def answer(req_id: int) -> list[Any]:
            return next(
                r
                for r in map(unpack, newcomer._queue)
                if r[0] == req_id and r[1] in ("ok", "error")
            )

        granted = 1
        for f in range(2, per_conn + 1):
            await svc.handle(newcomer, api.FollowRequest(f, 1, 1))
            if answer(f)[1] == "ok":
                granted += 1
        total_after = sum(len(f) for f in svc._follows.values())
        nursery.cancel_scope.cancel()
    node.store.close()
    assert running == total_after == service_module.FOLLOWS_MAX  # never more than the bound
    evicted = [
        unpack(frame) for conn in conns[:-1] for frame in conn._queue if unpack(frame)[1] == "error"
    ]
    assert len(evicted) == granted and all("shares its follow slots" in e[2] for e in evicted)
    # Max-min fair: the newcomer stops at about the others' level, then is refused.
    last = answer(per_conn)
    assert last[1] == "error" and "follows on this member" in last[2], last
    assert 1 < granted < per_conn


# --- major: follows starve the core loop ---------------------------------------------------


# (Review 2 of issue 6: a failing test that showed what the review found.)
async def test_concurrent_follows_do_not_starve_the_members_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """service.py _stream: each follow reads and decodes a whole stored block (its txs too)
    on the event loop, one per scheduling pass. FOLLOWS_PER_CONNECTION_MAX = 8 and 1024
    connections, with no node-wide bound: 64 follows from height 1 with a client that drains
    (8 connections) make every pass of the scheduler cost 64 block reads (~3-15 ms each for
    512-tx blocks), so the core loop ticks once per pass instead of every 2 ms."""
    monkeypatch.setattr(api, "FOLLOW_QUEUE_BYTES", 1 << 30)  # a reader that keeps up
    chain = build_chain(6, txs_per_block=512)
    node = FakeNode(0, open_store(tmp_path, "m0"))
    node.append(chain, 0)
    svc = ClientService(node)  # type: ignore[arg-type]
    conns = [api.ClientConnection(i + 1, "follower", frames_max=100_000) for i in range(8)]

    async def work() -> None:
        async with trio.open_nursery() as nursery:
            svc._nursery = nursery
            for conn in conns:
                for f in range(api.FOLLOWS_PER_CONNECTION_MAX):
                    await svc.handle(conn, api.FollowRequest(f + 1, 1, api.FOLLOW_CREDIT_MAX))
            await trio.sleep(1.0)
            nursery.cancel_scope.cancel()

    gap = await _max_gap_while(work)
    node.store.close()
    assert gap < 0.1, f"the event loop was frozen for {gap:.2f} s between two core ticks"


# --- major: the client's follow against a lying pbft member -------------------------------


# (Review 2 of issue 6: a failing test that showed what the review found.)
async def test_a_lying_member_cannot_grow_the_followers_memory_without_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """follow.py: `pending` (height -> block hash -> candidate) is cleared only when a height
    is decided. A lying member (n3) that ends its stream and answers the restarted follow with
    a fresh fork of its own (each block validly signed by itself) adds up to ~2 x credit new
    candidates per restart (every RESTART_S), forever, while the honest members are slow or
    down: the docstring's 'at most about 2 x credit blocks per member whatever the members
    send' does not hold. Blocks may be up to frame_bytes_max (16 MiB) each."""
    monkeypatch.setattr(follow, "RESTART_S", 0.0)
    credit = 4
    client = ConsortiumClient(GENESIS)
    liar = 2
    client._members[liar].online = True  # the others are down (or slow)
    follower = Follower(client, 1, credit)
    for round_ in range(6):
        follower.tend()
        stream = follower.streams[liar]
        blocks = _forked_blocks(b"-lie%d" % round_, 2 * credit, liar)
        for block in blocks[:credit]:
            stream.receive(block)
        follower.tend()  # takes them, grants more credit
        for block in blocks[credit : credit + stream.granted]:
            stream.receive(block)
        follower.tend()
        stream.end("closing")  # or the connection drops; the follower asks again
        follower.tend()
        client._members[liar].queue.clear()
    held = sum(len(c) for c in follower.pending.values())
    assert held <= 2 * credit + 1, f"{held} forged blocks held from one lying member"


# (Review 2 of issue 6: a failing test that showed what the review found.)
async def test_a_lying_member_cannot_end_another_members_follow_stream() -> None:
    """client.py _dispatch: an ErrorReply whose req_id is a follow id ends that follow stream
    whichever member sent it (FollowedBlock is checked against stream.member, the error is
    not). Follow ids are the client's sequential req_ids; a lying member that answers errors
    for ids near its own kills every honest member's stream as it restarts (every RESTART_S),
    so a pbft follow never gathers f+1 copies."""
    client = ConsortiumClient(GENESIS)
    honest = FollowStream(0, 7, 1, 4, 1, lambda: None)
    client._follow_streams[7] = honest
    client._dispatch(2, api.encode_response(api.ErrorReply(7, "follow ended")))
    assert honest.ended == "", f"n3's error ended n1's stream: {honest.ended!r}"


# --- aa7d64b: FOLLOWS_MAX is node-wide with no share per connection or source --------------


# (Review 3: a regression found in the review-1/review-2 fix commits.)
async def test_a_stranger_cannot_take_every_follow_slot_of_a_member(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """service._follow: FOLLOWS_MAX = 32 over all connections, 8 per connection, no
    authentication on a plain client port. 4 connections of a stranger following from the
    head (caught up, with credit) never pause, so FOLLOW_PAUSE_MAX_S never ends them; from
    then on every honest client's follow at this member is refused 'try later', forever (and
    at f+1 members: no follow can gather f+1 copies)."""
    monkeypatch.setattr(api, "FOLLOW_PAUSE_MAX_S", 0.2)
    chain = build_chain(2)
    node = FakeNode(0, open_store(tmp_path, "m0"))
    node.append(chain, 0)
    svc = ClientService(node)  # type: ignore[arg-type]
    head = node.store.height
    strangers = [api.ClientConnection(i + 1, "stranger", frames_max=1000) for i in range(4)]
    honest = api.ClientConnection(99, "honest follower", frames_max=1000)
    async with trio.open_nursery() as nursery:
        svc._nursery = nursery
        for conn in strangers:
            for f in range(api.FOLLOWS_PER_CONNECTION_MAX):
                await svc.handle(conn, api.FollowRequest(f + 1, head + 1, api.FOLLOW_CREDIT_MAX))
        await trio.sleep(1.0)  # far past FOLLOW_PAUSE_MAX_S: the strangers' follows still run
        await svc.handle(honest, api.FollowRequest(1, 1, api.FOLLOW_CREDIT_MAX))
        nursery.cancel_scope.cancel()
    node.store.close()
    reply = _last_reply(honest)
    assert reply[1] != "error", f"an honest client's follow was refused: {reply[2]}"
