"""A tiny HTTP/1.1 server on Trio for health, readiness, status, metrics and the explorer (opt-in).

Theory of operation
-------------------
One request per connection: read the request head (request line and headers, up to the blank
line) within `head_bytes_max` bytes and `head_timeout_s` seconds, answer, close
(`Connection: close`). Prometheus, load balancers and browsers handle that; nothing here needs
keep-alive, bodies or chunked encoding, so none of them are served (one request per connection
also bounds what one socket can ask of the member):

    GET|HEAD <path>[?query] HTTP/1.0|1.1   -> the route's answer, or 404
    any other method                        -> 405 with `Allow: GET, HEAD`
    a request with a body                   -> 400 (only GET/HEAD are served)
    a head larger than head_bytes_max       -> 431, then close
    no complete head within head_timeout_s  -> 408, then close
    anything unparsable                     -> 400

The head is parsed by h11 (fed the whole head once its blank line has come, within the size
cap; `next_event` gives the request); we add what h11 leaves to the application: only
HTTP/1.0 and 1.1, upper-case methods, an origin-form target ("/..."), no line led by
whitespace. HTTP/1.1 makes a Host header mandatory and h11 refuses a request without one; this
server serves one site and hand-typed probes (`printf 'GET /healthz HTTP/1.1\r\n\r\n' | nc`)
omit it, so a missing Host is supplied empty rather than refused.

Routes are plain functions returning a Response; they run on the event loop and must be
cheap. Request routes (`request_routes`) are async functions of the Request (its query string
and the peer's address: the explorer's pages, which rate-limit per source and read blocks on
worker threads); each has ROUTE_TIMEOUT_S to answer, else 503. At most `connections_max`
connections are served at a time; more are closed at once. Of those, at most
`request_routes_max` may be in a request route or sending its answer; a request route's
request beyond that is answered 503 with Retry-After at once, so however slow the explorer's
answers (or their readers) are, /healthz, /readyz and /metrics keep
`connections_max - request_routes_max` slots. A route that raises is our bug: it
is logged and answered 500, and the server goes on. Junk from the network never raises out of
a connection handler.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import trio

if TYPE_CHECKING:
    import h11

HEAD_BYTES_MAX = 8192
HEAD_TIMEOUT_S = 2.0  # a probe sends its request at once; an idle socket holds a slot this long
SEND_TIMEOUT_S = 10.0
ROUTE_TIMEOUT_S = 10.0  # a request route's answer (a block read on a worker thread) or 503
CONNECTIONS_MAX = 64
REQUEST_ROUTES_MAX = 16  # of them, in request routes (the explorer) at once (module docstring)
RECEIVE_BYTES = 4096
QUERY_FIELDS_MAX = 16

Route = Callable[[], "Response"]
RequestRoute = Callable[["Request"], Awaitable["Response"]]

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()

    def encode(self, *, head_only: bool = False) -> bytes:
        lines = [
            f"HTTP/1.1 {self.status} {REASONS.get(self.status, 'Unknown')}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Connection: close",
            "Cache-Control: no-store",
            *(f"{k}: {v}" for k, v in self.headers),
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if head_only else head + self.body


def text(status: int, body: str) -> Response:
    return Response(status, (body.rstrip("\n") + "\n").encode())


class RequestError(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status
        self.why = why


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    version: str
    headers: dict[str, str]
    query: str = ""  # the raw query string (after "?"), "" when none
    peer: str = ""  # the address the connection came from (set by the server)

    def params(self) -> dict[str, str]:
        """The query string's fields (the last of a repeated name wins; a bare name is ""),
        RequestError(400) when it has more than QUERY_FIELDS_MAX fields or an escape that is
        not UTF-8."""
        try:
            pairs = parse_qsl(
                self.query, keep_blank_values=True, errors="strict", max_num_fields=QUERY_FIELDS_MAX
            )
        except ValueError:
            raise RequestError(400, "malformed query string") from None
        return dict(pairs)


_HOST_LINE = re.compile(rb"\r\nhost:", re.IGNORECASE)
_FOLDED_LINE = re.compile(rb"\r\n[ \t]")


def _reader(head_bytes_max: int) -> h11.Connection:
    import h11  # (lazily: `consortium --help` imports nothing of the HTTP side)

    return h11.Connection(h11.SERVER, max_incomplete_event_size=head_bytes_max)


def _with_host(data: bytes) -> bytes:
    """`data` (a whole head) with an empty Host header when it has none (module docstring)."""
    if _HOST_LINE.search(data) is not None:
        return data
    line_end = data.find(b"\r\n")
    if line_end < 0 or not data[:line_end].endswith(b" HTTP/1.1"):
        return data
    return data[:line_end] + b"\r\nHost: " + data[line_end:]


def _request_of(event: h11.Request) -> Request:
    """Our Request from h11's, with the checks h11 leaves to the application."""
    version = "HTTP/" + event.http_version.decode("ascii")
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise RequestError(400, f"unsupported protocol version {version[:16]!r}")
    method = event.method.decode("ascii")
    if not method.isalpha() or not method.isupper():
        raise RequestError(400, "malformed method")
    try:
        target = event.target.decode("ascii")
    except UnicodeDecodeError:
        raise RequestError(400, "malformed request target") from None
    if not target.startswith("/") or any(c <= " " or c == "\x7f" for c in target):
        raise RequestError(400, "malformed request target")
    headers = {bytes(k).decode("latin-1"): bytes(v).decode("latin-1") for k, v in event.headers}
    path, _, query = target.partition("?")
    return Request(method, path, version, headers, query)


