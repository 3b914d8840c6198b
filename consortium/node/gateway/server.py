"""The gateway's server: connections (caps, TLS), routes, and the bridge between JSON and the
native requests, served by the member's ClientHandler (the package docstring says how)."""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import logging
import re
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl

import trio

from consortium.crypto.codec import (
    WireFormatError,
    array_header_bytes,
    pack,
    unpack,
    unpack_canonical,
)
from consortium.node.client_port import (
    OUTBOUND_BYTES_MAX,
    TLS_HANDSHAKES_MAX,
    ClientConnection,
    ClientHandler,
    Refusal,
)
from consortium.node.gateway.http11 import (
    SSE_HEAD,
    SSE_KEEPALIVE,
    BodyBudget,
    HttpError,
    HttpReader,
    Incoming,
    Limits,
    Response,
    error_response,
    json_response,
    sse_event,
)
from consortium.node.logs import RateLimitedLog
from consortium.node.sources import ConnectionCaps, Slot, source_group
from consortium.protocol.limits import KEY_BYTES_MAX, TXS_PER_REQUEST_MAX
from consortium.protocol.messages import (
    PUSH,
    BlockReceipts,
    BlockRequest,
    CreditRequest,
    FollowRequest,
    GetRequest,
    ReceiptRequest,
    Request,
    RequestError,
    StatusRequest,
    SubmitRequest,
    UnfollowRequest,
    WatchRequest,
    decode_request,
    decode_response,
    encode_request,
)
from consortium.protocol.tls import (
    SniffStream,
    TlsIdentity,
    TlsRefused,
    explain_failure,
    is_tls_hello,
    peer_key,
)
from consortium.protocol.verify import Bundle

CONNECTIONS_MAX = 256  # gateway connections in all (the per-source cap is the client port's)
HEAD_BYTES_MAX = 8192
HEAD_TIMEOUT_S = 5.0  # a request head, whole, from its first byte (the first: from the accept)
BODY_TIMEOUT_S = 30.0  # a request body, whole, from the end of its head, at most...
BODY_GRACE_S = 5.0  # ...and at least this plus its length at BODY_BYTES_PER_S_MIN
BODY_BYTES_PER_S_MIN = 64 << 10
IDLE_TIMEOUT_S = 30.0  # a keep-alive connection with no request this long is closed
SEND_TIMEOUT_S = 10.0  # an answer not taken by the client in this time closes the connection
BODY_BYTES_HELD_MAX = 256 << 20  # request bodies read or being served at once, all connections
# ...of which one source's (and the largest body): a sixteenth, so that holding the whole
# budget takes sixteen addresses (or /64s), not four.
BODY_BYTES_PER_SOURCE_MAX = 16 << 20
WAIT_MS_MAX = 30_000
SSE_STREAMS_MAX = 16  # of the member's FOLLOWS_MAX (32): native followers keep the rest
SSE_CREDIT = 16  # blocks a stream may have queued and unwritten (credit, granted as it drains)
SSE_KEEPALIVE_S = 15.0
SSE_SEND_TIMEOUT_S = 10.0  # an event the client does not take in this time ends the stream
SSE_FINISH_S = 1.0  # what a stream ending with a reason has left to deliver its error event
SSE_CLIENT_BYTES_MAX = 4096  # what a subscriber may send after its request (then: closed)
OUTBOUND_FRAMES_MAX = 8192
LINGER_S = 1.0  # after a refusal that closes: what the client may still send is read...
LINGER_BYTES_MAX = 1 << 20  # ...and dropped, at most this much (GatewayServer._linger)
# The handler keys what it keeps for a connection (its follows) by connection id, and the
# client port numbers its connections from 1: the gateway's are numbered apart, or one port's
# connection ending cancelled the other's follows (a test caught it).
CONNECTION_IDS_FROM = 1 << 62
REVOKED = "revoked"  # a connection's closed_reason when its TLS key was revoked meanwhile
QUERY_FIELDS_MAX = 8
_DIGITS = re.compile(r"[0-9]{1,19}")
_JSON_SPACE = b" \t\r\n"
_SUBMIT_OPEN = re.compile(rb'[ \t\r\n]*\{[ \t\r\n]*"transactions"[ \t\r\n]*:[ \t\r\n]*\[')
_SUBMIT_CLOSE = re.compile(rb"\][ \t\r\n]*\}[ \t\r\n]*")
# A submit body up to this size is parsed as JSON (any JSON of the shape; a few ms of CPU at
# worst); a larger one is read by `_scan_submit`, which parses nothing.
JSON_PARSE_BYTES_MAX = 256 << 10
DECODE_CHECKPOINT_BYTES = 256 << 10  # the transactions' decoding yields to the loop this often
# The first bytes of a receipt push (pack([0, "receipt", ...]) and pack([0, "receipts", ...])).
_RECEIPT_PUSH = b"\x93\x00" + pack("receipt")
_RECEIPTS_PUSH = b"\x93\x00" + pack("receipts")


class GatewayConnection(ClientConnection):
    """One HTTP connection, as the ClientHandler sees a client: its replies and pushes are
    queued as on the native port (bounded alike), and the gateway takes them off the queue
    (`take`) and translates them. Receipt pushes are kept only while a request waits for
    receipts (`collecting`): a connection that submitted without waiting would otherwise
    fill its queue with pushes nobody reads between requests (they are counted in
    `pushes_dropped`, and the watches behind them end as the handler's do)."""

    def __init__(self, conn_id: int, peer: str, source: str = "") -> None:
        super().__init__(conn_id, peer, OUTBOUND_FRAMES_MAX, OUTBOUND_BYTES_MAX)
        self.source = source  # where it comes from (sources.source_group): per-source shares
        self.collecting = False
        self.pushes_dropped = 0
        self._req_ids = itertools.count(1)
        self.refusals: dict[int, Refusal] = {}  # req id -> the kind of its error reply

    def next_req_id(self) -> int:
        return next(self._req_ids)

    def error(self, req_id: int, message: str, *, kind: Refusal = "bad_request") -> bool:
        if req_id != PUSH:
            self.refusals[req_id] = kind
        return super().error(req_id, message, kind=kind)

    def push(self, body: bytes) -> bool:
        if not self.collecting and (
            body.startswith(_RECEIPT_PUSH) or body.startswith(_RECEIPTS_PUSH)
        ):
            self.pushes_dropped += 1
            return self.open
        return super().push(body)

    def frames(self) -> list[bytes]:
        """Every queued frame, taken off the queue."""
        out = []
        while (frame := self.take()) is not None:
            out.append(frame)
        return out


