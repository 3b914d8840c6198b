"""The partition of the end-to-end tests (consortium/testing/faults.py, partition): composed
around a real member before it runs, it drops the frames to and from the members a file names,
both ways, lets every other frame through, gives the dropped frames' bytes back to the
transport's inbound budget, and heals when the file is emptied."""

from __future__ import annotations

from pathlib import Path

import trio

from consortium.cli.network import init_network
from consortium.node.config import load_identity
from consortium.node.runtime import Node, make_node
from consortium.testing.faults import partition
from tests.node.peers import until


def _member(tmp_path: Path) -> Node:
    init_network(tmp_path / "net", members=4, clients=1)
    identity = load_identity(tmp_path / "net" / "nodes" / "n1")
    return make_node(identity.config, identity.genesis, identity.keys)


async def _arrives(node: Node, sender: int, frame: bytes) -> None:
    """A frame from `sender` read off the wire (the transport reserves its bytes first)."""
    peers = node.peers
    peers._inbound_bytes += len(frame)
    await peers._inbound_send.send((sender, frame))


async def test_a_partition_cuts_both_ways_gives_the_budget_back_and_heals(tmp_path: Path) -> None:
    node = _member(tmp_path)
    peers = node.peers
    cut_file = tmp_path / "partition"
    cut_file.write_text("n2\n")
    follow = partition(node, cut_file)
    counters = peers.counters
    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow)
        # Sends: to n2 cut (counted); to n3 handed to the transport (not connected here).
        with trio.fail_after(10):  # (the file is read every 50 ms)
            await until(lambda: not peers.send(1, b"x") and counters["test_partition_dropped"] > 0)
        before = counters["dropped_not_connected"]
        assert not peers.send(2, b"x") and counters["dropped_not_connected"] == before + 1
        # Receives: n2's frame dropped and its bytes given back; n3's passed on.
        await _arrives(node, 1, b"from n2")
        await _arrives(node, 2, b"from n3")
        with trio.fail_after(10):
            assert await peers.inbound.receive() == (2, b"from n3")
        assert peers._inbound_bytes == len(b"from n3")
        assert counters["test_partition_dropped"] >= 2
        # Healed: n2 again.
        cut_file.write_text("")
        before = counters["dropped_not_connected"]
        with trio.fail_after(10):
            await until(
                lambda: not peers.send(1, b"x") and counters["dropped_not_connected"] > before
            )
        await _arrives(node, 1, b"n2 again")
        with trio.fail_after(10):
            assert await peers.inbound.receive() == (1, b"n2 again")
        nursery.cancel_scope.cancel()
