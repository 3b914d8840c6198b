"""The browser explorer's endpoints (node/explorer) over a real BlockStore of a built chain:
paging and its limits, bad input as 400 with a JSON error, the per-source rate limit, a
transaction found by id with its receipt document, gathered one at a time; and a real member
serving them on its HTTP port only when node.toml says `explorer = true`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from consortium.cli.network import init_network
from consortium.crypto.signing import Domain, Ed25519Signer
from consortium.ledger.certificates import SignedVote, block_signature_body
from consortium.ledger.genesis import Genesis, Member
from consortium.ledger.store import BlockStore
from consortium.node.config import config_path
from consortium.node.explorer import (
    BLOCKS_LIMIT_MAX,
    BUSY_NOTE,
    FAILURE_TTL_S,
    TXS_LIMIT_MAX,
    Explorer,
)
from consortium.node.http import Request, Response
from consortium.protocol.receipts import ReceiptProof, loads, verify_receipt
from consortium.protocol.verify import receipt_bundle
from tests.ledger.chain_fixture import (
    MEMBERS,
    ChainBuilder,
    block_signatures,
    build_chain,
    make_genesis,
)
from tests.node.test_node_http import get, lone_member


@dataclass
class Source:
    """What the explorer reads of a member, over a real store."""

    store: BlockStore
    genesis: Genesis
    me: int = 0
    status_doc: dict[str, Any] = field(default_factory=dict)
    own_signatures: int = 0  # how often the explorer asked for this member's signature

    @property
    def member(self) -> Member:
        return self.genesis.members[self.me]

    def own_block_signature(self, height: int) -> SignedVote:
        self.own_signatures += 1
        block_hash = self.store.block_hash_at(height)
        assert block_hash is not None
        body = block_signature_body(height, block_hash, self.me)
        signer = Ed25519Signer(MEMBERS[self.me])
        return SignedVote(body, signer.sign(Domain.BLOCK, self.genesis.chain_id, body))


def stored(tmp_path: Path, chain: ChainBuilder) -> Source:
    store = BlockStore.open(tmp_path / "ledger.sqlite", chain.genesis)
    store.append_blocks(chain.blocks)
    return Source(store, chain.genesis, status_doc={"member": "n1", "height": store.height})


@pytest.fixture
def source(tmp_path: Path) -> Iterator[Source]:
    src = stored(tmp_path, build_chain(7, txs_per_block=2))
    yield src
    src.store.close()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def call(
    explorer: Explorer, path: str, query: str = "", peer: str = "127.0.0.1"
) -> tuple[Response, Any]:
    route = explorer.request_routes()[path]
    response = await route(Request("GET", path, "HTTP/1.1", {}, query, peer))
    body = json.loads(response.body) if response.content_type == "application/json" else None
    return response, body


def explorer_of(source: Source, **options: Any) -> Explorer:
    return Explorer(source, lambda: source.status_doc, **options)


async def test_blocks_are_listed_newest_first_in_pages(source: Source) -> None:
    explorer = explorer_of(source)
    response, page = await call(explorer, "/explorer/api/blocks", "limit=3")
    assert response.status == 200 and page["head"] == 7
    assert [b["height"] for b in page["blocks"]] == [7, 6, 5]
    assert page["blocks"][0]["txs"] == 2 and page["blocks"][0]["ok"] == 2
    assert page["next_before"] == 5
    _, older = await call(explorer, "/explorer/api/blocks", "limit=3&before=5")
    assert [b["height"] for b in older["blocks"]] == [4, 3, 2]
    _, last = await call(explorer, "/explorer/api/blocks", "limit=3&before=2")
    assert [b["height"] for b in last["blocks"]] == [1, 0] and last["next_before"] is None
    _, beyond = await call(explorer, "/explorer/api/blocks", "before=1000")  # the head's page
    assert beyond["blocks"][0]["height"] == 7 and beyond["limit"] == 20
    assert len(beyond["blocks"]) == 8  # the genesis block too


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/explorer/api/blocks", f"limit={BLOCKS_LIMIT_MAX + 1}"),
        ("/explorer/api/blocks", "limit=0"),
        ("/explorer/api/blocks", "limit=-1"),
        ("/explorer/api/blocks", "before=-5"),
        ("/explorer/api/blocks", "before=99999999999999999999999"),
        ("/explorer/api/blocks", "limit=ten"),
        ("/explorer/api/blocks", "limit=%ff"),
        ("/explorer/api/block", ""),
        ("/explorer/api/block", "height=-1"),
        ("/explorer/api/block", "height=1.5"),
        ("/explorer/api/tx", "id=zz"),
        ("/explorer/api/tx", "id=" + "g" * 64),
        ("/explorer/api/tx", ""),
        ("/explorer/api/search", "q=hello"),
        # digits, but not ASCII ones: '²' (int() refuses it: a 500 before) and '١٢' (int()
        # reads 12: accepted before)
        ("/explorer/api/blocks", "before=%C2%B2"),
        ("/explorer/api/blocks", "limit=%C2%B2"),
        ("/explorer/api/blocks", "limit=%D9%A1%D9%A2"),
        ("/explorer/api/block", "height=%C2%B2"),
        ("/explorer/api/block", "height=%D9%A1"),
        ("/explorer/api/search", "q=%C2%B2"),
        ("/explorer/api/search", "q=%D9%A1%D9%A2"),
        ("/explorer/api/block", "height=1&limit=0"),
        ("/explorer/api/block", f"height=1&limit={TXS_LIMIT_MAX + 1}"),
        ("/explorer/api/block", "height=1&offset=-1"),
    ],
)
async def test_bad_input_is_400_with_a_json_error(source: Source, path: str, query: str) -> None:
    response, body = await call(explorer_of(source), path, query)
    assert response.status == 400, body
    assert response.content_type == "application/json" and body["error"]


async def test_a_block_shows_its_transactions_and_certificate(source: Source) -> None:
    explorer = explorer_of(source)
    response, block = await call(explorer, "/explorer/api/block", "height=3")
    assert response.status == 200
    assert block["height"] == 3 and len(block["transactions"]) == 2
    row = block["transactions"][0]
    assert row["status"] == "ok" and row["client"] == "c1"
    assert row["ops"][0]["op"] == "put" and row["ops"][0]["key"] == "k2-0"
    cert = block["certificate"]
    assert cert["kind"] == "pbft commit certificate" and cert["seq"] == 3
    assert len(cert["signers"]) >= cert["needed"] == source.genesis.quorum
    missing, body = await call(explorer, "/explorer/api/block", "height=8")
    assert missing.status == 404 and "the head is 7" in body["error"]


async def test_a_transaction_is_found_by_id_with_its_receipt_document(tmp_path: Path) -> None:
    """raft: one member's signature makes a whole receipt document, which verifies offline."""
    chain = ChainBuilder(genesis=make_genesis(mode="raft"))
    chain.add_puts(3)
    chain.add_puts(2)
    src = stored(tmp_path, chain)
    try:
        tx = chain.blocks[1][0].txs[1]
        response, doc = await call(explorer_of(src), "/explorer/api/tx", f"id={tx.id.hex()}")
        assert response.status == 200
        assert (doc["height"], doc["index"], doc["status"]) == (2, 1, "ok")
        assert doc["receipt_valid"] is True, doc["receipt_problem"]
        proof = loads(doc["receipt_document"])
        assert proof.receipt.tx_id == tx.id
        assert verify_receipt(proof, chain.genesis) is None
        unknown, body = await call(explorer_of(src), "/explorer/api/tx", "id=" + "ab" * 32)
        assert unknown.status == 404 and "not in this member's ledger" in body["error"]
    finally:
        src.store.close()


