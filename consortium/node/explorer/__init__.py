"""The browser explorer: a read-only page and its JSON endpoints on the member's HTTP port,
served only with `[http] explorer = true` in node.toml (it shows ledger contents, transaction
operations included, to whoever reaches the port: docs/operations.md, "Explorer").

    /explorer/                         the page (static/index.html, app.js, app.css: shipped in
                                       the package, no build step, nothing fetched elsewhere)
    /explorer/api/network              members, mode, view/term, leader, heights, fault budget,
                                       why this member is not making progress (the /status
                                       document, as this member sees its peers)
    /explorer/api/head                 height and head hash: what the page polls every second
    /explorer/api/blocks?before=H&limit=N
                                       block summaries, newest first, below height H (default:
                                       the head); N from 1 to BLOCKS_LIMIT_MAX (default 20);
                                       `next_before` pages on
    /explorer/api/block?height=H&offset=O&limit=N
                                       one block: header, its certificate and the block
                                       signatures stored here, and its transactions with their
                                       receipts from the O-th on, N of them (1 to
                                       TXS_LIMIT_MAX, default 20); `next_offset` pages on
    /explorer/api/tx?id=HEX            a transaction by id: where it is, its receipt, and the
                                       receipt document `consortium tx receipt` writes
    /explorer/api/search?q=...         a height or a transaction id: where to look

Limits: every path is rate limited per source address (a token bucket: RATE_PER_S requests a
second, bursts of BURST; 429 with Retry-After beyond it; behind a reverse proxy every user is
the proxy's one address), and the HTTP server serves at most REQUEST_ROUTES_MAX of these
requests at a time (node/http.py: 503 beyond), so they never take the slots of /healthz,
/readyz and /metrics. What costs in proportion to a block runs on worker threads (at most
READ_THREADS at once, each read on a read-only connection of its own: BlockStore.read_block):
the reads, a block page's decoding and its JSON, a receipt's Merkle proof and signature
checks. The event loop does only what is small and bounded: a page of at most
BLOCKS_LIMIT_MAX cached summaries, this member's own block signature (an indexed read, or one
signature), the JSON of a transaction. Summaries of blocks (which never change) are cached,
and concurrent requests for the same ones share one read. Bad input (a malformed id, a
negative height, a limit out of range, digits other than ASCII 0-9) is 400 with a JSON error.

The receipt document is the one `consortium tx receipt` writes (protocol/receipts.py). In pbft
it needs f+1 members' signatures, and a member stores only its own: `gather` (given by `consortium
node start`, cli/explorer_receipts.py, since the node may not import the client) asks the
members' client ports for them with the client's own code, within RECEIPT_TIMEOUT_S: each
gather dials every member, so an anonymous caller must not be able to multiply it. At most
GATHERS_MAX gathers run at a time (a lookup while one runs gets this member's own signature at
once, with the note "busy: ask again"); a second request for a transaction being gathered waits
for that gather (within RECEIPT_TIMEOUT_S) instead of starting its own; a failed gather is
remembered for FAILURE_TTL_S (FAILURES_CACHED transactions) and not repeated meanwhile; a whole
document is kept (RECEIPTS_CACHED). Without a gatherer, or when it cannot (the client port uses
TLS and a member holds no client key; too few members answer), the page gets the document with
this member's signature alone (kept too: FALLBACKS_CACHED) and says what it lacks (raft needs
only one).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from importlib import resources
from typing import Any, Protocol

import trio

from consortium.crypto.codec import WireFormatError
from consortium.ledger.certificates import (
    RaftEntryCertificate,
    SignedVote,
    decode_certificate,
)
from consortium.ledger.genesis import Genesis, Member
from consortium.ledger.store import BlockStore, StoredBlock
from consortium.ledger.tx import (
    CompareAndSet,
    ConfigChange,
    ConfigChangeV2,
    Delete,
    Get,
    Op,
    Put,
    Transaction,
)
from consortium.node.http import (
    Request,
    RequestError,
    RequestRoute,
    Response,
    json_response,
    retry_after,
)

RATE_PER_S = 20.0  # requests a second per source address, sustained
BURST = 40  # requests at once per source (the page asks for 3 or 4 at a time)
SOURCES_MAX = 1024  # source addresses whose buckets are kept (least recently seen dropped)
BLOCKS_LIMIT_DEFAULT = 20
BLOCKS_LIMIT_MAX = 100
TXS_LIMIT_DEFAULT = 20  # a block's transactions on one page
TXS_LIMIT_MAX = 100  # (a transaction has up to 64 operations: a page stays a few MB at most)
READ_THREADS = 2
SUMMARIES_CACHED = 2048  # block summaries (a few hundred bytes each)
RECEIPTS_CACHED = 256  # complete receipt documents (a few KB each; they never change)
FALLBACKS_CACHED = 256  # documents with this member's signature alone (likewise)
RECEIPT_TIMEOUT_S = 3.0
GATHERS_MAX = 1  # receipt gathers at a time: each one dials every member (module docstring)
FAILURE_TTL_S = 10.0  # a failed gather is not repeated for this long
FAILURES_CACHED = 256
BUSY_NOTE = (
    "busy: ask again (this member gathers one receipt at a time); this member's signature "
    "alone; `consortium tx receipt` gathers f+1"
)
# What every explorer answer carries: the page is its own three files (no inline script or
# style, nothing from elsewhere), so a browser may run nothing else, and must not guess types.
SECURITY_HEADERS = (
    ("Content-Security-Policy", "default-src 'self'; object-src 'none'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
)
VALUE_CHARS_MAX = 200  # a key or value shown on the page is cut to this many characters
PREFIX = "/explorer"
# What /explorer/api/network passes on of the status document (status.py); the mode's fields
# (pbft: view, primary; raft: term, role, leader) are there only in their mode.
NETWORK_FIELDS = (
    *("member", "mode", "chain_id", "n", "f", "quorum", "height", "head_hash", "ready"),
    *("not_progressing_because", "warnings", "waiting_for", "up", "reachable", "fault_budget"),
    *("peer_state", "view", "view_active", "view_changes", "primary", "term", "role", "leader"),
    *("commit_index", "stable_checkpoint"),
)
_STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/app.css": ("app.css", "text/css; charset=utf-8"),
}


# A transaction id -> its receipt document with f+1 signatures, or None and why not.
ReceiptGatherer = Callable[[bytes], Awaitable[tuple[str | None, str]]]


class ExplorerSource(Protocol):
    """What the explorer reads of a member (runtime.Node)."""

    genesis: Genesis
    member: Member
    store: BlockStore

    def own_block_signature(self, height: int) -> SignedVote: ...


class TokenBuckets:
    """A token bucket per source address: `rate` tokens a second up to `burst`; at most
    `sources_max` sources remembered (the least recently seen forgotten: it starts full)."""

    def __init__(self, rate: float, burst: int, sources_max: int = SOURCES_MAX) -> None:
        self.rate = rate
        self.burst = burst
        self.sources_max = sources_max
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, source: str, now: float) -> float:
        """0 when `source` may make a request now (a token taken), else the seconds until it
        may."""
        tokens, last = self._buckets.pop(source, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.rate
        self._buckets[source] = (tokens, now)
        while len(self._buckets) > self.sources_max:
            self._buckets.popitem(last=False)
        return wait


def _error(status: int, message: str) -> Response:
    return json_response(status, {"error": message})


def _is_number(text: str) -> bool:
    """ASCII digits only (str.isdigit also takes '²', which int() refuses, and '١٢', which it
    reads as 12), at most 19 of them."""
    return 0 < len(text) <= 19 and text.isascii() and text.isdigit()


def _int_param(params: Mapping[str, str], name: str, default: int | None, hi: int) -> int:
    text = params.get(name)
    if text is None or text == "":
        if default is None:
            raise RequestError(400, f"'{name}' is required")
        return default
    if not _is_number(text):
        raise RequestError(400, f"'{name}' must be a whole number from 0 to {hi}, not {text!r}")
    value = int(text)
    if value > hi:
        raise RequestError(400, f"'{name}' must be a whole number from 0 to {hi}, not {value}")
    return value


def _tx_id(text: str) -> bytes:
    try:
        tx_id = bytes.fromhex(text) if len(text) == 64 else b""
    except ValueError:
        tx_id = b""
    if len(tx_id) != 32:
        raise RequestError(400, f"a transaction id is 64 hex digits, not {text[:80]!r}")
    return tx_id


def _shown(value: bytes | None) -> str | None:
    """Bytes for the page: UTF-8 text when they are, else hex; cut to VALUE_CHARS_MAX."""
    if value is None:
        return None
    try:
        text = value.decode("utf-8")
        if not text.isprintable():
            raise UnicodeDecodeError("utf-8", value, 0, 1, "not printable")
    except UnicodeDecodeError:
        text = "0x" + value.hex()
    return text if len(text) <= VALUE_CHARS_MAX else text[:VALUE_CHARS_MAX] + "…"


def _op(op: Op) -> dict[str, Any]:
    match op:
        case Put(key=k, value=v):
            return {"op": "put", "key": _shown(k), "value": _shown(v)}
        case Delete(key=k):
            return {"op": "del", "key": _shown(k)}
        case CompareAndSet(key=k, expected=e, new=n):
            return {"op": "cas", "key": _shown(k), "expected": _shown(e), "new": _shown(n)}
        case Get(key=k):
            return {"op": "get", "key": _shown(k)}
        case ConfigChange(approvals=a):
            return {"op": "config", "approvals": len(a)}
        case ConfigChangeV2(approvals=a):  # (ledger part A: the v2 op; part D may show more)
            return {"op": "config", "approvals": len(a)}


def _result(value: bytes | bool | None) -> str | bool | None:
    return value if value is None or isinstance(value, bool) else _shown(value)


class Explorer:
    """The explorer's routes for one member; `request_routes()` for the HttpServer."""

    def __init__(
        self,
        member: ExplorerSource,
        status: Callable[[], dict[str, Any]],
        *,
        client_tls: bool = False,
        gather: ReceiptGatherer | None = None,
        rate_per_s: float = RATE_PER_S,
        burst: int = BURST,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.m = member
        self.status = status
        self.client_tls = client_tls
        self.gather = gather
        self.buckets = TokenBuckets(rate_per_s, burst)
        self.clock = clock
        self._threads = trio.CapacityLimiter(READ_THREADS)
        self._summaries: OrderedDict[int, dict[str, Any]] = OrderedDict()
        # Heights whose summaries a request is reading now -> set when it is done (at most
        # BLOCKS_LIMIT_MAX a request, and the HTTP server bounds the requests).
        self._summaries_read: dict[int, trio.Event] = {}
        self._receipts: OrderedDict[bytes, dict[str, Any]] = OrderedDict()
        self._fallbacks: OrderedDict[bytes, tuple[str, str | None]] = OrderedDict()
        self._failures: OrderedDict[bytes, tuple[float, str]] = OrderedDict()  # until, why
        self._gathering = trio.CapacityLimiter(GATHERS_MAX)
        self._gathered: dict[bytes, trio.Event] = {}  # at most GATHERS_MAX entries
        self._names = {m.public_key: m.name for m in member.genesis.members}
        self._names.update({c.public_key: c.name for c in member.genesis.clients})
        self.counters: dict[str, int] = {}
        static = resources.files(__package__) / "static"
        self._static = {
            path: Response(200, (static / name).read_bytes(), kind)
            for path, (name, kind) in _STATIC.items()
        }

    def request_routes(self) -> dict[str, RequestRoute]:
        api: dict[str, Callable[[Request], Any]] = {
            "/api/network": self.network,
            "/api/head": self.head,
            "/api/blocks": self.blocks,
            "/api/block": self.block,
            "/api/tx": self.tx,
            "/api/search": self.search,
        }
        routes: dict[str, RequestRoute] = {
            PREFIX + path: self._limited(self._static_route(response))
            for path, response in self._static.items()
        }
        routes[PREFIX] = routes[PREFIX + "/"]
        routes.update({PREFIX + path: self._limited(handler) for path, handler in api.items()})
        return routes

    @staticmethod
    def _static_route(response: Response) -> Callable[[Request], Any]:
        async def serve(request: Request) -> Response:
            return response

        return serve

    def _limited(self, handler: Callable[[Request], Any]) -> RequestRoute:
        async def route(request: Request) -> Response:
            wait = self.buckets.take(request.peer, self.clock())
            if wait > 0:
                self.counters["rate_limited"] = self.counters.get("rate_limited", 0) + 1
                return json_response(
                    429,
                    {"error": f"too many requests from {request.peer}; retry in {wait:.1f} s"},
                    (retry_after(wait), *SECURITY_HEADERS),
                )
            try:
                response: Response = await handler(request)
            except RequestError as exc:
                response = _error(exc.status, exc.why)
            return dataclasses.replace(response, headers=response.headers + SECURITY_HEADERS)

        return route

    # --- the network ------------------------------------------------------------------------

    async def network(self, request: Request) -> Response:
        doc = self.status()
        genesis = self.m.genesis
        out = {k: doc[k] for k in NETWORK_FIELDS if k in doc}
        out["chain_name"] = genesis.chain_name
        out["members"] = [
            {"index": m.index, "name": m.name, "client_address": m.client_address}
            for m in genesis.members
        ]
        out["clients"] = len(genesis.clients)
        return json_response(200, out)

    async def head(self, request: Request) -> Response:
        head = self.m.store.head
        return json_response(
            200,
            {"height": head.height, "head_hash": head.hash.hex(), "time_ms": head.timestamp_ms},
        )

    # --- blocks -----------------------------------------------------------------------------

    def _summary(self, stored: StoredBlock) -> dict[str, Any]:
        block = stored.block
        header = block.header
        ok = sum(1 for r in block.receipts if r.status == "ok")
        return {
            "height": header.height,
            "hash": header.hash.hex(),
            "prev_hash": header.prev_hash.hex(),
            "time_ms": header.timestamp_ms,
            "txs": len(block.txs),
            "ok": ok,
            "rejected": len(block.receipts) - ok,
            "consensus": list(header.consensus),
        }

    async def blocks(self, request: Request) -> Response:
        params = request.params()
        top = self.m.store.height
        before = _int_param(params, "before", top + 1, 1 << 62)
        limit = _int_param(params, "limit", BLOCKS_LIMIT_DEFAULT, BLOCKS_LIMIT_MAX)
        if limit == 0:
            raise RequestError(400, f"'limit' must be from 1 to {BLOCKS_LIMIT_MAX}")
        # (a range's slice is another range: no list of the whole chain's heights)
        heights = range(min(before, top + 1) - 1, -1, -1)[:limit]
        await self._read_missing(heights)
        listed = [self._summaries[h] for h in heights if h in self._summaries]
        for h in heights:
            if h in self._summaries:
                self._summaries.move_to_end(h)
        lowest = heights[-1] if heights else 0
        return json_response(
            200,
            {
                "head": top,
                "blocks": listed,
                "next_before": lowest if lowest > 0 else None,
                "limit": limit,
            },
        )

    async def _read_missing(self, heights: Sequence[int]) -> None:
        """Put the summaries of `heights` in the cache: reading those no other request is
        reading now, waiting for those one is."""
        missing = [h for h in heights if h not in self._summaries]
        theirs = {self._summaries_read[h] for h in missing if h in self._summaries_read}
        mine = [h for h in missing if h not in self._summaries_read]
        if mine:
            done = trio.Event()
            for height in mine:
                self._summaries_read[height] = done
            try:
                summaries = await trio.to_thread.run_sync(
                    self._read_summaries, mine, limiter=self._threads
                )
                for height, summary in summaries.items():
                    self._summaries[height] = summary
                while len(self._summaries) > SUMMARIES_CACHED:
                    self._summaries.popitem(last=False)
            finally:
                for height in mine:
                    del self._summaries_read[height]
                done.set()
        for event in theirs:
            await event.wait()  # (a reader that failed lists fewer blocks; the next one reads)

    def _read_summaries(self, heights: list[int]) -> dict[int, dict[str, Any]]:
        """On a worker thread: the summaries of the stored blocks of `heights`."""
        out = {}
        for height in heights:
            stored = self.m.store.read_block(height)
            if stored is not None:
                out[height] = self._summary(stored)
        return out

    async def block(self, request: Request) -> Response:
        params = request.params()
        height = _int_param(params, "height", None, 1 << 62)
        offset = _int_param(params, "offset", 0, 1 << 62)
        limit = _int_param(params, "limit", TXS_LIMIT_DEFAULT, TXS_LIMIT_MAX)
        if limit == 0:
            raise RequestError(400, f"'limit' must be from 1 to {TXS_LIMIT_MAX}")
        top = self.m.store.height
        if height > top:
            return _error(404, f"no block at height {height} here (the head is {top})")
        return await trio.to_thread.run_sync(
            self._block_page, height, offset, limit, top, limiter=self._threads
        )

    def _block_page(self, height: int, offset: int, limit: int, top: int) -> Response:
        """On a worker thread: the block's page, encoded (a page of a big block is megabytes of
        JSON: none of it on the event loop)."""
        stored = self.m.store.read_block(height)
        if stored is None:
            return _error(404, f"no block at height {height} here (the head is {top})")
        block = stored.block
        doc = self._summary(stored)
        end = min(offset + limit, len(block.txs))
        doc.update(
            {
                "tx_root": block.header.tx_root.hex(),
                "state_root": block.header.state_root.hex(),
                "receipts_root": block.header.receipts_root.hex(),
                "offset": offset,
                "limit": limit,
                "transactions": [
                    self._tx_row(
                        block.txs[i], block.receipts[i] if i < len(block.receipts) else None
                    )
                    for i in range(offset, end)
                ],
                "next_offset": end if end < len(block.txs) else None,
                "certificate": self._certificate(stored.certificate),
                "block_signatures": self._signers(stored.block_signatures),
            }
        )
        return json_response(200, doc)

    def _tx_row(self, tx: Transaction, receipt: Any) -> dict[str, Any]:
        return {
            "id": tx.id.hex(),
            "client": self._names.get(tx.client_key, tx.client_key.hex()[:16] + "…"),
            "ops": [_op(op) for op in tx.ops],
            "status": None if receipt is None else receipt.status,
            "reason": None if receipt is None else receipt.reason,
            "results": [] if receipt is None else [_result(r) for r in receipt.results],
        }

    def _certificate(self, data: bytes | None) -> dict[str, Any] | None:
        """What certifies the block, decoded for people (not checked here: `consortium
        ledger audit` checks every one)."""
        if data is None:
            return None
        names = [m.name for m in self.m.genesis.members]
        try:
            if self.m.genesis.mode == "pbft":
                cert = decode_certificate(data)
                signers = []
                for vote in cert.votes:
                    signers.append(self._signer_of(vote, names))
                return {
                    "kind": "pbft commit certificate",
                    "view": cert.view,
                    "seq": cert.seq,
                    "digest": cert.digest.hex(),
                    "signers": signers,
                    "needed": self.m.genesis.quorum,
                }
            raft = RaftEntryCertificate.decode(data)
            return {
                "kind": "raft leader's entry signature",
                "term": raft.term,
                "index": raft.index,
                "digest": raft.digest.hex(),
                "signers": [names[raft.leader] if 0 <= raft.leader < len(names) else "?"],
                "needed": 1,
            }
        except WireFormatError as exc:
            return {"kind": "unreadable", "problem": str(exc)}

    @staticmethod
    def _signer_of(vote: SignedVote, names: list[str]) -> str:
        from consortium.crypto.codec import unpack_canonical

        try:
            signer = unpack_canonical(vote.body)[-1]
        except (WireFormatError, IndexError, TypeError):
            return "?"
        return names[signer] if isinstance(signer, int) and 0 <= signer < len(names) else "?"

    def _signers(self, votes: tuple[SignedVote, ...]) -> list[str]:
        names = [m.name for m in self.m.genesis.members]
        return [self._signer_of(v, names) for v in votes]

    # --- transactions -----------------------------------------------------------------------

    async def tx(self, request: Request) -> Response:
        tx_id = _tx_id(request.params().get("id", ""))
        located = await trio.to_thread.run_sync(self._locate, tx_id, limiter=self._threads)
        if located is None:
            return _error(404, f"transaction {tx_id.hex()} is not in this member's ledger")
        stored, index = located
        block = stored.block
        receipt = block.receipts[index]
        doc = {
            "id": tx_id.hex(),
            "height": block.header.height,
            "index": index,
            "block_hash": block.header.hash.hex(),
            "time_ms": block.header.timestamp_ms,
            **self._tx_row(block.txs[index], receipt),
            **(await self._receipt(tx_id, stored, index)),
        }
        return json_response(200, doc)

    def _locate(self, tx_id: bytes) -> tuple[StoredBlock, int] | None:
        """On a worker thread: the block holding `tx_id`'s first receipt, and its index."""
        position = self.m.store.read_tx_position(tx_id)
        if position is None:
            return None
        height, index = position
        stored = self.m.store.read_block(height)
        if stored is None or index >= len(stored.block.receipts):
            return None
        if stored.block.receipts[index].tx_id != tx_id:
            return None
        return stored, index

    async def _receipt(self, tx_id: bytes, stored: StoredBlock, index: int) -> dict[str, Any]:
        """The receipt document for `tx_id`: with f+1 signatures gathered when the member can,
        else with its own (module docstring), and whether it verifies."""
        from consortium.protocol.receipts import signatures_needed

        cached = self._receipts.get(tx_id)
        if cached is not None:
            self._receipts.move_to_end(tx_id)
            return cached
        note = ""
        if signatures_needed(self.m.genesis) > 1:
            if self.client_tls:
                note = (
                    "the client port uses TLS and a member holds no client key: this member's "
                    "signature alone; `consortium tx receipt` gathers f+1"
                )
            elif self.gather is None:
                note = "this member's signature alone; `consortium tx receipt` gathers f+1"
            else:
                whole = await self._gather(tx_id)
                if isinstance(whole, dict):
                    return whole
                note = whole
        document, problem = await self._fallback(tx_id, stored, index)
        return {
            "receipt_document": document,
            "receipt_valid": problem is None,
            "receipt_problem": problem,
            "receipt_note": note,
        }

    async def _gather(self, tx_id: bytes) -> dict[str, Any] | str:
        """The whole receipt (kept in _receipts), or why not: a failed gather (remembered for
        FAILURE_TTL_S), or this member busy gathering another transaction's."""
        now = self.clock()
        failed = self._failures.get(tx_id)
        if failed is not None and failed[0] > now:
            return failed[1]
        running = self._gathered.get(tx_id)
        if running is not None:  # the same transaction's gather: its answer, not another one
            with trio.move_on_after(RECEIPT_TIMEOUT_S):
                await running.wait()
            done = self._receipts.get(tx_id)
            failed = self._failures.get(tx_id)
            return done if done is not None else failed[1] if failed is not None else BUSY_NOTE
        try:
            self._gathering.acquire_nowait()
        except trio.WouldBlock:
            self.counters["receipt_busy"] = self.counters.get("receipt_busy", 0) + 1
            return BUSY_NOTE
        event = self._gathered[tx_id] = trio.Event()
        try:
            assert self.gather is not None
            self.counters["receipt_gathers"] = self.counters.get("receipt_gathers", 0) + 1
            document: str | None = None
            note = f"the members did not answer within {RECEIPT_TIMEOUT_S:g} s"
            with trio.move_on_after(RECEIPT_TIMEOUT_S):
                document, note = await self.gather(tx_id)
                note = note or "the members sent no receipt"
            problem = None
            if document is not None:
                problem = await trio.to_thread.run_sync(
                    self._problem, document, limiter=self._threads
                )
                if problem is None:
                    out = {
                        "receipt_document": document,
                        "receipt_valid": True,
                        "receipt_problem": None,
                        "receipt_note": "",
                    }
                    self._keep(self._receipts, tx_id, out, RECEIPTS_CACHED)
                    return out
                note = f"the members' receipt does not verify: {problem}"
            self._keep(self._failures, tx_id, (self.clock() + FAILURE_TTL_S, note), FAILURES_CACHED)
            return note
        finally:
            del self._gathered[tx_id]
            event.set()
            self._gathering.release()

    @staticmethod
    def _keep(cache: OrderedDict[bytes, Any], key: bytes, value: Any, most: int) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > most:
            cache.popitem(last=False)

    def _problem(self, document: str) -> str | None:
        """On a worker thread: what is wrong with a receipt document (its signatures checked)."""
        from consortium.protocol.receipts import loads, verify_receipt

        return verify_receipt(loads(document), self.m.genesis)

    async def _fallback(
        self, tx_id: bytes, stored: StoredBlock, index: int
    ) -> tuple[str, str | None]:
        """The document with this member's signature alone and what it lacks, kept: its proof
        and checks run on a worker thread; only this member's signature is got here (the
        member's own store connection is the event loop's)."""
        kept = self._fallbacks.get(tx_id)
        if kept is not None:
            self._fallbacks.move_to_end(tx_id)
            return kept
        mine = self.m.own_block_signature(stored.block.header.height)
        made = await trio.to_thread.run_sync(
            self._own_document, stored, index, mine, limiter=self._threads
        )
        self._keep(self._fallbacks, tx_id, made, FALLBACKS_CACHED)
        return made

    def _own_document(
        self, stored: StoredBlock, index: int, mine: SignedVote
    ) -> tuple[str, str | None]:
        from consortium.protocol.receipts import ReceiptProof
        from consortium.protocol.verify import receipt_bundle

        block = stored.block
        bundle = receipt_bundle(block.header, block.receipts, index, mine)
        proof = ReceiptProof(bundle.receipt, bundle.proof, bundle.tree_size, bundle.header, (mine,))
        document = proof.dumps(self.m.genesis)
        return document, self._problem(document)

    async def search(self, request: Request) -> Response:
        query = request.params().get("q", "").strip()
        if _is_number(query):
            return json_response(200, {"kind": "block", "height": int(query)})
        if len(query) == 64:
            return json_response(200, {"kind": "tx", "id": _tx_id(query).hex()})
        raise RequestError(400, "search for a block height or a 64-hex-digit transaction id")
