"""The client port: a ClientServer with a fake handler, over real sockets on 127.0.0.1.

Bad input closes (or answers) only the offending connection; the server keeps serving the
other clients throughout.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from consortium.crypto.codec import pack, unpack
from consortium.ledger.genesis import Params
from consortium.node.client_port import ClientConnection, ClientServer
from consortium.protocol.framing import FrameReader, encode_frame
from consortium.protocol.messages import (
    GetRequest,
    Request,
    StatusRequest,
    WatchRequest,
    encode_status,
)

HOST = "127.0.0.1"
FRAME_MAX = 1 << 16


class FakeHandler:
    """Echoes requests; `watch` pushes one receipt per id, synchronously (no checkpoint between
    pushes, so a burst larger than the queue overflows it deterministically); `get` of b"boom"
    raises, as a bug would."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.disconnects: list[tuple[int, str]] = []
        self.push_results: list[bool] = []

    async def handle(self, conn: ClientConnection, request: Request) -> None:
        await trio.lowlevel.checkpoint()
        self.requests.append(request)
        match request:
            case StatusRequest():
                conn.reply(request.req_id, encode_status({"conn": conn.id}))
            case GetRequest(key=b"boom"):
                raise RuntimeError("a bug reached by client input")
            case WatchRequest():
                for tx_id in request.tx_ids:
                    self.push_results.append(conn.push_receipt([tx_id, "fake bundle"]))
                conn.reply(request.req_id, len(request.tx_ids))
            case _:
                conn.reply(request.req_id, ["echo", request.req_id])

    def disconnected(self, conn: ClientConnection) -> None:
        self.disconnects.append((conn.id, conn.closed_reason))


class Client:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.reader = FrameReader(stream, 1 << 20)

    async def send(self, value: Any) -> None:
        await self.stream.send_all(encode_frame(pack(value)))

    async def receive(self) -> Any:
        frame = await self.reader.read()
        return None if frame is None else unpack(frame)

    async def ask(self, value: Any) -> Any:
        await self.send(value)
        return await self.receive()

    async def closed(self) -> list[Any]:
        """Everything received until the server closed the connection."""
        got = []
        try:
            while (msg := await self.receive()) is not None:
                got.append(msg)
        except trio.BrokenResourceError:
            pass
        return got


class Serving:
    def __init__(self, server: ClientServer, handler: FakeHandler, port: int) -> None:
        self.server = server
        self.handler = handler
        self.port = port
        self.clients: list[Client] = []

    async def connect(self) -> Client:
        client = Client(await trio.open_tcp_stream(HOST, self.port))
        self.clients.append(client)
        return client


@asynccontextmanager
async def serving(**options: Any) -> AsyncIterator[Serving]:
    handler = FakeHandler()
    server = ClientServer(
        handler,
        listen=(HOST, 0),
        frame_bytes_max=options.pop("frame_bytes_max", FRAME_MAX),
        params=Params(),
        **options,
    )
    async with trio.open_nursery() as nursery:
        s = Serving(server, handler, await nursery.start(server.run))
        try:
            yield s
        finally:
            for client in s.clients:
                await client.stream.aclose()
            nursery.cancel_scope.cancel()


async def test_requests_are_answered_by_req_id() -> None:
    with trio.fail_after(10):
        async with serving() as s:
            c = await s.connect()
            assert await c.ask(["block", 4, 17]) == [4, "ok", ["echo", 4]]
            reply = await c.ask(["status", 5])
            assert reply[:2] == [5, "ok"] and '"conn"' in reply[2]
            assert await c.ask(["watch", 6, [b"\x01" * 32]]) == [
                0,
                "receipt",
                [b"\x01" * 32, "fake bundle"],
            ]
            assert await c.receive() == [6, "ok", 1]
            await c.stream.aclose()
            while s.server.connections:  # noqa: ASYNC110 (polling what the server shows)
                await trio.sleep(0.01)
            assert s.handler.disconnects == [(1, "closed")]
            assert s.server.connections == {}


