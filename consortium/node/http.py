"""A tiny HTTP/1.1 server on Trio for health, readiness, status and metrics (opt-in).

Theory of operation
-------------------
One request per connection: read the request head (request line and headers, up to the blank
line) within `head_bytes_max` bytes and `head_timeout_s` seconds, answer, close
(`Connection: close`). Prometheus and load balancers handle that; nothing here needs
keep-alive, bodies or chunked encoding, so none of them are implemented:

    GET|HEAD <path>[?query] HTTP/1.0|1.1   -> the route's answer, or 404
    any other method                        -> 405 with `Allow: GET, HEAD`
    a request with a body                   -> 400 (only GET/HEAD are served)
    a head larger than head_bytes_max       -> 431, then close
    no complete head within head_timeout_s  -> 408, then close
    anything unparsable                     -> 400

Routes are plain functions returning (status, content type, body); they run on the event loop
and must be cheap. At most `connections_max` connections are served at a time; more are closed
at once. A route that raises is our bug: it is logged and answered 500, and the server goes on.
Junk from the network never raises out of a connection handler.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

HEAD_BYTES_MAX = 8192
HEAD_TIMEOUT_S = 2.0  # a probe sends its request at once; an idle socket holds a slot this long
SEND_TIMEOUT_S = 10.0
CONNECTIONS_MAX = 64
RECEIVE_BYTES = 4096

Route = Callable[[], "Response"]

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
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


def parse_head(head: bytes) -> Request:
    """The request line and headers (no trailing blank line); RequestError(400) if malformed."""
    try:
        decoded = head.decode("ascii")
    except UnicodeDecodeError:
        raise RequestError(400, "request head is not ASCII") from None
    lines = decoded.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise RequestError(400, "malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise RequestError(400, f"unsupported protocol version {version[:16]!r}")
    if not method.isalpha() or not method.isupper():
        raise RequestError(400, "malformed method")
    if not target.startswith("/") or any(c <= " " or c == "\x7f" for c in target):
        raise RequestError(400, "malformed request target")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or any(c <= " " for c in name):
            raise RequestError(400, "malformed header line")
        headers[name.lower()] = value.strip()
    return Request(method, target.split("?", 1)[0], version, headers)


class HttpServer:
    """Serve `routes` (path -> route) on `listen`; `run` with nursery.start, which returns the
    bound port."""

    def __init__(
        self,
        routes: dict[str, Route],
        listen: tuple[str, int],
        *,
        log: logging.Logger | None = None,
        head_bytes_max: int = HEAD_BYTES_MAX,
        head_timeout_s: float = HEAD_TIMEOUT_S,
        connections_max: int = CONNECTIONS_MAX,
    ) -> None:
        self.routes = routes
        self.listen = listen
        self.log = log or logging.getLogger("consortium.http")
        self.head_bytes_max = head_bytes_max
        self.head_timeout_s = head_timeout_s
        self._slots = trio.Semaphore(connections_max)
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
        try:
            with scope:
                response, head_only = self._respond(await self._read_head(stream))
        except RequestError as exc:
            response, head_only = text(exc.status, exc.why), False
        finally:
            del self._reading[key]
        if scope.cancelled_caught:
            return  # closed for a newer connection before it sent a whole request
        self._count(response.status)
        with trio.move_on_after(SEND_TIMEOUT_S):
            await stream.send_all(response.encode(head_only=head_only))

    def _respond(self, head: bytes) -> tuple[Response, bool]:
        """The response to a request head, and whether it was a HEAD request."""
        request = parse_head(head)
        return self._answer(request), request.method == "HEAD"

    async def _read_head(self, stream: trio.SocketStream) -> bytes:
        buffer = bytearray()
        with trio.move_on_after(self.head_timeout_s):
            while True:
                end = buffer.find(b"\r\n\r\n")
                if end >= 0:
                    if end > self.head_bytes_max:
                        break
                    return bytes(buffer[:end])
                if len(buffer) > self.head_bytes_max:
                    break
                data = await stream.receive_some(RECEIVE_BYTES)
                if not data:
                    raise RequestError(400, "connection closed before the request was complete")
                buffer += data
            raise RequestError(431, f"request head larger than {self.head_bytes_max} bytes")
        raise RequestError(408, f"no complete request within {self.head_timeout_s:g} s")

    def _answer(self, request: Request) -> Response:
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
        if route is None:
            known = ", ".join(sorted(self.routes))
            return text(404, f"no such path {request.path[:100]}; known: {known}")
        try:
            return route()
        except Exception:
            self._count("route_error")
            self.log.exception("route %s failed", request.path)
            return text(500, "internal error; see the node's log")


def json_response(status: int, doc: Any) -> Response:
    import json

    return Response(status, (json.dumps(doc, default=str) + "\n").encode(), "application/json")
