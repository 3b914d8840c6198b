"""Authenticated peer connections between members.

Theory of operation
-------------------
Two one-way TCP connections per pair: each member DIALS every other member for its own outgoing
messages and ACCEPTS connections on which it only receives. Each connection has one job, there
are no duplicate-connection races to break, and a sender can coalesce every queued frame into
one `send_all`.

Handshake (docs/protocol.md, section 9 "The peer handshake"): each side signs the other's fresh
nonce, the network id (chain id), the protocol version and both member indices with the key
genesis lists for it.

    dialer   -> ["hello", version, chain_id, dialer, nonce_d]
    listener -> ["hello-ack", version, chain_id, listener, nonce_l, sig_l]
                 sig_l signs ["handshake", version, nonce_d, dialer, listener, "listener"]
    dialer   -> ["auth", sig_d]
                 sig_d signs ["handshake", version, nonce_l, dialer, listener, "dialer"]
    (both under Domain.HANDSHAKE and the chain id; the role string keeps one side's signature
    from being replayed as the other's, the fresh nonce keeps an old one from being replayed)

The listener checks version, chain id and that the dialer is a member before it signs anything,
and answers a refusal with ["refused", reason] so the operator at the other end learns why.
The dialer checks that the listener is the member it dialed. A failed handshake (unknown member,
wrong chain id, wrong version, bad signature, malformed message, timeout) closes only that
connection, is counted under `handshake_<reason>` and logged, rate-limited; nothing else
changes. After the handshake the sender of every frame on an inbound connection is the
authenticated member; an oversize or malformed frame closes that connection (`bad_frame`), and
a new inbound connection from a member replaces its old one.

Bounds (a slow or hostile peer is cut off, never allowed to grow memory):
- Outbound, per peer: at most `outbound_frames_max` frames and `outbound_bytes_max` bytes
  queued. `send` never blocks: a frame for a peer that is not connected, or whose queue is
  full, is dropped and counted (the consensus layer retransmits). Frames still queued when a
  connection fails are dropped too, so nothing stale is delivered after a reconnect.
- Inbound: one channel of at most `inbound_frames_max` (sender, body) pairs and
  `inbound_bytes_max` bytes not yet `consumed()` by the consumer. A reader reserves a frame's
  bytes atomically before handing it over and otherwise waits, which pushes back on that peer
  through TCP (a frame larger than the whole budget passes alone, so nothing deadlocks).
- At most `handshakes_max` unauthenticated connections at a time and
  `handshakes_per_source_max` from one source (an IPv4 address or an IPv6 /64), each with
  `hello_timeout_s` for its first handshake frame and `handshake_timeout_s` for the whole
  handshake (the TLS handshake included), with handshake messages of at most
  HANDSHAKE_FRAME_MAX bytes. A new connection that finds its source's or all slots full evicts
  an idle or stale one from its own source or the source holding the most (`_admit`), so
  neither a flood from the members' own address nor one from many addresses keeps a member's
  dial out. At most HELLO_ACKS_PER_S signatures a second for one source's dialers before
  they authenticate (a token bucket; beyond it the hello is refused unsigned).
- At most one authenticated inbound connection per member: a newer one replaces the older
  unless the older still answers a ping within one interval (then two processes claim that
  member: the newer is refused, logged and shown in status).

Liveness: the dialer sends PING every `ping_interval_s` among its frames; the listener answers
PONG on the same connection (docs/protocol.md, section 9). Neither reaches the consumer.
`peer_status` calls a direction live only if a pong (ours) or any bytes (its) came on it within
SILENT_AFTER_PINGS intervals, so a blackholed or frozen peer shows as silent although its
sockets are open. Its pings queue behind its data frames, so while our own inbound budget
keeps us from reading its connection it counts as heard: we are the slow side, not it.

TLS (operator option, node.toml `[tls] peer = true`; protocol/tls.py, docs/tls.md): the handshake
above runs inside a mutual TLS 1.3 session. Right after the TLS handshake the dialer checks that
the listener's certificate key is the key genesis lists for the member it dialed, and the
listener that the dialer's is a member's key; the application handshake that follows must then
name that same member (`tls_key_mismatch` otherwise), so the two layers authenticate one
identity. A listener sniffs the first bytes of every connection: a plain dialer meeting a TLS
listener, or a TLS dialer meeting a plain one, is refused in plain framing with a sentence
naming the setting, logged and counted (`handshake_tls_required` / `handshake_tls_unexpected`)
on the listener, and shown as that peer's `last_error` on the dialer.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import trio

from consortium.crypto.codec import (
    WireFormatError,
    as_bytes,
    as_int,
    as_list,
    pack,
    unpack_canonical,
)
from consortium.crypto.signing import PROTOCOL_VERSION, Domain, Signer, Verifier
from consortium.ledger.genesis import Genesis
from consortium.node.logs import RateLimitedLog
from consortium.node.sources import source_group
from consortium.protocol.framing import (
    FrameError,
    FrameReader,
    encode_frame,
    encode_frames,
    take_batch,
)
from consortium.protocol.tls import (
    RECORD_BYTES_MAX,
    SniffStream,
    TlsIdentity,
    TlsRefused,
    explain_failure,
    is_tls_hello,
    peer_key,
)

HANDSHAKE_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 5.0
HANDSHAKE_FRAME_MAX = 4096
HANDSHAKES_MAX = 64
HANDSHAKES_PER_SOURCE_MAX = 8  # unauthenticated connections from one remote address
HELLO_TIMEOUT_S = 1.0  # from accept to the first handshake frame (an honest dialer: at once)
# A connection that has sent its hello may be evicted for a new one only once it is this old:
# an honest handshake then needs one round trip and two signatures, so this is well above a
# round trip between continents (~0.3 s) on a listener slowed by a flood.
EVICT_AGE_S = 2.0
# Hello-acks this member signs for one source (a token bucket): each costs a signature, and
# a dialer proves nothing before it; beyond this the hello is refused without signing.
HELLO_ACKS_PER_S = 20.0
HELLO_ACKS_BURST = 20
HELLO_SOURCES_MAX = 4096  # sources whose bucket is remembered (least recently used forgotten)
PING_INTERVAL_S = 1.0  # transport ping on every outbound session
SILENT_AFTER_PINGS = 3  # no frame for this many intervals: the link shows as silent
DUPLICATE_SHOWN_S = 30.0  # how long status shows "two processes claim" after the last one
# Transport frames, consumed by the transport and never handed to the consensus core: both
# decode as one-element lists, which no pbft or raft message is (docs/protocol.md, section 9).
PING = pack(["peer-ping"])
PONG = pack(["peer-pong"])
NONCE_BYTES = 32
COALESCE_BYTES_MAX = 1 << 20
OUTBOUND_BYTES_MAX = 64 << 20  # per peer: frames queued while it is slow
INBOUND_BYTES_MAX = 64 << 20  # received frames waiting for the consumer
BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 2.0
REFUSAL_CHARS_MAX = 300
SNIFF_BYTES = 64 * 1024


class HandshakeError(Exception):
    """Why a handshake failed: `reason` is a short counter key, `detail` the sentence to log."""

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
    connected_since: float | None = None  # wall clock, seconds (for operators)
    frames_sent: int = 0
    bytes_sent: int = 0
    frames_received: int = 0
    bytes_received: int = 0
    frames_dropped: int = 0
    last_error: str = ""
    inbound_error: str = ""  # why its last inbound connection was refused, if it was
    inbound_scope: trio.CancelScope | None = None
    inbound_session: _InboundSession | None = None
    # Trio clock: the last bytes received on the inbound connection (pings included) and the
    # last pong received on the outbound one; a session's start counts as both.
    inbound_last_s: float = 0.0
    outbound_last_s: float = 0.0
    # The inbound reader waits for room in our own inbound budget: the peer is not silent, we
    # are not reading (its pings queue behind the frame we hold), so it counts as heard now.
    inbound_held: bool = False
    # Control frames owed on the outbound connection (a flag each, so they never pile up).
    ping_owed: bool = False
    pong_owed: bool = False
    duplicate: str = ""  # "two processes claim n2 (from ADDR and ADDR)", the last time seen
    duplicate_s: float | None = None  # trio clock


@dataclass
class _Unauthenticated:
    """A connection on the peer port that has not finished its handshake."""

    source: str  # the remote address's group (`source_group`)
    since: float  # trio clock
    scope: trio.CancelScope
    hello: bool = False  # its first handshake frame arrived
    evicted: bool = False


@dataclass
class _InboundSession:
    """An authenticated inbound connection. The listener writes on it only pongs and the
    ping that checks whether it still answers (two processes claiming one member)."""

    stream: trio.abc.SendStream
    remote: str
    scope: trio.CancelScope
    wakeup: trio.Event = field(default_factory=trio.Event)
    ping_owed: bool = False
    pong_owed: bool = False
    pong: trio.Event = field(default_factory=trio.Event)


@dataclass
class _Bucket:
    """Hello-acks one source may still have signed now, refilled at HELLO_ACKS_PER_S."""

    tokens: float
    at: float  # trio clock of the last refill


class _Heard(trio.abc.ReceiveStream):
    """The receiving side of an inbound connection: any bytes received mark its member as
    heard from (a frame of many megabytes over a slow link takes longer than the silence
    limit, and its bytes are life too)."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self.peer: _Peer | None = None  # known once the handshake is done

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self._stream.receive_some(max_bytes)
        if data and self.peer is not None:
            self.peer.inbound_last_s = trio.current_time()
        return data

    async def aclose(self) -> None:
        await self._stream.aclose()


