"""Framing and the authenticated peer transport, over real sockets on 127.0.0.1."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import pytest
import trio
import trio.testing

from consortium.crypto.signing import Ed25519Signer, Ed25519Verifier
from consortium.ledger.genesis import Genesis, Params
from consortium.node.framing import FrameError, FrameReader, encode_frame, encode_frames
from consortium.node.transport import PeerNetwork
from tests.ledger.chain_fixture import MEMBERS, make_genesis

# --- framing ---------------------------------------------------------------------------------


async def _reader_over(data: bytes, limit: int = 100, chunk: int = 3) -> FrameReader:
    send, receive = trio.testing.memory_stream_one_way_pair()

    async def feed() -> None:
        for i in range(0, len(data), chunk):
            await send.send_all(data[i : i + chunk])
        await send.aclose()

    reader = FrameReader(receive, limit)
    trio.lowlevel.spawn_system_task(feed)
    return reader


async def test_frames_split_across_reads_come_out_whole() -> None:
    bodies = [b"a", b"bb" * 20, b"ccc"]
    reader = await _reader_over(encode_frames(bodies))
    with trio.fail_after(5):
        assert [await reader.read() for _ in bodies] == bodies
        assert await reader.read() is None


async def test_an_oversize_frame_is_refused_before_its_body_is_read() -> None:
    # Only the 4-byte header is ever sent: the reader must refuse without waiting for a body.
    reader = await _reader_over(struct.pack(">I", 101))
    with trio.fail_after(5), pytest.raises(FrameError, match="exceeds the limit of 100"):
        await reader.read()


async def test_zero_length_and_truncated_frames_are_errors() -> None:
    reader = await _reader_over(struct.pack(">I", 0))
    with trio.fail_after(5), pytest.raises(FrameError, match="zero-length"):
        await reader.read()
    reader = await _reader_over(encode_frame(b"hello")[:-2])
    with trio.fail_after(5), pytest.raises(FrameError, match="inside a frame"):
        await reader.read()


# --- peers -----------------------------------------------------------------------------------


def _genesis_with_ports(ports: list[int], params: Params | None = None) -> Genesis:
    g = make_genesis(params)
    members = tuple(
        replace(m, peer_address=f"127.0.0.1:{ports[i]}") for i, m in enumerate(g.members)
    )
    return replace(g, members=members)


def _free_ports(n: int) -> list[int]:
    from consortium.cli.network import free_ports

    return free_ports(n)


@asynccontextmanager
async def _network(genesis: Genesis, members: list[int]) -> AsyncIterator[list[PeerNetwork]]:
    nets = []
    async with trio.open_nursery() as nursery:
        for i in members:
            host, _, port = genesis.members[i].peer_address.rpartition(":")
            net = PeerNetwork(
                genesis,
                i,
                Ed25519Signer(MEMBERS[i]),
                Ed25519Verifier(),
                listen=(host, int(port)),
                peer_addresses={
                    m.index: (host, int(m.peer_address.rpartition(":")[2]))
                    for m in genesis.members
                    if m.index != i
                },
                frame_bytes_max=1 << 20,
            )
            await nursery.start(net.run)
            nets.append(net)
        yield nets
        nursery.cancel_scope.cancel()


async def _connected(nets: list[PeerNetwork], count: int) -> None:
    """Poll the observable status (what an operator sees) until enough peers are up."""
    while True:
        up = [sum(1 for p in n.peer_status() if p["outbound_connected"]) for n in nets]
        if all(u >= count for u in up):
            return
        await trio.sleep(0.02)


async def test_four_members_authenticate_and_exchange_frames_with_the_right_sender() -> None:
    genesis = _genesis_with_ports(_free_ports(4))
    with trio.fail_after(15):
        async with _network(genesis, [0, 1, 2, 3]) as nets:
            await _connected(nets, 3)
            for net in nets:
                net.broadcast(b"from %d" % net.me)
            for net in nets:
                got = sorted([await net.inbound.receive() for _ in range(3)])
                assert got == sorted((i, b"from %d" % i) for i in range(4) if i != net.me)


async def test_a_peer_on_another_chain_is_refused_and_the_others_keep_talking() -> None:
    ports = _free_ports(4)
    genesis = _genesis_with_ports(ports)
    other = _genesis_with_ports(ports, Params(batch_txs_max=3))  # same keys, another chain id
    with trio.fail_after(15):
        async with _network(genesis, [0, 1, 2]) as nets, _network(other, [3]) as strangers:
            await _connected(nets, 2)
            while not strangers[0].counters:  # noqa: ASYNC110
                await trio.sleep(0.02)
            assert any("wrong_chain" in k for k in strangers[0].counters)
            assert any("wrong_chain" in k for n in nets for k in n.counters)
            nets[0].send(1, b"still fine")
            assert await nets[1].inbound.receive() == (0, b"still fine")
            assert not any(p["outbound_connected"] for p in strangers[0].peer_status())


async def test_frames_for_a_member_that_is_down_are_bounded_and_counted() -> None:
    genesis = _genesis_with_ports(_free_ports(4))
    with trio.fail_after(15):
        async with _network(genesis, [0]) as nets:
            net = nets[0]
            net._outbound_max = 10  # a small bound for the test
            results = [net.send(1, b"x") for _ in range(25)]
            assert results.count(True) == 10
            assert net.counters["outbound_queue_full"] == 15
            assert net.peer_status()[0]["frames_dropped"] == 15


async def test_a_member_reconnects_after_its_peer_restarts() -> None:
    genesis = _genesis_with_ports(_free_ports(4))
    with trio.fail_after(20):
        async with _network(genesis, [0]) as first:
            async with _network(genesis, [1]) as second:
                await _connected(first, 1)
            # member 1 is gone, and member 0 notices without having to send anything
            while first[0].peer_status()[0]["outbound_connected"]:  # noqa: ASYNC110
                await trio.sleep(0.02)
            async with _network(genesis, [1]) as again:
                await _connected(first, 1)
                first[0].send(1, b"hello again")
                assert await again[0].inbound.receive() == (0, b"hello again")
            assert second  # the first incarnation did connect
