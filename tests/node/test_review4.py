"""Review 4 (receipts before the write, background block writes, raft leader hint): failing
tests for what the change broke, kept as regressions."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest
import trio

from consortium.cli.network import init_network, load_client_setup
from consortium.crypto.signing import Domain
from consortium.ledger.block import Block
from consortium.ledger.certificates import SignedVote, block_signature_body
from consortium.ledger.state import Execution
from consortium.ledger.store import StoreError
from consortium.ledger.tx import Put, Transaction
from consortium.node import api
from consortium.node.config import load_identity
from consortium.node.runtime import Node, make_node
from consortium.pbft.effects import CommittedBatch

BlockItems = list[tuple[Block, Execution, bytes | None]]


def _member(tmp_path: Path, mode: str = "pbft") -> Node:
    init_network(tmp_path / "net", members=4 if mode == "pbft" else 3, clients=1, mode=mode)  # type: ignore[arg-type]
    identity = load_identity(tmp_path / "net" / "nodes" / "n1")
    return make_node(identity.config, identity.genesis, identity.keys)


class _Certificate:
    def encode(self) -> bytes:
        return b"certificate"


class _Core:
    pending_count = 1  # under load: a write of blocks only goes to the background

    def executed(self, height: int, block_hash: bytes) -> None:
        pass


def _execute_put(node: Node, tmp_path: Path, key: bytes, value: bytes) -> BlockItems:
    """Node._execute of one committed batch holding one put (the core is a stand-in): the
    block built on the head to execute on and applied to the application, durable later."""
    client = load_client_setup(tmp_path / "net").keys()[0]
    now = int(time.time() * 1000)
    tx = Transaction.create(client, node.chain_id, os.urandom(16), now + 60_000, [Put(key, value)])
    node.core = _Core()  # type: ignore[assignment]
    seq = node._exec_head().height + 1
    batch = CommittedBatch(seq, 0, b"d" * 32, now, (tx,), _Certificate())  # type: ignore[arg-type]
    blocks: BlockItems = []
    node._execute(batch, blocks, [])
    assert blocks[0][0].receipts[0].status == "ok", blocks[0][0].receipts[0]
    return blocks


def _signatures(node: Node, blocks: BlockItems) -> list[tuple[int, SignedVote]]:
    out = []
    for block, _, _ in blocks:
        body = block_signature_body(block.height, block.hash, node.me)
        out.append(
            (block.height, SignedVote(body, node.signer.sign(Domain.BLOCK, node.chain_id, body)))
        )
    return out


# --- critical: a failed background write does not stop the next one -------------------------


async def test_after_a_background_block_write_fails_no_later_write_reaches_the_disk(
    tmp_path: Path,
) -> None:
    """Node._write / _finish_write: a write of blocks only runs in the background; the next
    write waits for it, then stages and commits. When the background COMMIT fails (EIO, disk
    full), _finish_write sets `done` in its `finally` BEFORE its exception reaches the nursery,
    so the waiting core task wakes and commits the next write anyway: a raft compaction point
    or a pbft stable checkpoint (records) becomes durable above blocks that were rolled back,
    which recovery cannot repair (the log entries the blocks came from are compacted away).
    Nothing after a failed write may be written."""
    node = _member(tmp_path)
    store = node.store
    real_commit = store.commit_staged
    calls = 0

    def failing_once() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            store._staged = None  # what commit_staged does when COMMIT raises
            store._failed(sqlite3.OperationalError("disk I/O error"))
        real_commit()

    store.commit_staged = failing_once  # type: ignore[method-assign]
    blocks = _execute_put(node, tmp_path, b"k", b"v")

    async def core() -> None:
        await node._write(blocks=blocks, records=[], block_signatures=_signatures(node, blocks))
        # The next core step: a compaction point covering that block (records only).
        await node._write(
            blocks=[], records=[(b"raft/snap", b"covers block 1")], block_signatures=[]
        )

    failed = False
    try:
        async with trio.open_nursery() as nursery:
            node._nursery = nursery
            nursery.start_soon(core)
    except* StoreError:
        failed = True
    assert failed
    assert store.height == 0
    assert store.load_records(b"raft/") == [], "a write after the failed one reached the disk"


# --- major: a signed read names a height its value is not from --------------------------------


async def test_a_signed_read_during_a_background_write_names_the_height_of_its_value(
    tmp_path: Path,
) -> None:
    """Node.signed_read signs (key, value, height, block hash) with the value from `self.app`
    (which reflects every EXECUTED block) but the height and hash of `self.store.head` (the last
    DURABLE one). Before this change the two never differed where a read could see them; now
    a block-only write runs in the background (and a write with records awaits a worker
    thread), and a read served meanwhile signs 'k = v at height 0' though k was absent at 0.
    In pbft Q members may sign that same false statement (a quorum-certified read proof)."""
    node = _member(tmp_path)
    blocks = _execute_put(node, tmp_path, b"k", b"v")
    async with trio.open_nursery() as nursery:
        node._nursery = nursery
        await node._write(blocks=blocks, records=[], block_signatures=_signatures(node, blocks))
        assert node.store.height == 0  # the write is in flight
        key, value, height, block_hash, _, _ = await node.read_value(b"k")
        assert (key, value) == (b"k", b"v")
        assert (height, block_hash) == (1, blocks[0][0].hash)
    key, value, height, _, _, _ = await node.read_value(b"k")
    assert (value, height) == (b"v", 1)


# --- minor: a leader hint that is a digit to str.isdigit but not to int() ---------------------


@pytest.mark.parametrize("detail", ["leader:\u00b2", "leader:\u0661", "leader:1\u00b9"])
def test_a_leader_hint_in_other_digits_is_no_hint_and_raises_nothing(detail: str) -> None:
    """api.leader_hint checks `str.isdigit()`, which is True for '²' (int() refuses it:
    ValueError in the client's reply handler) and for Arabic-Indic digits (int() takes them):
    only ASCII digits are a member index."""
    assert api.leader_hint(detail, 3) is None