async def test_an_unknown_method_or_malformed_request_is_answered_and_the_connection_stays() -> (
    None
):
    with trio.fail_after(10):
        async with serving() as s:
            c = await s.connect()
            reply = await c.ask(["frobnicate", 7])
            assert reply[:2] == [7, "error"] and "unknown method 'frobnicate'" in reply[2]
            reply = await c.ask(["get", 8, 123])
            assert reply[:2] == [8, "error"] and "key: expected bytes" in reply[2]
            reply = await c.ask(["status", 9, "extra"])
            assert reply[:2] == [9, "error"]
            assert await c.ask(["block", 10, 1]) == [10, "ok", ["echo", 10]]
            assert s.server.counters["bad_request"] == 3


async def test_a_garbage_frame_closes_only_that_connection() -> None:
    with trio.fail_after(10):
        async with serving() as s:
            good = await s.connect()
            assert (await good.ask(["status", 1]))[1] == "ok"
            bad = await s.connect()
            await bad.stream.send_all(b"\x00\x00\x00\x03\xc1\xc1\xc1")
            notice = await bad.closed()
            assert notice[0][:2] == [0, "error"] and "closing the connection" in notice[0][2]
            # No req_id to answer: [b"x"] and a req_id of 0 close the connection too.
            for value in ([b"x"], ["status", 0]):
                bad = await s.connect()
                await bad.send(value)
                assert (await bad.closed())[0][:2] == [0, "error"]
            assert s.server.counters["undecodable_request"] == 3
            assert (await good.ask(["status", 2]))[:2] == [2, "ok"]
            assert len(s.handler.disconnects) == 3


async def test_an_oversize_frame_is_refused_from_its_header_alone() -> None:
    with trio.fail_after(10):
        async with serving() as s:
            good = await s.connect()
            bad = await s.connect()
            await bad.stream.send_all(struct.pack(">I", FRAME_MAX + 1))  # and no body, ever
            notice = await bad.closed()
            assert "exceeds the limit" in notice[0][2]
            assert s.server.counters["bad_frame"] == 1
            assert (await good.ask(["status", 3]))[:2] == [3, "ok"]


async def test_a_handler_bug_is_answered_and_logged_and_the_connection_stays() -> None:
    with trio.fail_after(10):
        async with serving() as s:
            c = await s.connect()
            assert await c.ask(["get", 4, b"boom"]) == [
                4,
                "error",
                "internal error (logged by the member)",
            ]
            assert s.server.counters["internal_error"] == 1
            assert (await c.ask(["get", 5, b"fine"]))[:2] == [5, "ok"]


async def test_a_slow_consumer_is_disconnected_instead_of_growing_the_queue() -> None:
    with trio.fail_after(10):
        async with serving(outbound_frames_max=8) as s:
            good = await s.connect()
            slow = await s.connect()
            await slow.send(["watch", 1, [bytes([i]) * 32 for i in range(20)]])
            got = await slow.closed()
            # The eighth queued push filled the queue: the ninth closed the connection.
            assert s.handler.push_results == [True] * 8 + [False] * 12
            assert len(got) <= 8
            assert s.server.counters["disconnected_slow_consumer"] == 1
            assert s.handler.disconnects[0][1].startswith("slow consumer")
            assert (await good.ask(["status", 2]))[:2] == [2, "ok"]


async def test_replies_queued_before_the_client_stops_sending_are_still_written() -> None:
    with trio.fail_after(10):
        async with serving() as s:
            c = await s.connect()
            await c.send(["block", 1, 1])
            await c.send(["block", 2, 2])
            await c.stream.send_eof()
            assert await c.closed() == [[1, "ok", ["echo", 1]], [2, "ok", ["echo", 2]]]


async def test_connections_beyond_the_limit_are_refused() -> None:
    with trio.fail_after(10):
        async with serving(connections_max=2) as s:
            first, second = await s.connect(), await s.connect()
            assert (await first.ask(["status", 1]))[1] == "ok"
            assert (await second.ask(["status", 1]))[1] == "ok"
            third = await s.connect()
            assert await third.closed() == []
            assert s.server.counters["refused_too_many_connections"] == 1
            await first.stream.aclose()
            while len(s.server.connections) > 1:  # noqa: ASYNC110 (polling what the server shows)
                await trio.sleep(0.01)
            fourth = await s.connect()
            assert (await fourth.ask(["status", 1]))[1] == "ok"