async def test_a_pbft_receipt_without_the_other_members_says_what_it_lacks(source: Source) -> None:
    """No member's client port answers (genesis points nowhere here): the document carries
    this member's signature alone, and the page is told it is incomplete and why."""
    block = source.store.get_block(2)
    assert block is not None
    tx_id = block.block.txs[0].id
    with trio.fail_after(20):
        response, doc = await call(explorer_of(source), "/explorer/api/tx", f"id={tx_id.hex()}")
    assert response.status == 200 and doc["height"] == 2
    assert doc["receipt_valid"] is False
    assert "1 distinct block signatures, 2 needed" in doc["receipt_problem"]
    assert doc["receipt_note"]


async def test_a_pbft_receipt_gathered_from_the_members_is_whole(source: Source) -> None:
    """With a gatherer (`consortium node start` gives the client's lookup), the document
    carries f+1 signatures and verifies; the gatherer is asked once per transaction."""
    stored_block = source.store.get_block(4)
    assert stored_block is not None
    block = stored_block.block
    asked: list[bytes] = []

    async def gather(tx_id: bytes) -> tuple[str | None, str]:
        asked.append(tx_id)
        bundle = receipt_bundle(
            block.header, block.receipts, 1, block_signatures(source.genesis, block)[0]
        )
        signatures = tuple(block_signatures(source.genesis, block, (0, 1)))
        proof = ReceiptProof(
            bundle.receipt, bundle.proof, bundle.tree_size, bundle.header, signatures
        )
        return proof.dumps(source.genesis), ""

    explorer = explorer_of(source, gather=gather)
    tx_id = block.txs[1].id.hex()
    for _ in range(2):
        response, doc = await call(explorer, "/explorer/api/tx", f"id={tx_id}")
        assert response.status == 200 and doc["receipt_valid"] is True, doc["receipt_problem"]
    assert len(loads(doc["receipt_document"]).signatures) == 2
    assert len(asked) == 1  # a whole document is kept

    async def nobody(tx_id: bytes) -> tuple[str | None, str]:
        return None, "could not ask the members: refused"

    _, doc = await call(explorer_of(source, gather=nobody), "/explorer/api/tx", f"id={tx_id}")
    assert doc["receipt_valid"] is False and doc["receipt_note"].endswith("refused")


