"""A member forgets a watch when it pushes the receipt, or once the transaction has expired: a
long-lived client connection never fills up with ids it will not hear about again (a 1M-tx
bench run once stalled at 20,000 watches per connection: they were never forgotten)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from consortium.cli.network import init_network
from consortium.ledger.certificates import SignedVote
from consortium.ledger.tx import Put
from consortium.node import runtime, service
from consortium.node.config import load_identity
from consortium.node.runtime import Node, make_node
from tests.ledger.chain_fixture import CREATED_MS, ChainBuilder


class FakeConnection:
    def __init__(self) -> None:
        self.id = 1
        self.watched: set[bytes] = set()
        self.frames: list[bytes] = []

    def push_block_receipts(self, frame: bytes) -> bool:
        self.frames.append(frame)
        return True

    def push_receipt(self, bundle: Any) -> bool:
        self.frames.append(b"single")
        return True

    def reply(self, req_id: int, payload: Any) -> bool:
        return True


def member(tmp_path: Path) -> Node:
    init_network(tmp_path / "net", members=4, clients=1)
    identity = load_identity(tmp_path / "net" / "nodes" / "n1")
    return make_node(identity.config, identity.genesis, identity.keys)


VOTE = SignedVote(b"body", b"\0" * 64)


def test_a_pushed_receipt_ends_the_watch_on_the_connection_too(tmp_path: Path) -> None:
    node = member(tmp_path)
    chain = ChainBuilder()
    conn = FakeConnection()
    txs = [chain.tx(Put(b"k%d" % i, b"v")) for i in range(3)]
    for tx in txs:
        assert node.watch(tx.id, conn, tx.expiry_ms)
    assert conn.watched == {tx.id for tx in txs}
    block = chain.add(txs[:2])
    node._block_durable(block, VOTE, node._push_receipts(block, VOTE))
    assert len(conn.frames) == 1  # one frame for the block's two receipts
    assert conn.watched == {txs[2].id} and node._watch_count == 1


def test_receipts_leave_before_the_write_and_a_watch_made_during_it_is_answered_after(
    tmp_path: Path,
) -> None:
    """Receipts are pushed when the block executes, before its write (Node._push_receipts);
    a watch registered while the write runs (it found nothing in the store) is answered when
    the write is done, not left waiting for a block that already executed."""
    node = member(tmp_path)
    chain = ChainBuilder()
    early, late = FakeConnection(), FakeConnection()
    txs = [chain.tx(Put(b"k%d" % i, b"v")) for i in range(2)]
    assert node.watch(txs[0].id, early, txs[0].expiry_ms)
    block = chain.add(txs)
    duplicates = node._push_receipts(block, VOTE)
    assert len(early.frames) == 1 and early.watched == set()
    assert node.watch(txs[1].id, late, txs[1].expiry_ms)  # during the write
    assert late.frames == []
    node._block_durable(block, VOTE, duplicates)
    assert len(late.frames) == 1 and late.watched == set()
    assert len(early.frames) == 1  # not pushed twice
    assert node._watch_count == 0


def test_watches_of_expired_transactions_are_forgotten(tmp_path: Path) -> None:
    node = member(tmp_path)
    chain = ChainBuilder()
    conn = FakeConnection()
    short = chain.tx(Put(b"a", b"v"), expiry_ms=CREATED_MS + 1_000)
    long = chain.tx(Put(b"b", b"v"), expiry_ms=CREATED_MS + 10_000_000)
    for tx in (short, long):
        node.watch(tx.id, conn, tx.expiry_ms)
    for i in range(runtime.WATCH_SCAN_BLOCKS):
        block = chain.add([chain.tx(Put(b"other %d" % i, b"v"))], proposed_ms=CREATED_MS + 5_000)
        node._block_durable(block, VOTE, node._push_receipts(block, VOTE))
    assert conn.watched == {long.id} and node._watch_count == 1
    assert conn.frames == []  # nothing was pushed: neither executed


def test_a_connection_keeps_submitting_past_the_per_connection_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "WATCHES_PER_CONNECTION_MAX", 4)
    node = member(tmp_path)
    svc = service.ClientService(node)
    chain = ChainBuilder()
    conn = FakeConnection()
    for round_ in range(5):  # 5 x 4 watches through one connection, each round executed
        txs = [chain.tx(Put(b"k%d.%d" % (round_, i), b"v")) for i in range(4)]
        assert all(svc._watch(conn, tx.id, tx.expiry_ms) for tx in txs), round_  # type: ignore[arg-type]
        assert not svc._watch(conn, chain.tx(Put(b"x", b"y")).id)  # type: ignore[arg-type]
        block = chain.add(txs)
        node._block_durable(block, VOTE, node._push_receipts(block, VOTE))
        assert conn.watched == set()
