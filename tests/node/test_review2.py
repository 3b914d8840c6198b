"""Review 2 of issue 6 (status/metrics, clients, follow, watches): failing tests that show
what the review found. Each test names the scenario; none of them fixes anything."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import ClassVar

import pytest
import trio

from consortium.cli.network import init_network, load_client_setup
from consortium.crypto.codec import pack
from consortium.crypto.signing import Domain
from consortium.ledger.certificates import block_signature_body
from consortium.ledger.tx import Put, Transaction
from consortium.node import api, follow, runtime, service
from consortium.node.client import ConsortiumClient, _TxState
from consortium.node.config import load_identity
from consortium.node.explain import PeerLink, blockers
from consortium.node.follow import Follower, FollowStream
from consortium.node.metrics import prometheus_text
from consortium.node.runtime import Node, make_node
from consortium.node.service import ClientService
from tests.ledger.chain_fixture import ChainBuilder, vote
from tests.node.test_follow import GENESIS, FakeNode, build_chain, open_store


class ReceiptNode(FakeNode):
    """FakeNode with the real member's receipt lookups (runtime.Node)."""

    first_receipt_bundle = Node.first_receipt_bundle
    make_bundle = Node.make_bundle


async def _max_gap_while(work: object, period_s: float = 0.005) -> float:
    """Run `work` (an async callable) while a probe task sleeps `period_s` in a loop, as the
    core loop ticks; the longest the probe waited beyond its sleep (the event loop frozen)."""
    gaps: list[float] = []

    async def probe(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            t = time.perf_counter()
            await trio.sleep(period_s)
            gaps.append(time.perf_counter() - t - period_s)

    async with trio.open_nursery() as nursery:
        await nursery.start(probe)
        await trio.sleep(0.02)
        await work()  # type: ignore[operator]
        await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    return max(gaps)


# --- critical: one watch frame of committed ids freezes the member ----------------------------


async def test_a_watch_of_committed_ids_does_not_freeze_the_members_event_loop(
    tmp_path: Path,
) -> None:
    """service.py WatchRequest: each committed id costs first_receipt_bundle (two full block
    decodes and a Merkle tree of the block) synchronously, with no checkpoint and no dedupe.
    One 330 KB frame of 10,000 ids (api.TX_IDS_PER_REQUEST_MAX, the same id repeated will do)
    froze a live n1 of the operator walkthrough for 18 s with 100-tx blocks; with 512-tx
    blocks that is ~14 ms per id, ~140 s per frame. The core loop, the peer pump and /healthz
    share that event loop, so consensus stops; the client port needs no authentication
    without TLS. Here: 300 ids of one 512-tx block."""
    chain = build_chain(1, txs_per_block=512)
    node = ReceiptNode(0, open_store(tmp_path, "m0"))
    node.append(chain, 0)
    svc = ClientService(node)  # type: ignore[arg-type]
    conn = api.ClientConnection(1, "attacker", frames_max=100_000)
    ids = [tx.id for tx in chain.blocks[0][0].txs][:300]

    async def work() -> None:
        await svc.handle(conn, api.WatchRequest(1, ids))

    gap = await _max_gap_while(work)
    node.store.close()
    assert gap < 0.25, f"the event loop was frozen for {gap:.2f} s by one watch request"


async def test_a_submit_of_committed_transactions_does_not_freeze_the_members_event_loop(
    tmp_path: Path,
) -> None:
    """service.py _submit: an id already in the ledger is answered with its first receipt,
    built per transaction (the same cost as above) before any check and without yielding. A
    submit frame repeating one committed transaction (its bytes are public: `block`/follow
    return them) costs the same per copy; 16 MiB frames hold ~80,000 copies."""
    chain = build_chain(1, txs_per_block=512)
    node = ReceiptNode(0, open_store(tmp_path, "m0"))
    node.append(chain, 0)

    class _App:
        admitted: ClassVar[dict[bytes, str]] = {}

    class _Metrics:
        submitted = 0
        rejected_at_submit: ClassVar[dict[str, int]] = {}

    node.app = _App()  # type: ignore[attr-defined]
    node.metrics = _Metrics()  # type: ignore[attr-defined]
    node.chain_id = GENESIS.chain_id  # type: ignore[attr-defined]
    svc = ClientService(node)  # type: ignore[arg-type]
    conn = api.ClientConnection(1, "attacker", frames_max=100_000)
    txs = [tx.to_array() for tx in chain.blocks[0][0].txs][:300]

    async def work() -> None:
        await svc.handle(conn, api.SubmitRequest(1, txs))

    gap = await _max_gap_while(work)
    node.store.close()
    assert gap < 0.25, f"the event loop was frozen for {gap:.2f} s by one submit request"


# --- major: follows starve the core loop ---------------------------------------------------


async def test_concurrent_follows_do_not_starve_the_members_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """service.py _stream: each follow reads and decodes a whole stored block (its txs too)
    on the event loop, one per scheduling pass. FOLLOWS_PER_CONNECTION_MAX = 8 and 1024
    connections, with no node-wide bound: 64 follows from height 1 with a client that drains
    (8 connections) make every pass of the scheduler cost 64 block reads (~3-15 ms each for
    512-tx blocks), so the core loop ticks once per pass instead of every 2 ms."""
    monkeypatch.setattr(api, "FOLLOW_QUEUE_BYTES", 1 << 30)  # a reader that keeps up
    chain = build_chain(6, txs_per_block=512)
    node = FakeNode(0, open_store(tmp_path, "m0"))
    node.append(chain, 0)
    svc = ClientService(node)  # type: ignore[arg-type]
    conns = [api.ClientConnection(i + 1, "follower", frames_max=100_000) for i in range(8)]

    async def work() -> None:
        async with trio.open_nursery() as nursery:
            svc._nursery = nursery
            for conn in conns:
                for f in range(api.FOLLOWS_PER_CONNECTION_MAX):
                    await svc.handle(conn, api.FollowRequest(f + 1, 1, api.FOLLOW_CREDIT_MAX))
            await trio.sleep(1.0)
            nursery.cancel_scope.cancel()

    gap = await _max_gap_while(work)
    node.store.close()
    assert gap < 0.1, f"the event loop was frozen for {gap:.2f} s between two core ticks"


# --- major: the client's follow against a lying pbft member -------------------------------


def _forked_blocks(salt: bytes, count: int, signer: int) -> list[api.FollowedBlock]:
    fork = build_chain(count, salt=salt, txs_per_block=1)
    out = []
    for block, _, _ in fork.blocks:
        body = block_signature_body(block.height, block.hash, signer)
        sig = vote(GENESIS, Domain.BLOCK, body, signer)
        out.append(api.FollowedBlock(0, block.header, block.receipts, sig))
    return out


async def test_a_lying_member_cannot_grow_the_followers_memory_without_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """follow.py: `pending` (height -> block hash -> candidate) is cleared only when a height
    is decided. A lying member (n3) that ends its stream and answers the restarted follow with
    a fresh fork of its own (each block validly signed by itself) adds up to ~2 x credit new
    candidates per restart (every RESTART_S), forever, while the honest members are slow or
    down: the docstring's 'at most about 2 x credit blocks per member whatever the members
    send' does not hold. Blocks may be up to frame_bytes_max (16 MiB) each."""
    monkeypatch.setattr(follow, "RESTART_S", 0.0)
    credit = 4
    client = ConsortiumClient(GENESIS)
    liar = 2
    client._members[liar].online = True  # the others are down (or slow)
    follower = Follower(client, 1, credit)
    for round_ in range(6):
        follower.tend()
        stream = follower.streams[liar]
        blocks = _forked_blocks(b"-lie%d" % round_, 2 * credit, liar)
        for block in blocks[:credit]:
            stream.receive(block)
        follower.tend()  # takes them, grants more credit
        for block in blocks[credit : credit + stream.granted]:
            stream.receive(block)
        follower.tend()
        stream.end("closing")  # or the connection drops; the follower asks again
        follower.tend()
        client._members[liar].queue.clear()
    held = sum(len(c) for c in follower.pending.values())
    assert held <= 2 * credit + 1, f"{held} forged blocks held from one lying member"


async def test_a_lying_member_cannot_end_another_members_follow_stream() -> None:
    """client.py _dispatch: an ErrorReply whose req_id is a follow id ends that follow stream
    whichever member sent it (FollowedBlock is checked against stream.member, the error is
    not). Follow ids are the client's sequential req_ids; a lying member that answers errors
    for ids near its own kills every honest member's stream as it restarts (every RESTART_S),
    so a pbft follow never gathers f+1 copies."""
    client = ConsortiumClient(GENESIS)
    honest = FollowStream(0, 7, 1, 4, 1, lambda: None)
    client._follow_streams[7] = honest
    client._dispatch(2, api.encode_response(api.ErrorReply(7, "follow ended")))
    assert honest.ended == "", f"n3's error ended n1's stream: {honest.ended!r}"


# --- major: a Byzantine member's message kinds --------------------------------------------


def _member(tmp_path: Path, mode: str = "pbft") -> Node:
    init_network(tmp_path / "net", members=4 if mode == "pbft" else 3, clients=1, mode=mode)  # type: ignore[arg-type]
    identity = load_identity(tmp_path / "net" / "nodes" / "n1")
    return make_node(identity.config, identity.genesis, identity.keys)


def test_peer_message_kinds_counted_are_bounded(tmp_path: Path) -> None:
    """runtime.count_received: the kind is read from the raw frame (up to 31 arbitrary
    characters) BEFORE it is decoded, and each new kind is a new Counter entry in two
    counters, kept forever and exposed as a Prometheus label value and in every /status and
    /readyz document. One Byzantine member (pbft tolerates f of them) sending [random, ...]
    frames grows the others' memory and the scrape without bound."""
    node = _member(tmp_path)
    for i in range(2000):
        node.count_received(pack([f"junk{i:027d}", 1]))
    kinds = len(node.metrics.received_by_kind)
    text = prometheus_text(node)
    node.store.close()
    assert kinds <= 64, f"{kinds} message kinds kept from one member's junk"
    assert text.count("consortium_messages_received_total{") <= 64


def test_raft_exposes_its_elections_as_view_changes(tmp_path: Path) -> None:
    """metrics.py consortium_view_changes_total says 'elections started (raft)', but reads
    status['view_changes'], which raft's mode_status never sets: always 0 in raft."""
    node = _member(tmp_path, "raft")
    node.core.elections = 3
    text = prometheus_text(node)
    node.store.close()
    line = next(x for x in text.splitlines() if x.startswith("consortium_view_changes_total{"))
    assert line.endswith(" 3"), line


# --- major: watches by id are never forgotten; an unauthenticated peer refuses all submits --


async def test_watches_by_id_from_strangers_cannot_make_every_submit_overloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """runtime.watch / service WatchRequest: a watch by id has no expiry, so it is forgotten
    only when its id executes or its connection closes (09d900c fixed submits only). The
    node-wide WATCHED_TXS_MAX (200,000) is 10 x WATCHES_PER_CONNECTION_MAX (20,000): ten
    connections (of 1024 allowed, no authentication without TLS) watching random ids fill it,
    and from then on every client's submit to this member is refused 'overloaded' (to every
    member: the network takes no transaction). Scaled down here: 2 x 20 ids fill 40."""
    monkeypatch.setattr(runtime, "WATCHED_TXS_MAX", 40)
    monkeypatch.setattr(service, "WATCHES_PER_CONNECTION_MAX", 20)
    node = _member(tmp_path)
    svc = ClientService(node)
    for c in range(2):
        stranger = api.ClientConnection(c + 1, "stranger", frames_max=1000)
        await svc.handle(stranger, api.WatchRequest(1, [os.urandom(32) for _ in range(20)]))
    # Many blocks later (far past any expiry), they are all still watched.
    chain = ChainBuilder()
    far = int(time.time() * 1000) + 10 * 86_400_000
    for i in range(runtime.WATCH_SCAN_BLOCKS):
        block = chain.add([chain.tx(Put(b"x%d" % i, b"v"))], proposed_ms=far)
        v = vote(GENESIS, Domain.BLOCK, b"b", 0)
        node._block_durable(block, v, node._push_receipts(block, v))
    setup = load_client_setup(tmp_path / "net")
    tx = Transaction.create(
        setup.keys()[0],
        node.chain_id,
        secrets.token_bytes(16),
        int(time.time() * 1000) + 60_000,
        [Put(b"k", b"v")],
    )
    client_conn = api.ClientConnection(9, "admitted client", frames_max=1000)
    await svc.handle(client_conn, api.SubmitRequest(1, [tx.to_array()]))
    from consortium.crypto.codec import unpack

    reply = unpack(client_conn._queue[-1])
    node.store.close()
    [verdict] = reply[2]
    assert verdict[1] == "accepted", f"an admitted client's submit was refused: {verdict[2]}"


# --- major: "rejected" that is not final ---------------------------------------------------


async def test_unknown_client_from_f_plus_1_members_is_not_a_final_rejection() -> None:
    """client.py FINAL_REJECTIONS holds 'unknown_client' as 'decided alike from the bytes',
    but since client admission (issue 6) it depends on each member's head: a member that has
    not executed the admission yet (catching up after a restart, or a Byzantine one) answers
    'unknown_client' while up-to-date members accept and order the transaction. With f+1 = 2
    such answers `wait` returns 'rejected' (tx submit exits 1) for a transaction that then
    commits: an ambiguous failure, which the issue rules out."""
    client = ConsortiumClient(GENESIS)
    tx = build_chain(0).tx(Put(b"k", b"v"))
    client._txs[tx.id] = _TxState(tx, first_sent=trio.current_time())
    for lagging in (0, 1):
        client._on_submit_reply(lagging, [[tx.id, "rejected", "unknown_client"]])
    for up_to_date in (2, 3):
        client._on_submit_reply(up_to_date, [[tx.id, "accepted", ""]])
    outcome = client.outcome(tx.id)
    assert outcome.status == "pending", f"{outcome.status}: {outcome.reason}"


# --- major: ready while no peer can reach this member -------------------------------------


def test_a_member_no_peer_can_reach_is_not_ready() -> None:
    """explain.blockers counts a peer as up when WE reach it (outbound). Peers deliver to us
    on THEIR outbound connection (transport: two one-way connections); when none of them can
    reach us (our listen address not the one genesis lists, a firewall on our peer port) we
    hear nothing, yet an idle member says ready (GET /readyz 200) with '4 of 4 up, tolerates
    1 more', and 'behind' never shows since peers' progress comes from their messages."""
    links = [PeerLink(i, f"n{i + 1}", outbound=True, inbound=False) for i in (1, 2, 3)]
    reasons = blockers(
        "pbft",
        {"last_executed": 0, "peers_executed": [0, 0, 0, 0]},
        names=["n1", "n2", "n3", "n4"],
        me=0,
        quorum=3,
        links=links,
        behind_blocks_max=64,
    )
    assert reasons, "no peer can deliver to this member, yet it is ready"


# --- minor: the health port is easy to lock out --------------------------------------------


async def test_idle_connections_do_not_lock_health_probes_out() -> None:
    """http.py: at most CONNECTIONS_MAX (64) connections, each allowed HEAD_TIMEOUT_S (5 s)
    to send its head; beyond that a connection is closed at once, unanswered. 64 sockets that
    send nothing (reopened every 5 s) make every /healthz probe fail, so an orchestrator
    restarts a healthy member. (Also: /healthz runs on the event loop it checks, so after the
    18 s freeze above it answered 'ok: core loop ticked 2 ms ago'.)"""
    from tests.node.test_http import exchange, serving

    async with serving() as server:
        idle = [await trio.open_tcp_stream("127.0.0.1", server.port) for _ in range(64)]
        await trio.sleep(0.1)
        reply = await exchange(server.port, b"GET /healthz HTTP/1.1\r\n\r\n")
        for s in idle:
            await s.aclose()
    assert reply.startswith(b"HTTP/1.1 200"), f"the probe got {reply[:40]!r}"


# --- minor: a signed leadership transfer replays at another member ---------------------------


def test_a_transfer_carried_out_at_one_member_is_refused_as_a_replay_at_another() -> None:
    """service._maintenance_refusal: the signed body is (target, issued_ms, key); it does not
    name the leader it is addressed to, and each member remembers only the bodies it carried
    out itself. An operator moves leadership n1 -> n2 (R1 to n1), then n2 -> n3 (R2 to n2);
    anyone who saw R1 on the plain client port replays it to n3 within 60 s and leadership
    goes back to n2."""
    from consortium.crypto.keys import KeyPair
    from consortium.crypto.signing import Ed25519Signer, Ed25519Verifier
    from tests.ledger.chain_fixture import CLIENT, MEMBERS

    class _Node:
        def __init__(self, me: int) -> None:
            self.me = me
            self.genesis = GENESIS
            self.chain_id = GENESIS.chain_id
            self.verifier = Ed25519Verifier()
            self._on_block: list[object] = []

            class _App:
                admitted: ClassVar[dict[bytes, str]] = {CLIENT.public: "c1"}

            self.app = _App()

    assert isinstance(CLIENT, KeyPair)
    n1, n3 = ClientService(_Node(0)), ClientService(_Node(2))  # type: ignore[arg-type]
    # (Since issue 13 signed by a member's key, for the leader's term.)
    body = api.transfer_body(1, 7, MEMBERS[3].public, 0)
    sig = Ed25519Signer(MEMBERS[3]).sign(Domain.MAINTENANCE, GENESIS.chain_id, body)
    r1 = api.TransferRequest(5, 1, body, sig)
    assert n1._maintenance_refusal(r1) == 7  # carried out at n1 (the leader then)
    assert isinstance(n3._maintenance_refusal(r1), str), "the same signed request moves n3 too"
