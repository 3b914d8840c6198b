"""Authenticated peer connections between members.

Two one-way TCP connections per pair: each member dials every other member for its own
outgoing messages and accepts connections on which it only receives. That keeps each
connection's job simple (no duplicate-connection races) and lets a sender coalesce every
queued frame into one send_all.

Handshake (DESIGN.md, "Wire format"): each side signs the other's fresh nonce, the network id
(chain id), the protocol version and both member ids with the key genesis lists for it.

    dialer   -> ["hello", version, chain_id, dialer, nonce_d]
    listener -> ["hello-ack", version, chain_id, listener, nonce_l, sig_l]
                 sig_l signs ["handshake", version, nonce_d, dialer, listener, "listener"]
    dialer   -> ["auth", sig_d]
                 sig_d signs ["handshake", version, nonce_l, dialer, listener, "dialer"]
    (each under Domain.HANDSHAKE and the chain id)

A refusal (unknown member, wrong chain id, wrong version, bad signature, timeout) is answered
with ["refused", reason] where that is safe, closes only that connection, is counted by reason
and logged (rate-limited). After the handshake the sender of every frame on an inbound
connection is the authenticated member; an oversize or malformed frame closes the connection.

Bounded everywhere: a per-peer outbound queue (oldest frames are kept; new ones are dropped and
counted when it is full: the consensus layer retransmits), one inbound channel with
back-pressure, a handshake timeout, at most one inbound connection per member.
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter, deque
from dataclasses import dataclass, field

import trio

from consortium.crypto.codec import WireFormatError, as_bytes, as_int, as_list, pack, unpack
from consortium.crypto.signing import PROTOCOL_VERSION, Domain, Signer, Verifier
from consortium.ledger.genesis import Genesis
from consortium.node.framing import FrameError, FrameReader, encode_frame, encode_frames
from consortium.node.logs import RateLimitedLog

HANDSHAKE_TIMEOUT_S = 5.0
HANDSHAKE_FRAME_MAX = 4096
COALESCE_BYTES_MAX = 1 << 20
OUTBOUND_BYTES_MAX = 64 << 20  # per peer: frames queued while it is slow or down
INBOUND_UNIT_BYTES = 64 << 10
INBOUND_BUDGET_UNITS = 1024  # 64 MiB of received frames waiting for the consensus task
BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 2.0


class HandshakeError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class _Peer:
    index: int
    name: str
    address: tuple[str, int]
    queue: deque[bytes] = field(default_factory=deque)
    queued_bytes: int = 0
    wakeup: trio.Event = field(default_factory=trio.Event)
    outbound_connected: bool = False
    inbound_connected: bool = False
    connected_since: float | None = None
    frames_sent: int = 0
    bytes_sent: int = 0
    frames_received: int = 0
    bytes_received: int = 0
    frames_dropped: int = 0
    last_error: str = ""
    inbound_scope: trio.CancelScope | None = None


class PeerNetwork:
    def __init__(
        self,
        genesis: Genesis,
        me: int,
        signer: Signer,
        verifier: Verifier,
        *,
        listen: tuple[str, int],
        peer_addresses: dict[int, tuple[str, int]],
        frame_bytes_max: int,
        outbound_frames_max: int = 4096,
        inbound_frames_max: int = 4096,
        log: logging.Logger | None = None,
    ) -> None:
        self.genesis = genesis
        self.chain_id = genesis.chain_id
        self.me = me
        self._signer = signer
        self._verifier = verifier
        self._listen = listen
        self._frame_max = frame_bytes_max
        self._outbound_max = outbound_frames_max
        self.log = log or logging.getLogger("consortium.transport")
        self._ratelog = RateLimitedLog(self.log)
        self.peers: dict[int, _Peer] = {
            i: _Peer(i, genesis.members[i].name, addr) for i, addr in sorted(peer_addresses.items())
        }
        self._inbound_send, self.inbound = trio.open_memory_channel[tuple[int, bytes]](
            inbound_frames_max
        )
        self._inbound_budget = trio.Semaphore(INBOUND_BUDGET_UNITS)
        self.counters: Counter[str] = Counter()
        self.listen_port = 0

    # --- public -----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        host, port = self._listen
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.listen_port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._serve_inbound, listeners)
            for peer in self.peers.values():
                nursery.start_soon(self._dial_loop, peer)
            task_status.started()

    def send(self, dest: int, frame: bytes) -> bool:
        peer = self.peers.get(dest)
        if peer is None:
            self.counters["send_to_unknown_member"] += 1
            return False
        if (
            len(peer.queue) >= self._outbound_max
            or peer.queued_bytes + len(frame) > OUTBOUND_BYTES_MAX
        ):
            peer.frames_dropped += 1
            self.counters["outbound_queue_full"] += 1
            return False
        peer.queue.append(frame)
        peer.queued_bytes += len(frame)
        peer.wakeup.set()
        return True

    def consumed(self, frame: bytes) -> None:
        """The consumer is done with a frame from `inbound`: return its bytes to the budget."""
        for _ in range(_units(len(frame))):
            self._inbound_budget.release()

    def broadcast(self, frame: bytes) -> None:
        for index in self.peers:
            self.send(index, frame)

    def peer_status(self) -> list[dict[str, object]]:
        return [
            {
                "index": p.index,
                "name": p.name,
                "address": f"{p.address[0]}:{p.address[1]}",
                "outbound_connected": p.outbound_connected,
                "inbound_connected": p.inbound_connected,
                "connected_since": p.connected_since,
                "frames_sent": p.frames_sent,
                "bytes_sent": p.bytes_sent,
                "frames_received": p.frames_received,
                "bytes_received": p.bytes_received,
                "frames_dropped": p.frames_dropped,
                "queued": len(p.queue),
                "last_error": p.last_error,
            }
            for p in self.peers.values()
        ]

    # --- handshake --------------------------------------------------------------------------

    def _transcript(self, nonce: bytes, dialer: int, listener: int, role: str) -> bytes:
        return pack(["handshake", PROTOCOL_VERSION, nonce, dialer, listener, role])

    def _check_sig(self, member: int, transcript: bytes, sig: bytes) -> None:
        key = self.genesis.members[member].public_key
        if not self._verifier.verify(key, Domain.HANDSHAKE, self.chain_id, transcript, sig):
            raise HandshakeError(
                "bad_handshake_signature",
                f"member {self.genesis.members[member].name} did not prove the key genesis lists",
            )

    def _check_hello(self, version: int, chain_id: bytes) -> None:
        if version != PROTOCOL_VERSION:
            raise HandshakeError(
                "wrong_version", f"protocol version {version}, we speak {PROTOCOL_VERSION}"
            )
        if chain_id != self.chain_id:
            raise HandshakeError(
                "wrong_chain",
                f"wrong chain id: peer is on network {chain_id.hex()[:8]}…, "
                f"we are on {self.chain_id.hex()[:8]}…",
            )

    async def _handshake_dialer(
        self, stream: trio.SocketStream, reader: FrameReader, peer: _Peer
    ) -> None:
        nonce_d = secrets.token_bytes(32)
        await stream.send_all(
            encode_frame(pack(["hello", PROTOCOL_VERSION, self.chain_id, self.me, nonce_d]))
        )
        frame = await reader.read()
        if frame is None:
            raise HandshakeError("closed", "peer closed the connection during the handshake")
        try:
            msg = as_list(unpack(frame, max_len=HANDSHAKE_FRAME_MAX), what="hello-ack")
            if msg and msg[0] == "refused":
                raise HandshakeError("refused", f"peer refused us: {str(msg[1])[:200]}")
            as_list(msg, 6, "hello-ack")
            if msg[0] != "hello-ack":
                raise WireFormatError("expected hello-ack")
            version = as_int(msg[1], "version")
            chain_id = as_bytes(msg[2], "chain_id", size=32)
            listener = as_int(msg[3], "listener")
            nonce_l = as_bytes(msg[4], "nonce", size=32)
            sig_l = as_bytes(msg[5], "signature", size=64)
        except WireFormatError as exc:
            raise HandshakeError("malformed_handshake", str(exc)) from None
        self._check_hello(version, chain_id)
        if listener != peer.index:
            raise HandshakeError(
                "wrong_member", f"dialed {peer.name} but the listener says it is member {listener}"
            )
        self._check_sig(listener, self._transcript(nonce_d, self.me, listener, "listener"), sig_l)
        sig_d = self._signer.sign(
            Domain.HANDSHAKE, self.chain_id, self._transcript(nonce_l, self.me, listener, "dialer")
        )
        await stream.send_all(encode_frame(pack(["auth", sig_d])))

    async def _handshake_listener(self, stream: trio.SocketStream, reader: FrameReader) -> int:
        frame = await reader.read()
        if frame is None:
            raise HandshakeError("closed", "peer closed the connection before hello")
        try:
            msg = as_list(unpack(frame, max_len=HANDSHAKE_FRAME_MAX), 5, "hello")
            if msg[0] != "hello":
                raise WireFormatError("expected hello")
            version = as_int(msg[1], "version")
            chain_id = as_bytes(msg[2], "chain_id", size=32)
            dialer = as_int(msg[3], "dialer")
            nonce_d = as_bytes(msg[4], "nonce", size=32)
        except WireFormatError as exc:
            raise HandshakeError("malformed_handshake", str(exc)) from None
        try:
            self._check_hello(version, chain_id)
            if dialer not in self.peers:
                raise HandshakeError("unknown_member", f"member index {dialer} is not in genesis")
        except HandshakeError as exc:
            await _refuse(stream, exc.detail)
            raise
        nonce_l = secrets.token_bytes(32)
        sig_l = self._signer.sign(
            Domain.HANDSHAKE, self.chain_id, self._transcript(nonce_d, dialer, self.me, "listener")
        )
        await stream.send_all(
            encode_frame(
                pack(["hello-ack", PROTOCOL_VERSION, self.chain_id, self.me, nonce_l, sig_l])
            )
        )
        frame = await reader.read()
        if frame is None:
            raise HandshakeError("closed", "peer closed the connection before auth")
        try:
            msg = as_list(unpack(frame, max_len=HANDSHAKE_FRAME_MAX), 2, "auth")
            if msg[0] != "auth":
                raise WireFormatError("expected auth")
            sig_d = as_bytes(msg[1], "signature", size=64)
        except WireFormatError as exc:
            raise HandshakeError("malformed_handshake", str(exc)) from None
        self._check_sig(dialer, self._transcript(nonce_l, dialer, self.me, "dialer"), sig_d)
        return dialer

    # --- connections ------------------------------------------------------------------------

    def _failed(self, where: str, reason: str, detail: str) -> None:
        self.counters[f"handshake_{reason}" if where == "handshake" else reason] += 1
        self._ratelog.warning(f"{where}:{reason}", f"{where}: {detail}")

    async def _serve_inbound(self, stream: trio.SocketStream) -> None:
        reader = FrameReader(stream, HANDSHAKE_FRAME_MAX)
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT_S):
                sender = await self._handshake_listener(stream, reader)
        except HandshakeError as exc:
            self._failed("handshake", exc.reason, f"inbound connection refused: {exc.detail}")
            await trio.aclose_forcefully(stream)
            return
        except trio.TooSlowError:
            self._failed("handshake", "timeout", "inbound handshake timed out")
            await trio.aclose_forcefully(stream)
            return
        except (FrameError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._failed("handshake", "broken", f"inbound handshake failed: {exc}")
            await trio.aclose_forcefully(stream)
            return
        peer = self.peers[sender]
        if peer.inbound_scope is not None:
            peer.inbound_scope.cancel()  # a reconnecting member replaces its old connection
        reader.set_limit(self._frame_max)
        with trio.CancelScope() as scope:
            peer.inbound_scope = scope
            peer.inbound_connected = True
            try:
                while True:
                    body = await reader.read()
                    if body is None:
                        break
                    peer.frames_received += 1
                    peer.bytes_received += len(body)
                    # Bounded in bytes as well as frames: wait (back-pressure on this peer's
                    # TCP connection) while the consumer holds too much; see consumed().
                    for _ in range(_units(len(body))):
                        await self._inbound_budget.acquire()
                    await self._inbound_send.send((sender, body))
            except FrameError as exc:
                self._failed("frame", "bad_frame", f"closing connection from {peer.name}: {exc}")
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                peer.last_error = f"inbound: {exc}"
            finally:
                if peer.inbound_scope is scope:
                    peer.inbound_connected = False
                    peer.inbound_scope = None
        await trio.aclose_forcefully(stream)

    async def _dial_loop(self, peer: _Peer) -> None:
        backoff = BACKOFF_MIN_S
        host, port = peer.address
        while True:
            stream: trio.SocketStream | None = None
            try:
                stream = await trio.open_tcp_stream(host, port)
                reader = FrameReader(stream, HANDSHAKE_FRAME_MAX)
                with trio.fail_after(HANDSHAKE_TIMEOUT_S):
                    await self._handshake_dialer(stream, reader, peer)
                peer.outbound_connected = True
                peer.connected_since = trio.current_time()
                peer.last_error = ""
                backoff = BACKOFF_MIN_S
                self.log.info("connected to %s at %s:%d", peer.name, host, port)
                await self._session(stream, peer)
            except HandshakeError as exc:
                peer.last_error = exc.detail
                self._failed("handshake", exc.reason, f"to {peer.name}: {exc.detail}")
            except trio.TooSlowError:
                peer.last_error = "handshake timed out"
                self._failed("handshake", "timeout", f"to {peer.name}: handshake timed out")
            except (OSError, FrameError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                if peer.outbound_connected:
                    self.log.info("lost connection to %s: %s", peer.name, exc)
                peer.last_error = str(exc) or type(exc).__name__
            finally:
                if peer.outbound_connected:
                    peer.outbound_connected = False
                    peer.connected_since = None
                if stream is not None:
                    await trio.aclose_forcefully(stream)
            # Exponential backoff with jitter, so restarted members do not dial in lockstep.
            await trio.sleep(backoff * (0.5 + secrets.randbelow(1000) / 1000))
            backoff = min(BACKOFF_MAX_S, backoff * 2)

    async def _session(self, stream: trio.SocketStream, peer: _Peer) -> None:
        """Send until the connection fails. The listener never writes after the handshake, so
        reading tells us at once when it goes away (instead of at the next send)."""
        async with trio.open_nursery() as nursery:

            async def watch_for_close() -> None:
                try:
                    while await stream.receive_some(4096):
                        pass
                    peer.last_error = "peer closed the connection"
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    peer.last_error = str(exc) or type(exc).__name__
                nursery.cancel_scope.cancel()

            async def send() -> None:
                try:
                    await self._send_loop(stream, peer)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    peer.last_error = str(exc) or type(exc).__name__
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch_for_close)
            nursery.start_soon(send)
        self.log.info("lost connection to %s: %s", peer.name, peer.last_error)

    async def _send_loop(self, stream: trio.SocketStream, peer: _Peer) -> None:
        while True:
            while not peer.queue:
                peer.wakeup = trio.Event()
                await peer.wakeup.wait()
            batch: list[bytes] = []
            size = 0
            while peer.queue and size < COALESCE_BYTES_MAX:
                frame = peer.queue.popleft()
                batch.append(frame)
                size += len(frame)
            peer.queued_bytes -= size
            await stream.send_all(encode_frames(batch))
            peer.frames_sent += len(batch)
            peer.bytes_sent += size + 4 * len(batch)


async def _refuse(stream: trio.SocketStream, reason: str) -> None:
    try:
        with trio.move_on_after(1):
            await stream.send_all(encode_frame(pack(["refused", reason[:200]])))
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


def _units(size: int) -> int:
    return min(INBOUND_BUDGET_UNITS, 1 + size // INBOUND_UNIT_BYTES)