async def test_every_path_is_rate_limited_per_source(source: Source) -> None:
    clock = Clock()
    explorer = explorer_of(source, rate_per_s=2.0, burst=3, clock=clock)
    for path in ("/explorer/api/head", "/explorer/", "/explorer/api/blocks"):
        response, _ = await call(explorer, path)
        assert response.status == 200, path
    limited, body = await call(explorer, "/explorer/api/network")
    assert limited.status == 429 and ("Retry-After", "1") in limited.headers
    assert "too many requests" in body["error"]
    other, _ = await call(explorer, "/explorer/api/head", peer="127.0.0.2")
    assert other.status == 200  # another source has its own bucket
    clock.now += 0.5  # one token back at 2 a second
    assert (await call(explorer, "/explorer/api/head"))[0].status == 200
    assert (await call(explorer, "/explorer/api/head"))[0].status == 429
    assert explorer.counters["rate_limited"] == 2


async def test_the_page_is_static_and_fetches_nothing_from_elsewhere(source: Source) -> None:
    explorer = explorer_of(source)
    response, _ = await call(explorer, "/explorer/")
    assert response.status == 200 and response.content_type.startswith("text/html")
    assert b'src="/explorer/app.js"' in response.body
    for path in ("/explorer", "/explorer/app.js", "/explorer/app.css"):
        body = (await call(explorer, path))[0].body
        assert b"http://" not in body and b"https://" not in body and b"//cdn" not in body, path
    head, doc = await call(explorer, "/explorer/api/head")
    assert head.status == 200 and doc["height"] == 7
    _, doc = await call(explorer, "/explorer/api/network")
    assert doc["member"] == "n1" and [m["name"] for m in doc["members"]] == ["n1", "n2", "n3", "n4"]


