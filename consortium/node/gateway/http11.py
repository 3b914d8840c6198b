"""The gateway's HTTP/1.1 wire: requests read within their limits and deadlines, responses
written with a deadline, on one keep-alive connection.

Reading a request (`HttpReader.next_request`):
- Between requests the connection may stay idle `idle_timeout_s`; then it is closed without an
  answer (a keep-alive connection nobody uses costs a slot, not forever).
- The head (request line and headers, up to the blank line) must come whole within
  `head_timeout_s` of its first byte (of the accept, for a connection's first request) and
  `head_bytes_max` bytes: else 408 `request_timeout` or 431 `header_too_large`, then close.
  It is parsed by h11 as the health port parses its heads (node/http.py `parse_head`: the checks
  h11 leaves to the application, a missing Host supplied empty).
- The body is read only with a Content-Length (`Transfer-Encoding` is refused: 400
  `bad_request`, then close: a chunked body cannot be skipped without reading it). A length
  over `body_bytes_max` is refused 413 `payload_too_large` before a byte of it is read, then
  close.
- Body bytes are charged to the gateway-wide `BodyBudget` as they arrive, never reserved from
  the Content-Length: a head announcing a large body holds nothing, so connections that send
  heads and no body cannot lock every other client's POST out. The budget also caps what one
  source (sources.source_group) holds. A body the budget cannot hold any more is refused
  mid-way (429 `overloaded` for the source's share, 503 for the gateway's), then close.
- The whole body must come within `body_grace_s` + its length at `body_bytes_per_s_min` of the
  end of the head, and never later than `body_timeout_s`: a minimum transfer rate, so a body
  trickled in holds its slot and its bytes for seconds, not the full deadline. Else 408, then
  close.
- A client that sends `Expect: 100-continue` is told to go on once its length is accepted,
  within `send_timeout_s` (a client that does not read it is closed without a word: every write
  here is under a deadline).
- Bytes after a request (a pipelined next one) stay in the reader's buffer for the next call:
  one request is in progress at a time.

Every error here is an `HttpError` the server answers as JSON (`{"error": {"code",
"message"}}`) with the status docs/gateway.md gives its code (`ERRORS`).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import trio

from consortium.node.http import RequestError, parse_head

# Every error code the gateway answers with, and its HTTP status (docs/gateway.md, the
# OpenAPI document: a test holds the three to each other). `overloaded` is 429 when one
# client asks too much (its own source's connections) and 503 when the member is busy.
ERRORS: dict[str, tuple[int, ...]] = {
    "bad_request": (400,),
    "bad_json": (400,),
    "forbidden": (403,),
    "not_found": (404,),
    "method_not_allowed": (405,),
    "request_timeout": (408,),
    "payload_too_large": (413,),
    "unsupported_media_type": (415,),
    "header_too_large": (431,),
    "overloaded": (429, 503),
    "too_many_subscribers": (503,),
    "internal": (500,),
}

REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

RECEIVE_BYTES = 65536
MESSAGE_CHARS_MAX = 300  # an error message's length (client input quoted in it is cut)


class HttpError(Exception):
    """A request answered with an error: `code` (ERRORS), a one-sentence `message`; `close`:
    the connection ends after the answer (its rest cannot be read as a request)."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        close: bool = False,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        assert code in ERRORS, code
        status = ERRORS[code][0] if status is None else status
        assert status in ERRORS[code], (code, status)
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message[:MESSAGE_CHARS_MAX]
        self.close = close
        self.headers = headers


