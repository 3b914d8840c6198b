"""The client port: a ClientServer with a fake handler, over real sockets on 127.0.0.1.

Bad input closes (or answers) only the offending connection; the server keeps serving the
other clients throughout.
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from consortium.crypto.codec import pack, unpack
from consortium.ledger.genesis import Params
from consortium.node import client_port, sources
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
        self.subscribed_conns: set[int] = set()  # connections the test says wait for pushes

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

    def subscribed(self, conn: ClientConnection) -> bool:
        return conn.id in self.subscribed_conns


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

    async def connect(self, source: str | None = None) -> Client:
        """A new connection, from `source` (a 127.0.0.x address) when given."""
        client = Client(await trio.open_tcp_stream(HOST, self.port, local_address=source))
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
            assert await third.closed() == [
                [0, "error", "refused: 2 connections open on this member's client port; try later"]
            ]
            assert s.server.counters["refused_too_many_connections"] == 1
            await first.stream.aclose()
            while len(s.server.connections) > 1:  # noqa: ASYNC110 (polling what the server shows)
                await trio.sleep(0.01)
            fourth = await s.connect()
            assert (await fourth.ask(["status", 1]))[1] == "ok"


# --- every request has a price and a budget ----------------------------------------------------


async def test_a_connection_sending_no_first_request_is_closed_and_told_why(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serving() as s:
        silent = await s.connect()
        partial = await s.connect()
        await partial.stream.send_all(encode_frame(pack(["status", 1]))[:-1])  # not whole
        started = trio.current_time()
        why = "closing the connection: no request for 5 s"
        assert await silent.closed() == [[0, "error", why]]
        assert await partial.closed() == [[0, "error", why]]
        assert trio.current_time() - started >= client_port.FIRST_REQUEST_TIMEOUT_S
        assert s.server.counters["closed_first_request_timeout"] == 2
        # One that asks in time is served, and not closed at the first deadline.
        asking = await s.connect()
        assert (await asking.ask(["status", 1]))[1] == "ok"
        await trio.sleep(client_port.FIRST_REQUEST_TIMEOUT_S * 2)
        assert (await asking.ask(["status", 2]))[1] == "ok"
        assert s.server.counters["closed_first_request_timeout"] == 2


async def test_an_idle_connection_is_closed_unless_it_waits_for_pushes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serving() as s:
        idle, waiting = await s.connect(), await s.connect()
        assert (await idle.ask(["status", 1]))[1] == "ok"
        reply = await waiting.ask(["status", 1])
        s.handler.subscribed_conns.add(json.loads(reply[2])["conn"])
        started = trio.current_time()
        assert await idle.closed() == [
            [
                0,
                "error",
                "closing the connection: nothing sent and nothing watched or followed for 60 s",
            ]
        ]
        assert trio.current_time() - started >= client_port.IDLE_TIMEOUT_S
        assert s.server.counters["closed_idle"] == 1
        # The one with a watch or a follow stays as long as it has one...
        await trio.sleep(client_port.IDLE_TIMEOUT_S * 3)
        assert (await waiting.ask(["status", 2]))[1] == "ok"
        # ...and is idle once it has none.
        s.handler.subscribed_conns.clear()
        assert (await waiting.closed())[-1][1] == "error"
        assert s.server.counters["closed_idle"] == 2


async def test_one_address_holds_at_most_its_share_of_connections() -> None:
    """(node.toml's [limits] client_connections_per_source, 64 unless set)"""
    with trio.fail_after(10):
        async with serving(connections_max=100, source_connections_max=3) as s:
            held = [await s.connect() for _ in range(3)]
            for c in held:
                assert (await c.ask(["status", 1]))[1] == "ok"
            refused = await s.connect()
            assert await refused.closed() == [
                [
                    0,
                    "error",
                    "refused: 3 connections open from 127.0.0.1 on this member's client port; "
                    "try later",
                ]
            ]
            assert s.server.counters["refused_too_many_from_source"] == 1
            await held[0].stream.aclose()
            while len(s.server.connections) > 2:  # noqa: ASYNC110 (polling what the server shows)
                await trio.sleep(0.01)
            again = await s.connect()  # its slot is given back
            assert (await again.ask(["status", 1]))[1] == "ok"
            assert s.server._sources == {"127.0.0.1": 3}
        assert s.server._sources == {}


async def _admitted(s: Serving, count: int) -> None:
    while s.server._slots < count:  # noqa: ASYNC110 (polling what the server shows)
        await trio.sleep(0.01)


async def test_a_full_port_evicts_a_silent_connection_of_the_busiest_source_for_a_new_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The issue's attack: idle connections from many addresses hold every slot. A new client
    still gets in; the connection it replaces is the oldest silent one of the source holding
    most, never one that has asked."""
    async with serving(connections_max=4) as s:
        asked = await s.connect("127.0.0.3")
        assert (await asked.ask(["status", 1]))[1] == "ok"
        other = await s.connect("127.0.0.4")  # the oldest silent one, but alone from there
        await _admitted(s, 2)
        busy = [await s.connect("127.0.0.2") for _ in range(2)]
        await _admitted(s, 4)
        newcomer = await s.connect()
        assert (await newcomer.ask(["status", 1]))[1] == "ok"
        assert await busy[0].closed() == []  # it sent nothing: it is told nothing
        assert s.server.counters["evicted_idle_first_request"] == 1
        assert s.server.counters["refused_too_many_connections"] == 0
        assert s.server._sources == {
            "127.0.0.1": 1,
            "127.0.0.2": 1,
            "127.0.0.3": 1,
            "127.0.0.4": 1,
        }
        # The others are untouched: they still ask and are answered.
        for c in (asked, busy[1], other):
            assert (await c.ask(["status", 2]))[1] == "ok"
        # Now every connection has asked: nothing is evictable, and a new one is refused.
        refused = await s.connect()
        assert (await refused.closed())[0][2].startswith("refused: 4 connections open")
        assert s.server.counters["refused_too_many_connections"] == 1
        assert s.server.counters["evicted_idle_first_request"] == 1


async def test_a_full_source_evicts_its_own_oldest_silent_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serving(connections_max=100, source_connections_max=2) as s:
        elsewhere = await s.connect("127.0.0.2")  # silent, but of another source
        silent = [await s.connect() for _ in range(2)]
        await _admitted(s, 3)
        newcomer = await s.connect()
        assert (await newcomer.ask(["status", 1]))[1] == "ok"
        assert await silent[0].closed() == []
        assert s.server.counters["evicted_idle_first_request"] == 1
        assert s.server.counters["refused_too_many_from_source"] == 0
        assert (await silent[1].ask(["status", 1]))[1] == "ok"
        assert (await elsewhere.ask(["status", 1]))[1] == "ok"
        refused = await s.connect()
        assert (await refused.closed())[0][2].startswith(
            "refused: 2 connections open from 127.0.0.1"
        )
    assert s.server._sources == {} and s.server._slots == 0 and s.server._silent == {}


def test_a_source_is_an_ipv4_address_or_an_ipv6_64() -> None:
    key = sources.source_group
    assert key("10.0.0.7") == "10.0.0.7"
    assert key("2001:db8:1:2::1") == key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert key("2001:db8:1:3::1") != key("2001:db8:1:2::1")
    assert key("::ffff:10.0.0.7") == "10.0.0.7"
    assert key("fe80::1%eth0") == "fe80::/64"
    assert key("?") == "?"


async def test_pipelined_requests_in_one_read_let_other_tasks_run_between_them() -> None:
    """One write of many requests: the reader hands them out from its buffer, and must yield
    before each (a handler that does not yield would otherwise hold the loop for all)."""

    class Greedy(FakeHandler):
        async def handle(self, conn: ClientConnection, request: Request) -> None:
            self.requests.append(request)  # no checkpoint of its own
            conn.reply(request.req_id, ticks)

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    with trio.fail_after(10):
        async with serving() as s:
            s.server.handler = Greedy()
            c = await s.connect()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ticker)
                await c.stream.send_all(
                    b"".join(encode_frame(pack(["block", i + 1, 1])) for i in range(200))
                )
                replies = [await c.receive() for _ in range(200)]
                nursery.cancel_scope.cancel()
            # The ticker ran between every two requests (trio may run the two tasks of one
            # scheduling batch in either order: two requests may see one count, never three).
            seen = Counter(r[2] for r in replies)
            assert max(seen.values()) <= 2 and len(seen) >= 100


async def test_no_request_is_served_for_a_closed_connection() -> None:
    """A handler closes the connection (as a full reply queue does): the requests it already
    sent, buffered here, are not served."""

    class Closing(FakeHandler):
        async def handle(self, conn: ClientConnection, request: Request) -> None:
            self.requests.append(request)
            conn.close_soon("test", "closing the connection: test")

    with trio.fail_after(10):
        async with serving() as s:
            handler = Closing()
            s.server.handler = handler
            c = await s.connect()
            await c.stream.send_all(
                b"".join(encode_frame(pack(["block", i + 1, 1])) for i in range(100))
            )
            assert await c.closed() == [[0, "error", "closing the connection: test"]]
            assert len(handler.requests) == 1


async def test_a_client_that_asks_without_reading_waits_then_is_closed(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    """Over REPLY_BACKLOG_BYTES unsent, no further request is served (the client waits in its
    TCP window); if it does not read within REPLY_DRAIN_S, it is closed as a slow consumer."""
    monkeypatch.setattr(client_port, "REPLY_BACKLOG_BYTES", 1_000_000)

    class Big(FakeHandler):
        async def handle(self, conn: ClientConnection, request: Request) -> None:
            self.requests.append(request)
            conn.reply(request.req_id, b"x" * 500_000)

    async with serving() as s:
        handler = Big()
        s.server.handler = handler
        c = await s.connect()
        await c.stream.send_all(
            b"".join(encode_frame(pack(["block", i + 1, 1])) for i in range(1000))
        )
        await trio.sleep(client_port.REPLY_DRAIN_S / 2)
        served = len(handler.requests)
        # What fits the socket buffers (a few MB on loopback) and the backlog, not all 1000.
        assert served < 50
        assert s.server.counters["reply_backlog_waits"] >= 1
        await trio.sleep(client_port.REPLY_DRAIN_S)
        assert len(handler.requests) == served
        assert s.handler.disconnects == [] and handler.disconnects == [
            (1, "slow consumer: replies unread for 60 s")
        ]
        assert s.server.counters["disconnected_slow_consumer"] == 1