class _Events:
    """A stream's events, produced and not yet written: at most SSE_CREDIT blocks (the
    credit sees to it), a keepalive and the final error."""

    def __init__(self) -> None:
        self.queue: deque[tuple[bytes, bool]] = deque()  # (event, whether it is a block)
        self.blocks = 0  # blocks put and not yet written (queued, or being written)
        self.finished = False
        self.writing_since: float | None = None  # when the write in progress began
        self.done = trio.Event()  # the writer wrote everything, or gave up
        self._wakeup = trio.Event()

    def put(self, event: bytes, *, block: bool) -> bool:
        """Queue `event`; False (nothing queued) for a block beyond the credit: the member
        sent more than it was granted, and the stream is to end."""
        if block:
            if self.blocks >= SSE_CREDIT:
                return False
            self.blocks += 1
        self.queue.append((event, block))
        self._wakeup.set()
        return True

    def written(self, block: bool) -> None:
        if block:
            self.blocks -= 1

    def finish(self) -> None:
        self.finished = True
        self._wakeup.set()

    async def get(self) -> tuple[bytes, bool] | None:
        """The next event; None once finished and empty."""
        while not self.queue:
            if self.finished:
                return None
            self._wakeup = trio.Event()
            await self._wakeup.wait()
        return self.queue.popleft()


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter of a route, as the server checks it and as the OpenAPI document gives it
    (`schema`; a test holds the document to this table): a whole number from 0 to `maximum`
    (decimal digits only, at most 19), or a string matching `pattern` of `min_length` to
    `max_length` characters."""

    name: str
    where: str  # "path", "query" or "header"
    maximum: int | None = None  # a whole number up to this; else a string:
    pattern: str = ""
    min_length: int = 0
    max_length: int | None = None
    required: bool = False

    def schema(self) -> dict[str, Any]:
        if self.maximum is not None:
            return {"type": "integer", "minimum": 0, "maximum": self.maximum}
        schema: dict[str, Any] = {"type": "string", "pattern": self.pattern}
        if self.min_length:
            schema["minLength"] = self.min_length
        if self.max_length is not None:
            schema["maxLength"] = self.max_length
        return schema

    def check(self, text: str) -> str:
        """`text` if it is a value of this parameter; else HttpError bad_request."""
        if self.maximum is not None:
            if not _DIGITS.fullmatch(text) or int(text) > self.maximum:
                raise _bad(
                    f"{self.name} must be a whole number from 0 to {self.maximum}, not "
                    f"{text[:40]!r}"
                )
        elif (
            not re.fullmatch(self.pattern.removeprefix("^").removesuffix("$"), text)
            or len(text) < self.min_length
            or (self.max_length is not None and len(text) > self.max_length)
        ):
            size = f"{self.min_length} to {self.max_length} characters"
            raise _bad(f"{self.name} must match {self.pattern} ({size}), not {text[:40]!r}")
        return text


WAIT_MS = Param("wait_ms", "query", maximum=WAIT_MS_MAX)
HEIGHT_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    template: str  # "/v1/kv/{key}": the OpenAPI document's path
    name: str  # the endpoint (counters: request_<name>)
    params: tuple[Param, ...] = ()  # its parameters: no other query parameter is taken

    def match(self, path: str) -> dict[str, str] | None:
        pattern = re.sub(r"\\{(\w+)\\}", r"(?P<\1>[^/]+)", re.escape(self.template))
        found = re.fullmatch(pattern, path)
        return None if found is None else found.groupdict()

    def query(self) -> dict[str, Param]:
        return {p.name: p for p in self.params if p.where == "query"}


# Every route and its parameters: the server reads them here, and the test holds the OpenAPI
# document to this table (names, places, requiredness, schemas).
ROUTES: tuple[Route, ...] = (
    Route("POST", "/v1/transactions", "submit", (WAIT_MS,)),
    Route(
        "GET",
        "/v1/transactions/{tx_id}/receipt",
        "receipt",
        (Param("tx_id", "path", pattern="^[0-9a-f]{64}$", required=True), WAIT_MS),
    ),
    Route(
        "GET",
        "/v1/kv/{key}",
        "kv",
        (
            # base64url without padding: a length of 4k+1 encodes no bytes
            Param(
                "key",
                "path",
                pattern="^(?:[A-Za-z0-9_-]{4})*(?:[A-Za-z0-9_-]{2,3})?$",
                min_length=1,
                max_length=-(-KEY_BYTES_MAX * 4 // 3),
                required=True,
            ),
        ),
    ),
    Route(
        "GET",
        "/v1/blocks/{height}",
        "block",
        (Param("height", "path", maximum=HEIGHT_MAX, required=True),),
    ),
    Route(
        "GET",
        "/v1/follow",
        "follow",
        (
            Param("from", "query", maximum=HEIGHT_MAX),  # (required without Last-Event-ID)
            Param("Last-Event-ID", "header", maximum=HEIGHT_MAX - 1),
        ),
    ),
    Route("GET", "/v1/status", "status"),
    Route("GET", "/openapi.json", "openapi"),
)
ROUTES_BY_NAME = {r.name: r for r in ROUTES}


def openapi_document() -> bytes:
    """The OpenAPI 3.1 document (package data beside this module)."""
    return (resources.files(__package__) / "openapi.json").read_bytes()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _bad(message: str) -> HttpError:
    return HttpError("bad_request", message)


def _query(incoming: Incoming, route: Route) -> dict[str, str]:
    """The route's query parameters, each checked (`Param.check`); one it does not take, or
    a malformed query string, is refused."""
    try:
        pairs = parse_qsl(
            incoming.query,
            keep_blank_values=True,
            errors="strict",
            max_num_fields=QUERY_FIELDS_MAX,
            strict_parsing=bool(incoming.query),
        )
    except ValueError:
        raise _bad("malformed query string") from None
    fields = dict(pairs)
    allowed = route.query()
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        known = ", ".join(sorted(allowed)) or "none"
        raise _bad(f"unknown query parameter {unknown[0][:40]!r} (known: {known})")
    return {name: allowed[name].check(text) for name, text in fields.items()}


def _json_body(incoming: Incoming) -> Any:
    try:
        return json.loads(incoming.body)
    except (ValueError, RecursionError) as exc:  # (UnicodeDecodeError is a ValueError)
        raise HttpError("bad_json", f"the body is not JSON: {str(exc)[:120]}") from None


def _content_json(incoming: Incoming) -> None:
    kind = incoming.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind != "application/json":
        raise HttpError(
            "unsupported_media_type",
            f"the body must be JSON (Content-Type: application/json), not {kind[:60]!r}",
        )


def _scan_submit(body: bytes) -> list[bytes] | str:
    """The items of a submit body of the one shape the gateway reads at any size,
    `{"transactions": [<item>, ...]}` with JSON whitespace between the tokens, or why not:
    found with a few linear C scans (no JSON is parsed, nothing nests), the items unchecked
    (`_texts` checks each is a string) and at most TXS_PER_REQUEST_MAX of them. A parse of
    a large body on the event loop froze the member (seconds of CPU and hundreds of MB for
    22 MB of nested or wide JSON); base64 never needs an escape but `\\/`, so no string of a
    submit does."""
    opened = _SUBMIT_OPEN.match(body)
    if opened is None:
        return 'it does not begin {"transactions": ['
    end = body.rfind(b"]")
    if end < opened.end() or _SUBMIT_CLOSE.fullmatch(body, end) is None:
        return "it does not end ]}"
    middle = body[opened.end() : end]
    if not middle.strip(_JSON_SPACE):
        return []
    if middle.count(b",") >= TXS_PER_REQUEST_MAX:
        return f"at most {TXS_PER_REQUEST_MAX} transactions per request"
    return middle.split(b",")


class GatewayServer:
    """Serves the gateway on `listen` for `handler` (the member's ClientService); `run` with
    nursery.start, which returns the bound port. `serve_stream` serves one connection (the
    listener's, or a test's in-memory stream)."""

    def __init__(
        self,
        handler: ClientHandler,
        *,
        listen: tuple[str, int],
        frame_bytes_max: int,
        source_connections_max: int = 64,
        connections_max: int = CONNECTIONS_MAX,
        source_counts: Counter[str] | None = None,
        tls: TlsIdentity | None = None,
        handshakes_max: int = TLS_HANDSHAKES_MAX,
        tls_accepts: Callable[[bytes], str | None] | None = None,
        log: logging.Logger | None = None,
        limits: Limits | None = None,
        body_bytes_held_max: int = BODY_BYTES_HELD_MAX,
        body_bytes_source_max: int = BODY_BYTES_PER_SOURCE_MAX,
        sse_streams_max: int = SSE_STREAMS_MAX,
    ) -> None:
        if tls is not None and tls_accepts is None:
            raise ValueError("a TLS gateway needs tls_accepts (which keys to admit)")
        self.handler = handler
        self.listen = listen
        self.frame_bytes_max = frame_bytes_max
        # The largest body is the largest submit's JSON: base64 (4/3) of at most a native
        # frame of transactions, and per transaction its quotes and comma. A size derived from
        # a parameter, so bounded: frame_bytes_max is the signed genesis's (the members', not a
        # client's, to set), the native port takes frames that large from anyone already, and
        # one source's share of the body budget caps it whatever the genesis says (a 1 GiB
        # frame does not make 1.4 GB bodies).
        body_max = min(
            frame_bytes_max * 4 // 3 + 4 * TXS_PER_REQUEST_MAX + 4096, body_bytes_source_max
        )
        self.limits = limits or Limits(
            HEAD_BYTES_MAX,
            body_max,
            HEAD_TIMEOUT_S,
            BODY_TIMEOUT_S,
            IDLE_TIMEOUT_S,
            SEND_TIMEOUT_S,
            BODY_GRACE_S,
            BODY_BYTES_PER_S_MIN,
        )
        self.budget = BodyBudget(body_bytes_held_max, body_bytes_source_max)
        self.sse_streams_max = sse_streams_max
        self.log = log or logging.getLogger("consortium.gateway")
        self._ratelog = RateLimitedLog(self.log)
        self.counters: Counter[str] = Counter()
        # Per source, one count with the client port's (`source_counts`): an address gets
        # `source_connections_max` connections over both ports, not that many on each. In all,
        # the gateway's own CONNECTIONS_MAX: neither port's clients can take the other's slots.
        self.caps = ConnectionCaps(
            connections_max,
            source_connections_max,
            self.counters,
            self._ratelog.warning,
            "gateway",
            source_counts,
        )
        self._handshakes_max = handshakes_max  # TLS handshakes at once, as on the client port
        self._handshakes = 0
        self._tls = tls
        self._tls_accepts = tls_accepts
        self.connections: dict[int, GatewayConnection] = {}
        self._ids = itertools.count(CONNECTION_IDS_FROM)
        # The SSE streams running, by source (sources.source_group): (connection, follow id),
        # oldest first. Shared max-min fairly (`_share_stream`), as the member shares follows.
        self._streams: dict[str, list[tuple[GatewayConnection, int]]] = {}
        self.port = 0
        self._openapi = openapi_document()
        self._endpoints: dict[
            str,
            Callable[
                [trio.abc.Stream, GatewayConnection, Incoming, dict[str, str]],
                Awaitable[Response | None],
            ],
        ] = {
            "submit": self._submit,
            "receipt": self._receipt,
            "kv": self._kv,
            "block": self._block,
            "follow": self._follow,
            "status": self._status,
            "openapi": self._openapi_route,
        }
        assert set(self._endpoints) == {r.name for r in ROUTES}

    @property
    def sse_open(self) -> int:
        """SSE streams running now."""
        return sum(map(len, self._streams.values()))

    @property
    def url(self) -> str:
        host = self.listen[0]
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self._tls is not None else 'http'}://{host}:{self.port}"

    def status(self) -> dict[str, Any]:
        """For the status document (`gateway`) and /metrics."""
        return {
            "listen": f"{self.listen[0]}:{self.port}",
            "url": self.url,
            "tls": self._tls is not None,
            "connections_open": len(self.connections),
            "sse_streams_open": self.sse_open,
            "events": dict(sorted(self.counters.items())),
        }

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        host, port = self.listen
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._accept, listeners)
            task_status.started(self.port)

    async def _accept(self, stream: trio.SocketStream) -> None:
        try:
            host, port = stream.socket.getpeername()[:2]
        except OSError:
            host, port = "?", 0
        await self.serve_stream(stream, str(host), int(port))

    async def serve_stream(self, stream: trio.abc.Stream, host: str, port: int) -> None:
        """Serve one connection from `host`:`port` under the caps, then close it."""
        peer = f"{host}:{port}"
        source = source_group(host)
        try:
            admitted = self.caps.admit(source)
            if isinstance(admitted, str):
                self._ratelog.warning("too_many", f"refusing gateway client {peer}: {admitted}")
                per_source = self.caps.sources[source] >= self.caps.source_connections_max
                refusal = HttpError(
                    "overloaded",
                    f"refused: {admitted} on this member's gateway; try later",
                    status=429 if per_source else 503,
                    close=True,
                    headers=(("Retry-After", "1"),),
                )
                if self._tls is None:  # (a TLS client could not read a plain answer)
                    await self._send(stream, self._error(refusal))
                return
            try:
                with admitted.scope:
                    await self._connection(stream, peer, admitted)
            finally:
                self.caps.release(admitted)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.counters["connection_error"] += 1
        finally:
            await trio.aclose_forcefully(stream)

    async def _connection(self, stream: trio.abc.Stream, peer: str, slot: Slot) -> None:
        started = trio.current_time()
        channel = stream
        tls_key: bytes | None = None
        if self._tls is not None:
            secured = await self._tls_accept(stream, peer, started + self.limits.head_timeout_s)
            if secured is None:
                return
            channel, peer, tls_key = secured
        conn = GatewayConnection(next(self._ids), peer, slot.source)
        conn.tls_key = tls_key
        self.connections[conn.id] = conn
        self.counters["connections"] += 1
        reader = HttpReader(channel, self.limits, self.budget, started, slot.source)
        try:
            with conn.scope:
                await self._requests(channel, reader, conn, slot)
        finally:
            reader.release()
            del self.connections[conn.id]
            if conn.pushes_dropped:
                self.counters["receipt_pushes_dropped"] += conn.pushes_dropped
            self.handler.disconnected(conn)

    async def _requests(
        self, channel: trio.abc.Stream, reader: HttpReader, conn: GatewayConnection, slot: Slot
    ) -> None:
        """Answer the connection's requests one at a time until it is to close."""
        while True:
            try:
                incoming = await reader.next_request()
            except HttpError as exc:
                if await self._send(channel, self._error(exc)):
                    await self._linger(channel)
                return
            if incoming is None:
                return
            self.caps.asked(slot)
            try:
                response = await self._answer(channel, conn, incoming)
            finally:
                reader.release()
            if response is None:
                return  # a stream ended: so does the connection
            if not incoming.keep_alive or not conn.open:
                response.close = True
            data = response.encode(head_only=incoming.method == "HEAD")
            if not await self._send(channel, data) or response.close:
                return

    async def _linger(self, channel: trio.abc.Stream) -> None:
        """After a refusal that ends the connection, the client may still be sending (a body
        that was not read): closing at once would reset the connection, and the reset can
        discard the answer before the client reads it. So: end our side, then read and drop
        at most LINGER_BYTES_MAX for at most LINGER_S, and close."""
        if not isinstance(channel, trio.abc.HalfCloseableStream):
            return  # (TLS: no half-close; the connection just closes)
        dropped = 0
        with trio.move_on_after(LINGER_S):
            try:
                await channel.send_eof()
                while dropped < LINGER_BYTES_MAX:
                    data = await channel.receive_some(65536)
                    if not data:
                        return
                    dropped += len(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return

    def _error(self, error: HttpError) -> Response:
        self.counters[f"error_{error.code}"] += 1
        return error_response(error)

    async def _send(self, channel: trio.abc.SendStream, response: Response | bytes) -> bool:
        """Write an answer within the send deadline; whether it was written whole."""
        data = response if isinstance(response, bytes) else response.encode()
        with trio.move_on_after(self.limits.send_timeout_s):
            try:
                await channel.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return False
            return True
        return False

    async def _answer(
        self, channel: trio.abc.Stream, conn: GatewayConnection, incoming: Incoming
    ) -> Response | None:
        """The answer to one request (None: it was a stream, already written)."""
        matched = [r for r in ROUTES if r.match(incoming.path) is not None]
        route = next((r for r in matched if r.method == incoming.method), None)
        try:
            if route is None:
                if matched:
                    allow = ", ".join(sorted({r.method for r in matched}))
                    raise HttpError(
                        "method_not_allowed",
                        f"{incoming.method} is not served on {incoming.path[:100]} (allowed: "
                        f"{allow})",
                        headers=(("Allow", allow),),
                    )
                self.counters["request_unrouted"] += 1
                raise HttpError(
                    "not_found",
                    f"no such path {incoming.path[:100]}; see GET /openapi.json",
                )
            self.counters[f"request_{route.name}"] += 1
            if incoming.method == "GET" and incoming.body:
                raise _bad("a GET request carries no body")
            if conn.tls_key is not None and not self._admitted(conn):
                raise self._forbidden(conn)
            params = route.match(incoming.path)
            assert params is not None
            for param in route.params:  # (the table's checks: ROUTES)
                if param.where == "path":
                    param.check(params[param.name])
            params.update(_query(incoming, route))
            response = await self._endpoints[route.name](channel, conn, incoming, params)
            if conn.closed_reason == REVOKED and response is not None:
                raise self._forbidden(conn)  # (revoked while it waited)
            return response
        except HttpError as exc:
            revoked = conn.closed_reason == REVOKED and conn.tls_key is not None
            # (revoked while it waited: that is the answer)
            return self._error(self._forbidden(conn) if revoked else exc)
        except Exception:
            # A bug reached by client input must not take the member down: log it loudly
            # with its traceback, answer 500, keep serving.
            self.log.exception("internal error in the gateway serving %s %s from %s",
                               incoming.method, incoming.path[:100], conn.peer)  # fmt: skip
            return self._error(
                HttpError("internal", "internal error (logged by the member)", close=True)
            )
        finally:
            conn.collecting = False
            if conn.watched:
                # What the request watched (its submit's ids, its receipt's) ends with it: the
                # pushes would be dropped now, and the watches held the member's node-wide
                # capacity for up to ID_WATCH_AGE_S on a keep-alive connection.
                self.handler.unwatch(conn, set(conn.watched))

    @staticmethod
    def _forbidden(conn: GatewayConnection) -> HttpError:
        assert conn.tls_key is not None
        return HttpError(
            "forbidden",
            f"your TLS key {conn.tls_key.hex()[:16]}… is no longer an admitted client of this "
            "network",
            close=True,
        )

    def recheck_tls_keys(self) -> int:
        """Close the connections whose TLS key is no longer admitted (a revocation took
        effect: called by the member with the client port's recheck, service.tls_rechecks);
        how many. A request waiting (wait_ms) is answered 403 `forbidden`, a stream ends with
        its `forbidden` error event, within client_port.FLUSH_S."""
        if self._tls_accepts is None:
            return 0
        gone = [
            c
            for c in self.connections.values()
            if c.open and c.tls_key is not None and not self._admitted(c)
        ]
        for conn in gone:
            assert conn.tls_key is not None
            self.counters["tls_revoked_disconnected"] += 1
            self._ratelog.warning(
                "tls_revoked",
                f"gateway client {conn.peer}: its TLS key {conn.tls_key.hex()[:16]}… is no "
                "longer an admitted client's: disconnected",
            )
            conn.close_soon(REVOKED, "your TLS key is no longer admitted")
        return len(gone)

    def _admitted(self, conn: GatewayConnection) -> bool:
        assert conn.tls_key is not None and self._tls_accepts is not None
        return self._tls_accepts(conn.tls_key) is not None

    # --- the bridge -------------------------------------------------------------------------

    def _native(self, request: Request) -> Request:
        """`request` as the native port would receive it: encoded as its frame, which must
        fit the member's frame limit, and decoded by the native decoder (its checks)."""
        frame = encode_request(request)
        if len(frame) > self.frame_bytes_max:
            raise self._too_large(len(frame))
        try:
            return decode_request(frame, self.frame_bytes_max)
        except RequestError as exc:
            raise _bad(f"bad request: {exc}") from None

    def _too_large(self, size: int, *, so_far: bool = False) -> HttpError:
        return HttpError(
            "payload_too_large",
            f"the request makes a native frame of {'at least ' if so_far else ''}{size} bytes; "
            f"at most {self.frame_bytes_max} are served",
        )

    async def _call(self, conn: GatewayConnection, request: Request) -> tuple[Any, list[bytes]]:
        """Serve `request` through the handler: the payload of its ok reply, and the other
        frames it queued (pushes); HttpError for an error reply or none."""
        for _ in conn.frames():  # answers to earlier requests nobody waits for any more
            pass
        await self.handler.handle(conn, request)
        reply: list[Any] | None = None
        others: list[bytes] = []
        head = b"\x93" + pack(request.req_id)
        for frame in conn.frames():
            if reply is None and frame.startswith(head):
                decoded = unpack(frame)
                if decoded[0] == request.req_id and decoded[1] in ("ok", "error"):
                    reply = decoded
                    continue
            others.append(frame)
        if reply is None:
            closing = [m for m in map(unpack, others) if m[0] == PUSH and m[1] == "error"]
            why = closing[-1][2] if closing else conn.closed_reason or "no answer"
            raise HttpError(
                "overloaded", str(why), status=429, close=True, headers=(("Retry-After", "1"),)
            )
        kind = conn.refusals.pop(request.req_id, "bad_request")
        conn.refusals.clear()  # (errors of requests nobody waits for any more)
        if reply[1] == "error":
            raise _refusal(kind, str(reply[2]))
        return reply[2], others

    def _receipts(self, frames: list[bytes], wanted: set[bytes], out: dict[bytes, bytes]) -> None:
        """The receipt bundles of `wanted` ids among pushed `frames`, each the canonical
        msgpack of its bundle, into `out` (the first for each id)."""
        for frame in frames:
            if frame.startswith(_RECEIPT_PUSH):
                raw = unpack(frame)[2]
                tx_id = Bundle.from_array(raw).receipt.tx_id
                if tx_id in wanted and tx_id not in out:
                    out[tx_id] = pack(raw)
            elif frame.startswith(_RECEIPTS_PUSH):
                push = decode_response(frame, self.frame_bytes_max)
                assert isinstance(push, BlockReceipts)
                for bundle in push.bundles():
                    tx_id = bundle.receipt.tx_id
                    if tx_id in wanted and tx_id not in out:
                        out[tx_id] = pack(bundle.to_array())

    async def _wait_receipts(
        self,
        conn: GatewayConnection,
        frames: list[bytes],
        wanted: set[bytes],
        wait_ms: int,
    ) -> dict[bytes, bytes]:
        found: dict[bytes, bytes] = {}
        self._receipts(frames, wanted, found)
        with trio.move_on_after(wait_ms / 1000):
            while wanted - found.keys() and conn.open:
                await conn.wait_queued()
                self._receipts(conn.frames(), wanted, found)
        return found

    # --- endpoints --------------------------------------------------------------------------

    async def _submit(
        self,
        channel: trio.abc.Stream,
        conn: GatewayConnection,
        incoming: Incoming,
        params: dict[str, str],
    ) -> Response:
        wait_ms = int(params.get("wait_ms", "0"))
        _content_json(incoming)
        items: Sequence[bytes | str]
        if len(incoming.body) <= JSON_PARSE_BYTES_MAX:
            items = self._parse_submit(incoming)
        else:
            scanned = _scan_submit(incoming.body)
            if isinstance(scanned, str):
                raise _bad(f'the body must be {{"transactions": ["<base64>", ...]}}: {scanned}')
            items = scanned
        request = await self._native_submit(conn.next_req_id(), items)
        conn.collecting = wait_ms > 0
        verdicts, pushed = await self._call(conn, request)
        accepted = {v[0] for v in verdicts if v[1] == "accepted" and v[0]}
        found = await self._wait_receipts(conn, pushed, accepted, wait_ms) if wait_ms else {}
        results = []
        for tx_id, status, detail in verdicts:
            receipt: str | None = None
            if status == "committed":
                receipt, detail = _b64(pack(detail)), ""
            elif tx_id in found:
                receipt, status, detail = _b64(found[tx_id]), "committed", ""
            results.append(
                {"tx_id": tx_id.hex(), "status": status, "detail": detail, "receipt": receipt}
            )
        return json_response(200, {"results": results})

    @staticmethod
    def _parse_submit(incoming: Incoming) -> list[str]:
        """A small submit body, parsed as JSON: its strings, or why it is refused."""
        doc = _json_body(incoming)
        if not isinstance(doc, dict) or set(doc) != {"transactions"}:
            raise _bad('the body must be {"transactions": ["<base64>", ...]}')
        listed = doc["transactions"]
        if not isinstance(listed, list):
            raise _bad('"transactions" must be a list of base64 strings')
        if len(listed) > TXS_PER_REQUEST_MAX:
            raise _bad(f"at most {TXS_PER_REQUEST_MAX} transactions per request")
        for i, text in enumerate(listed):
            if not isinstance(text, str):
                raise _bad(f"transactions[{i}] must be a base64 string")
        return listed

    async def _native_submit(self, req_id: int, items: Sequence[bytes | str]) -> Request:
        """The native submit of `items` (scanned JSON tokens, or parsed strings): each the
        base64 of a transaction's canonical msgpack. What `_native` makes of a request, with
        the native decoder's checks made one transaction at a time, yielding to the event loop
        every DECODE_CHECKPOINT_BYTES: a native frame of transactions is up to
        frame_bytes_max, and decode_request checks one in a single step (~0.5 s of CPU for a
        16 MiB frame). The checks are the same: the frame's size, each transaction one
        canonical value within the decoder's limits (unpack_canonical, as decode_request
        applies to the whole frame), at most TXS_PER_REQUEST_MAX (the scanner's and the JSON
        path's); the rest of the frame is ours, canonical by construction."""
        txs = []
        # The frame's bytes: its own (the empty list's header replaced), then each transaction's.
        size = len(encode_request(SubmitRequest(req_id, []))) - 1 + array_header_bytes(len(items))
        done = 0
        for i, item in enumerate(items):
            if isinstance(item, str):  # (parsed JSON: the string itself)
                if not item.isascii():  # (base64 is ASCII; a lone surrogate cannot encode)
                    raise _bad(f"transactions[{i}] is not base64 (standard, padded)")
                text = item.encode("ascii")
            else:  # (scanned: the JSON token, quotes and all)
                text = item.strip(_JSON_SPACE)
                if len(text) < 2 or text[0] != 0x22 or text[-1] != 0x22:
                    raise _bad(f"transactions[{i}] must be a base64 string")
                text = text[1:-1]
                if b"\\" in text:
                    text = text.replace(b"\\/", b"/")  # (a JSON encoder's escaped solidus)
            try:
                raw = base64.b64decode(text, validate=True)
            except (ValueError, binascii.Error):
                raise _bad(f"transactions[{i}] is not base64 (standard, padded)") from None
            size += len(raw)
            if size > self.frame_bytes_max:
                raise self._too_large(size, so_far=True)
            try:
                txs.append(unpack_canonical(raw))
            except WireFormatError as exc:
                raise _bad(f"transactions[{i}] is not canonical msgpack: {exc}") from None
            done += len(text) + 16
            if done >= DECODE_CHECKPOINT_BYTES:
                done = 0
                await trio.lowlevel.checkpoint()
        if len(txs) > TXS_PER_REQUEST_MAX:  # (checked before: the native decoder's check)
            raise _bad(f"at most {TXS_PER_REQUEST_MAX} transactions per request")
        return SubmitRequest(req_id, txs)

    async def _receipt(
        self,
        channel: trio.abc.Stream,
        conn: GatewayConnection,
        incoming: Incoming,
        params: dict[str, str],
    ) -> Response:
        wait_ms = int(params.get("wait_ms", "0"))
        tx_id = bytes.fromhex(params["tx_id"])
        bundle, _ = await self._call(conn, self._native(ReceiptRequest(conn.next_req_id(), tx_id)))
        raw: bytes | None = None if bundle is None else pack(bundle)
        if raw is None and wait_ms:
            conn.collecting = True
            request = self._native(WatchRequest(conn.next_req_id(), [tx_id]))
            _, pushed = await self._call(conn, request)
            raw = (await self._wait_receipts(conn, pushed, {tx_id}, wait_ms)).get(tx_id)
        if raw is None:
            waited = f" within {wait_ms} ms" if wait_ms else ""
            raise HttpError("not_found", f"this member has not executed {tx_id.hex()}{waited}")
        height = Bundle.from_array(unpack(raw)).receipt.height
        return json_response(200, {"tx_id": tx_id.hex(), "height": height, "receipt": _b64(raw)})

    async def _kv(
        self,
        channel: trio.abc.Stream,
        conn: GatewayConnection,
        incoming: Incoming,
        params: dict[str, str],
    ) -> Response:
        text = params["key"]
        key = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        reply, _ = await self._call(conn, self._native(GetRequest(conn.next_req_id(), key)))
        key, value, height, block_hash, signer, _ = reply
        return json_response(
            200,
            {
                "key": _b64(key),
                "value": None if value is None else _b64(value),
                "height": height,
                "block_hash": block_hash.hex(),
                "signer": signer,
                "reply": _b64(pack(reply)),
            },
        )

    async def _block(
        self,
        channel: trio.abc.Stream,
        conn: GatewayConnection,
        incoming: Incoming,
        params: dict[str, str],
    ) -> Response:
        height = int(params["height"])
        block, _ = await self._call(conn, self._native(BlockRequest(conn.next_req_id(), height)))
        if block is None:
            raise HttpError("not_found", f"this member has no block {height}")
        return json_response(200, {"height": height, "block": _b64(pack(block))})

    async def _status(
        self,
        channel: trio.abc.Stream,
        conn: GatewayConnection,
        incoming: Incoming,
        params: dict[str, str],
    ) -> Response:
        text, _ = await self._call(conn, self._native(StatusRequest(conn.next_req_id())))
        return Response(200, str(text).encode() + b"\n")

    async def _openapi_route(
        self,
        channel: trio.abc.Stream,
        conn: GatewayConnection,
        incoming: Incoming,
        params: dict[str, str],
    ) -> Response:
        return Response(200, self._openapi)

    # --- follow: Server-Sent Events ---------------------------------------------------------

    async def _follow(
        self,
        channel: trio.abc.Stream,
        conn: GatewayConnection,
        incoming: Incoming,
        params: dict[str, str],
    ) -> Response | None:
        last = incoming.headers.get("last-event-id")
        if last is not None:  # an EventSource reconnecting: on from the block after it
            [_, last_event_id] = ROUTES_BY_NAME["follow"].params
            from_height = int(last_event_id.check(last.strip())) + 1
        elif "from" in params:
            from_height = int(params["from"])
        else:
            raise _bad("from is required: GET /v1/follow?from=HEIGHT")
        if self.sse_open >= self.sse_streams_max and not self._share_stream(conn.source):
            raise HttpError(
                "too_many_subscribers",
                f"{self.sse_streams_max} streams are open on this member's gateway; try later",
                headers=(("Retry-After", "5"),),
            )
        follow_id = conn.next_req_id()
        entry = (conn, follow_id)
        mine = self._streams.setdefault(conn.source, [])
        mine.append(entry)
        try:
            request = self._native(FollowRequest(follow_id, from_height, SSE_CREDIT))
            _, pushed = await self._call(conn, request)
            self.counters["sse_streams"] += 1
            if await self._send(channel, SSE_HEAD):
                await self._stream(channel, conn, request.req_id, from_height, pushed)
            if conn.open:
                await self.handler.handle(conn, UnfollowRequest(conn.next_req_id(), request.req_id))
            return None
        finally:
            if entry in mine:  # (else: given up to another source, `_share_stream`)
                mine.remove(entry)
            if not mine and self._streams.get(conn.source) is mine:
                del self._streams[conn.source]

    def _share_stream(self, source: str) -> bool:
        """Every SSE slot is taken: a source holding fewer streams than the fullest source (by
        two or more) takes that source's newest stream, which ends with a reason (max-min fair,
        as the member shares its follows: service._share_follow), so one client, however many
        connections it opens, cannot lock the others out. False when `source` already holds
        its fair part."""
        mine = len(self._streams.get(source, ()))
        fullest = max(self._streams, key=lambda s: len(self._streams[s]), default=None)
        if fullest is None or len(self._streams[fullest]) < mine + 2:
            return False
        victim, follow_id = self._streams[fullest].pop()
        if not self._streams[fullest]:
            del self._streams[fullest]
        self.counters["sse_shared_fairly"] += 1
        # Read by its stream as the member's error on the follow: its `error` event, its end.
        victim.error(
            follow_id,
            "stream ended: this member's gateway shares its streams fairly among its clients' "
            "addresses, and another needed one; follow again later",
            kind="overloaded",
        )
        return True

    async def _stream(
        self,
        channel: trio.abc.Stream,
        conn: GatewayConnection,
        follow_id: int,
        height: int,
        pending: list[bytes],
    ) -> None:
        """Turn the follow's frames into events for the writer task until the follow ends,
        the client leaves, or the writer has been stuck in one write for SSE_SEND_TIMEOUT_S
        (a slow reader). An end with a reason appends an `error` event, which the writer has
        SSE_FINISH_S to deliver; then the stream is cut."""
        prefix = b"\x93" + pack(follow_id) + pack("block")
        frames = deque(pending)
        out = _Events()
        why: dict[str, str] | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._until_client_leaves, channel, nursery.cancel_scope)
            nursery.start_soon(self._write_events, channel, conn, follow_id, out, nursery)
            quiet_since = trio.current_time()
            while why is None:
                if not frames:
                    wake = quiet_since + SSE_KEEPALIVE_S
                    if out.writing_since is not None:
                        wake = min(wake, out.writing_since + SSE_SEND_TIMEOUT_S)
                    with trio.move_on_at(wake):
                        await conn.wait_queued()
                    frames.extend(conn.frames())
                    now = trio.current_time()
                    since = out.writing_since
                    if since is not None and now - since >= SSE_SEND_TIMEOUT_S:
                        self.counters["sse_slow_reader"] += 1
                        why = {
                            "code": "overloaded",
                            "message": "the stream ended: an event was not taken within "
                            f"{SSE_SEND_TIMEOUT_S:g} s",
                        }
                        break
                    if not frames:
                        if now >= quiet_since + SSE_KEEPALIVE_S:
                            if not out.queue:
                                out.put(SSE_KEEPALIVE, block=False)
                            quiet_since = now
                        continue
                frame = frames.popleft()
                quiet_since = trio.current_time()
                if frame.startswith(prefix):
                    if conn.tls_key is not None and not self._admitted(conn):
                        why = {"code": "forbidden", "message": "your TLS key is no longer admitted"}
                        break
                    data = {"height": height, "block": _b64(frame[len(prefix) :])}
                    if not out.put(sse_event("block", data, height), block=True):
                        self.counters["sse_credit_exceeded"] += 1
                        self.log.error(
                            "gateway stream of %s: the member sent more blocks than the "
                            "stream's credit (%d): ended",
                            conn.peer,
                            SSE_CREDIT,
                        )
                        why = {
                            "code": "internal",
                            "message": "the stream ended: the member sent more blocks than it "
                            "was granted (a bug, logged by the member); follow again",
                        }
                        break
                    height += 1
                    continue
                message = unpack(frame)
                if message[1] == "error" and message[0] in (follow_id, PUSH):
                    code = "forbidden" if conn.closed_reason == REVOKED else "overloaded"
                    why = {"code": code, "message": str(message[2])}
                # (else: a credit request's reply)
            out.put(sse_event("error", {"error": why}), block=False)
            out.finish()
            with trio.move_on_after(SSE_FINISH_S):
                await out.done.wait()
            nursery.cancel_scope.cancel()

    async def _write_events(
        self,
        channel: trio.abc.SendStream,
        conn: GatewayConnection,
        follow_id: int,
        out: _Events,
        nursery: trio.Nursery,
    ) -> None:
        """Write the events in order; grant the follow credit as its blocks are written (so
        at most SSE_CREDIT blocks are ever queued and unwritten, here and in the
        connection's queue together). The client gone: the stream ends."""
        written = 0  # blocks written since credit was last granted
        try:
            while (item := await out.get()) is not None:
                data, block = item
                out.writing_since = trio.current_time()
                await channel.send_all(data)
                out.writing_since = None
                out.written(block)
                if block:
                    written += 1
                    if written >= SSE_CREDIT // 2:
                        credit = CreditRequest(conn.next_req_id(), follow_id, written)
                        await self.handler.handle(conn, credit)
                        written = 0
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            nursery.cancel_scope.cancel()
        out.done.set()

    async def _until_client_leaves(
        self, channel: trio.abc.ReceiveStream, scope: trio.CancelScope
    ) -> None:
        """A subscriber sends nothing after its request: its end of the connection closing
        (or more than SSE_CLIENT_BYTES_MAX bytes from it) ends the stream."""
        received = 0
        try:
            while received <= SSE_CLIENT_BYTES_MAX:
                data = await channel.receive_some(SSE_CLIENT_BYTES_MAX)
                if not data:
                    break
                received += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        scope.cancel()

    # --- TLS --------------------------------------------------------------------------------

    async def _tls_accept(
        self, stream: trio.abc.Stream, peer: str, deadline: float
    ) -> tuple[trio.abc.Stream, str, bytes] | None:
        """The TLS handshake, by `deadline`, and the client's certificate key; None (counted,
        logged) when it fails. A key the client port would not admit is let in and answered
        403 `forbidden` at its first request (it can read that over TLS)."""
        assert self._tls is not None and self._tls_accepts is not None
        if self._handshakes >= self._handshakes_max:
            self.counters["refused_too_many_handshakes"] += 1
            self._ratelog.warning(
                "tls_too_many",
                f"refusing gateway client {peer}: {self._handshakes_max} TLS handshakes open",
            )
            return None
        self._handshakes += 1
        try:
            return await self._handshake(stream, peer, deadline)
        finally:
            self._handshakes -= 1

    async def _handshake(
        self, stream: trio.abc.Stream, peer: str, deadline: float
    ) -> tuple[trio.abc.Stream, str, bytes] | None:
        assert self._tls is not None and self._tls_accepts is not None
        with trio.move_on_at(deadline):
            first = bytes(await stream.receive_some(4096))
            if not first:
                return None
            sniff = SniffStream(stream, first)
            if not is_tls_hello(first):
                self.counters["tls_required"] += 1
                self._ratelog.warning(
                    "tls_required", f"gateway client {peer} spoke without TLS: HTTPS only here"
                )
                plain = HttpError(
                    "bad_request",
                    "this gateway serves HTTPS only ([tls] gateway = true in the member's "
                    "node.toml): connect with https://",
                    close=True,
                )
                await self._send(sniff, self._error(plain))
                return None
            secured = trio.SSLStream(sniff, self._tls.server_context, server_side=True)
            try:
                await secured.do_handshake()
                key = peer_key(secured)
            except trio.BrokenResourceError as exc:
                self.counters["tls_failed"] += 1
                self._ratelog.warning("tls_failed", explain_failure(exc, b"", f"client {peer}"))
                return None
            except TlsRefused as exc:
                self.counters["tls_bad_certificate"] += 1
                self._ratelog.warning("tls_bad_certificate", f"gateway client {peer} {exc}")
                return None
            name = self._tls_accepts(key)
            if name is None:
                self.counters["tls_unknown_client"] += 1
                self._ratelog.warning(
                    "tls_unknown_client",
                    f"gateway client {peer} presented TLS key {key.hex()[:16]}…, which is not "
                    "an admitted client's or a member's key: refused",
                )
                return secured, peer, key
            return secured, f"{name}@{peer}", key
        self.counters["tls_handshake_timeout"] += 1
        return None


def _refusal(kind: Refusal, message: str) -> HttpError:
    """The HTTP error for one of the handler's error replies, by the kind it gave
    (client_port.Refusal), never by its wording."""
    match kind:
        case "internal":
            return HttpError("internal", message)
        case "too_many_follows":
            return HttpError("too_many_subscribers", message, headers=(("Retry-After", "5"),))
        case "overloaded":
            return HttpError("overloaded", message, status=503, headers=(("Retry-After", "1"),))
        case "bad_request":
            return _bad(message)