@dataclass(frozen=True, slots=True)
class Incoming:
    """One request: its head (node/http.py's Request fields) and its whole body."""

    method: str
    path: str
    query: str
    version: str
    headers: dict[str, str]
    body: bytes = b""
    keep_alive: bool = True  # the client did not ask to close (HTTP/1.1 without "close")


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False

    def encode(self, *, head_only: bool = False) -> bytes:
        """The response's bytes; `head_only` (the answer to HEAD): its head alone, with the
        Content-Length the body would have (RFC 9110 9.3.2), so that keep-alive goes on."""
        lines = [
            f"HTTP/1.1 {self.status} {REASONS.get(self.status, 'Unknown')}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Cache-Control: no-store",
            "Connection: close" if self.close else "Connection: keep-alive",
            *(f"{k}: {v}" for k, v in self.headers),
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if head_only else head + self.body


def json_response(status: int, doc: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    body = json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode() + b"\n"
    return Response(status, body, headers=headers)


def error_response(error: HttpError) -> Response:
    doc = {"error": {"code": error.code, "message": error.message}}
    response = json_response(error.status, doc, error.headers)
    response.close = error.close
    return response


SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/event-stream\r\n"
    b"Cache-Control: no-store\r\n"
    b"Connection: close\r\n"  # the stream ends with the connection (no length, no chunks)
    b"X-Accel-Buffering: no\r\n"
    b"\r\n"
)


def sse_event(event: str, data: Any, event_id: int | None = None) -> bytes:
    """One Server-Sent Event: `data` as one line of JSON."""
    line = json.dumps(data, separators=(",", ":"), ensure_ascii=True)
    head = f"event: {event}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return f"{head}data: {line}\n\n".encode()


SSE_KEEPALIVE = b": keepalive\n\n"


@dataclass
class BodyBudget:
    """Request body bytes held at once over every connection of the gateway (charged as they
    arrive, held until their request is answered): at most `bytes_max` in all and
    `source_bytes_max` from one source (sources.source_group)."""

    bytes_max: int
    source_bytes_max: int
    held: int = 0
    by_source: Counter[str] = field(default_factory=Counter)

    def take(self, n: int, source: str) -> str | None:
        """Charge `n` bytes to `source`; None, or why not ("source": its share is full,
        "all": the gateway's is)."""
        if self.by_source[source] + n > self.source_bytes_max:
            return "source"
        if self.held + n > self.bytes_max:
            return "all"
        self.held += n
        self.by_source[source] += n
        return None

    def give(self, n: int, source: str) -> None:
        if not n:
            return
        self.held -= n
        self.by_source[source] -= n
        assert self.held >= 0 and self.by_source[source] >= 0
        if not self.by_source[source]:
            del self.by_source[source]


@dataclass
class Limits:
    head_bytes_max: int
    body_bytes_max: int
    head_timeout_s: float
    body_timeout_s: float
    idle_timeout_s: float
    send_timeout_s: float
    body_grace_s: float = 5.0  # a body's deadline: this, plus its length at...
    body_bytes_per_s_min: int = 64 << 10  # ...this rate (at most body_timeout_s)

    def body_deadline_s(self, length: int) -> float:
        """How long a body of `length` bytes may take, from the end of its head."""
        return min(self.body_timeout_s, self.body_grace_s + length / self.body_bytes_per_s_min)


@dataclass
class HttpReader:
    """Reads one connection's requests (module docstring). `started` is when the connection
    was accepted (trio clock): its first head's deadline counts from there."""

    stream: trio.abc.Stream  # (it sends only "100 Continue")
    limits: Limits
    budget: BodyBudget
    started: float
    source: str = ""  # whose share of the budget the bodies are charged to
    buffer: bytearray = field(default_factory=bytearray)
    requests: int = 0
    held: int = 0  # body bytes of the current request held in the budget

    def release(self) -> None:
        """The current request is answered: its body's bytes go back to the budget."""
        self.budget.give(self.held, self.source)
        self.held = 0

    async def _receive(self) -> bool:
        data = await self.stream.receive_some(RECEIVE_BYTES)
        if not data:
            return False
        self.buffer += data
        return True

    async def next_request(self) -> Incoming | None:
        """The next whole request; None when the client closed the connection, or left it
        idle between requests. HttpError for one that is refused (module docstring)."""
        assert self.held == 0, "release() the last request first"
        limits = self.limits
        if self.requests and not self.buffer:
            with trio.move_on_after(limits.idle_timeout_s):
                if not await self._receive():
                    return None
            if not self.buffer:
                return None  # idle: closed without a word
        deadline = (
            self.started + limits.head_timeout_s
            if not self.requests
            else trio.current_time() + limits.head_timeout_s
        )
        self.requests += 1
        head = await self._head(deadline)
        if head is None:
            return None
        try:
            request = parse_head(head)
        except RequestError as exc:
            code = "header_too_large" if exc.status == 431 else "bad_request"
            raise HttpError(code, exc.why, close=True) from None
        tokens = {t.strip().lower() for t in request.headers.get("connection", "").split(",")}
        keep_alive = request.version == "HTTP/1.1" and "close" not in tokens
        if "transfer-encoding" in request.headers:
            raise HttpError(
                "bad_request",
                "chunked (Transfer-Encoding) request bodies are not served: send the body "
                "with a Content-Length",
                close=True,
            )
        length = int(request.headers.get("content-length", "0") or "0")  # (h11 checked it)
        if length > limits.body_bytes_max:
            raise HttpError(
                "payload_too_large",
                f"request body of {length} bytes; at most {limits.body_bytes_max} are served",
                close=True,
            )
        body = b""
        if length:
            deadline = trio.current_time() + limits.body_deadline_s(length)
            if request.headers.get("expect", "").lower() == "100-continue":
                # (curl asks before a large body, and waits a second for this otherwise)
                told = False
                with trio.move_on_after(limits.send_timeout_s):
                    await self.stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                    told = True
                if not told:
                    return None  # it does not read what it asked for: closed without a word
            read = await self._body(length, deadline)
            if read is None:
                return None
            body = read
        return Incoming(
            request.method,
            request.path,
            request.query,
            request.version,
            request.headers,
            body,
            keep_alive,
        )

    async def _head(self, deadline: float) -> bytes | None:
        """The head (without its blank line), taken off the buffer."""
        limit = self.limits.head_bytes_max
        with trio.move_on_at(deadline):
            while True:
                end = self.buffer.find(b"\r\n\r\n")
                if end >= 0:
                    if end > limit:
                        break
                    head = bytes(self.buffer[:end])
                    del self.buffer[: end + 4]
                    return head
                if len(self.buffer) > limit:
                    break
                if not await self._receive():
                    return None
            raise HttpError(
                "header_too_large", f"request head larger than {limit} bytes", close=True
            )
        raise HttpError(
            "request_timeout",
            f"the request head did not arrive within {self.limits.head_timeout_s:g} s",
            close=True,
        )

    async def _body(self, length: int, deadline: float) -> bytes | None:
        """The body, its bytes charged to the budget as they arrive (module docstring)."""
        with trio.move_on_at(deadline):
            while True:
                have = min(len(self.buffer), length)
                if have > self.held:
                    full = self.budget.take(have - self.held, self.source)
                    if full is not None:
                        raise self._budget_full(full)
                    self.held = have
                if have == length:
                    break
                if not await self._receive():
                    return None
            body = bytes(self.buffer[:length])
            del self.buffer[:length]
            return body
        raise HttpError(
            "request_timeout",
            f"the request body of {length} bytes did not arrive within "
            f"{self.limits.body_deadline_s(length):g} s (at least "
            f"{self.limits.body_bytes_per_s_min} bytes/s are needed)",
            close=True,
        )

    def _budget_full(self, which: str) -> HttpError:
        if which == "source":
            return HttpError(
                "overloaded",
                "request bodies from your address hold as many bytes as one address may at "
                "once; try again",
                status=429,
                close=True,
                headers=(("Retry-After", "1"),),
            )
        return HttpError(
            "overloaded",
            "the gateway holds as many request bodies as it may at once; try again",
            status=503,
            close=True,
            headers=(("Retry-After", "1"),),
        )