def _next_request(reader: h11.Connection) -> Request | None:
    """The request once h11 has its whole head, None while it needs more bytes."""
    import h11

    try:
        event = reader.next_event()
    except h11.RemoteProtocolError as exc:
        status = 431 if exc.error_status_hint == 431 else 400
        raise RequestError(status, f"malformed request: {str(exc)[:100]}") from None
    if event is h11.NEED_DATA:
        return None
    if isinstance(event, h11.Request):
        return _request_of(event)
    raise RequestError(400, "malformed request")  # (a client's first event is its request)


def _parse(reader: h11.Connection, head: bytes) -> Request:
    """The request of a whole head (ending with its blank line), through h11. A line led by
    whitespace (an obsolete folded header, or junk after the request line) is refused here:
    RFC 9112 lets a server refuse or drop it, and h11 would let it through."""
    if _FOLDED_LINE.search(head) is not None:
        raise RequestError(400, "malformed header line (led by whitespace)")
    reader.receive_data(_with_host(head))
    request = _next_request(reader)
    if request is None:  # a blank line and still no request line
        raise RequestError(400, "malformed request head")
    return request


def parse_head(head: bytes) -> Request:
    """The request line and headers (no trailing blank line); RequestError(400) if malformed."""
    return _parse(_reader(len(head) + 4), head + b"\r\n\r\n")


