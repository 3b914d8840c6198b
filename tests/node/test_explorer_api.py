"""The browser explorer's endpoints (node/explorer) over a real BlockStore of a built chain:
paging and its limits, bad input as 400 with a JSON error, the per-source rate limit, a
transaction found by id with its receipt document; and a real member serving them on its HTTP
port only when node.toml says `explorer = true`."""

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
from consortium.node.explorer import BLOCKS_LIMIT_MAX, Explorer
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

    @property
    def member(self) -> Member:
        return self.genesis.members[self.me]

    def own_block_signature(self, height: int) -> SignedVote:
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
