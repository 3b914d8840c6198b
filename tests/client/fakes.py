"""Fake members for the client library: real ClientServers (node/client_port.py) on
127.0.0.1 whose handlers build real blocks and sign real bundles and reads with the members'
Ed25519 keys, honest unless told to lie, go silent or reject. Shared by the client's tests and
the client port's TLS tests (tests/node/test_tls.py)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from consortium.client.client import ConsortiumClient
from consortium.client.outcome import TxOutcome
from consortium.crypto.codec import WireFormatError
from consortium.crypto.merkle import MerkleTree
from consortium.crypto.signing import Domain, Ed25519Signer
from consortium.ledger.block import Block
from consortium.ledger.certificates import SignedVote, block_signature_body
from consortium.ledger.tx import Transaction
from consortium.node.client_port import ClientConnection, ClientServer
from consortium.protocol.messages import (
    BlockReceipts,
    BlockRequest,
    GetRequest,
    ReceiptRequest,
    Request,
    StatusRequest,
    SubmitRequest,
    SubmitVerdict,
    WatchRequest,
    decode_response,
    encode_block_receipts,
    encode_response,
    encode_status,
    encode_verdicts,
)
from consortium.protocol.verify import ReadReply, receipt_bundle
from tests.ledger.chain_fixture import CLIENT, MEMBERS, ChainBuilder, make_genesis

GENESIS = make_genesis()
PARAMS = GENESIS.params
HOST = "127.0.0.1"


class FakeLedger:
    """Blocks built for real (ChainBuilder); a transaction is placed once, in the first block
    that holds it. Honest members share one; a liar keeps its own, which diverges."""

    def __init__(self, extra_blocks: int = 0) -> None:
        self.builder = ChainBuilder(genesis=GENESIS)
        for _ in range(extra_blocks):
            self.builder.add([])
        self.where: dict[bytes, tuple[Block, int]] = {}

    def commit(self, txs: list[Transaction]) -> list[tuple[Block, int]]:
        new = [t for t in txs if t.id not in self.where]
        if new:
            block = self.builder.add(new, proposed_ms=int(time.time() * 1000))
            for i, tx in enumerate(block.txs):
                self.where.setdefault(tx.id, (block, i))
        return [self.where[t.id] for t in txs]


class FakeMember:
    """A member's client API, honest unless told otherwise:
    silent         never answers a submit
    drop_submits   ignores the first N submits
    reject         rejects every transaction with this reason
    in_verdict     answers with the committed bundle in the submit reply (a resubmission)
    sign_as        signs bundles and reads as another member (a relay or a forger)
    block_pushes   pushes receipts as the member does, one "receipts" frame per block (else
                   one "receipt" push per bundle)
    bad_proofs     pushes those receipts with a wrong Merkle proof (one hash too many)
    """

    def __init__(
        self,
        index: int,
        ledger: FakeLedger,
        *,
        values: dict[bytes, bytes] | None = None,
        silent: bool = False,
        drop_submits: int = 0,
        reject: str = "",
        in_verdict: bool = False,
        sign_as: int | None = None,
        status: str | None = None,
        block_pushes: bool = False,
        bad_proofs: bool = False,
    ) -> None:
        self.index = index
        self.ledger = ledger
        self.values = values if values is not None else {}
        self.silent = silent
        self.drop_submits = drop_submits
        self.reject = reject
        self.in_verdict = in_verdict
        self.sign_as = index if sign_as is None else sign_as
        self.status = status
        self.block_pushes = block_pushes
        self.bad_proofs = bad_proofs
        self.submits = 0
        self.watches = 0

    def vote(self, block: Block) -> SignedVote:
        body = block_signature_body(block.height, block.hash, self.sign_as)
        sig = Ed25519Signer(MEMBERS[self.sign_as]).sign(Domain.BLOCK, GENESIS.chain_id, body)
        return SignedVote(body, sig)

    async def handle(self, conn: ClientConnection, request: Request) -> None:
        await trio.lowlevel.checkpoint()
        match request:
            case SubmitRequest():
                self._submit(conn, request)
            case GetRequest(key=key):
                head = self.ledger.builder.head
                reply = ReadReply.signed(
                    Ed25519Signer(MEMBERS[self.sign_as]),
                    GENESIS.chain_id,
                    self.sign_as,
                    key,
                    self.values.get(key),
                    head.height,
                    head.hash,
                )
                conn.reply(request.req_id, reply.to_array())
            case StatusRequest():
                doc = self.status or encode_status({"member": self.index})
                conn.reply(request.req_id, doc)
            case BlockRequest(height=height):
                blocks = {b.height: b for b, _, _ in self.ledger.builder.blocks}
                block = blocks.get(height)
                conn.reply(request.req_id, None if block is None else block.header.to_array())
            case ReceiptRequest(tx_id=tx_id):
                conn.reply(request.req_id, self._bundle(tx_id))
            case WatchRequest(tx_ids=tx_ids):
                self.watches += 1
                for tx_id in tx_ids:
                    bundle = self._bundle(tx_id)
                    if bundle is not None:
                        conn.push_receipt(bundle)
                conn.reply(request.req_id, None)
            case _:
                conn.error(request.req_id, "unsupported request")

    def _bundle(self, tx_id: bytes) -> list[Any] | None:
        where = self.ledger.where.get(tx_id)
        if self.silent or where is None:
            return None
        block, i = where
        return receipt_bundle(block.header, block.receipts, i, self.vote(block)).to_array()

    def _submit(self, conn: ClientConnection, request: SubmitRequest) -> None:
        self.submits += 1
        if self.silent or self.submits <= self.drop_submits:
            return
        # One verdict per transaction, in the order sent (as node/service.py answers): one
        # that does not decode has no id, its position names it.
        verdicts: list[SubmitVerdict | None] = []
        txs: list[tuple[int, Transaction]] = []
        for raw in request.txs:
            try:
                txs.append((len(verdicts), Transaction.from_array(raw, PARAMS)))
                verdicts.append(None)
            except WireFormatError as exc:
                verdicts.append(SubmitVerdict(b"", "rejected", f"malformed: {exc}"))

        def reply() -> None:
            conn.reply(request.req_id, encode_verdicts([v for v in verdicts if v is not None]))

        if self.reject:
            for i, t in txs:
                verdicts[i] = SubmitVerdict(t.id, "rejected", self.reject)
            reply()
            return
        bundles = [
            receipt_bundle(block.header, block.receipts, i, self.vote(block))
            for block, i in self.ledger.commit([t for _, t in txs])
        ]
        for (i, t), b in zip(txs, bundles, strict=True):
            verdicts[i] = (
                SubmitVerdict(t.id, "committed", b)
                if self.in_verdict
                else SubmitVerdict(t.id, "accepted", "")
            )
        reply()
        if self.in_verdict:
            return
        if self.block_pushes:  # as the member does once the block executes
            by_block: dict[int, tuple[Block, list[int]]] = {}
            for block, i in self.ledger.commit([t for _, t in txs]):
                by_block.setdefault(block.height, (block, []))[1].append(i)
            for block, indexes in by_block.values():
                tree = MerkleTree([r.encode() for r in block.receipts])
                receipts = [block.receipts[i] for i in indexes]
                frame = encode_block_receipts(block.header, self.vote(block), tree, receipts)
                if self.bad_proofs:
                    push = decode_response(frame, 1 << 24)
                    assert isinstance(push, BlockReceipts)
                    for entry in push.entries:
                        entry[1].append(b"\0" * 32)  # (a block of one has an empty path)
                    frame = encode_response(push)
                conn.push_block_receipts(frame)
            return
        for bundle in bundles:  # one push per bundle (a member's answer to a watch)
            conn.push_receipt(bundle)

    def disconnected(self, conn: ClientConnection) -> None:
        pass

    def subscribed(self, conn: ClientConnection) -> bool:
        return bool(conn.watched)


class Cluster:
    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.ports: dict[int, int] = {}
        self._scopes: dict[int, trio.CancelScope] = {}

    async def start(self, member: FakeMember, port: int = 0) -> None:
        self.ports[member.index] = await self._nursery.start(self._run, member, port)

    async def _run(
        self, member: FakeMember, port: int, *, task_status: trio.TaskStatus[int]
    ) -> None:
        with trio.CancelScope() as scope:
            self._scopes[member.index] = scope
            server = ClientServer(
                member, listen=(HOST, port), frame_bytes_max=1 << 20, params=PARAMS
            )
            await server.run(task_status=task_status)

    def stop(self, index: int) -> None:
        self._scopes.pop(index).cancel()

    def addresses(self) -> dict[int, tuple[str, int]]:
        return {i: (HOST, self.ports.get(i, 1)) for i in range(GENESIS.n)}


@asynccontextmanager
async def cluster(*members: FakeMember) -> AsyncIterator[Cluster]:
    async with trio.open_nursery() as nursery:
        c = Cluster(nursery)
        for m in members:
            await c.start(m)
        yield c
        nursery.cancel_scope.cancel()


def honest(count: int = 4, **options: Any) -> list[FakeMember]:
    ledger = FakeLedger()
    return [FakeMember(i, ledger, **options) for i in range(count)]


@asynccontextmanager
async def client_of(c: Cluster, **options: Any) -> AsyncIterator[ConsortiumClient]:
    options.setdefault("retransmit_s", 0.2)
    options.setdefault("connect_timeout_s", 2.0)
    async with ConsortiumClient(GENESIS, CLIENT, addresses=c.addresses(), **options) as client:
        yield client


def committed_in(outcome: TxOutcome, ledger: FakeLedger) -> bool:
    block, index = ledger.where[outcome.tx_id]
    return (
        outcome.status == "committed"
        and outcome.height == block.height
        and outcome.block_hash == block.hash
        and outcome.receipt == block.receipts[index]
    )