class HttpServer:
    """Serve `routes` (path -> route) and `request_routes` (path -> async route of the
    request) on `listen`; `run` with nursery.start, which returns the bound port."""

    def __init__(
        self,
        routes: Mapping[str, Route],
        listen: tuple[str, int],
        *,
        request_routes: Mapping[str, RequestRoute] | None = None,
        log: logging.Logger | None = None,
        head_bytes_max: int = HEAD_BYTES_MAX,
        head_timeout_s: float = HEAD_TIMEOUT_S,
        connections_max: int = CONNECTIONS_MAX,
        route_timeout_s: float = ROUTE_TIMEOUT_S,
        request_routes_max: int = REQUEST_ROUTES_MAX,
    ) -> None:
        self.routes = routes
        self.request_routes = request_routes or {}
        self.listen = listen
        self.log = log or logging.getLogger("consortium.http")
        self.head_bytes_max = head_bytes_max
        self.head_timeout_s = head_timeout_s
        self.route_timeout_s = route_timeout_s
        self._slots = trio.Semaphore(connections_max)
        self._request_slots = trio.Semaphore(request_routes_max)
        # Connections still waiting for their request head, oldest first: when every slot is
        # taken, a new connection closes the oldest of them, so sockets that open and send
        # nothing cannot lock health probes out.
        self._reading: dict[object, trio.CancelScope] = {}
        self.counters: dict[int | str, int] = {}
        self.port = 0

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        host, port = self.listen
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            await trio.serve_listeners(self._connection, listeners, handler_nursery=nursery)

    def _count(self, key: int | str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1

    async def _connection(self, stream: trio.SocketStream) -> None:
        try:
            if self._slots.value == 0:
                if not self._reading:
                    self._count("refused_busy")
                    return
                self._count("closed_idle")
                next(iter(self._reading.values())).cancel()
            acquired = False
            with trio.move_on_after(self.head_timeout_s):
                await self._slots.acquire()
                acquired = True
            if not acquired:
                self._count("refused_busy")
                return
            try:
                await self._serve(stream)
            finally:
                self._slots.release()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self._count("connection_error")
        except Exception:  # our bug: never take the server down for it
            self._count("internal_error")
            self.log.exception("internal error in the HTTP server")
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve(self, stream: trio.SocketStream) -> None:
        key = object()
        scope = self._reading[key] = trio.CancelScope()
        request: Request | None = None
        try:
            with scope:
                request = await self._read_request(stream)
        except RequestError as exc:
            response = text(exc.status, exc.why)
        finally:
            del self._reading[key]
        if scope.cancelled_caught:
            return  # closed for a newer connection before it sent a whole request
        if request is None:
            await self._send(stream, response, head_only=False)
            return
        request = dataclasses.replace(request, peer=_peer_host(stream))
        head_only = request.method == "HEAD"
        if request.path not in self.request_routes:
            await self._send(stream, await self._answer(request), head_only=head_only)
            return
        try:
            self._request_slots.acquire_nowait()
        except trio.WouldBlock:
            self._count("request_routes_busy")
            busy = text(503, "too many explorer requests at once; try again")
            busy = dataclasses.replace(busy, headers=(retry_after(1),))
            await self._send(stream, busy, head_only=head_only)
            return
        try:  # (held while sending too: a reader that does not read holds it up to 10 s)
            await self._send(stream, await self._answer(request), head_only=head_only)
        finally:
            self._request_slots.release()

    async def _send(
        self, stream: trio.SocketStream, response: Response, *, head_only: bool
    ) -> None:
        self._count(response.status)
        with trio.move_on_after(SEND_TIMEOUT_S):
            await stream.send_all(response.encode(head_only=head_only))

    async def _read_request(self, stream: trio.SocketStream) -> Request:
        """The request head, fed to h11 as it arrives (module docstring)."""
        reader = _reader(self.head_bytes_max)
        buffer = bytearray()  # what came so far, for the size cap and the Host shim
        with trio.move_on_after(self.head_timeout_s):
            while True:
                end = buffer.find(b"\r\n\r\n")
                if end >= 0:
                    if end > self.head_bytes_max:
                        break
                    return _parse(reader, bytes(buffer[: end + 4]))
                if len(buffer) > self.head_bytes_max:
                    break
                data = await stream.receive_some(RECEIVE_BYTES)
                if not data:
                    raise RequestError(400, "connection closed before the request was complete")
                buffer += data
            raise RequestError(431, f"request head larger than {self.head_bytes_max} bytes")
        raise RequestError(408, f"no complete request within {self.head_timeout_s:g} s")

    async def _answer(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response(
                405,
                b"only GET and HEAD are served\n",
                headers=(("Allow", "GET, HEAD"),),
            )
        length = request.headers.get("content-length", "0")
        if length not in ("", "0") or "transfer-encoding" in request.headers:
            return text(400, "a GET request carries no body")
        route = self.routes.get(request.path)
        request_route = self.request_routes.get(request.path)
        if route is None and request_route is None:
            known = ", ".join(sorted({*self.routes, *self.request_routes}))
            return text(404, f"no such path {request.path[:100]}; known: {known}")
        try:
            if route is not None:
                return route()
            assert request_route is not None
            with trio.move_on_after(self.route_timeout_s):
                return await request_route(request)
            self._count("route_timeout")
            return text(503, f"no answer within {self.route_timeout_s:g} s; try again")
        except RequestError as exc:
            return text(exc.status, exc.why)
        except Exception:
            self._count("route_error")
            self.log.exception("route %s failed", request.path)
            return text(500, "internal error; see the node's log")


def _peer_host(stream: trio.SocketStream) -> str:
    try:
        address = stream.socket.getpeername()
    except OSError:
        return "?"
    return str(address[0]) if isinstance(address, tuple) else str(address)


def json_response(status: int, doc: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    import json

    return Response(
        status, (json.dumps(doc, default=str) + "\n").encode(), "application/json", headers
    )


def retry_after(seconds: float) -> tuple[str, str]:
    """A Retry-After header for a wait of `seconds` (whole seconds, at least 1)."""
    return ("Retry-After", str(max(1, math.ceil(seconds))))