async def test_a_member_serves_the_explorer_only_when_its_config_says_so(tmp_path: Path) -> None:
    init_network(tmp_path / "net", members=4, clients=1)
    with trio.fail_after(20):
        async with lone_member(tmp_path) as node:
            for path in ("/explorer/", "/explorer/api/head", "/explorer/api/blocks"):
                code, _ = await get(node.http_port, path)
                assert code == 404, path
            code, _ = await get(node.http_port, "/healthz")
            assert code == 200
    toml = config_path(tmp_path / "net" / "nodes" / "n1")
    toml.write_text(toml.read_text().replace("[http]\n", "[http]\nexplorer = true\n"))
    with trio.fail_after(20):
        async with lone_member(tmp_path) as node:
            code, body = await get(node.http_port, "/explorer/")
            assert code == 200 and b"Consortium explorer" in body
            code, body = await get(node.http_port, "/explorer/api/network")
            doc = json.loads(body)
            assert code == 200 and doc["member"] == "n1" and doc["f"] == 1 and not doc["ready"]
            code, body = await get(node.http_port, "/explorer/api/blocks?limit=500")
            assert code == 400 and "limit" in json.loads(body)["error"]


@dataclass
class CountingStore:
    """A store that claims `height` blocks and counts its reads (each answers with a real block
    of the wrapped store)."""

    real: BlockStore
    height: int
    reads: list[int] = field(default_factory=list)

    def read_block(self, height: int) -> Any:
        self.reads.append(height)
        return self.real.read_block(height % (self.real.height + 1))


async def test_a_page_of_blocks_reads_only_that_page_however_high_the_chain(
    source: Source,
) -> None:
    """Before, every page built the list of every height below it first (at 10**7 blocks
    0.4 s and 360 MB on the event loop, per request)."""
    huge = CountingStore(source.store, 10**12)
    explorer = explorer_of(Source(huge, source.genesis))  # type: ignore[arg-type]
    with trio.fail_after(10):
        response, page = await call(explorer, "/explorer/api/blocks", "limit=5")
    assert response.status == 200 and page["head"] == 10**12 and len(page["blocks"]) == 5
    assert huge.reads == list(range(10**12, 10**12 - 5, -1))
    assert page["next_before"] == 10**12 - 4
    _, older = await call(explorer, "/explorer/api/blocks", f"limit=3&before={10**12 - 4}")
    assert len(older["blocks"]) == 3 and len(huge.reads) == 8


async def test_concurrent_requests_for_the_same_blocks_share_one_read(source: Source) -> None:
    counting = CountingStore(source.store, source.store.height)
    explorer = explorer_of(Source(counting, source.genesis))  # type: ignore[arg-type]
    pages: list[Any] = []

    async def page() -> None:
        pages.append((await call(explorer, "/explorer/api/blocks", "limit=4"))[1])

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(page)
    assert [[b["height"] for b in p["blocks"]] for p in pages] == [[7, 6, 5, 4]] * 3
    assert sorted(counting.reads) == [4, 5, 6, 7]


async def test_a_block_pages_its_transactions(tmp_path: Path) -> None:
    chain = ChainBuilder(genesis=make_genesis())
    chain.add_puts(5)
    src = stored(tmp_path, chain)
    try:
        explorer = explorer_of(src)
        _, first = await call(explorer, "/explorer/api/block", "height=1&limit=2")
        assert first["txs"] == 5 and (first["offset"], first["limit"]) == (0, 2)
        assert [t["ops"][0]["key"] for t in first["transactions"]] == ["k0", "k1"]
        assert first["next_offset"] == 2 and first["certificate"]["seq"] == 1
        _, last = await call(explorer, "/explorer/api/block", "height=1&offset=4&limit=2")
        assert [t["ops"][0]["key"] for t in last["transactions"]] == ["k4"]
        assert last["next_offset"] is None
        _, beyond = await call(explorer, "/explorer/api/block", "height=1&offset=9")
        assert beyond["transactions"] == [] and beyond["next_offset"] is None
        _, default = await call(explorer, "/explorer/api/block", "height=1")
        assert len(default["transactions"]) == 5 and default["limit"] == 20
    finally:
        src.store.close()


