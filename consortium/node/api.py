"""The client protocol: requests, replies, receipt bundles, and the server side of the client port.

Same framing as between members (4-byte length, one msgpack value), on a separate port that
never carries peer messages.

    requests   ["submit", req_id, [tx, ...]]      many transactions per frame
               ["receipt", req_id, tx_id]
               ["get", req_id, key]               fast-path read
               ["block", req_id, height]
               ["status", req_id]
               ["watch", req_id, [tx_id, ...]]    push these receipts when they execute
    replies    [req_id, "ok", payload] | [req_id, "error", message]
    pushes     [0, "receipt", bundle]

Submit payload: one [tx_id, verdict, detail] per transaction: "accepted" (its receipt will be
pushed), "committed" (detail is the bundle of its FIRST receipt) or "rejected" (detail is the
reason). A receipt bundle is [receipt, proof, tree_size, header, block_signature]: the receipt,
its RFC 6962 inclusion proof against header.receipts_root, and the member's signature over
(chain id, height, block hash). A read reply is [key, value, height, block_hash, signer, sig],
signed under Domain.READ. Status is a JSON string (our canonical encoding has no maps).
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from consortium.crypto.codec import (
    WireFormatError,
    as_bytes,
    as_int,
    as_list,
    as_str,
    pack,
    unpack,
    unpack_canonical,
)
from consortium.crypto.merkle import verify_inclusion
from consortium.crypto.signing import Domain, Verifier
from consortium.ledger.block import BlockHeader, Receipt
from consortium.ledger.certificates import SignedVote, block_signature_body
from consortium.ledger.genesis import Genesis, Params
from consortium.node.framing import FrameError, FrameReader, encode_frames
from consortium.node.logs import RateLimitedLog

PUSH = 0
TX_IDS_PER_REQUEST_MAX = 10_000


# --- requests --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubmitRequest:
    req_id: int
    txs: list[Any]  # raw [body, signature] arrays, decoded by the handler


@dataclass(frozen=True, slots=True)
class ReceiptRequest:
    req_id: int
    tx_id: bytes


@dataclass(frozen=True, slots=True)
class GetRequest:
    req_id: int
    key: bytes


@dataclass(frozen=True, slots=True)
class BlockRequest:
    req_id: int
    height: int


@dataclass(frozen=True, slots=True)
class StatusRequest:
    req_id: int


@dataclass(frozen=True, slots=True)
class WatchRequest:
    req_id: int
    tx_ids: list[bytes]


Request = SubmitRequest | ReceiptRequest | GetRequest | BlockRequest | StatusRequest | WatchRequest


class RequestError(WireFormatError):
    """A request that cannot be served; req_id is set when it could be recovered."""

    def __init__(self, message: str, req_id: int | None) -> None:
        super().__init__(message)
        self.req_id = req_id


def encode_request(request: Request) -> bytes:
    match request:
        case SubmitRequest(req_id=r, txs=txs):
            return pack(["submit", r, txs])
        case ReceiptRequest(req_id=r, tx_id=t):
            return pack(["receipt", r, t])
        case GetRequest(req_id=r, key=k):
            return pack(["get", r, k])
        case BlockRequest(req_id=r, height=h):
            return pack(["block", r, h])
        case StatusRequest(req_id=r):
            return pack(["status", r])
        case WatchRequest(req_id=r, tx_ids=ids):
            return pack(["watch", r, ids])


def decode_request(frame: bytes, frame_bytes_max: int) -> Request:
    """Raises RequestError (a WireFormatError) only."""
    try:
        msg = as_list(unpack(frame, max_len=frame_bytes_max), what="request")
    except WireFormatError as exc:
        raise RequestError(str(exc), None) from None
    req_id: int | None = None
    try:
        if len(msg) < 2:
            raise WireFormatError("request: expected [method, req_id, ...]")
        req_id = as_int(msg[1], "req_id", lo=1)
        method = as_str(msg[0], "method", max_len=16)
        if method == "submit":
            as_list(msg, 3, "submit")
            return SubmitRequest(req_id, as_list(msg[2], what="transactions"))
        if method == "receipt":
            as_list(msg, 3, "receipt")
            return ReceiptRequest(req_id, as_bytes(msg[2], "tx_id", size=32))
        if method == "get":
            as_list(msg, 3, "get")
            return GetRequest(req_id, as_bytes(msg[2], "key", max_len=4096))
        if method == "block":
            as_list(msg, 3, "block")
            return BlockRequest(req_id, as_int(msg[2], "height"))
        if method == "status":
            as_list(msg, 2, "status")
            return StatusRequest(req_id)
        if method == "watch":
            as_list(msg, 3, "watch")
            ids = as_list(msg[2], what="tx_ids")
            if len(ids) > TX_IDS_PER_REQUEST_MAX:
                raise WireFormatError(f"watch: more than {TX_IDS_PER_REQUEST_MAX} ids")
            return WatchRequest(req_id, [as_bytes(t, "tx_id", size=32) for t in ids])
        raise WireFormatError(f"unknown method {method!r}")
    except WireFormatError as exc:
        raise RequestError(str(exc), req_id) from None


# --- receipt bundles and signed reads ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bundle:
    receipt: Receipt
    proof: tuple[bytes, ...]
    tree_size: int
    header: BlockHeader
    signature: SignedVote

    @classmethod
    def from_array(cls, v: Any) -> Bundle:
        a = as_list(v, 5, "bundle")
        proof = as_list(a[1], what="proof")
        if len(proof) > 64:
            raise WireFormatError("proof: too long")
        return cls(
            Receipt.from_array(a[0]),
            tuple(as_bytes(p, "proof hash", size=32) for p in proof),
            as_int(a[2], "tree_size"),
            BlockHeader.from_array(a[3]),
            SignedVote.from_array(a[4]),
        )

    def signer(self) -> int | None:
        try:
            body = as_list(unpack_canonical(self.signature.body, max_len=256), 4, "block vote")
        except WireFormatError:
            return None
        signer = body[3]
        return signer if isinstance(signer, int) and not isinstance(signer, bool) else None

    def verify(self, genesis: Genesis, verifier: Verifier) -> str | None:
        """What is wrong with this bundle, or None: inclusion proof, header chain, signature."""
        if self.header.chain_id != genesis.chain_id:
            return "bundle is for another chain"
        if self.receipt.height != self.header.height:
            return "receipt height differs from the header's"
        if not verify_inclusion(
            self.receipt.encode(),
            self.receipt.index,
            self.tree_size,
            self.proof,
            self.header.receipts_root,
        ):
            return "receipt is not in the block (bad Merkle proof)"
        signer = self.signer()
        if signer is None or not 0 <= signer < genesis.n:
            return "block signature is not by a member"
        expected = block_signature_body(self.header.height, self.header.hash, signer)
        if self.signature.body != expected:
            return "block signature is for another block"
        key = genesis.members[signer].public_key
        if not verifier.verify(
            key, Domain.BLOCK, genesis.chain_id, self.signature.body, self.signature.signature
        ):
            return f"bad block signature by {genesis.members[signer].name}"
        return None


def read_body(
    key: bytes, value: bytes | None, height: int, block_hash: bytes, signer: int
) -> bytes:
    return pack(["read", key, value, height, block_hash, signer])


@dataclass(frozen=True, slots=True)
class ReadReply:
    key: bytes
    value: bytes | None
    height: int
    block_hash: bytes
    signer: int
    signature: bytes

    @classmethod
    def from_array(cls, v: Any) -> ReadReply:
        a = as_list(v, 6, "read reply")
        value = None if a[1] is None else as_bytes(a[1], "value")
        return cls(
            as_bytes(a[0], "key", max_len=4096),
            value,
            as_int(a[2], "height"),
            as_bytes(a[3], "block_hash", size=32),
            as_int(a[4], "signer", hi=1024),
            as_bytes(a[5], "signature", size=64),
        )

    def verify(self, genesis: Genesis, verifier: Verifier) -> bool:
        if not 0 <= self.signer < genesis.n:
            return False
        body = read_body(self.key, self.value, self.height, self.block_hash, self.signer)
        return verifier.verify(
            genesis.members[self.signer].public_key,
            Domain.READ,
            genesis.chain_id,
            body,
            self.signature,
        )


# --- server ------------------------------------------------------------------------------------


class ClientHandler(Protocol):
    async def handle(self, conn: ClientConnection, request: Request) -> None: ...

    def disconnected(self, conn: ClientConnection) -> None: ...


class ClientConnection:
    """One client. Replies and pushes are queued without blocking; a client that does not read
    (its queue is full) is disconnected rather than allowed to grow our memory."""

    def __init__(self, conn_id: int, peer: str, frames_max: int) -> None:
        self.id = conn_id
        self.peer = peer
        self._frames_max = frames_max
        self._queue: deque[bytes] = deque()
        self._wakeup = trio.Event()
        self.scope = trio.CancelScope()
        self.closed_reason = ""

    def _enqueue(self, frame: bytes) -> bool:
        if self.closed_reason:
            return False
        if len(self._queue) >= self._frames_max:
            self.closed_reason = "slow consumer: reply queue full"
            self.scope.cancel()
            return False
        self._queue.append(frame)
        self._wakeup.set()
        return True

    def reply(self, req_id: int, payload: Any) -> bool:
        return self._enqueue(pack([req_id, "ok", payload]))

    def error(self, req_id: int, message: str) -> bool:
        return self._enqueue(pack([req_id, "error", message]))

    def push_receipt(self, bundle: list[Any]) -> bool:
        return self._enqueue(pack([PUSH, "receipt", bundle]))

    async def writer(self, stream: trio.abc.SendStream) -> None:
        while True:
            while not self._queue:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
            batch: list[bytes] = []
            size = 0
            while self._queue and size < (1 << 20):
                frame = self._queue.popleft()
                batch.append(frame)
                size += len(frame)
            await stream.send_all(encode_frames(batch))


class ClientServer:
    def __init__(
        self,
        handler: ClientHandler,
        *,
        listen: tuple[str, int],
        frame_bytes_max: int,
        params: Params,
        connections_max: int = 1024,
        outbound_frames_max: int = 8192,
        log: logging.Logger | None = None,
    ) -> None:
        self.handler = handler
        self._listen = listen
        self._frame_max = frame_bytes_max
        self.params = params
        self._connections_max = connections_max
        self._outbound_max = outbound_frames_max
        self.connections: dict[int, ClientConnection] = {}
        self._ids = itertools.count(1)
        self.listen_port = 0
        self.log = log or logging.getLogger("consortium.clients")
        self._ratelog = RateLimitedLog(self.log)
        self.counters: dict[str, int] = {}

    def _count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        host, port = self._listen
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.listen_port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._serve, listeners)
            task_status.started(self.listen_port)

    async def _serve(self, stream: trio.SocketStream) -> None:
        if len(self.connections) >= self._connections_max:
            self._count("refused_too_many_connections")
            await trio.aclose_forcefully(stream)
            return
        try:
            host, port = stream.socket.getpeername()[:2]
            peer = f"{host}:{port}"
        except OSError:
            peer = "?"
        conn = ClientConnection(next(self._ids), peer, self._outbound_max)
        self.connections[conn.id] = conn
        try:
            with conn.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write_replies, stream, conn)
                    await self._read_requests(stream, conn)
                    nursery.cancel_scope.cancel()
        finally:
            del self.connections[conn.id]
            if conn.closed_reason:
                self._count("disconnected_slow_consumer")
                self._ratelog.warning("slow", f"client {peer}: {conn.closed_reason}")
            conn.closed_reason = conn.closed_reason or "closed"
            self.handler.disconnected(conn)
            await trio.aclose_forcefully(stream)

    async def _write_replies(self, stream: trio.SocketStream, conn: ClientConnection) -> None:
        try:
            await conn.writer(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            conn.scope.cancel()  # the client went away; the reader stops too

    async def _read_requests(self, stream: trio.SocketStream, conn: ClientConnection) -> None:
        reader = FrameReader(stream, self._frame_max)
        while True:
            try:
                frame = await reader.read()
            except FrameError as exc:
                self._count("bad_frame")
                self._ratelog.warning("frame", f"client {conn.peer}: closing: {exc}")
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            if frame is None:
                return
            try:
                request = decode_request(frame, self._frame_max)
            except RequestError as exc:
                self._count("bad_request")
                if exc.req_id is None:
                    self._ratelog.warning("request", f"client {conn.peer}: closing: {exc}")
                    return
                conn.error(exc.req_id, f"bad request: {exc}")
                continue
            try:
                await self.handler.handle(conn, request)
            except Exception:
                # A bug reached by client input must not take the member down: log it loudly
                # with its traceback, answer the request, keep serving.
                self._count("internal_error")
                self.log.exception("internal error serving %s from %s", request, conn.peer)
                conn.error(request.req_id, "internal error (logged by the member)")