def handshake_transcript(nonce: bytes, dialer: int, listener: int, role: str) -> bytes:
    """The bytes one side signs: the other side's nonce, both indices and its own role."""
    return pack(["handshake", PROTOCOL_VERSION, nonce, dialer, listener, role])


def _decode(frame: bytes, n_fields: int, kind: str) -> list[Any]:
    msg = as_list(unpack_canonical(frame, max_len=HANDSHAKE_FRAME_MAX), n_fields, kind)
    if msg[0] != kind:
        raise WireFormatError(f"expected {kind}, got {str(msg[0])[:16]!r}")
    return msg


class PeerNetwork:
    """The member's peer links; see the module docstring.

    `inbound` yields (authenticated sender index, frame body); the consumer calls
    `consumed(body)` for each. `send`/`broadcast` never block. `peer_status()` and `counters`
    are what operators see.
    """

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
        outbound_bytes_max: int = OUTBOUND_BYTES_MAX,
        inbound_bytes_max: int = INBOUND_BYTES_MAX,
        handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
        handshakes_max: int = HANDSHAKES_MAX,
        handshakes_per_source_max: int = HANDSHAKES_PER_SOURCE_MAX,
        hello_timeout_s: float = HELLO_TIMEOUT_S,
        ping_interval_s: float = PING_INTERVAL_S,
        tls: TlsIdentity | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        if not 0 <= me < genesis.n:
            raise ValueError(f"member index {me} is not in genesis (0..{genesis.n - 1})")
        for index in peer_addresses:
            if index == me or not 0 <= index < genesis.n:
                raise ValueError(f"peer_addresses: {index} is not another member's index")
        if min(frame_bytes_max, outbound_frames_max, inbound_frames_max) <= 0:
            raise ValueError("frame_bytes_max and the queue bounds must be positive")
        self.genesis = genesis
        self.chain_id = genesis.chain_id
        self.me = me
        self._signer = signer
        self._verifier = verifier
        self._listen = listen
        self._frame_max = frame_bytes_max
        self._outbound_frames_max = outbound_frames_max
        self._outbound_bytes_max = outbound_bytes_max
        self._inbound_bytes_max = inbound_bytes_max
        self._inbound_bytes = 0  # reserved by readers, not yet consumed
        self._inbound_space = trio.Event()
        self._handshake_timeout_s = handshake_timeout_s
        self._handshakes_max = handshakes_max
        self._per_source_max = handshakes_per_source_max
        self._hello_timeout_s = min(hello_timeout_s, handshake_timeout_s)
        self._ping_interval_s = ping_interval_s
        self._unauthenticated: dict[int, _Unauthenticated] = {}  # oldest first
        self._hello_buckets: dict[str, _Bucket] = {}  # least recently used first
        self._tls = tls
        self.tls_mismatch = ""  # the last connection refused for TLS on one side only
        self.log = log or logging.getLogger("consortium.transport")
        self._ratelog = RateLimitedLog(self.log)
        self.peers: dict[int, _Peer] = {
            i: _Peer(i, genesis.members[i].name, addr) for i, addr in sorted(peer_addresses.items())
        }
        self._inbound_send, self.inbound = trio.open_memory_channel[tuple[int, bytes]](
            inbound_frames_max
        )
        self.counters: Counter[str] = Counter()
        self.listen_port = 0

    # --- public -----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, dial every peer, reconnect forever; started() once the listener is bound
        (so `listen_port` is known even when listening on port 0)."""
        host, port = self._listen
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.listen_port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._serve_inbound, listeners)
            for peer in self.peers.values():
                nursery.start_soon(self._dial_loop, peer)
            task_status.started()

    def send(self, dest: int, frame: bytes) -> bool:
        """Queue `frame` for `dest` without blocking. False (dropped and counted) when `dest`
        is unknown or not connected, its queue is full, or the frame is empty or oversize."""
        peer = self.peers.get(dest)
        if peer is None:
            self.counters["dropped_unknown_member"] += 1
            return False
        if not frame or len(frame) > self._frame_max:
            # Our own bug (every message must fit the frame limit): loud, but never fatal.
            self.counters["dropped_bad_size"] += 1
            peer.frames_dropped += 1
            self._ratelog.warning(
                "bad_size", f"dropping a frame of {len(frame)} bytes (limit {self._frame_max})"
            )
            return False
        if not peer.outbound_connected:
            self.counters["dropped_not_connected"] += 1
            peer.frames_dropped += 1
            return False
        if (
            len(peer.queue) >= self._outbound_frames_max
            or peer.queued_bytes + len(frame) > self._outbound_bytes_max
        ):
            self.counters["dropped_queue_full"] += 1
            peer.frames_dropped += 1
            return False
        peer.queue.append(frame)
        peer.queued_bytes += len(frame)
        peer.wakeup.set()
        return True

    def broadcast(self, frame: bytes) -> None:
        """`send` to every other member."""
        for index in self.peers:
            self.send(index, frame)

    def set_peer_address(self, index: int, address: tuple[str, int]) -> None:
        """Dial member `index` at `address` from the next attempt on."""
        self.peers[index].address = address

    def consumed(self, frame: bytes) -> None:
        """The consumer of `inbound` is done with `frame`: its bytes leave the inbound budget."""
        self._inbound_bytes = max(0, self._inbound_bytes - len(frame))
        self._inbound_space.set()
        self._inbound_space = trio.Event()

    @property
    def _handshakes(self) -> int:
        """Unauthenticated connections now."""
        return len(self._unauthenticated)

    def silent_after_s(self) -> float:
        """No frame for this long: a connected link shows as silent."""
        return SILENT_AFTER_PINGS * self._ping_interval_s

    def peer_status(self) -> list[dict[str, object]]:
        """Per peer. `outbound_connected`/`inbound_connected`: a session is up; `outbound_live`
        /`inbound_live`: and a frame came on it recently (a pong on ours, anything on its),
        which is what "connected" means to an operator; `silent_s`: how long the quieter of
        the sessions that are up has been silent, once that exceeds `silent_after_s()`."""
        try:
            now = trio.current_time()
        except RuntimeError:  # read outside trio (a test's snapshot): the sessions only
            now = None
        limit = self.silent_after_s()
        rows: list[dict[str, object]] = []
        for p in self.peers.values():
            out_age = in_age = None
            if p.outbound_connected:
                out_age = 0.0 if now is None else now - p.outbound_last_s
            if p.inbound_connected:
                in_age = 0.0 if now is None or p.inbound_held else now - p.inbound_last_s
            ages = [a for a in (out_age, in_age) if a is not None and a > limit]
            duplicate = (
                p.duplicate
                if p.duplicate_s is not None
                and now is not None
                and now - p.duplicate_s <= DUPLICATE_SHOWN_S
                else ""
            )
            rows.append(self._peer_row(p, out_age, in_age, ages, duplicate, limit))
        return rows

    def _peer_row(
        self,
        p: _Peer,
        out_age: float | None,
        in_age: float | None,
        ages: list[float],
        duplicate: str,
        limit: float,
    ) -> dict[str, object]:
        return {
            "index": p.index,
            "name": p.name,
            "address": f"{p.address[0]}:{p.address[1]}",
            "outbound_connected": p.outbound_connected,
            "inbound_connected": p.inbound_connected,
            "outbound_live": out_age is not None and out_age <= limit,
            "inbound_live": in_age is not None and in_age <= limit,
            "silent_s": round(max(ages), 1) if ages else None,
            "duplicate": duplicate,
            "connected_since": p.connected_since,
            "frames_sent": p.frames_sent,
            "bytes_sent": p.bytes_sent,
            "frames_received": p.frames_received,
            "bytes_received": p.bytes_received,
            "frames_dropped": p.frames_dropped,
            "queued": len(p.queue),
            "last_error": p.last_error,
            "inbound_error": p.inbound_error,
            "tls": self._tls is not None,
        }

    def tls_status(self) -> dict[str, object]:
        """For status: whether the peer port uses TLS, what we present, the last mismatch."""
        doc: dict[str, object] = {"peer": self._tls is not None}
        if self._tls is not None:
            doc.update(self._tls.describe())
        if self.tls_mismatch:
            doc["last_mismatch"] = self.tls_mismatch
        return doc

    # --- handshake --------------------------------------------------------------------------

    def _check_sig(self, member: int, transcript: bytes, sig: bytes) -> None:
        key = self.genesis.members[member].public_key
        if not self._verifier.verify(key, Domain.HANDSHAKE, self.chain_id, transcript, sig):
            raise HandshakeError(
                "bad_handshake_signature",
                f"the peer claiming to be {self.genesis.members[member].name} did not prove "
                "the key genesis lists for it",
            )

    def _check_hello(self, version: int, chain_id: bytes) -> None:
        if version != PROTOCOL_VERSION:
            raise HandshakeError(
                "wrong_version",
                f"peer speaks protocol version {version}, we speak {PROTOCOL_VERSION}",
            )
        if chain_id != self.chain_id:
            raise HandshakeError(
                "wrong_chain",
                f"wrong chain id: peer is on network {chain_id.hex()[:8]}…, "
                f"we are on {self.chain_id.hex()[:8]}…",
            )

    async def _handshake_dialer(
        self, stream: trio.abc.Stream, reader: FrameReader, peer: _Peer
    ) -> None:
        nonce_d = secrets.token_bytes(NONCE_BYTES)
        await stream.send_all(
            encode_frame(pack(["hello", PROTOCOL_VERSION, self.chain_id, self.me, nonce_d]))
        )
        frame = await reader.read()
        if frame is None:
            raise HandshakeError("closed", "peer closed the connection during the handshake")
        try:
            msg = as_list(unpack_canonical(frame, max_len=HANDSHAKE_FRAME_MAX), what="hello-ack")
            if len(msg) == 2 and msg[0] == "refused":
                raise HandshakeError(
                    "refused", f"{peer.name} refused us: {str(msg[1])[:REFUSAL_CHARS_MAX]}"
                )
            msg = _decode(frame, 6, "hello-ack")
            version = as_int(msg[1], "version")
            chain_id = as_bytes(msg[2], "chain_id", size=32)
            listener = as_int(msg[3], "listener")
            nonce_l = as_bytes(msg[4], "nonce", size=NONCE_BYTES)
            sig_l = as_bytes(msg[5], "signature", size=64)
        except WireFormatError as exc:
            raise HandshakeError("malformed_handshake", f"{peer.name}: {exc}") from None
        self._check_hello(version, chain_id)
        if listener != peer.index:
            raise HandshakeError(
                "wrong_member",
                f"dialed {peer.name} (member {peer.index}) at {peer.address[0]}:"
                f"{peer.address[1]} but it says it is member {listener}",
            )
        transcript_l = handshake_transcript(nonce_d, self.me, listener, "listener")
        self._check_sig(listener, transcript_l, sig_l)
        transcript_d = handshake_transcript(nonce_l, self.me, listener, "dialer")
        sig_d = self._signer.sign(Domain.HANDSHAKE, self.chain_id, transcript_d)
        await stream.send_all(encode_frame(pack(["auth", sig_d])))

    async def _handshake_listener(
        self,
        stream: trio.abc.Stream,
        reader: FrameReader,
        tls_member: int | None,
        slot: _Unauthenticated | None = None,
    ) -> int:
        """The dialer's member index. `tls_member`: the member whose key its TLS certificate
        carries (TLS on), which the handshake must name."""
        frame = await reader.read()
        if frame is None:
            raise HandshakeError("closed", "peer closed the connection before hello")
        self._hello_received(slot)
        try:
            msg = _decode(frame, 5, "hello")
            version = as_int(msg[1], "version")
            chain_id = as_bytes(msg[2], "chain_id", size=32)
            dialer = as_int(msg[3], "dialer")
            nonce_d = as_bytes(msg[4], "nonce", size=NONCE_BYTES)
        except WireFormatError as exc:
            raise HandshakeError("malformed_handshake", str(exc)) from None
        try:
            self._check_hello(version, chain_id)
            if dialer not in self.peers:
                raise HandshakeError(
                    "unknown_member", f"member index {dialer} is not in genesis as a peer of ours"
                )
            if tls_member is not None and dialer != tls_member:
                raise HandshakeError(
                    "tls_key_mismatch",
                    f"the TLS certificate carries {self.genesis.members[tls_member].name}'s key "
                    f"but the handshake claims member {dialer}",
                )
            if tls_member is None and slot is not None:
                self._take_signature(slot.source)
        except HandshakeError as exc:
            await _refuse(stream, exc.detail)
            raise
        nonce_l = secrets.token_bytes(NONCE_BYTES)
        transcript_l = handshake_transcript(nonce_d, dialer, self.me, "listener")
        sig_l = self._signer.sign(Domain.HANDSHAKE, self.chain_id, transcript_l)
        await stream.send_all(
            encode_frame(
                pack(["hello-ack", PROTOCOL_VERSION, self.chain_id, self.me, nonce_l, sig_l])
            )
        )
        frame = await reader.read()
        if frame is None:
            raise HandshakeError("closed", "peer closed the connection before auth")
        try:
            sig_d = as_bytes(_decode(frame, 2, "auth")[1], "signature", size=64)
        except WireFormatError as exc:
            raise HandshakeError("malformed_handshake", str(exc)) from None
        self._check_sig(dialer, handshake_transcript(nonce_l, dialer, self.me, "dialer"), sig_d)
        return dialer

    def _take_signature(self, source: str) -> None:
        """Charge `source` one signature made for a dialer not yet authenticated (a hello-ack,
        or with TLS the listener's side of the TLS handshake); HandshakeError("rate_limited")
        when its bucket is empty, so a flood of valid hellos cannot make us sign without
        bound. Honest members dial each peer once per connection: far below the rate."""
        now = trio.current_time()
        bucket = self._hello_buckets.pop(source, None)
        if bucket is None:
            while len(self._hello_buckets) >= HELLO_SOURCES_MAX:
                del self._hello_buckets[next(iter(self._hello_buckets))]
            bucket = _Bucket(float(HELLO_ACKS_BURST), now)
        else:
            bucket.tokens = min(
                float(HELLO_ACKS_BURST), bucket.tokens + (now - bucket.at) * HELLO_ACKS_PER_S
            )
            bucket.at = now
        self._hello_buckets[source] = bucket  # now the most recently used
        if bucket.tokens < 1:
            raise HandshakeError(
                "rate_limited",
                f"more than {HELLO_ACKS_PER_S:.0f} handshakes a second from {source}: "
                "try again shortly",
            )
        bucket.tokens -= 1

    def _handshake_failed(self, reason: str, detail: str) -> None:
        self.counters[f"handshake_{reason}"] += 1
        self._ratelog.warning(f"handshake:{reason}", f"handshake failed ({reason}): {detail}")

    # --- inbound ----------------------------------------------------------------------------

    async def _serve_inbound(self, stream: trio.SocketStream) -> None:
        try:
            await self._serve_inbound_checked(stream)
        except Exception:
            # A bug reached by peer input must not take the member down: loud, counted, and
            # only this connection is lost.
            self.counters["internal_error"] += 1
            self.log.exception("internal error on an inbound peer connection")
        finally:
            await trio.aclose_forcefully(stream)

    def _admit(self, source: str) -> _Unauthenticated | None:
        """A slot for a new unauthenticated connection from `source` (`source_group`), or None
        (refused and counted). One source holds at most `handshakes_per_source_max` slots and
        all sources `handshakes_max`. When its source's share is full the new connection may
        evict one of that source's own; when all are, one of the sources holding the most
        (fairness: a flooding source only ever evicts itself, and a dialer whose source holds
        one slot is evicted last). From the sources it may evict from, largest first, the
        victim is the oldest connection that has sent nothing yet (an honest dialer sends its
        hello at once), failing that the oldest in its handshake for EVICT_AGE_S (an honest
        one needs one round trip); only when none is may the new connection be refused. So
        neither a flood of idle connections, even from the members' own address, nor one of
        stalled hellos from many addresses keeps a member's dial out."""
        now = trio.current_time()
        slots = list(self._unauthenticated.values())  # oldest first
        counts = Counter(u.source for u in slots)
        mine = counts[source]
        tiers: list[list[_Unauthenticated]] = []
        if mine >= self._per_source_max:
            tiers = [[u for u in slots if u.source == source]]
            reason = "too_many_from_source"
            what = f"{self._per_source_max} unauthenticated connections from {source}"
        elif len(slots) >= self._handshakes_max:
            # Never from a source holding no more than this one (its own aside), so sharing
            # the slots out cannot leave the victim's source with fewer than the newcomer's.
            larger = sorted({c for c in counts.values() if c > mine}, reverse=True)
            tiers = [[u for u in slots if counts[u.source] == c] for c in larger]
            tiers.append([u for u in slots if u.source == source])
            reason = "too_many"
            what = f"{self._handshakes_max} unauthenticated connections"
        if tiers:
            victim = _victim(tiers, now)
            if victim is None:
                self._handshake_failed(reason, f"more than {what}")
                return None
            victim.evicted = True
            victim.scope.cancel()
            self._unauthenticated.pop(id(victim), None)
            self.counters["handshake_evicted"] += 1
            state = "in its handshake" if victim.hello else "idle"
            self._ratelog.warning(
                "handshake:evicted",
                f"{what}: closing one from {victim.source}, which holds "
                f"{counts[victim.source]} ({state} {now - victim.since:.1f} s), for a new one "
                f"from {source}",
            )
        scope = trio.CancelScope(deadline=now + self._hello_timeout_s)
        slot = _Unauthenticated(source, now, scope)
        self._unauthenticated[id(slot)] = slot
        return slot

    def _hello_received(self, slot: _Unauthenticated | None) -> None:
        """The first handshake frame is in: the rest of the handshake has its full time."""
        if slot is not None:
            slot.hello = True
            slot.scope.deadline = slot.since + self._handshake_timeout_s

    async def _serve_inbound_checked(self, stream: trio.SocketStream) -> None:
        remote = _remote(stream)
        slot = self._admit(source_group(_host(stream)))
        if slot is None:
            return
        accepted: tuple[trio.abc.Stream, FrameReader, _Heard, int] | None = None
        try:
            with slot.scope:
                accepted = await self._accept(stream, slot)
        except HandshakeError as exc:
            self._handshake_failed(exc.reason, f"inbound connection refused: {exc.detail}")
            return
        except FrameError as exc:
            self._handshake_failed("bad_frame", f"inbound handshake: {exc}")
            return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._handshake_failed("broken", f"inbound handshake: {exc}")
            return
        finally:
            self._unauthenticated.pop(id(slot), None)
        if accepted is None:
            if not slot.evicted:  # evictions are counted when they happen
                self._handshake_failed("timeout", "inbound handshake timed out")
            return
        conn, reader, heard, sender = accepted
        peer = self.peers[sender]
        old = peer.inbound_session
        if old is not None:
            if await self._still_answers(peer, old):
                await self._refuse_duplicate(peer, old, conn, remote)
                return
            # A reconnecting member replaces its old connection (which may be half-dead).
            self.counters["inbound_replaced"] += 1
            old.scope.cancel()
        else:
            self.log.info("accepted connection from %s", peer.name)
        peer.inbound_error = ""
        reader.set_limit(self._frame_max)
        with trio.CancelScope() as scope:
            session = _InboundSession(conn, remote, scope)
            peer.inbound_scope = scope
            peer.inbound_session = session
            peer.inbound_connected = True
            peer.inbound_last_s = trio.current_time()
            heard.peer = peer
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._inbound_writer, session, nursery.cancel_scope)
                    try:
                        await self._receive_frames(reader, peer, session)
                    except FrameError as exc:
                        self.counters["bad_frame"] += 1
                        peer.last_error = f"inbound: {exc}"
                        self._ratelog.warning(
                            f"frame:{sender}", f"closing the connection from {peer.name}: {exc}"
                        )
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                        peer.last_error = f"inbound: {exc}"
                    finally:
                        nursery.cancel_scope.cancel()
            finally:
                if peer.inbound_session is session:
                    peer.inbound_connected = False
                    peer.inbound_scope = None
                    peer.inbound_session = None

    async def _still_answers(self, peer: _Peer, old: _InboundSession) -> bool:
        """Ping the inbound connection `peer` already has: True if it answers within one ping
        interval (its process is alive, so a newer connection claiming the same member comes
        from a second process). One that does not answer (a restarted member's half-open
        connection, or a member too old to answer pings) is replaced, so a restarted member
        is never locked out."""
        old.pong = trio.Event()
        old.ping_owed = True
        old.wakeup.set()
        with trio.move_on_after(self._ping_interval_s):
            await old.pong.wait()
        return old.pong.is_set() and peer.inbound_session is old

    async def _refuse_duplicate(
        self, peer: _Peer, old: _InboundSession, conn: trio.abc.Stream, remote: str
    ) -> None:
        message = f"two processes claim {peer.name} (from {old.remote} and {remote})"
        peer.duplicate = message
        peer.duplicate_s = trio.current_time()
        self.counters["duplicate_member"] += 1
        self._ratelog.warning(
            f"duplicate:{peer.index}",
            f"{message}: refusing the newer connection while the older one answers; "
            "stop one of them (two copies of one member's home)",
        )
        me = self.genesis.members[self.me].name
        await _refuse(
            conn,
            f"{me} already has a connection from {peer.name} at {old.remote} that answers: "
            f"two processes claim {peer.name}; stop one of them",
        )

    async def _inbound_writer(self, session: _InboundSession, done: trio.CancelScope) -> None:
        """Write the control frames owed on an inbound connection (pongs, the duplicate
        check's ping). A dialer that stops reading blocks only this task."""
        try:
            await self._write_control(session)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            done.cancel()  # the connection is gone; the reader learns it too

    async def _write_control(self, session: _InboundSession) -> None:
        while True:
            while not (session.ping_owed or session.pong_owed):
                session.wakeup = trio.Event()
                await session.wakeup.wait()
            frames = [PONG] * session.pong_owed + [PING] * session.ping_owed
            session.ping_owed = session.pong_owed = False
            await session.stream.send_all(encode_frames(frames))

    async def _accept(
        self, stream: trio.SocketStream, slot: _Unauthenticated
    ) -> tuple[trio.abc.Stream, FrameReader, _Heard, int]:
        """TLS (when on) and the handshake of an inbound connection: the stream to write on,
        a reader for the session, the stream it reads (to mark the member heard from) and the
        authenticated member. The first bytes tell a TLS dialer from a plain one."""
        first = await stream.receive_some(SNIFF_BYTES)
        if not first:
            raise HandshakeError("closed", "peer closed the connection before hello")
        sniff = SniffStream(stream, first)
        me = self.genesis.members[self.me].name
        where = _remote(stream)
        tls = self._tls
        if tls is None:
            if is_tls_hello(first):
                await _refuse(
                    sniff,
                    f"{me} does not use TLS on its peer port ([tls] peer = false in its "
                    "node.toml) but you dialed with TLS: every member of a network must agree",
                )
                self.tls_mismatch = (
                    f"a peer at {where} dialed with TLS, but [tls] peer is off here: every "
                    "member's node.toml must have the same [tls] peer"
                )
                raise HandshakeError("tls_unexpected", self.tls_mismatch)
            heard = _Heard(sniff)
            reader = FrameReader(heard, HANDSHAKE_FRAME_MAX)
            return sniff, reader, heard, await self._handshake_listener(sniff, reader, None, slot)
        if not is_tls_hello(first):
            peer = await self._plain_dialer(sniff)
            await _refuse(
                sniff,
                f"{me} requires TLS on its peer port ([tls] peer = true in its node.toml) but "
                "you dialed without TLS: set [tls] peer = true in yours too (every member of "
                "a network must agree)",
            )
            who = peer.name if peer is not None else f"a peer at {where}"
            self.tls_mismatch = (
                f"{who} dialed without TLS, but [tls] peer = true here: set [tls] peer = true "
                "in its node.toml too"
            )
            if peer is not None:
                peer.inbound_error = self.tls_mismatch
            raise HandshakeError("tls_required", self.tls_mismatch)
        self._hello_received(slot)  # a TLS ClientHello came first
        try:
            self._take_signature(slot.source)  # our side of the TLS handshake signs
        except HandshakeError as exc:
            await _refuse(sniff, exc.detail)  # plain framing: our dialers read it so
            raise
        conn = trio.SSLStream(sniff, tls.server_context, server_side=True)
        try:
            await conn.do_handshake()
            key = peer_key(conn)
        except trio.BrokenResourceError as exc:
            raise HandshakeError(
                "tls_failed", explain_failure(exc, b"", f"the peer at {where}")
            ) from None
        except TlsRefused as exc:
            raise HandshakeError("tls_bad_certificate", f"the peer at {where} {exc}") from None
        member = self.genesis.member_by_key(key)
        if member is None or member.index not in self.peers:
            await _refuse(conn, f"your TLS key {key.hex()[:16]}… is not a member in {me}'s genesis")
            raise HandshakeError(
                "tls_unknown_key",
                f"the peer at {where} presented TLS key {key.hex()[:16]}…, which genesis does not "
                "list for any other member",
            )
        heard = _Heard(conn)
        reader = FrameReader(heard, HANDSHAKE_FRAME_MAX)
        return conn, reader, heard, await self._handshake_listener(conn, reader, member.index)

    async def _plain_dialer(self, stream: trio.abc.Stream) -> _Peer | None:
        """Best effort: the member a plain hello names (to say who dialed without TLS)."""
        try:
            frame = await FrameReader(stream, HANDSHAKE_FRAME_MAX).read()
            if frame is None:
                return None
            return self.peers.get(as_int(_decode(frame, 5, "hello")[3], "dialer"))
        except (FrameError, WireFormatError):
            return None

    async def _receive_frames(
        self, reader: FrameReader, peer: _Peer, session: _InboundSession
    ) -> None:
        while (body := await reader.read()) is not None:
            if body == PING:
                session.pong_owed = True
                session.wakeup.set()
                continue
            if body == PONG:
                session.pong.set()
                continue
            peer.frames_received += 1
            peer.bytes_received += len(body)
            peer.inbound_held = True  # from here we may wait on our consumer, not on the peer
            try:
                await self._hand_over(peer, body)
            finally:
                peer.inbound_held = False
                peer.inbound_last_s = trio.current_time()

    async def _hand_over(self, peer: _Peer, body: bytes) -> None:
        # Reserve the bytes atomically (no await between the check and the add), so readers
        # never hold partial reservations that could starve each other.
        while self._inbound_bytes and self._inbound_bytes + len(body) > self._inbound_bytes_max:
            await self._inbound_space.wait()
        self._inbound_bytes += len(body)
        try:
            await self._inbound_send.send((peer.index, body))
        except BaseException:
            self._inbound_bytes -= len(body)  # never handed over
            raise

    # --- outbound ---------------------------------------------------------------------------

    async def _dial_loop(self, peer: _Peer) -> None:
        backoff = BACKOFF_MIN_S
        while True:
            host, port = peer.address
            stream: trio.SocketStream | None = None
            try:
                try:
                    with trio.fail_after(CONNECT_TIMEOUT_S):
                        stream = await trio.open_tcp_stream(host, port)
                except trio.TooSlowError:
                    raise OSError(f"connecting to {host}:{port} timed out") from None
                with trio.fail_after(self._handshake_timeout_s):
                    conn = await self._dial_handshake(stream, peer)
                peer.outbound_connected = True
                peer.outbound_last_s = trio.current_time()
                peer.connected_since = time.time()
                peer.last_error = ""
                backoff = BACKOFF_MIN_S
                self.log.info("connected to %s at %s:%d", peer.name, host, port)
                await self._session(conn, peer)
                self.log.info("lost connection to %s: %s", peer.name, peer.last_error)
            except HandshakeError as exc:
                peer.last_error = exc.detail
                self._handshake_failed(exc.reason, f"to {peer.name}: {exc.detail}")
            except trio.TooSlowError:
                peer.last_error = "handshake timed out"
                self._handshake_failed("timeout", f"to {peer.name}: handshake timed out")
            except FrameError as exc:
                peer.last_error = str(exc)
                self._handshake_failed("bad_frame", f"to {peer.name}: {exc}")
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                # Connection refused while a peer is down is normal: status shows it, no log.
                peer.last_error = str(exc) or type(exc).__name__
            finally:
                self._disconnected(peer)
                if stream is not None:
                    await trio.aclose_forcefully(stream)
            # Exponential backoff with jitter, so restarted members do not dial in lockstep.
            await trio.sleep(backoff * (0.5 + secrets.randbelow(1000) / 1000))
            backoff = min(BACKOFF_MAX_S, backoff * 2)

    async def _dial_handshake(self, stream: trio.SocketStream, peer: _Peer) -> trio.abc.Stream:
        """TLS (when on) and the handshake of an outbound connection: the stream to send on."""
        tls = self._tls
        if tls is None:
            await self._handshake_dialer(stream, FrameReader(stream, HANDSHAKE_FRAME_MAX), peer)
            return stream
        sniff = SniffStream(stream, record_bytes_max=RECORD_BYTES_MAX)
        conn = trio.SSLStream(sniff, tls.client_context)
        try:
            await conn.do_handshake()
            key = peer_key(conn)
            expected = self.genesis.members[peer.index].public_key
            if key != expected:
                host, port = peer.address
                raise HandshakeError(
                    "tls_wrong_key",
                    f"{peer.name} at {host}:{port} presented TLS key {key.hex()[:16]}… but "
                    f"genesis lists {expected.hex()[:16]}… for it: a wrong address, or another "
                    "member listens there",
                )
            await self._handshake_dialer(conn, FrameReader(conn, HANDSHAKE_FRAME_MAX), peer)
        except TlsRefused as exc:
            raise HandshakeError("tls_bad_certificate", f"{peer.name} {exc}") from None
        except trio.BrokenResourceError as exc:
            # TLS 1.3: a listener refusing our certificate says so after our handshake is
            # done, at our first read; that read is in this try too.
            raise HandshakeError(
                "tls_failed", explain_failure(exc, bytes(sniff.received), peer.name)
            ) from None
        return conn

    def _disconnected(self, peer: _Peer) -> None:
        peer.outbound_connected = False
        peer.connected_since = None
        if peer.queue:
            self.counters["dropped_on_disconnect"] += len(peer.queue)
            peer.frames_dropped += len(peer.queue)
            peer.queue.clear()
            peer.queued_bytes = 0

    async def _session(self, stream: trio.abc.Stream, peer: _Peer) -> None:
        """Send until the connection fails, pinging every interval. The listener writes only
        pongs (and pings, and a refusal) after the handshake, so reading also tells us at once
        when it goes away (instead of at the next send)."""
        peer.ping_owed = peer.pong_owed = False
        async with trio.open_nursery() as nursery:

            async def read() -> None:
                try:
                    await self._read_control(FrameReader(stream, HANDSHAKE_FRAME_MAX), peer)
                except FrameError as exc:
                    peer.last_error = f"outbound: {exc}"
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    peer.last_error = str(exc) or type(exc).__name__
                nursery.cancel_scope.cancel()

            async def send() -> None:
                try:
                    await self._send_loop(stream, peer)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    peer.last_error = str(exc) or type(exc).__name__
                nursery.cancel_scope.cancel()

            async def ping() -> None:
                while True:
                    await trio.sleep(self._ping_interval_s)
                    peer.ping_owed = True
                    peer.wakeup.set()

            nursery.start_soon(read)
            nursery.start_soon(send)
            nursery.start_soon(ping)

    async def _read_control(self, reader: FrameReader, peer: _Peer) -> None:
        """What the listener writes on our outbound connection: pongs (it hears us), pings
        (it checks we are alive), or a refusal (another process already connected as us)."""
        while (frame := await reader.read()) is not None:
            if frame == PONG:
                peer.outbound_last_s = trio.current_time()
            elif frame == PING:
                peer.pong_owed = True
                peer.wakeup.set()
            else:
                try:
                    msg = as_list(
                        unpack_canonical(frame, max_len=HANDSHAKE_FRAME_MAX), 2, "refused"
                    )
                    if msg[0] != "refused":
                        raise WireFormatError("not a refusal")
                except WireFormatError:
                    raise FrameError("unexpected frame from the listener") from None
                peer.last_error = f"{peer.name} refused us: {str(msg[1])[:REFUSAL_CHARS_MAX]}"
                self.counters["refused_after_handshake"] += 1
                self._ratelog.warning(f"refused:{peer.index}", peer.last_error)
                return
        peer.last_error = "peer closed the connection"

    async def _send_loop(self, stream: trio.abc.Stream, peer: _Peer) -> None:
        """Write the control frames owed and everything queued (up to COALESCE_BYTES_MAX) with
        one send_all per round."""
        while True:
            while not (peer.queue or peer.ping_owed or peer.pong_owed):
                peer.wakeup = trio.Event()
                await peer.wakeup.wait()
            control = [PONG] * peer.pong_owed + [PING] * peer.ping_owed
            peer.ping_owed = peer.pong_owed = False
            batch, size = take_batch(peer.queue, COALESCE_BYTES_MAX) if peer.queue else ([], 0)
            peer.queued_bytes -= size
            await stream.send_all(encode_frames(control + batch))
            peer.frames_sent += len(batch)
            peer.bytes_sent += size + 4 * len(batch)


def _victim(tiers: list[list[_Unauthenticated]], now: float) -> _Unauthenticated | None:
    """The first tier's oldest connection that has sent nothing, else its oldest handshake
    EVICT_AGE_S old; else the next tier's. None when no tier has one."""
    for tier in tiers:
        for u in tier:
            if not u.hello:
                return u
        for u in tier:
            if now - u.since >= EVICT_AGE_S:
                return u
    return None


def _host(stream: trio.SocketStream) -> str:
    try:
        return str(stream.socket.getpeername()[0])
    except OSError:
        return "?"


def _remote(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "?"
    return f"{host}:{port}"


async def _refuse(stream: trio.abc.SendStream, reason: str) -> None:
    """Tell a refused dialer why, best effort (it may already be gone)."""
    try:
        with trio.move_on_after(1):
            await stream.send_all(encode_frame(pack(["refused", reason[:REFUSAL_CHARS_MAX]])))
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
