"""The member's client port: connections, their queues, TLS, and the requests handed on.

The messages it carries are consortium/protocol (messages.py: the wire forms; verify.py: the
proofs); what each request does against the member is node/service.py (`ClientService`, the
injected `ClientHandler`).

The server (`ClientServer`) accepts at most `connections_max` clients; per connection one task
reads requests and hands each to the injected `ClientHandler`, one task writes replies. Replies
and pushes are queued without blocking, bounded in frames and bytes: a client that does not
read is disconnected (slow consumer), never allowed to grow our memory. A malformed request is
answered with an error when its req_id can be recovered; an oversize or undecodable frame closes
that connection (after a best-effort [0, "error", why]); every other client is unaffected.

TLS (operator option, node.toml `[tls] client = true`; docs/tls.md): each connection must open
with a TLS 1.3 handshake within `handshake_timeout_s` (at most `handshakes_max` at a time), the
client presenting a certificate whose key `tls_accepts` admits (an admitted client's or a
member's). A key it does not admit gets [0, "error", why] inside TLS, then the connection
closes. The pin holds for the connection's life: each request re-checks the key (a lookup), and
`recheck_tls_keys` (called by the member when a block applies client changes, with the
gateway's own: service.tls_rechecks) closes the connections whose key is no longer admitted,
follow streams included. A client that connects
without TLS to a TLS port, or with TLS to a plain one, gets [0, "error", why] in plain framing
naming the setting to change, and the member logs and counts it (`tls_required`,
`tls_unexpected`).

Every request has a price and a budget (docs/operations.md, "Client port limits"):
- One request in progress per connection: the reader hands a request to the handler and reads
  no further frame until it is served, so a client that pipelines waits in its TCP window
  (backpressure), holding at most one receive buffer (64 KiB) or one frame here. The reader
  yields to the scheduler before each request, also when many came in one read, so one
  connection cannot keep the event loop from every other task.
- No reply is computed for a connection that has closed; while more than REPLY_BACKLOG_BYTES
  of its replies are unsent the reader waits for the writer (and closes the connection as a
  slow consumer after REPLY_DRAIN_S), so a client that asks without reading costs a waiting
  task, not the work of answering.
- Deadlines: a connection must send its first whole request within FIRST_REQUEST_TIMEOUT_S,
  and one that sends nothing for IDLE_TIMEOUT_S while it has no follow and no watched receipt
  (ClientHandler.subscribed) is closed (`closed_first_request_timeout`, `closed_idle`), told
  why in one [0, "error", why] frame. The client library reconnects when it needs to.
- At most SOURCE_CONNECTIONS_MAX connections from one source (`refused_too_many_from_source`)
  and `connections_max` in all (`refused_too_many_connections`), TLS handshakes included; a
  source is an IPv4 address or an IPv6 /64 (one host gets a whole /64 for nothing). When either
  cap is full, a new connection takes the slot of one that has not sent its first whole request
  yet (`evicted_idle_first_request`): the oldest from the source holding most such connections
  (for the per-source cap, the oldest from its own source), so a stranger holding every slot
  with silent connections, from however many addresses, only ever evicts itself, and a new
  client (which asks at once) gets in (sources.ConnectionCaps, shared with the gateway). Only
  when no connection is evictable is the new one refused, told why in one frame. The deadline
  alone did not do it: it makes the stranger's slots turn over, and it reopens them first.
The counters reach /metrics as consortium_client_port_events_total{event}.

Follows (protocol/messages.py, "Follow"): a follow whose connection has more than
FOLLOW_QUEUE_BYTES unsent pauses, and one paused longer than FOLLOW_PAUSE_MAX_S ends; the
member's follow tasks (node/service.py) read both here.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from typing import Any, Literal, Protocol

import trio

from consortium.crypto.codec import pack
from consortium.ledger.genesis import Params
from consortium.node.config import CLIENT_CONNECTIONS_MAX
from consortium.node.logs import RateLimitedLog
from consortium.node.sources import ConnectionCaps, Slot, source_group
from consortium.protocol.framing import FrameError, FrameReader, encode_frames, take_batch
from consortium.protocol.limits import MESSAGE_CHARS_MAX
from consortium.protocol.messages import PUSH, Request, RequestError, decode_request
from consortium.protocol.tls import (
    SniffStream,
    TlsIdentity,
    TlsRefused,
    explain_failure,
    is_tls_hello,
    peer_key,
)
from consortium.protocol.verify import Bundle

COALESCE_BYTES_MAX = 1 << 20
OUTBOUND_BYTES_MAX = 64 << 20
SLOW_CONSUMER = "slow consumer"
FLUSH_S = 1.0  # how long queued replies may still be written after the client stops sending
TLS_HANDSHAKE_TIMEOUT_S = 5.0
TLS_HANDSHAKES_MAX = 64
FOLLOW_QUEUE_BYTES = 4 << 20  # a follow pauses while its connection has more than this unsent
FOLLOW_PAUSE_MAX_S = 60.0  # a follow paused (no credit, or a full connection) this long ends
SNIFF_BYTES = 64 * 1024
FIRST_REQUEST_TIMEOUT_S = 5.0  # a connection's first whole request must arrive within this
IDLE_TIMEOUT_S = 60.0  # a connection with nothing to wait for and no request this long closes
SOURCE_CONNECTIONS_MAX = 64  # default of [limits] client_connections_per_source (node.toml)
REPLY_BACKLOG_BYTES = 8 << 20  # the reader waits while a connection has this much unsent
REPLY_DRAIN_S = 60.0  # ...and closes it as a slow consumer when it does not drain in this time


# What an error reply is (ClientConnection.error's `kind`): a request the member will not serve
# as asked (bad_request), one it cannot serve now (overloaded: ask again later), a follow over
# the follow bounds (too_many_follows), a bug (internal). Every refusal the handler makes names
# its kind (a test reads service.py for it): the gateway chose HTTP statuses by the English of
# the message before, and a rewording changed the status.
Refusal = Literal["bad_request", "overloaded", "too_many_follows", "internal"]


class ClientHandler(Protocol):
    async def handle(self, conn: ClientConnection, request: Request) -> None:
        """Serve one request: answer with conn.reply/conn.error; may push later."""

    def disconnected(self, conn: ClientConnection) -> None:
        """The connection is gone: forget what was kept for it."""

    def subscribed(self, conn: ClientConnection) -> bool:
        """Whether `conn` waits for something the member will push (a follow, a watched
        receipt): such a connection is not idle however long the client sends nothing."""

    def unwatch(self, conn: ClientConnection, tx_ids: set[bytes]) -> None:
        """`conn` no longer waits for these ids' receipts (the gateway, when the HTTP request
        that watched them ends: the connection may live on, keep-alive, nobody reading)."""


class ClientConnection:
    """One client. Replies and pushes are queued without blocking; a client that does not read
    (its queue is full) is disconnected rather than allowed to grow our memory."""

    def __init__(
        self, conn_id: int, peer: str, frames_max: int, bytes_max: int = OUTBOUND_BYTES_MAX
    ) -> None:
        self.id = conn_id
        self.peer = peer
        self._frames_max = frames_max
        self._bytes_max = bytes_max
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._wakeup = trio.Event()
        self._drained = trio.Event()  # set by the writer after each write
        self._finishing = False
        self.scope = trio.CancelScope()
        self.closed_reason = ""
        self.frames_sent = 0
        self.watched: set[bytes] = set()  # ids whose receipts the node will push here
        self.tls_key: bytes | None = None  # the client's TLS certificate key (a TLS port)

    @property
    def open(self) -> bool:
        return not self.closed_reason

    @property
    def queued_bytes(self) -> int:
        """Bytes queued and not yet written (a follow pauses above FOLLOW_QUEUE_BYTES)."""
        return self._queued_bytes

    def push(self, body: bytes) -> bool:
        """Queue one encoded response (a frame body). False when the connection is closed, or
        is closed now because its queue is full (slow consumer)."""
        if self.closed_reason:
            return False
        if len(self._queue) >= self._frames_max or self._queued_bytes + len(body) > self._bytes_max:
            self.close(f"{SLOW_CONSUMER}: reply queue full")
            return False
        self._queue.append(body)
        self._queued_bytes += len(body)
        self._wakeup.set()
        return True

    def reply(self, req_id: int, payload: Any) -> bool:
        return self.push(pack([req_id, "ok", payload]))

    def error(self, req_id: int, message: str, *, kind: Refusal = "bad_request") -> bool:
        """Answer `req_id` (or PUSH) with an error. `kind` is what the refusal is, for a port
        that speaks another protocol (the HTTP gateway answers each kind with its status); the
        native wire carries the message alone."""
        return self.push(pack([req_id, "error", message[:MESSAGE_CHARS_MAX]]))

    def push_block_receipts(self, frame: bytes) -> bool:
        """Queue an encode_block_receipts frame."""
        return self.push(frame)

    def push_receipt(self, bundle: Bundle | list[Any]) -> bool:
        raw = bundle.to_array() if isinstance(bundle, Bundle) else bundle
        return self.push(pack([PUSH, "receipt", raw]))

    def close(self, reason: str) -> None:
        """Disconnect now; what is queued is discarded."""
        if not self.closed_reason:
            self.closed_reason = reason
        self.scope.cancel()

    def close_soon(self, reason: str, message: str) -> None:
        """Tell the client `message` ([0, "error", message]) and disconnect: nothing else is
        sent from now on, and the connection ends within FLUSH_S whatever the client does."""
        if self.closed_reason:
            return
        self.error(PUSH, message)
        self.closed_reason = reason
        self._finishing = True
        self._wakeup.set()
        self.scope.deadline = min(self.scope.deadline, trio.current_time() + FLUSH_S)

    async def drained(self, bytes_max: int) -> None:
        """Wait until at most `bytes_max` bytes are queued and not yet written."""
        while self._queued_bytes > bytes_max and not self.closed_reason:
            self._drained = trio.Event()
            await self._drained.wait()

    def finish(self) -> None:
        """Write what is queued, then stop (the client stopped sending)."""
        self._finishing = True
        self._wakeup.set()

    def take(self) -> bytes | None:
        """The oldest queued frame body, taken off the queue as a writer takes it (the HTTP
        gateway's reader of a connection: node/gateway), or None when none is queued."""
        if not self._queue:
            return None
        body = self._queue.popleft()
        self._queued_bytes -= len(body)
        self._drained.set()
        return body

    async def wait_queued(self) -> None:
        """Wait until a frame is queued (at once when one is)."""
        while not self._queue:
            self._wakeup = trio.Event()
            await self._wakeup.wait()

    async def writer(self, stream: trio.abc.SendStream) -> None:
        while True:
            while not self._queue:
                if self._finishing:
                    return
                self._wakeup = trio.Event()
                await self._wakeup.wait()
            batch, size = take_batch(self._queue, COALESCE_BYTES_MAX)
            self._queued_bytes -= size
            await stream.send_all(encode_frames(batch))
            self.frames_sent += len(batch)
            self._drained.set()


class ClientServer:
    """Serves the client port; see the module docstring."""

    def __init__(
        self,
        handler: ClientHandler,
        *,
        listen: tuple[str, int],
        frame_bytes_max: int,
        params: Params,
        connections_max: int = CLIENT_CONNECTIONS_MAX,
        source_connections_max: int = SOURCE_CONNECTIONS_MAX,
        outbound_frames_max: int = 8192,
        outbound_bytes_max: int = OUTBOUND_BYTES_MAX,
        tls: TlsIdentity | None = None,
        tls_accepts: Callable[[bytes], str | None] | None = None,
        handshake_timeout_s: float = TLS_HANDSHAKE_TIMEOUT_S,
        handshakes_max: int = TLS_HANDSHAKES_MAX,
        log: logging.Logger | None = None,
    ) -> None:
        """`tls`: serve TLS only; `tls_accepts(key)` then names the client a certificate key
        belongs to, or None to refuse it."""
        if tls is not None and tls_accepts is None:
            raise ValueError("a TLS client port needs tls_accepts (which keys to admit)")
        self.handler = handler
        self._listen = listen
        self._frame_max = frame_bytes_max
        self.params = params
        self._outbound_frames_max = outbound_frames_max
        self._outbound_bytes_max = outbound_bytes_max
        self.connections: dict[int, ClientConnection] = {}
        self._ids = itertools.count(1)
        self.listen_port = 0
        self.log = log or logging.getLogger("consortium.clients")
        self._ratelog = RateLimitedLog(self.log)
        self.counters: Counter[str] = Counter()
        self._tls = tls
        self._tls_accepts = tls_accepts
        self._handshake_timeout_s = handshake_timeout_s
        self._handshakes_max = handshakes_max
        self._handshakes = 0
        # Admitted connections (TLS handshakes included), by source: sources.ConnectionCaps.
        self.caps = ConnectionCaps(
            connections_max, source_connections_max, self.counters, self._ratelog.warning
        )
        self.tls_mismatch = ""  # the last client refused for TLS on one side only

    @property
    def _sources(self) -> Counter[str]:
        return self.caps.sources

    @property
    def _slots(self) -> int:
        return self.caps.slots

    @property
    def _silent(self) -> dict[str, OrderedDict[int, Slot]]:
        return self.caps.silent

    def tls_status(self) -> dict[str, object]:
        doc: dict[str, object] = {"client": self._tls is not None}
        if self.tls_mismatch:
            doc["last_client_mismatch"] = self.tls_mismatch
        return doc

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve forever; started(listen_port) once the listener is bound."""
        host, port = self._listen
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.listen_port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._serve, listeners)
            task_status.started(self.listen_port)

    async def _serve(self, stream: trio.SocketStream) -> None:
        try:
            host, port = stream.socket.getpeername()[:2]
            peer = f"{host}:{port}"
        except OSError:
            host, peer = "?", "?"
        admitted = self.caps.admit(source_group(host))
        if isinstance(admitted, str):
            self._ratelog.warning("too_many", f"refusing client {peer}: {admitted}")
            # In plain framing, which a TLS client reads too (it keeps what its handshake
            # failed on): one line, then the connection closes.
            await _tell(stream, f"refused: {admitted} on this member's client port; try later")
            await trio.aclose_forcefully(stream)
            return
        slot = admitted
        try:
            with slot.scope:
                await self._serve_counted(stream, peer, slot)
        finally:
            self.caps.release(slot)
            await trio.aclose_forcefully(stream)

    async def _serve_counted(self, stream: trio.SocketStream, peer: str, slot: Slot) -> None:
        channel: trio.abc.Stream = stream
        tls_key: bytes | None = None
        if self._tls is not None:
            secured = await self._tls_accept(stream, peer)
            if secured is None:
                await trio.aclose_forcefully(stream)
                return
            channel, peer, tls_key = secured
        conn = ClientConnection(
            next(self._ids), peer, self._outbound_frames_max, self._outbound_bytes_max
        )
        conn.tls_key = tls_key
        self.connections[conn.id] = conn
        self.counters["connections"] += 1
        try:
            with conn.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write_replies, channel, conn)
                    await self._read_requests(channel, conn, lambda: self.caps.asked(slot))
                    # Let the writer flush what is queued (the last replies, an error notice)
                    # for a bounded time.
                    conn.finish()
                    nursery.cancel_scope.deadline = trio.current_time() + FLUSH_S
        finally:
            del self.connections[conn.id]
            if conn.closed_reason.startswith(SLOW_CONSUMER):
                self.counters["disconnected_slow_consumer"] += 1
                self._ratelog.warning("slow", f"client {peer}: {conn.closed_reason}")
            elif conn.closed_reason:
                self.counters["disconnected_by_handler"] += 1
            else:
                conn.closed_reason = "closed"
            try:
                self.handler.disconnected(conn)
            finally:
                await trio.aclose_forcefully(stream)

    def _still_admitted(self, conn: ClientConnection) -> bool:
        """Whether `conn`'s TLS key is still one `tls_accepts` admits (True without TLS)."""
        if conn.tls_key is None or self._tls_accepts is None:
            return True
        return self._tls_accepts(conn.tls_key) is not None

    def _revoked(self, conn: ClientConnection) -> None:
        assert conn.tls_key is not None
        self.counters["tls_revoked_disconnected"] += 1
        self._ratelog.warning(
            "tls_revoked",
            f"client {conn.peer}: its TLS key {conn.tls_key.hex()[:16]}… is no longer an "
            "admitted client's: disconnected",
        )
        conn.close_soon(
            "revoked",
            f"closing the connection: your TLS key {conn.tls_key.hex()[:16]}… is no longer an "
            "admitted client of this network (revoked; see `consortium client list`)",
        )

    def recheck_tls_keys(self) -> int:
        """Close the connections whose TLS key is no longer admitted (a revocation took
        effect); how many. A lookup per open connection."""
        gone = [c for c in self.connections.values() if c.open and not self._still_admitted(c)]
        for conn in gone:
            self._revoked(conn)
        return len(gone)

    async def _tls_accept(
        self, stream: trio.SocketStream, peer: str
    ) -> tuple[trio.abc.Stream, str, bytes] | None:
        """The TLS handshake of a new client, bounded in time and number, and the pin: its
        certificate key must be one `tls_accepts` admits. None (logged, counted, the client
        told why when it can be) when it is not."""
        assert self._tls is not None and self._tls_accepts is not None
        if self._handshakes >= self._handshakes_max:
            self.counters["refused_too_many_handshakes"] += 1
            self._ratelog.warning(
                "tls_too_many", f"refusing a client: {self._handshakes_max} TLS handshakes open"
            )
            return None
        self._handshakes += 1
        first = b""
        try:
            with trio.move_on_after(self._handshake_timeout_s):
                first = await stream.receive_some(SNIFF_BYTES)
                if not first:
                    return None
                sniff = SniffStream(stream, first)
                if not is_tls_hello(first):
                    await self._tls_mismatch(
                        sniff,
                        "tls_required",
                        f"client {peer} connected without TLS, but [tls] client = true here",
                    )
                    return None
                conn = trio.SSLStream(sniff, self._tls.server_context, server_side=True)
                try:
                    await conn.do_handshake()
                    key = peer_key(conn)
                except trio.BrokenResourceError as exc:
                    self.counters["tls_failed"] += 1
                    self._ratelog.warning("tls_failed", explain_failure(exc, b"", f"client {peer}"))
                    return None
                except TlsRefused as exc:
                    self.counters["tls_bad_certificate"] += 1
                    self._ratelog.warning("tls_bad_certificate", f"client {peer} {exc}")
                    return None
                name = self._tls_accepts(key)
                if name is None:
                    self.counters["tls_unknown_client"] += 1
                    self._ratelog.warning(
                        "tls_unknown_client",
                        f"client {peer} presented TLS key {key.hex()[:16]}…, which is not an "
                        "admitted client's or a member's key: refused",
                    )
                    await _tell(
                        conn,
                        f"your TLS key {key.hex()[:16]}… is not an admitted client of this "
                        "network (nor a member's): `consortium client list` shows the admitted "
                        "clients; ask the operators to admit it (docs/clients-admission.md)",
                    )
                    return None
                return conn, f"{name}@{peer}", key
            # Timed out. Nothing at all: likely a plain client that has not sent a request yet.
            if not first:
                await self._tls_mismatch(
                    stream,
                    "tls_required",
                    f"client {peer} sent nothing within {self._handshake_timeout_s:g} s "
                    "(a client without TLS?); [tls] client = true here",
                )
            else:
                self.counters["tls_handshake_timeout"] += 1
                self._ratelog.warning(
                    "tls_timeout", f"client {peer}: TLS handshake did not finish in time"
                )
            return None
        finally:
            self._handshakes -= 1

    async def _tls_mismatch(self, stream: trio.abc.SendStream, counter: str, detail: str) -> None:
        self.counters[counter] += 1
        self.tls_mismatch = detail
        self._ratelog.warning(counter, detail)
        # Told in plain framing, which the client can read: it speaks plain, or keeps the
        # bytes its TLS handshake failed on and decodes them.
        fix = (
            "this member requires TLS on its client port ([tls] client = true in its "
            "node.toml): set tls = true in client.toml (ConsortiumClient tls_keys=)"
            if counter == "tls_required"
            else "this member does not use TLS on its client port ([tls] client = false in "
            "its node.toml): set tls = false in client.toml (no ConsortiumClient tls_keys=)"
        )
        await _tell(stream, fix)

    async def _write_replies(self, stream: trio.abc.Stream, conn: ClientConnection) -> None:
        try:
            await conn.writer(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            conn.scope.cancel()  # the client went away; the reader stops too

    def _closing(self, conn: ClientConnection, counter: str, why: str) -> None:
        self.counters[counter] += 1
        self._ratelog.warning(counter, f"client {conn.peer}: closing: {why}")
        conn.error(PUSH, f"closing the connection: {why}")

    async def _next_frame(
        self, reader: FrameReader, conn: ClientConnection, first: bool
    ) -> bytes | None:
        """The next request frame; None when the connection is to end: the client closed it,
        broke the framing (told why), or missed its deadline (the first request's, or the idle
        one while nothing is pushed to it: told why)."""
        timeout = FIRST_REQUEST_TIMEOUT_S if first else IDLE_TIMEOUT_S
        while True:
            # FrameReader.read may be cancelled and called again: what it received is kept.
            with trio.move_on_after(timeout):
                return await self._read_frame(reader, conn)
            if not first and self.handler.subscribed(conn):
                continue  # it waits for pushes: not idle
            counter, why = (
                ("closed_first_request_timeout", "no request")
                if first
                else ("closed_idle", "nothing sent and nothing watched or followed")
            )
            self.counters[counter] += 1
            conn.error(PUSH, f"closing the connection: {why} for {timeout:g} s")
            return None

    async def _read_frame(self, reader: FrameReader, conn: ClientConnection) -> bytes | None:
        try:
            return await reader.read()
        except FrameError as exc:
            if self._tls is None and is_tls_hello(reader.peek(1)):
                detail = f"client {conn.peer} connected with TLS, but [tls] client is off here"
                self.counters["tls_unexpected"] += 1
                self.tls_mismatch = detail
                self._ratelog.warning("tls_unexpected", detail)
                conn.error(
                    PUSH,
                    "this member does not use TLS on its client port ([tls] client = false "
                    "in its node.toml): set tls = false in client.toml (no ConsortiumClient "
                    "tls_keys=)",
                )
                return None
            self._closing(conn, "bad_frame", str(exc))
            return None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return None

    async def _read_requests(
        self, stream: trio.abc.Stream, conn: ClientConnection, asked: Callable[[], None]
    ) -> None:
        """Hand the connection's requests to the handler one at a time (see the module
        docstring: a checkpoint before each, none for a closed or backed-up connection);
        `asked()` at the first whole request."""
        reader = FrameReader(stream, self._frame_max)
        first = True
        while True:
            frame = await self._next_frame(reader, conn, first)
            if frame is None:
                return
            if first:
                asked()
            first = False
            # Many frames may have come in one read: let every other task run between them.
            await trio.lowlevel.checkpoint()
            if not conn.open:
                return
            if conn.queued_bytes > REPLY_BACKLOG_BYTES:
                self.counters["reply_backlog_waits"] += 1
                with trio.move_on_after(REPLY_DRAIN_S):
                    await conn.drained(REPLY_BACKLOG_BYTES)
                if conn.queued_bytes > REPLY_BACKLOG_BYTES:
                    conn.close(f"{SLOW_CONSUMER}: replies unread for {REPLY_DRAIN_S:g} s")
                if not conn.open:
                    return
            try:
                request = decode_request(frame, self._frame_max)
            except RequestError as exc:
                if exc.req_id is None:
                    self._closing(conn, "undecodable_request", str(exc))
                    return
                self.counters["bad_request"] += 1
                conn.error(exc.req_id, f"bad request: {exc}")
                continue
            self.counters[f"request_{type(request).__name__}"] += 1
            if not self._still_admitted(conn):  # revoked since the handshake
                conn.error(request.req_id, "refused: your TLS key is no longer admitted")
                self._revoked(conn)
                return
            try:
                await self.handler.handle(conn, request)
            except Exception:
                # A bug reached by client input must not take the member down: log it loudly
                # with its traceback, answer the request, keep serving.
                self.counters["internal_error"] += 1
                self.log.exception("internal error serving %s from %s", request, conn.peer)
                conn.error(request.req_id, "internal error (logged by the member)", kind="internal")


async def _tell(stream: trio.abc.SendStream, message: str) -> None:
    """Send [0, "error", message] before closing, best effort (the client may be gone)."""
    try:
        with trio.move_on_after(1):
            await stream.send_all(encode_frames([pack([PUSH, "error", message])]))
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
