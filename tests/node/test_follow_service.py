"""Following committed blocks, the member side: ClientService's follows over a real
BlockStore (tests/node/fakes.py FakeNode), on a real ClientServer on 127.0.0.1 or on a
ClientConnection nobody drains. The client side is tests/client/test_follow.py.

On a ClientConnection only Trio tasks wait on each other (the store is read synchronously on
the event loop), so those tests run on trio's autojump clock: their pauses and timeouts are
exact and take no time. The real server keeps real time under a fail_after, and the event
loop probe measures real work (tests/node/fakes.py max_gap_while).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from consortium.crypto.codec import pack, unpack
from consortium.crypto.signing import Ed25519Verifier
from consortium.ledger.tx import Put
from consortium.node import client_port
from consortium.node import service as service_module
from consortium.node.client_port import ClientConnection
from consortium.node.service import ClientService
from consortium.protocol import limits
from consortium.protocol.framing import FrameReader, encode_frames
from consortium.protocol.messages import (
    ErrorReply,
    FollowRequest,
    OkReply,
    decode_response,
    encode_followed_block,
    encode_followed_block_raw,
)
from consortium.protocol.verify import verify_followed
from tests.ledger.chain_fixture import build_chain
from tests.node.fakes import GENESIS, FakeNode, last_reply, max_gap_while, members, open_store

# --- the member side -------------------------------------------------------------------------


async def test_a_member_sends_no_more_than_the_credit_then_resumes_and_goes_live(
    tmp_path: Path,
) -> None:
    with trio.fail_after(20):
        chain = build_chain(10)
        async with members(tmp_path, [chain]) as (nodes, addresses):
            stream = await trio.open_tcp_stream(*addresses[0])
            reader = FrameReader(stream, 1 << 20)

            async def send(msg: list[Any]) -> None:
                await stream.send_all(encode_frames([pack(msg)]))

            async def frames(count: int, within_s: float = 5.0) -> list[Any]:
                out = []
                with trio.move_on_after(within_s):
                    while len(out) < count:
                        frame = await reader.read()
                        assert frame is not None
                        out.append(decode_response(frame, 1 << 20))
                return out

            await send(["follow", 3, 2, 3])
            first = await frames(4)
            assert first[0] == OkReply(3, 10)  # the head height
            assert [b.header.height for b in first[1:]] == [2, 3, 4]
            for b in first[1:]:
                assert verify_followed(b, GENESIS, Ed25519Verifier(), 0) is None
            assert await frames(1, within_s=0.3) == []  # out of credit: nothing more
            await send(["credit", 4, 3, 100])
            rest = await frames(1 + 6)
            assert rest[0] == OkReply(4, None)
            assert [b.header.height for b in rest[1:]] == list(range(5, 11))
            assert [b.header.hash for b in rest[1:]] == [
                blk.hash for blk, _, _ in chain.blocks[4:10]
            ]
            # Caught up: a block that executes now is sent at once.
            for _ in range(2):
                chain.add([chain.tx(Put(b"live", b"1"))])
            nodes[0].append(chain, 10)
            live = await frames(2, within_s=2.0)
            assert [b.header.height for b in live] == [11, 12]
            await send(["unfollow", 5, 3])
            assert await frames(1) == [OkReply(5, None)]
            chain.add([chain.tx(Put(b"after", b"1"))])
            nodes[0].append(chain, 12)
            assert await frames(1, within_s=0.3) == []  # unfollowed: nothing more
            await send(["credit", 6, 3, 1])
            [reply] = await frames(1)
            assert isinstance(reply, ErrorReply) and "no follow 3" in reply.message
            await stream.aclose()


async def test_a_follower_that_does_not_read_costs_bounded_memory_then_is_cut_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    """No socket: a connection nobody drains. The follow stops reading the store once the
    connection holds FOLLOW_QUEUE_BYTES unsent, and ends after FOLLOW_PAUSE_MAX_S."""
    monkeypatch.setattr(client_port, "FOLLOW_QUEUE_BYTES", 4000)
    monkeypatch.setattr(client_port, "FOLLOW_PAUSE_MAX_S", 0.5)
    chain = build_chain(40)
    node = FakeNode(1, open_store(tmp_path, "m1"))
    node.append(chain, 0)
    service = ClientService(node)  # type: ignore[arg-type]
    conn = ClientConnection(1, "test", frames_max=10_000)
    frame_bytes = len(service._block_frame(1, 1))
    async with trio.open_nursery() as nursery:
        service._nursery = nursery
        await service.handle(conn, FollowRequest(9, 1, limits.FOLLOW_CREDIT_MAX))
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


async def test_follows_per_connection_are_bounded(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    node = FakeNode(0, open_store(tmp_path, "m0"))
    service = ClientService(node)  # type: ignore[arg-type]
    conn = ClientConnection(1, "test", frames_max=10_000)
    async with trio.open_nursery() as nursery:
        service._nursery = nursery
        for i in range(limits.FOLLOWS_PER_CONNECTION_MAX + 1):
            await service.handle(conn, FollowRequest(i + 1, 1, 1))
        replies = [unpack(f) for f in conn._queue]
        assert [r[1] for r in replies].count("ok") == limits.FOLLOWS_PER_CONNECTION_MAX
        assert "at most" in replies[-1][2]
        service.disconnected(conn)  # ends them all
        await trio.sleep(0.05)
        assert not service._follows
    node.store.close()


def test_a_followed_block_spliced_from_stored_bytes_is_the_encoded_block(tmp_path: Path) -> None:
    """The member sends a stored block's header and receipts bytes as stored (no decode): the
    frame must be exactly what encoding the decoded block gives."""
    node = FakeNode(0, open_store(tmp_path, "m0"))
    node.append(build_chain(2, txs_per_block=5), 0)
    raw = node.store.raw_block(2)
    stored = node.store.get_block(2)
    assert raw is not None and stored is not None
    vote = node.own_block_signature(2)
    spliced = encode_followed_block_raw(7, raw[1], raw[2], vote)
    block = stored.block
    assert spliced == encode_followed_block(7, block.header, block.receipts, vote)
    node.store.close()


async def test_follows_are_bounded_on_the_member_not_only_per_connection(tmp_path: Path) -> None:
    """At most service.FOLLOWS_MAX follows run on a member, whatever the connections. The slots
    are shared max-min fairly: a newcomer takes the newest follow of the fullest connection
    (which is told why), and a connection already holding its part is refused."""
    node = FakeNode(0, open_store(tmp_path, "m0"))
    node.append(build_chain(1), 0)
    svc = ClientService(node)  # type: ignore[arg-type]
    per_conn = limits.FOLLOWS_PER_CONNECTION_MAX
    conns = [
        ClientConnection(i + 1, "follower", frames_max=1000)
        for i in range(service_module.FOLLOWS_MAX // per_conn + 1)
    ]
    async with trio.open_nursery() as nursery:
        svc._nursery = nursery
        for conn in conns[:-1]:
            for f in range(per_conn):
                await svc.handle(conn, FollowRequest(f + 1, 1, 1))
        newcomer = conns[-1]
        await svc.handle(newcomer, FollowRequest(1, 1, 1))
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
            await svc.handle(newcomer, FollowRequest(f, 1, 1))
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
    monkeypatch.setattr(client_port, "FOLLOW_QUEUE_BYTES", 1 << 30)  # a reader that keeps up
    chain = build_chain(6, txs_per_block=512)
    node = FakeNode(0, open_store(tmp_path, "m0"))
    node.append(chain, 0)
    svc = ClientService(node)  # type: ignore[arg-type]
    conns = [ClientConnection(i + 1, "follower", frames_max=100_000) for i in range(8)]

    async def work() -> None:
        async with trio.open_nursery() as nursery:
            svc._nursery = nursery
            for conn in conns:
                for f in range(limits.FOLLOWS_PER_CONNECTION_MAX):
                    await svc.handle(conn, FollowRequest(f + 1, 1, limits.FOLLOW_CREDIT_MAX))
            await trio.sleep(1.0)
            nursery.cancel_scope.cancel()

    gap = await max_gap_while(work)
    node.store.close()
    assert gap < 0.1, f"the event loop was frozen for {gap:.2f} s of CPU between two core ticks"


# --- aa7d64b: FOLLOWS_MAX is node-wide with no share per connection or source --------------


# (Review 3: a regression found in the review-1/review-2 fix commits.)
async def test_a_stranger_cannot_take_every_follow_slot_of_a_member(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    """service._follow: FOLLOWS_MAX = 32 over all connections, 8 per connection, no
    authentication on a plain client port. 4 connections of a stranger following from the
    head (caught up, with credit) never pause, so FOLLOW_PAUSE_MAX_S never ends them; from
    then on every honest client's follow at this member is refused 'try later', forever (and
    at f+1 members: no follow can gather f+1 copies)."""
    monkeypatch.setattr(client_port, "FOLLOW_PAUSE_MAX_S", 0.2)
    chain = build_chain(2)
    node = FakeNode(0, open_store(tmp_path, "m0"))
    node.append(chain, 0)
    svc = ClientService(node)  # type: ignore[arg-type]
    head = node.store.height
    strangers = [ClientConnection(i + 1, "stranger", frames_max=1000) for i in range(4)]
    honest = ClientConnection(99, "honest follower", frames_max=1000)
    async with trio.open_nursery() as nursery:
        svc._nursery = nursery
        for conn in strangers:
            for f in range(limits.FOLLOWS_PER_CONNECTION_MAX):
                await svc.handle(conn, FollowRequest(f + 1, head + 1, limits.FOLLOW_CREDIT_MAX))
        await trio.sleep(1.0)  # far past FOLLOW_PAUSE_MAX_S: the strangers' follows still run
        await svc.handle(honest, FollowRequest(1, 1, limits.FOLLOW_CREDIT_MAX))
        nursery.cancel_scope.cancel()
    node.store.close()
    reply = last_reply(honest)
    assert reply[1] != "error", f"an honest client's follow was refused: {reply[2]}"
