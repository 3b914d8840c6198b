"""A member's block writes in the background (runtime.Node._write, carrying out the executor's
Write effect): under load a write of
blocks only runs while the core goes on executing, so the application is ahead of the store.
Nothing is written after a failed write, a signed read names the height its value is from, and
the next write stages on top of the finished one with nothing left pinned in the state cache."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import trio

from consortium.cli.network import init_network, load_client_setup
from consortium.ledger.state import CachedTable
from consortium.ledger.store import StoreError
from consortium.ledger.tx import Delete, Op, Put, Transaction
from consortium.node.config import load_identity
from consortium.node.executor import Effect, Executed, Write
from consortium.node.runtime import Node, make_node
from consortium.pbft.effects import CommittedBatch, Ready


def _member(tmp_path: Path, mode: str = "pbft") -> Node:
    init_network(tmp_path / "net", members=4 if mode == "pbft" else 3, clients=1, mode=mode)  # type: ignore[arg-type]
    identity = load_identity(tmp_path / "net" / "nodes" / "n1")
    return make_node(identity.config, identity.genesis, identity.keys)


class _Certificate:
    def encode(self) -> bytes:
        return b"certificate"


class _Core:
    """A stand-in pbft core that commits what a test hands it (scripted Readies)."""

    pending_count = 1  # under load: a write of blocks only goes to the background

    def __init__(self) -> None:
        self.readies: list[Ready] = []

    def take_ready(self) -> Ready:
        return self.readies.pop(0) if self.readies else Ready([], [], [], [], [], [])

    def executed(self, height: int, block_hash: bytes) -> None:
        pass


def _core(node: Node) -> _Core:
    if not isinstance(node.core, _Core):
        node.core = node.executor.core = _Core()  # type: ignore[assignment]
    return node.core


def _commit(node: Node, tmp_path: Path, *batches: list[Op]) -> list[Effect]:
    """One executor step of the stand-in core committing one batch per item of `batches`
    (each one transaction holding those ops): its effects, to carry out."""
    client = load_client_setup(tmp_path / "net").keys()[0]
    now = int(time.time() * 1000)
    committed = []
    seq = node.executor.head.height
    for ops in batches:
        tx = Transaction.create(client, node.chain_id, os.urandom(16), now + 60_000, ops)
        seq += 1
        committed.append(CommittedBatch(seq, 0, b"d" * 32, now, (tx,), _Certificate()))  # type: ignore[arg-type]
    _core(node).readies.append(Ready([], [], [], committed, [], []))
    effects = node.executor.step()
    for effect in effects:
        if isinstance(effect, Executed):
            assert effect.block.receipts[0].status == "ok", effect.block.receipts[0]
    return effects


def _records_step(node: Node, records: list[tuple[bytes, bytes | None]]) -> list[Effect]:
    _core(node).readies.append(Ready(records, [], [], [], [], []))
    return node.executor.step()


def _write_of(effects: list[Effect]) -> Write:
    (write,) = [e for e in effects if isinstance(e, Write)]
    return write


# --- critical: a failed background write does not stop the next one -------------------------


# (Review 4: a failing test for what background block writes broke.)
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
    with trio.fail_after(10):
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
        first = _commit(node, tmp_path, [Put(b"k", b"v")])
        assert not _write_of(first).holds  # blocks alone: in the background

        async def core() -> None:
            await node._carry_out(first)
            # The next core step: a compaction point covering that block (records only).
            await node._carry_out(_records_step(node, [(b"raft/snap", b"covers block 1")]))

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


# (Review 4: a failing test for what background block writes broke.)
async def test_a_signed_read_during_a_background_write_names_the_height_of_its_value(
    tmp_path: Path,
) -> None:
    """Node.signed_read signs (key, value, height, block hash) with the value from `self.app`
    (which reflects every EXECUTED block) but the height and hash of `self.store.head` (the last
    DURABLE one). Before this change the two never differed where a read could see them; now
    a block-only write runs in the background (and a write with records awaits a worker
    thread), and a read served meanwhile signs 'k = v at height 0' though k was absent at 0.
    In pbft Q members may sign that same false statement (a quorum-certified read proof)."""
    with trio.fail_after(10):
        node = _member(tmp_path)
        effects = _commit(node, tmp_path, [Put(b"k", b"v")])
        async with trio.open_nursery() as nursery:
            node._nursery = nursery
            await node._carry_out(effects)
            assert node.store.height == 0  # the write is in flight
            key, value, height, block_hash, _, _ = await node.read_value(b"k")
            assert (key, value) == (b"k", b"v")
            assert (height, block_hash) == (1, _write_of(effects).blocks[0][0].hash)
        key, value, height, _, _, _ = await node.read_value(b"k")
        assert (value, height) == (b"v", 1)


# (Review 5: a probe of background block writes and the cached state's write counter.)
async def test_next_write_stages_on_an_app_ahead_of_the_finished_write_and_nothing_stays_pinned(
    tmp_path: Path,
) -> None:
    """W1 (blocks 1-2) in flight; block 3 executes and applies; W1 finishes; W2 stages block 3
    (_applied_prefix sees the app at block 3's root: 1). A-B-A on k across the two writes, a
    delete of a present key, then everything durable: nothing pinned, store == app."""
    with trio.fail_after(10):
        node = _member(tmp_path)
        kv, replay = node.app.kv, node.app.replay
        assert isinstance(kv, CachedTable) and isinstance(replay, CachedTable)
        w1 = _commit(node, tmp_path, [Put(b"k", b"v"), Put(b"gone", b"x")], [Put(b"j", b"1")])
        async with trio.open_nursery() as nursery:
            node._nursery = nursery
            await node._carry_out(w1)
            assert node.store.height == 0 and node._writing is not None
            # block 3, then block 4: k back to v
            w2 = _commit(node, tmp_path, [Delete(b"k"), Delete(b"gone")], [Put(b"k", b"v")])
            assert node.executor.head.height == 4
            await node._writing.wait()  # W1 finishes while the app is at block 4
            assert node.store.height == 2
            assert kv.get(b"k") == b"v" and kv.get(b"gone") is None
            await node._carry_out(w2)
        assert node.store.height == 4
        assert kv.pinned == 0 and replay.pinned == 0
        for key, want in [(b"k", b"v"), (b"gone", None), (b"j", b"1")]:
            row = node.store._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
            assert (None if row is None else bytes(row[0])) == want
            assert kv.get(key) == want
