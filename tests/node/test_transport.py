"""The authenticated peer transport, over real sockets on 127.0.0.1 (port 0 everywhere).

Every refusal closes only the offending connection, is counted with its reason, and the
members keep exchanging frames throughout.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from consortium.crypto.codec import pack, unpack
from consortium.crypto.keys import KeyPair
from consortium.crypto.signing import PROTOCOL_VERSION, Domain, Ed25519Signer, Ed25519Verifier
from consortium.ledger.genesis import Genesis, Params
from consortium.node.framing import FrameReader, encode_frame
from consortium.node.transport import PeerNetwork, handshake_transcript
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


async def hello(port: int, chain_id: bytes, claimed: int) -> tuple[trio.SocketStream, list[Any]]:
    stream = await trio.open_tcp_stream(HOST, port)
    nonce = secrets.token_bytes(32)
    await stream.send_all(encode_frame(pack(["hello", PROTOCOL_VERSION, chain_id, claimed, nonce])))
    frame = await FrameReader(stream, 4096).read()
    assert frame is not None
    return stream, unpack(frame)


async def dial_as(port: int, member: int, keys: KeyPair) -> trio.SocketStream:
    """A raw connection that completes the handshake as `member`, signing with `keys`."""
    stream, ack = await hello(port, GENESIS.chain_id, member)
    assert ack[0] == "hello-ack"
    transcript = handshake_transcript(ack[4], member, ack[3], "dialer")
    sig = Ed25519Signer(keys).sign(Domain.HANDSHAKE, GENESIS.chain_id, transcript)
    await stream.send_all(encode_frame(pack(["auth", sig])))
    return stream


# --- the good path ---------------------------------------------------------------------------


async def test_four_members_authenticate_and_every_frame_carries_its_real_sender() -> None:
    with trio.fail_after(10):
        async with members() as m:
            nets = [await m.start(i) for i in range(4)]
            await exchange(nets)
            nets[2].send(0, b"direct")
            await receive_until(nets[0], {(2, b"direct")})
            for net in nets:
                assert not any(k.startswith("handshake_") for k in net.counters)
                for p in net.peer_status():
                    assert p["frames_sent"] and p["frames_received"] and p["connected_since"]
                    assert p["name"] == GENESIS.members[int(str(p["index"]))].name


async def test_queued_frames_are_coalesced_and_arrive_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    writes: list[int] = []
    send_all = trio.SocketStream.send_all

    async def counting(self: trio.SocketStream, data: bytes | bytearray | memoryview) -> None:
        writes.append(len(data))
        await send_all(self, data)

    monkeypatch.setattr(trio.SocketStream, "send_all", counting)
    with trio.fail_after(10):
        async with members() as m:
            a, b = await m.start(0), await m.start(1)
            await until(linked([a, b]))
            writes.clear()
            bodies = [b"frame %d" % k for k in range(500)]
            assert all(a.send(1, body) for body in bodies)  # queued without a checkpoint
            got = []
            while len(got) < len(bodies):
                sender, body = await b.inbound.receive()
                b.consumed(body)
                assert sender == 0
                got.append(body)
            assert got == bodies
            assert len(writes) == 1  # one send_all for all 500 frames


# --- refusals --------------------------------------------------------------------------------


async def test_an_unknown_member_index_is_refused_with_a_reason() -> None:
    with trio.fail_after(10):
        async with members() as m:
            nets = [await m.start(i) for i in range(3)]
            stream, answer = await hello(m.ports[0], GENESIS.chain_id, 17)
            async with stream:
                assert answer[0] == "refused" and "not in genesis" in answer[1]
                assert await closed_by_peer(stream) == []
            # Claiming to be the listener itself is refused the same way.
            stream, answer = await hello(m.ports[0], GENESIS.chain_id, 0)
            async with stream:
                assert answer[0] == "refused"
            assert nets[0].counters["handshake_unknown_member"] == 2
            await exchange(nets)


async def test_a_key_genesis_does_not_list_is_refused_both_ways() -> None:
    with trio.fail_after(10):
        async with members() as m:
            nets = [await m.start(i) for i in range(3)]
            impostor = await m.start(3, keys=STRANGER)  # claims index 3, holds another key

            def refused_both_ways() -> bool:
                return all(
                    n.counters["handshake_bad_handshake_signature"] >= 2
                    and "did not prove the key" in str(n.peer_status()[2]["last_error"])
                    for n in nets
                )

            await until(refused_both_ways)
            # Dialing it, members see a listener that cannot prove member 3's key; dialed by it,
            # they see a dialer that cannot. Nobody accepts it or connects to it.
            assert not any(p["inbound_connected"] for p in impostor.peer_status())
            for n in nets:
                status = {p["index"]: p for p in n.peer_status()}
                assert not status[3]["outbound_connected"]
                assert not status[3]["inbound_connected"]
                assert "did not prove the key" in str(status[3]["last_error"])
            await exchange(nets)


async def test_a_peer_on_another_chain_is_refused_with_both_chain_ids() -> None:
    other = make_genesis(Params(batch_txs_max=3))  # same keys, another chain id
    with trio.fail_after(10):
        async with members() as m:
            nets = [await m.start(i) for i in range(3)]
            stranger = await m.start(3, genesis=other)
            await until(lambda: all(n.counters["handshake_wrong_chain"] >= 1 for n in nets))
            await until(lambda: stranger.counters["handshake_wrong_chain"] >= 1)
            stream, answer = await hello(m.ports[0], other.chain_id, 3)
            async with stream:
                assert answer[0] == "refused"
                assert answer[1] == (
                    f"wrong chain id: peer is on network {other.chain_id.hex()[:8]}…, "
                    f"we are on {GENESIS.chain_id.hex()[:8]}…"
                )
            assert not any(p["outbound_connected"] for p in stranger.peer_status())
            await exchange(nets)


async def test_a_bad_handshake_signature_closes_the_connection() -> None:
    with trio.fail_after(10):
        async with members() as m:
            nets = [await m.start(i) for i in range(3)]
            stream, ack = await hello(m.ports[0], GENESIS.chain_id, 3)
            async with stream:
                assert ack[0] == "hello-ack" and ack[3] == 0
                await stream.send_all(encode_frame(pack(["auth", bytes(64)])))
                assert await closed_by_peer(stream) == []
            # A signature by the right key over the wrong role is just as bad.
            stream, ack = await hello(m.ports[0], GENESIS.chain_id, 3)
            async with stream:
                wrong_role = handshake_transcript(ack[4], 3, 0, "listener")
                sig = Ed25519Signer(MEMBERS[3]).sign(Domain.HANDSHAKE, GENESIS.chain_id, wrong_role)
                await stream.send_all(encode_frame(pack(["auth", sig])))
                assert await closed_by_peer(stream) == []
            assert nets[0].counters["handshake_bad_handshake_signature"] == 2
            assert not {p["index"]: p for p in nets[0].peer_status()}[3]["inbound_connected"]
            await exchange(nets)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x00\x00\x00\x0dhello garbage", "handshake_malformed_handshake"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "handshake_bad_frame"),  # a 1.2 GB "length"
        (struct.pack(">I", 2**31), "handshake_bad_frame"),
        (encode_frame(pack(["hello", PROTOCOL_VERSION])), "handshake_malformed_handshake"),
        (b"\x00\x00\x00\x05abc", "handshake_bad_frame"),  # EOF inside the frame
    ],
)
async def test_garbage_from_a_raw_socket_closes_only_that_connection(
    data: bytes, reason: str
) -> None:
    with trio.fail_after(10):
        async with members() as m:
            nets = [await m.start(i) for i in range(3)]
            await until(linked(nets))
            async with await trio.open_tcp_stream(HOST, m.ports[1]) as stream:
                await stream.send_all(data)
                await stream.send_eof()
                assert await closed_by_peer(stream) == []
            await until(lambda: nets[1].counters[reason] == 1)
            assert nets[1].counters["internal_error"] == 0
            await exchange(nets)


async def test_a_silent_connection_times_out_its_handshake() -> None:
    with trio.fail_after(10):
        async with members() as m:
            net = await m.start(0, handshake_timeout_s=0.2)
            async with await trio.open_tcp_stream(HOST, m.ports[0]) as stream:
                assert await closed_by_peer(stream) == []
            assert net.counters["handshake_timeout"] == 1


async def test_unauthenticated_connections_are_bounded() -> None:
    with trio.fail_after(10):
        async with members() as m:
            net = await m.start(0, handshakes_max=2)
            idle = [await trio.open_tcp_stream(HOST, m.ports[0]) for _ in range(2)]
            await until(lambda: net._handshakes == 2)
            async with await trio.open_tcp_stream(HOST, m.ports[0]) as third:
                assert await closed_by_peer(third) == []
            assert net.counters["handshake_too_many"] == 1
            for s in idle:
                await s.aclose()


async def test_an_oversize_frame_after_the_handshake_closes_that_connection() -> None:
    with trio.fail_after(10):
        async with members() as m:
            nets = [await m.start(i) for i in range(3)]
            stream = await dial_as(m.ports[0], 3, MEMBERS[3])
            async with stream:
                await until(lambda: bool(nets[0].peer_status()[2]["inbound_connected"]))
                await stream.send_all(encode_frame(b"fine") + struct.pack(">I", (1 << 20) + 1))
                assert await closed_by_peer(stream) == []
            await receive_until(nets[0], {(3, b"fine")})
            await until(lambda: not nets[0].peer_status()[2]["inbound_connected"])
            assert nets[0].counters["bad_frame"] == 1
            await exchange(nets)


async def test_a_new_connection_from_a_member_replaces_its_old_one() -> None:
    with trio.fail_after(10):
        async with members() as m:
            net = await m.start(0)
            first = await dial_as(m.ports[0], 1, MEMBERS[1])
            await first.send_all(encode_frame(b"one"))
            await receive_until(net, {(1, b"one")})
            second = await dial_as(m.ports[0], 1, MEMBERS[1])
            async with first, second:
                assert await closed_by_peer(first) == []
                await second.send_all(encode_frame(b"two"))
                await receive_until(net, {(1, b"two")})
            assert net.counters["inbound_replaced"] == 1


# --- failures, restarts and bounds ----------------------------------------------------------


async def test_members_reconnect_after_a_peer_restarts() -> None:
    with trio.fail_after(15):
        async with members() as m:
            nets = [await m.start(i) for i in range(3)]
            await exchange(nets)
            port = m.ports[2]
            m.stop(2)
            # The others notice without sending anything, and keep talking to each other.
            await until(lambda: not any(p["outbound_connected"] for p in nets[0].peer_status()[1:]))
            assert not nets[0].send(2, b"lost")
            await exchange(nets[:2])
            again = await m.start(2, port=port)
            await exchange([nets[0], nets[1], again])


async def test_frames_for_a_member_that_is_down_are_dropped_and_counted() -> None:
    with trio.fail_after(10):
        async with members() as m:
            net = await m.start(0)
            assert [net.send(1, b"x") for _ in range(5)] == [False] * 5
            net.broadcast(b"y")
            assert net.counters["dropped_not_connected"] == 8
            assert net.peer_status()[0]["frames_dropped"] == 6
            assert not net.send(7, b"z")
            assert net.counters["dropped_unknown_member"] == 1
            assert not net.send(1, b"")
            assert net.counters["dropped_bad_size"] == 1


async def test_a_full_outbound_queue_drops_new_frames_and_counts_them() -> None:
    with trio.fail_after(10):
        async with members() as m:
            a = await m.start(0, outbound_frames_max=10, outbound_bytes_max=1000)
            b = await m.start(1)
            await until(linked([a, b]))
            # No checkpoint between sends, so the sender task cannot drain the queue meanwhile.
            results = [a.send(1, b"%03d" % k) for k in range(25)]
            assert results == [True] * 10 + [False] * 15
            assert a.counters["dropped_queue_full"] == 15
            await receive_until(b, {(0, b"%03d" % k) for k in range(10)})
            # Bounded in bytes too.
            assert a.send(1, b"x" * 900)
            assert not a.send(1, b"x" * 200)
            assert a.counters["dropped_queue_full"] == 16


async def test_a_consumer_that_does_not_read_pushes_back_instead_of_buffering() -> None:
    with trio.fail_after(10):
        async with members() as m:
            a = await m.start(0)
            b = await m.start(1, inbound_frames_max=4, inbound_bytes_max=50_000)
            await until(linked([a, b]))
            bodies = [b"%04d" % k + b"." * 9_996 for k in range(200)]  # 2 MB in all
            assert all(a.send(1, body) for body in bodies)
            await until(lambda: b.inbound.statistics().current_buffer_used == 4)
            await trio.sleep(0.1)  # time for b to (wrongly) buffer more if it would
            # b holds at most its bounds: 4 frames in the channel, 50 kB not yet consumed.
            assert b.inbound.statistics().current_buffer_used <= 4
            assert b._inbound_bytes <= 50_000
            got = []
            while len(got) < len(bodies):
                _, body = await b.inbound.receive()
                b.consumed(body)
                got.append(body)
            assert got == bodies
            assert b._inbound_bytes == 0
