"""A member forgets a watch when it pushes the receipt, or once the transaction has expired: a
long-lived client connection never fills up with ids it will not hear about again (a 1M-tx
bench run once stalled at 20,000 watches per connection: they were never forgotten)."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Any

import pytest

from consortium.cli.network import init_network, load_client_setup
from consortium.crypto.codec import unpack
from consortium.crypto.signing import Domain
from consortium.ledger.certificates import SignedVote
from consortium.ledger.tx import Put, Transaction
from consortium.node import service, watches
from consortium.node.client_port import ClientConnection
from consortium.node.config import load_identity
from consortium.node.runtime import Node, make_node
from consortium.node.service import ClientService
from consortium.protocol.messages import SubmitRequest, WatchRequest
from tests.ledger.chain_fixture import CREATED_MS, ChainBuilder, build_chain, vote
from tests.node.fakes import GENESIS, ReceiptNode, last_reply, max_gap_while, open_store


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


def _member(tmp_path: Path, mode: str = "pbft") -> Node:
    init_network(tmp_path / "net", members=4 if mode == "pbft" else 3, clients=1, mode=mode)  # type: ignore[arg-type]
    identity = load_identity(tmp_path / "net" / "nodes" / "n1")
    return make_node(identity.config, identity.genesis, identity.keys)


VOTE = SignedVote(b"body", b"\0" * 64)


def test_a_pushed_receipt_ends_the_watch_on_the_connection_too(tmp_path: Path) -> None:
    node = member(tmp_path)
    chain = ChainBuilder()
    conn = FakeConnection()
    txs = [chain.tx(Put(b"k%d" % i, b"v")) for i in range(3)]
    for tx in txs:
        assert node.service.watches.watch(tx.id, conn, tx.expiry_ms)
    assert conn.watched == {tx.id for tx in txs}
    block = chain.add(txs[:2])
    node.service.watches.executed(block, VOTE)
    node.service.watches.durable(block, VOTE)
    assert len(conn.frames) == 1  # one frame for the block's two receipts
    assert conn.watched == {txs[2].id} and node.service.watches.count == 1


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
    assert node.service.watches.watch(txs[0].id, early, txs[0].expiry_ms)
    block = chain.add(txs)
    node.service.watches.executed(block, VOTE)
    assert len(early.frames) == 1 and early.watched == set()
    assert node.service.watches.watch(txs[1].id, late, txs[1].expiry_ms)  # during the write
    assert late.frames == []
    node.service.watches.durable(block, VOTE)
    assert len(late.frames) == 1 and late.watched == set()
    assert len(early.frames) == 1  # not pushed twice
    assert node.service.watches.count == 0


def test_watches_of_expired_transactions_are_forgotten(tmp_path: Path) -> None:
    node = member(tmp_path)
    chain = ChainBuilder()
    conn = FakeConnection()
    short = chain.tx(Put(b"a", b"v"), expiry_ms=CREATED_MS + 1_000)
    long = chain.tx(Put(b"b", b"v"), expiry_ms=CREATED_MS + 10_000_000)
    for tx in (short, long):
        node.service.watches.watch(tx.id, conn, tx.expiry_ms)
    for i in range(watches.WATCH_SCAN_BLOCKS):
        block = chain.add([chain.tx(Put(b"other %d" % i, b"v"))], proposed_ms=CREATED_MS + 5_000)
        node.service.watches.executed(block, VOTE)
        node.service.watches.durable(block, VOTE)
    assert conn.watched == {long.id} and node.service.watches.count == 1
    assert conn.frames == []  # nothing was pushed: neither executed


def test_a_connection_keeps_submitting_past_the_per_connection_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "WATCHES_PER_CONNECTION_MAX", 4)
    node = member(tmp_path)
    svc = node.service
    chain = ChainBuilder()
    conn = FakeConnection()
    for round_ in range(5):  # 5 x 4 watches through one connection, each round executed
        txs = [chain.tx(Put(b"k%d.%d" % (round_, i), b"v")) for i in range(4)]
        assert all(svc._watch(conn, tx.id, tx.expiry_ms) for tx in txs), round_  # type: ignore[arg-type]
        assert not svc._watch(conn, chain.tx(Put(b"x", b"y")).id)  # type: ignore[arg-type]
        block = chain.add(txs)
        node.service.watches.executed(block, VOTE)
        node.service.watches.durable(block, VOTE)
        assert conn.watched == set()


# --- critical: one watch frame of committed ids freezes the member ----------------------------


# (Review 2 of issue 6: a failing test that showed what the review found.)
async def test_a_watch_of_committed_ids_does_not_freeze_the_members_event_loop(
    tmp_path: Path,
) -> None:
    """service.py WatchRequest: each committed id costs first_receipt_bundle (two full block
    decodes and a Merkle tree of the block) synchronously, with no checkpoint and no dedupe.
    One 330 KB frame of 10,000 ids (limits.TX_IDS_PER_REQUEST_MAX, the same id repeated will do)
    froze a live n1 of the operator walkthrough for 18 s with 100-tx blocks; with 512-tx
    blocks that is ~14 ms per id, ~140 s per frame. The core loop, the peer pump and /healthz
    share that event loop, so consensus stops; the client port needs no authentication
    without TLS. Here: 300 ids of one 512-tx block."""
    chain = build_chain(1, txs_per_block=512)
    node = ReceiptNode(0, open_store(tmp_path, "m0"))
    node.append(chain, 0)
    svc = ClientService(node)  # type: ignore[arg-type]
    conn = ClientConnection(1, "attacker", frames_max=100_000)
    ids = [tx.id for tx in chain.blocks[0][0].txs][:300]

    async def work() -> None:
        await svc.handle(conn, WatchRequest(1, ids))

    gap = await max_gap_while(work)
    node.store.close()
    assert gap < 0.25, f"the event loop was frozen for {gap:.2f} s of CPU by one watch request"


# --- major: watches by id are never forgotten; an unauthenticated peer refuses all submits --


# (Review 2 of issue 6: a failing test that showed what the review found.)
async def test_watches_by_id_from_strangers_cannot_make_every_submit_overloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """watches.watch / service WatchRequest: a watch by id has no expiry, so it is forgotten
    only when its id executes or its connection closes (09d900c fixed submits only). The
    node-wide WATCHED_TXS_MAX (200,000) is 10 x WATCHES_PER_CONNECTION_MAX (20,000): ten
    connections (of 1024 allowed, no authentication without TLS) watching random ids fill it,
    and from then on every client's submit to this member is refused 'overloaded' (to every
    member: the network takes no transaction). Scaled down here: 2 x 20 ids fill 40."""
    monkeypatch.setattr(watches, "WATCHED_TXS_MAX", 40)
    monkeypatch.setattr(service, "WATCHES_PER_CONNECTION_MAX", 20)
    node = _member(tmp_path)
    svc = node.service
    for c in range(2):
        stranger = ClientConnection(c + 1, "stranger", frames_max=1000)
        await svc.handle(stranger, WatchRequest(1, [os.urandom(32) for _ in range(20)]))
    # Many blocks later (far past any expiry), they are all still watched.
    chain = ChainBuilder()
    far = int(time.time() * 1000) + 10 * 86_400_000
    for i in range(watches.WATCH_SCAN_BLOCKS):
        block = chain.add([chain.tx(Put(b"x%d" % i, b"v"))], proposed_ms=far)
        v = vote(GENESIS, Domain.BLOCK, b"b", 0)
        node.service.watches.executed(block, v)
        node.service.watches.durable(block, v)
    setup = load_client_setup(tmp_path / "net")
    tx = Transaction.create(
        setup.keys()[0],
        node.chain_id,
        secrets.token_bytes(16),
        int(time.time() * 1000) + 60_000,
        [Put(b"k", b"v")],
    )
    client_conn = ClientConnection(9, "admitted client", frames_max=1000)
    await svc.handle(client_conn, SubmitRequest(1, [tx.to_array()]))
    reply = unpack(client_conn._queue[-1])
    node.store.close()
    [verdict] = reply[2]
    assert verdict[1] == "accepted", f"an admitted client's submit was refused: {verdict[2]}"


# --- c92f487: watches by id share one node-wide bound with strangers ----------------------


# (Review 3: a regression found in the review-1/review-2 fix commits.)
async def test_strangers_watching_random_ids_cannot_lock_honest_watches_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """watches.watch_id: watches by id take at most WATCHED_TXS_MAX // 4 = 50,000 node-wide,
    5,000 per connection, no authentication without TLS. Ten connections watching random ids
    (re-watched every ID_WATCH_AGE_S) fill the share, and every honest watch by id
    (`consortium tx status`, ConsortiumClient.wait_one/watch of an id submitted elsewhere or
    before a restart) is refused 'too many pending receipts watched': its receipt is never
    pushed and the client reports 'pending' for a committed transaction. The review-2
    lockout moved from submits to watches. Scaled down: share 10, 5 per connection."""
    monkeypatch.setattr(watches, "WATCHED_TXS_MAX", 40)
    monkeypatch.setattr(service, "ID_WATCHES_PER_CONNECTION_MAX", 5)
    node = _member(tmp_path)
    svc = node.service
    for c in range(2):
        stranger = ClientConnection(c + 1, "stranger", frames_max=1000)
        await svc.handle(stranger, WatchRequest(1, [os.urandom(32) for _ in range(5)]))
    honest = ClientConnection(9, "honest client", frames_max=1000)
    await svc.handle(honest, WatchRequest(1, [os.urandom(32)]))
    node.store.close()
    reply = last_reply(honest)
    assert reply[1] != "error", f"an honest watch by id was refused: {reply[2]}"