async def test_every_explorer_answer_forbids_other_scripts_and_type_sniffing(
    source: Source,
) -> None:
    explorer = explorer_of(source, rate_per_s=1.0, burst=2, clock=Clock())
    answers = [
        (await call(explorer, "/explorer/"))[0],
        (await call(explorer, "/explorer/api/block", "height=x"))[0],  # an error
        (await call(explorer, "/explorer/app.js"))[0],  # and then rate limited
    ]
    assert [a.status for a in answers] == [200, 400, 429]
    for answer in answers:
        headers = dict(answer.headers)
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Content-Security-Policy"].startswith("default-src 'self'")


def whole_document(source: Source, tx_id: bytes) -> str:
    """The receipt document with f+1 (n1 and n2) signatures, as the members' answers make it."""
    position = source.store.read_tx_position(tx_id)
    assert position is not None
    stored_block = source.store.get_block(position[0])
    assert stored_block is not None
    block = stored_block.block
    mine, other = block_signatures(source.genesis, block, (0, 1))
    bundle = receipt_bundle(block.header, block.receipts, position[1], mine)
    proof = ReceiptProof(
        bundle.receipt, bundle.proof, bundle.tree_size, bundle.header, (mine, other)
    )
    return proof.dumps(source.genesis)


async def test_receipts_are_gathered_one_at_a_time_once_per_transaction(source: Source) -> None:
    """A gather dials every member: 50 lookups at once start one gather. Lookups of the
    transaction being gathered wait for its answer; the others get this member's signature at
    once with "busy: ask again". A failed gather is not repeated for FAILURE_TTL_S."""
    tx_ids = [tx.id for h in range(1, 8) for tx in (source.store.get_block(h) or _no()).block.txs]
    first, fails = tx_ids[0], tx_ids[1]
    release = trio.Event()
    started = trio.Event()
    running = most = 0
    asked: list[bytes] = []

    async def gather(tx_id: bytes) -> tuple[str | None, str]:
        nonlocal running, most
        asked.append(tx_id)
        started.set()
        running += 1
        most = max(most, running)
        try:
            await release.wait()
        finally:
            running -= 1
        if tx_id == fails:
            return None, "could not ask the members: refused"
        return whole_document(source, tx_id), ""

    clock = Clock()
    explorer = explorer_of(source, gather=gather, burst=1000, clock=clock)
    docs: dict[int, Any] = {}
    busy_answered = trio.Event()

    async def lookup(i: int, tx_id: bytes) -> None:
        docs[i] = (await call(explorer, "/explorer/api/tx", f"id={tx_id.hex()}"))[1]
        if len(docs) == 25:
            busy_answered.set()

    lookups = [first] * 25 + [tx_ids[1 + i % 13] for i in range(25)]
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lookup, 0, first)
            await started.wait()
            for i, tx_id in enumerate(lookups[1:], 1):
                nursery.start_soon(lookup, i, tx_id)
            await busy_answered.wait()  # the busy answers come at once
            assert asked == [first] and most == 1
            assert sorted(docs) == list(range(25, 50))
            for doc in docs.values():
                assert doc["receipt_note"] == BUSY_NOTE and doc["receipt_valid"] is False
            release.set()
    assert asked == [first] and most == 1
    for i in range(25):
        assert docs[i]["receipt_valid"] is True, docs[i]
        assert len(loads(docs[i]["receipt_document"]).signatures) == 2
    signed = source.own_signatures

    # Free again: the next lookup gathers; a failure is remembered, then retried. The document
    # with this member's signature alone was made for the busy answer, and is kept.
    with trio.fail_after(20):
        for _ in range(3):
            _, doc = await call(explorer, "/explorer/api/tx", f"id={fails.hex()}")
            assert doc["receipt_valid"] is False and doc["receipt_note"].endswith("refused")
        assert asked == [first, fails] and source.own_signatures == signed
        clock.now += FAILURE_TTL_S + 1
        await call(explorer, "/explorer/api/tx", f"id={fails.hex()}")
        assert asked == [first, fails, fails]


def _no() -> Any:
    raise AssertionError("a block of the chain is missing")
