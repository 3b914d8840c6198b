"""Review 5: background block writes and the cached state's write counter (probes)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import trio

from consortium.cli.network import load_client_setup
from consortium.ledger.state import CachedTable
from consortium.ledger.tx import Delete, Put, Transaction
from consortium.pbft.effects import CommittedBatch
from tests.node.test_review4 import BlockItems, _Certificate, _Core, _member, _signatures


def _execute(node, tmp_path: Path, ops, blocks: BlockItems) -> None:
    """Node._execute of one committed batch on top of `blocks` (or the head to execute on)."""
    client = load_client_setup(tmp_path / "net").keys()[0]
    now = int(time.time() * 1000)
    tx = Transaction.create(client, node.chain_id, os.urandom(16), now + 60_000, ops)
    node.core = _Core()  # type: ignore[assignment]
    seq = (blocks[-1][0].height if blocks else node._exec_head().height) + 1
    batch = CommittedBatch(seq, 0, b"d" * 32, now, (tx,), _Certificate())  # type: ignore[arg-type]
    node._execute(batch, blocks, [])


async def test_next_write_stages_on_an_app_ahead_of_the_finished_write_and_nothing_stays_pinned(
    tmp_path: Path,
) -> None:
    """W1 (blocks 1-2) in flight; block 3 executes and applies; W1 finishes; W2 stages block 3
    (_applied_prefix sees the app at block 3's root: 1). A-B-A on k across the two writes, a
    delete of a present key, then everything durable: nothing pinned, store == app."""
    node = _member(tmp_path)
    kv, replay = node.app.kv, node.app.replay
    assert isinstance(kv, CachedTable) and isinstance(replay, CachedTable)
    w1: BlockItems = []
    _execute(node, tmp_path, [Put(b"k", b"v"), Put(b"gone", b"x")], w1)
    _execute(node, tmp_path, [Put(b"j", b"1")], w1)
    async with trio.open_nursery() as nursery:
        node._nursery = nursery
        await node._write(blocks=w1, records=[], block_signatures=_signatures(node, w1))
        assert node.store.height == 0 and node._writing is not None
        w2: BlockItems = []
        _execute(node, tmp_path, [Delete(b"k"), Delete(b"gone")], w2)  # block 3
        _execute(node, tmp_path, [Put(b"k", b"v")], w2)  # block 4: k back to v
        assert node._exec_head().height == 4
        await node._writing.wait()  # W1 finishes while the app is at block 4
        assert node.store.height == 2
        assert kv.get(b"k") == b"v" and kv.get(b"gone") is None
        await node._write(blocks=w2, records=[], block_signatures=_signatures(node, w2))
    assert node.store.height == 4
    assert kv.pinned == 0 and replay.pinned == 0
    for key, want in [(b"k", b"v"), (b"gone", None), (b"j", b"1")]:
        row = node.store._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        assert (None if row is None else bytes(row[0])) == want
        assert kv.get(key) == want
