"""The client library's connections (Trio), used by `consortium tx submit`, the demo and the
e2e tests.

    async with ConsortiumClient(genesis, keys) as client:
        tx = client.make_tx([Put(b"greeting", b"hello")])
        [outcome] = await client.submit_and_wait([tx], timeout_s=10)
        outcome.status      # "committed" | "rejected" | "pending"

How it decides, in pbft mode (n = 3f+1, up to f members may lie):
- The client keeps one connection to EVERY member's client port, tolerates members that are
  down and reconnects in the background with backoff.
- `submit` sends the transactions to every connected member, so a silent or censoring primary
  cannot hide them from the others, and returns the ids at once. Ids are chosen by the client
  (the hash of the signed body), so a resubmission is always safe: an id executes at most once.
- A transaction is "committed" once f+1 DISTINCT members have sent receipt bundles that verify
  (`verify_bundle`: the receipt's Merkle proof against the header, that member's signature
  over the block hash) and agree on the receipt and the block hash: at least one of them is
  honest (the tally itself is pure: tally.py). "committed" means it is in the ledger;
  `receipt.status` says whether it took effect ("ok") or was deterministically rejected at
  execution (e.g. a compare-and-set mismatch).
- "rejected" needs f+1 members agreeing on the same rejection at submit, and only for reasons
  every member decides alike from the bytes (bad_signature, wrong_chain, malformed).
  "expired" (the earlier of each member's clock and its network's time), "overloaded" and
  "unknown_client" (judged against the member's state at its height: a member that has not
  executed the block admitting the key yet says unknown_client while the others commit the
  transaction) are never final: the
  transaction may still commit. The last of them is shown in a pending outcome's reason
  ("members report unknown_client") so the user sees why it does not commit.
- A timeout ends in "pending", never an ambiguous failure: the transaction may still commit.
  While waiting, transactions without news for `retransmit_s` are resubmitted to all members.
- Fast-path reads (`get`) need a quorum (genesis.quorum) of matching signed replies from
  distinct members.
In raft mode (crash faults only) one verified receipt suffices: a submit goes to ONE member
(followers forward to the leader, and name it in their answer, so the next submit goes to the
leader itself) and a retransmission to the next connected member, and a
read (`get`) is answered by any one member with a linearizable ReadIndex read. `SyncClient`
(sync.py) wraps the same calls for code that is not running Trio; `follow` (follow.py) streams
committed blocks.

TLS (when the network's client ports use it, docs/tls.md): pass `tls_keys`, the client's own
genesis key. The client presents a certificate for that key and accepts a member only when the
member's certificate carries the key genesis lists for it; a member refusing us, or answering
without TLS, is reported in `member_errors()` with its reason.

Everything is bounded: one outbound queue per member (a member that does not read loses
frames, which resubmission covers), the transactions tracked, the signature cache.
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
import ssl
import time
from collections import Counter, deque
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import trio

from consortium.client.errors import ClientError
from consortium.client.follow import CREDIT_DEFAULT, CommittedBlock, FollowStream
from consortium.client.follow import follow as follow_blocks
from consortium.client.outcome import TxOutcome
from consortium.client.receipts import from_bundles
from consortium.client.tally import (
    REPORTED_REJECTIONS,
    Vouch,
    confirmations,
    is_final_rejection,
    tally,
)
from consortium.crypto.codec import WireFormatError, pack
from consortium.crypto.keys import KeyPair
from consortium.crypto.signing import Domain, Ed25519Signer, Ed25519Verifier, Verifier
from consortium.ledger.genesis import Genesis
from consortium.ledger.tx import Op, Transaction
from consortium.protocol.framing import FrameError, FrameReader, encode_frames
from consortium.protocol.limits import TRANSFER_NONCE_BYTES, TX_IDS_PER_REQUEST_MAX
from consortium.protocol.messages import (
    PUSH,
    BlockReceipts,
    ClientList,
    ErrorReply,
    OkReply,
    ReceiptPush,
    decode_response,
    decode_status,
    decode_verdicts,
    leader_hint,
    transfer_body,
)
from consortium.protocol.verify import (
    Bundle,
    FollowedBlock,
    ReadReply,
    inclusion_problem,
    verify_bundle,
    verify_header_signature,
    verify_read,
)

BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 1.0
CONNECT_TIMEOUT_S = 5.0
QUEUE_FRAMES_MAX = 1024
QUEUE_BYTES_MAX = 64 << 20
COALESCE_BYTES_MAX = 1 << 20
SUBMITS_TRACKED_MAX = 10_000
SUBMIT_IDS_TRACKED_MAX = 400_000  # the ids those submits carried, all together
TXS_TRACKED_MAX = 200_000
SIGNATURE_CACHE_MAX = 100_000
SUBMIT_FRAME_OVERHEAD = 64
TX_ARRAY_OVERHEAD = 16
WATCH_IDS_PER_FRAME = TX_IDS_PER_REQUEST_MAX


class _CachingVerifier:
    """Remembers signatures that verified: every receipt of a block shares one block signature,
    so a batch of receipts costs one Ed25519 check per member and block, not per receipt."""

    def __init__(self, inner: Verifier, entries_max: int = SIGNATURE_CACHE_MAX) -> None:
        self._inner = inner
        self._good: set[tuple[bytes, Domain, bytes, bytes, bytes]] = set()
        self._entries_max = entries_max

    def verify(
        self, public_key: bytes, domain: Domain, chain_id: bytes, body: bytes, signature: bytes
    ) -> bool:
        key = (public_key, domain, chain_id, body, signature)
        if key in self._good:
            return True
        if not self._inner.verify(public_key, domain, chain_id, body, signature):
            return False
        if len(self._good) >= self._entries_max:
            self._good.clear()
        self._good.add(key)
        return True


@dataclass
class _TxState:
    tx: Transaction | None  # None: watched by id only (submitted elsewhere), never resubmitted
    # member -> the first valid bundle it sent (tally.py)
    vouched: dict[int, Vouch] = field(default_factory=dict)
    # member -> the final rejection it reported at submit
    rejected: dict[int, str] = field(default_factory=dict)
    # member -> the last non-final rejection in REPORTED_REJECTIONS it reported at submit
    reported: dict[int, str] = field(default_factory=dict)
    last_news: float = 0.0
    first_sent: float = 0.0
    delivered: bool = False  # handed to at least one connected member (or heard of from one)
    confirmed_at: float | None = None  # when a result first had enough confirmations
    # The latest receipt proven from a "receipts" push, until the decision: (header hash, the
    # entry's receipt as decoded, its Vouch). Another member's push of the same header with
    # the same entry vouches for it without a second decode and Merkle check
    # (_on_block_receipts).
    proven: tuple[bytes, Any, Vouch] | None = None


@dataclass
class _Waiter:
    member: int
    done: trio.Event = field(default_factory=trio.Event)
    response: OkReply | ErrorReply | None = None


@dataclass
class _Member:
    index: int
    name: str
    address: tuple[str, int]
    online: bool = False
    connected: trio.Event = field(default_factory=trio.Event)
    queue: deque[bytes] = field(default_factory=deque)
    queued_bytes: int = 0
    wakeup: trio.Event = field(default_factory=trio.Event)
    last_error: str = ""
    connections: int = 0


def _split_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


class ConsortiumClient:
    """An async Trio client of every member; see the module docstring for how it decides."""

    def __init__(
        self,
        genesis: Genesis,
        keys: KeyPair | None = None,
        *,
        addresses: dict[int, tuple[str, int]] | None = None,
        frame_bytes_max: int | None = None,
        retransmit_s: float = 1.0,
        connect_timeout_s: float = 1.0,
        verifier: Verifier | None = None,
        tls_keys: KeyPair | None = None,
    ) -> None:
        """`addresses` defaults to every member's client_address in genesis; `frame_bytes_max`
        to genesis params. Entering the context waits up to `connect_timeout_s` for every
        member to accept (members that are down are not waited for beyond it). `tls_keys`:
        connect with TLS, presenting a certificate for this key (an admitted client's)."""
        self.genesis = genesis
        self.keys = keys
        self.chain_id = genesis.chain_id
        self.verifier: Verifier = _CachingVerifier(verifier or Ed25519Verifier())
        self.confirmations_needed = genesis.f + 1 if genesis.mode == "pbft" else 1
        self.retransmit_s = retransmit_s
        self.connect_timeout_s = connect_timeout_s
        self._frame_max = frame_bytes_max or genesis.params.frame_bytes_max
        if addresses is None:
            addresses = {m.index: _split_address(m.client_address) for m in genesis.members}
        for index in addresses:
            if not 0 <= index < genesis.n:
                raise ValueError(f"addresses: {index} is not a member index")
        self._members = {
            i: _Member(i, genesis.members[i].name, a) for i, a in sorted(addresses.items())
        }
        self._raft_target = 0  # raft: the member submits go to (rotated on retransmission)
        self._raft_leader: int | None = None  # raft: the leader a follower named, if any
        self._req_ids = itertools.count(1)
        self._waiters: dict[int, _Waiter] = {}
        # submit req_id -> replies still expected, and the ids it carried in order (a member
        # rejecting a transaction it cannot decode cannot name its id: the position does)
        self._submits: dict[int, tuple[int, tuple[bytes, ...]]] = {}
        self._submit_ids = 0  # ids held in _submits
        self._txs: dict[bytes, _TxState] = {}
        self._follow_streams: dict[int, FollowStream] = {}  # follow req_id -> member stream
        self._follow_link = _FollowLink(self)
        self._changed = trio.Event()
        self.counters: Counter[str] = Counter()
        self._stack: contextlib.AsyncExitStack | None = None
        self._nursery: trio.Nursery | None = None
        self._tls_context: ssl.SSLContext | None = None
        if tls_keys is not None:
            known = [c.name for c in genesis.clients if c.public_key == tls_keys.public]
            known += [m.name for m in genesis.members if m.public_key == tls_keys.public]
            name = known[0] if known else "client"
            # (imported only with TLS: it loads the certificate code, x509 and all)
            from consortium.protocol.tls import make_context

            self._tls_context = make_context(tls_keys, name, self.chain_id, server=False)

    # --- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> ConsortiumClient:
        stack = contextlib.AsyncExitStack()
        nursery = await stack.enter_async_context(trio.open_nursery())
        self._nursery, self._stack = nursery, stack
        for member in self._members.values():
            nursery.start_soon(self._member_loop, member)
        try:
            await self.wait_connected(timeout_s=self.connect_timeout_s)
        except BaseException as exc:
            # Cancelled (or failed) while connecting: close the nursery here, or it stays open
            # past the caller's scope and trio finds its cancel scope stack corrupted.
            nursery.cancel_scope.cancel()
            self._stack = self._nursery = None
            await stack.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._nursery is not None and self._stack is not None, "not entered"
        self._nursery.cancel_scope.cancel()
        stack, self._stack, self._nursery = self._stack, None, None
        return await stack.__aexit__(exc_type, exc, tb)

    async def wait_connected(self, count: int | None = None, timeout_s: float = 5.0) -> bool:
        """Wait until `count` members (default: all) are connected; False on timeout."""
        want = len(self._members) if count is None else min(count, len(self._members))
        with trio.move_on_after(timeout_s):
            while len(self.connected_members()) < want:
                async with trio.open_nursery() as nursery:
                    # Wake when any member connects, then count again.
                    for m in self._members.values():
                        if not m.online:
                            nursery.start_soon(_set_when, m.connected, nursery.cancel_scope)
            return True
        return False

    def _require_open(self) -> None:
        if self._nursery is None:
            raise ClientError("the client is not connected: use `async with ConsortiumClient(...)`")

    def connected_members(self) -> list[int]:
        return [m.index for m in self._members.values() if m.online]

    def member_errors(self) -> dict[int, str]:
        """The last connection error seen per member ("" when none)."""
        return {m.index: m.last_error for m in self._members.values()}

    async def _member_loop(self, member: _Member) -> None:
        backoff = BACKOFF_MIN_S
        while True:
            try:
                with trio.fail_after(CONNECT_TIMEOUT_S):
                    stream = await trio.open_tcp_stream(*member.address)
            except (OSError, trio.TooSlowError) as exc:
                member.last_error = str(exc) or "connect timed out"
            else:
                try:
                    conn = await self._secure(member, stream)
                except BaseException:
                    # Cancelled mid-handshake (the client closing): the socket must not be
                    # left for the garbage collector (a ResourceWarning in whatever runs then).
                    await trio.aclose_forcefully(stream)
                    raise
                if conn is not None:
                    backoff = BACKOFF_MIN_S
                    await self._connection(member, conn)
            # Backoff with jitter, so clients do not reconnect in lockstep.
            await trio.sleep(backoff * (0.5 + secrets.randbelow(1000) / 1000))
            backoff = min(BACKOFF_MAX_S, backoff * 2)

    async def _secure(self, member: _Member, stream: trio.SocketStream) -> trio.abc.Stream | None:
        """The stream to use: `stream` itself, or with TLS a TLS stream whose certificate key
        is the one genesis lists for `member`. None (reason in last_error) when it is not."""
        if self._tls_context is None:
            return stream
        from consortium.protocol.tls import (
            RECORD_BYTES_MAX,
            SniffStream,
            TlsRefused,
            explain_failure,
            peer_key,
        )

        sniff = SniffStream(stream, record_bytes_max=RECORD_BYTES_MAX)
        conn = trio.SSLStream(sniff, self._tls_context)
        why = ""
        try:
            with trio.fail_after(CONNECT_TIMEOUT_S):
                await conn.do_handshake()
            key = peer_key(conn)
            expected = self.genesis.members[member.index].public_key
            if key != expected:
                host, port = member.address
                why = (
                    f"{member.name} at {host}:{port} presented TLS key {key.hex()[:16]}… but "
                    f"genesis lists {expected.hex()[:16]}… for it"
                )
        except trio.TooSlowError:
            why = f"TLS handshake with {member.name} timed out"
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            why = explain_failure(exc, bytes(sniff.received), member.name)
        except TlsRefused as exc:
            why = f"{member.name} {exc}"
        if not why:
            return conn
        member.last_error = why
        await trio.aclose_forcefully(stream)
        return None

    def _explain(self, exc: BaseException, name: str) -> str:
        if self._tls_context is None:
            return str(exc) or type(exc).__name__
        from consortium.protocol.tls import explain_failure

        return explain_failure(exc, b"", name)

    async def _connection(self, member: _Member, stream: trio.abc.Stream) -> None:
        member.online = True
        member.connections += 1
        member.last_error = ""
        member.connected.set()
        try:
            async with trio.open_nursery() as nursery:

                async def writer() -> None:
                    try:
                        await self._write(member, stream)
                    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                        member.last_error = str(exc) or type(exc).__name__
                    nursery.cancel_scope.cancel()

                nursery.start_soon(writer)
                try:
                    reader = FrameReader(stream, self._frame_max)
                    while (frame := await reader.read()) is not None:
                        self._dispatch(member.index, frame)
                    member.last_error = member.last_error or "member closed the connection"
                except (FrameError, OSError, trio.BrokenResourceError) as exc:
                    # A member that told us why it closes (a push error) keeps its word.
                    member.last_error = member.last_error or self._explain(exc, member.name)
                nursery.cancel_scope.cancel()
        finally:
            member.online = False
            member.connected = trio.Event()
            member.queue.clear()
            member.queued_bytes = 0
            for waiter in self._waiters.values():
                if waiter.member == member.index and waiter.response is None:
                    waiter.done.set()  # fail fast: the answer cannot come on this connection
            await trio.aclose_forcefully(stream)

    async def _write(self, member: _Member, stream: trio.abc.Stream) -> None:
        while True:
            while not member.queue:
                member.wakeup = trio.Event()
                await member.wakeup.wait()
            batch: list[bytes] = []
            size = 0
            while member.queue and size < COALESCE_BYTES_MAX:
                frame = member.queue.popleft()
                batch.append(frame)
                size += len(frame)
            member.queued_bytes -= size
            await stream.send_all(encode_frames(batch))

    def _enqueue(self, member: _Member, body: bytes) -> bool:
        """Queue a frame body for a member without blocking; False when it is not connected or
        its queue is full (it is not reading)."""
        if not member.online:
            self.counters["dropped_not_connected"] += 1
            return False
        if (
            len(member.queue) >= QUEUE_FRAMES_MAX
            or member.queued_bytes + len(body) > QUEUE_BYTES_MAX
        ):
            self.counters["dropped_queue_full"] += 1
            return False
        member.queue.append(body)
        member.queued_bytes += len(body)
        member.wakeup.set()
        return True

    # --- incoming ---------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _dispatch(self, member: int, frame: bytes) -> None:
        try:
            response = decode_response(frame, self._frame_max)
        except WireFormatError:
            self.counters["bad_response"] += 1  # a member sending garbage gets no say
            return
        match response:
            case ReceiptPush(bundle=bundle):
                self._on_bundle(member, bundle)
            case BlockReceipts():
                self._on_block_receipts(member, response)
            case ErrorReply(req_id=req_id, message=message) if req_id == PUSH:
                self._members[member].last_error = message
            case FollowedBlock(follow_id=follow_id):
                stream = self._follow_streams.get(follow_id)
                if stream is not None and stream.member == member:
                    stream.receive(response)
                else:
                    self.counters["follow_unexpected"] += 1
            case ErrorReply(req_id=req_id, message=message) if req_id in self._follow_streams:
                # Only the stream's own member may end it: follow ids are sequential req_ids,
                # and another (lying) member could end every honest member's stream.
                stream = self._follow_streams[req_id]
                if stream.member == member:
                    stream.end(f"{self._members[member].name}: {message}")
                else:
                    self.counters["follow_unexpected"] += 1
            case OkReply(req_id=req_id) if req_id in self._follow_streams:
                pass  # the follow started; its blocks follow
            case OkReply(req_id=req_id) | ErrorReply(req_id=req_id) if req_id in self._submits:
                left, ids = self._forget_submit(req_id)
                if isinstance(response, OkReply):
                    self._on_submit_reply(member, response.payload, ids)
                else:
                    self.counters["submit_error"] += 1
                    self._members[member].last_error = response.message
                if left > 1:
                    self._submits[req_id] = (left - 1, ids)
                    self._submit_ids += len(ids)
            case OkReply(req_id=req_id) | ErrorReply(req_id=req_id):
                waiter = self._waiters.get(req_id)
                if waiter is not None and waiter.member == member and waiter.response is None:
                    waiter.response = response
                    waiter.done.set()

    def _on_block_receipts(self, member: int, push: BlockReceipts) -> None:
        """A member's receipts in one block: the header is hashed and its signature checked
        once for all of them (verify_header_signature), then each entry's inclusion; entries
        of transactions already decided (or unknown to us) are not even decoded.

        An entry equal to one already proven in the same header (another member's push of
        the same block) is not decoded or proven again: the member signed that header, and
        the header's receipts root fixes the receipt at that index, so its signature vouches
        for the receipt proven there (the proof that proved it goes in its bundle)."""
        header_hash: bytes | None = None
        for i in range(len(push.entries)):
            tx_id = push.tx_id_at(i)
            state = self._txs.get(tx_id) if tx_id is not None else None
            if state is None or member in state.vouched:
                continue
            if state.confirmed_at is not None:
                self.counters["bundle_after_decision"] += 1
                continue
            if header_hash is None:
                header_hash = push.header.hash
                problem, signer = verify_header_signature(
                    push.header,
                    push.signature,
                    self.genesis,
                    self.verifier,
                    header_hash=header_hash,
                )
                if signer != member or problem is not None:
                    wrong = "bundle_wrong_signer" if signer != member else "bundle_invalid"
                    self.counters[wrong] += 1
                    return  # the header's signature is every entry's: none of them counts
            raw = push.entries[i][0]
            proven = state.proven
            if proven is not None and proven[0] == header_hash and proven[1] == raw:
                first = proven[2].bundle
                bundle = Bundle(
                    first.receipt, first.proof, first.tree_size, push.header, push.signature
                )
                self.counters["bundle_proven_before"] += 1
                self._vouched(member, state, Vouch(proven[2].receipt, header_hash, bundle))
                continue
            try:
                bundle = push.bundle(i)
            except WireFormatError:
                self.counters["bad_response"] += 1
                return
            self._on_bundle(member, bundle, header_hash)
            vouch = state.vouched.get(member)
            if vouch is not None and state.confirmed_at is None:
                # The latest proven entry: a liar proven first (its own header, or another
                # entry of the same block) costs the members after it one full check each,
                # not the shortcut for good.
                state.proven = (header_hash, raw, vouch)

    def _on_bundle(self, member: int, bundle: Bundle, signed_header: bytes | None = None) -> None:
        """A member's bundle for one of our transactions. `signed_header`: the hash of the
        bundle's header, when its block signature is known to be `member`'s and valid (a
        "receipts" push, checked once for all its entries): only inclusion is left to check."""
        state = self._txs.get(bundle.receipt.tx_id)
        if state is None or member in state.vouched:
            return
        if state.confirmed_at is not None:
            self.counters["bundle_after_decision"] += 1
            return  # decided by f+1 verified bundles already: spare the checks
        receipt_bytes = bundle.receipt.encode()  # the Merkle leaf, and what agreement is on
        if signed_header is None:
            if bundle.signer() != member:
                self.counters["bundle_wrong_signer"] += 1
                return
            header_hash = bundle.header.hash
            problem = verify_bundle(bundle, self.genesis, self.verifier, header_hash=header_hash)
        else:
            header_hash = signed_header
            problem = inclusion_problem(
                bundle.receipt, receipt_bytes, bundle.proof, bundle.tree_size, bundle.header
            )
        if problem is not None:
            self.counters["bundle_invalid"] += 1
            return
        self._vouched(member, state, Vouch(receipt_bytes, header_hash, bundle))

    def _vouched(self, member: int, state: _TxState, vouch: Vouch) -> None:
        """`member` vouches for `vouch` (verified): decide once enough members agree."""
        receipt_bytes, header_hash = vouch.receipt, vouch.block_hash
        state.vouched[member] = vouch
        state.last_news = trio.current_time()
        if confirmations(state.vouched, receipt_bytes, header_hash) >= self.confirmations_needed:
            state.confirmed_at = state.last_news
            state.proven = None  # (read only until the decision)
            self._notify()  # waiters wake on decisions only, not on every bundle

    def _on_submit_reply(self, member: int, payload: Any, ids: tuple[bytes, ...] = ()) -> None:
        """A member's verdicts on one submit request, one per transaction in the order sent
        (`ids`). A transaction the member could not decode (over the size limit, malformed)
        comes back with an empty id: its position in the request names it."""
        try:
            verdicts = decode_verdicts(payload)
        except WireFormatError:
            self.counters["bad_response"] += 1
            return
        now = trio.current_time()
        rejections = False
        positional = len(verdicts) == len(ids)
        for position, v in enumerate(verdicts):
            tx_id = v.tx_id or (ids[position] if positional else b"")
            state = self._txs.get(tx_id)
            if state is None:
                continue
            state.delivered = True
            if isinstance(v.detail, Bundle):
                self._on_bundle(member, v.detail)
            elif v.status == "rejected" and is_final_rejection(v.detail):
                state.rejected[member] = v.detail
                state.last_news = now
                rejections = True
            elif v.status == "rejected" and isinstance(v.detail, str):
                if v.detail.split(":")[0] in REPORTED_REJECTIONS:
                    state.reported[member] = v.detail
                # Still no news: the transaction is resubmitted (a member may catch up).
            elif v.status == "accepted":
                state.last_news = now
                state.reported.pop(member, None)
                if isinstance(v.detail, str) and v.detail:
                    hint = leader_hint(v.detail, self.genesis.n)
                    if hint is not None:
                        self._raft_leader = hint  # submit there next (raft)
            # A transient rejection is no news: the transaction is resubmitted.
        if rejections:
            self._notify()

    # --- transactions -----------------------------------------------------------------------

    def make_tx(
        self, ops: Sequence[Op], *, expiry_s: float = 60.0, nonce: bytes | None = None
    ) -> Transaction:
        """Sign a transaction with this client's key, expiring `expiry_s` from now (wall
        clock). A fresh random nonce (the default) makes each call a new transaction id."""
        if self.keys is None:
            raise ClientError("this client has no key; pass keys= to sign transactions")
        expiry_ms = int((time.time() + expiry_s) * 1000)
        return Transaction.create(
            self.keys,
            self.chain_id,
            nonce if nonce is not None else secrets.token_bytes(16),
            expiry_ms,
            list(ops),
        )

    async def submit(self, txs: Sequence[Transaction]) -> list[bytes]:
        """Send the transactions to every connected member (one submit frame per member, split
        only when they exceed the frame limit) and return their ids at once."""
        self._require_open()
        now = trio.current_time()
        for tx in txs:
            state = self._txs.pop(tx.id, None) or _TxState(tx, first_sent=now)
            state.tx = tx  # it may have been watched by id before
            state.last_news = now
            self._txs[tx.id] = state  # re-inserted, so the oldest is evicted first
        while len(self._txs) > TXS_TRACKED_MAX:
            del self._txs[next(iter(self._txs))]
            self.counters["tx_tracking_evicted"] += 1
        self._broadcast_submit(list(txs))
        await trio.lowlevel.checkpoint()
        return [tx.id for tx in txs]

    def _broadcast_submit(self, txs: list[Transaction]) -> None:
        limit = self._frame_max - SUBMIT_FRAME_OVERHEAD
        chunk: list[Transaction] = []
        size = 0
        for tx in txs:
            tx_bytes = tx.size + TX_ARRAY_OVERHEAD
            if chunk and size + tx_bytes > limit:
                self._send_submit(chunk)
                chunk, size = [], 0
            chunk.append(tx)
            size += tx_bytes
        if chunk:
            self._send_submit(chunk)

    def _send_submit(self, txs: list[Transaction]) -> None:
        req_id = next(self._req_ids)
        body = pack(["submit", req_id, [tx.to_array() for tx in txs]])
        sent = sum(self._enqueue(m, body) for m in self._submit_targets())
        if sent:
            for tx in txs:
                if (state := self._txs.get(tx.id)) is not None:
                    state.delivered = True
            self._submits[req_id] = (sent, tuple(tx.id for tx in txs))
            self._submit_ids += len(txs)
            while (
                len(self._submits) > SUBMITS_TRACKED_MAX
                or self._submit_ids > SUBMIT_IDS_TRACKED_MAX
            ):
                self._forget_submit(next(iter(self._submits)))

    def _forget_submit(self, req_id: int) -> tuple[int, tuple[bytes, ...]]:
        left, ids = self._submits.pop(req_id)
        self._submit_ids -= len(ids)
        return left, ids

    def _submit_targets(self) -> list[_Member]:
        """pbft: every member (a censoring primary cannot hide a transaction). raft: one
        connected member, the next one after each retransmission."""
        members = list(self._members.values())
        if self.genesis.mode == "pbft":
            return members
        leader = self._members.get(self._raft_leader) if self._raft_leader is not None else None
        if leader is not None and leader.online:
            return [leader]
        online = [m for m in members if m.online] or members
        return [online[self._raft_target % len(online)]]

    def outcome(self, tx_id: bytes) -> TxOutcome:
        """What is known about `tx_id` now (see TxOutcome)."""
        state = self._txs.get(tx_id)
        if state is None:
            return TxOutcome(tx_id, "pending", reason="unknown to this client")
        decision = tally(state.vouched, state.rejected, self.confirmations_needed)
        if decision.status == "committed":
            bundle = decision.bundles[0]
            return TxOutcome(
                tx_id,
                "committed",
                bundle.receipt,
                bundle.header.height,
                decision.block_hash,
                decision.reason,
                decision.confirmations,
                None if state.confirmed_at is None else state.confirmed_at - state.first_sent,
                state.confirmed_at,
                from_bundles(decision.bundles),
            )
        if decision.status == "rejected":
            return TxOutcome(
                tx_id, "rejected", reason=decision.reason, confirmations=decision.confirmations
            )
        if state.tx is not None and not state.delivered and not self.connected_members():
            return TxOutcome(tx_id, "unreachable", reason=self._unreachable_reason())
        reason = decision.reason
        if state.reported:
            by_reason: dict[str, list[str]] = {}
            for m, r in sorted(state.reported.items()):
                by_reason.setdefault(r, []).append(self.genesis.members[m].name)
            reason += "; " + "; ".join(
                f"members report {r} ({', '.join(names)})" for r, names in sorted(by_reason.items())
            )
        return TxOutcome(tx_id, "pending", reason=reason, confirmations=decision.confirmations)

    def _unreachable_reason(self) -> str:
        """ "no member reachable", with each member's last connection error."""
        why = "; ".join(
            f"{m.name}: {m.last_error or 'not connected'}" for m in self._members.values()
        )
        return f"no member reachable: {why}"

    async def wait(self, tx_ids: Sequence[bytes], timeout_s: float) -> list[TxOutcome]:
        """Outcomes for `tx_ids` once none is pending, or at the timeout (those not decided
        then are "pending"). Transactions without news for `retransmit_s` are resubmitted."""
        deadline = trio.current_time() + timeout_s
        needed = self.confirmations_needed
        undecided = list(dict.fromkeys(tx_ids))
        while True:
            changed = self._changed
            # Cheap test first: the full outcome only for what may have been decided.
            undecided = [
                t
                for t in undecided
                if (state := self._txs.get(t)) is None  # unknown: pending until the deadline
                or (
                    state.confirmed_at is None
                    and (len(state.rejected) < needed or self.outcome(t).status == "pending")
                )
            ]
            now = trio.current_time()
            if not undecided or now >= deadline:
                outcomes = [self.outcome(t) for t in tx_ids]
                for o in outcomes:
                    if o.status != "pending":
                        self._txs.pop(o.tx_id, None)
                return outcomes
            stale = [
                (t, state)
                for t in undecided
                if (state := self._txs.get(t)) is not None
                and now - state.last_news >= self.retransmit_s
            ]
            if stale:
                for _, state in stale:
                    state.last_news = now
                resubmit = [s.tx for _, s in stale if s.tx is not None]
                watched = [t for t, s in stale if s.tx is None]
                if resubmit:
                    self.counters["resubmitted"] += len(resubmit)
                    self._raft_target += 1  # raft: try another member
                    self._raft_leader = None  # (the leader we were told of may be gone)
                    self._broadcast_submit(resubmit)
                if watched:
                    # Ids we cannot resubmit (submitted elsewhere): ask again, in case a
                    # member was down or restarted since we asked.
                    self._send_watch(watched)
            with trio.move_on_at(min(deadline, now + self.retransmit_s / 2)):
                await changed.wait()

    async def submit_and_wait(
        self, txs: Sequence[Transaction], timeout_s: float
    ) -> list[TxOutcome]:
        """`submit`, then `wait` for all of them."""
        ids = await self.submit(txs)
        return await self.wait(ids, timeout_s)

    async def wait_one(self, tx_id: bytes, timeout_s: float) -> TxOutcome:
        """`wait` for one id. An id this client did not submit (or no longer tracks: another
        process submitted it, or this one restarted) is watched first: members push its
        receipt when it executes, or at once when it already has."""
        if tx_id not in self._txs:
            await self.watch([tx_id])
        [outcome] = await self.wait([tx_id], timeout_s)
        return outcome

    async def watch(self, tx_ids: Sequence[bytes]) -> None:
        """Follow ids submitted elsewhere: every member pushes each one's first receipt when
        its block executes (at once if it already has); `wait`/`outcome` then decide them like
        our own transactions, but never resubmit them (we do not hold them)."""
        self._require_open()
        now = trio.current_time()
        new = []
        for tx_id in dict.fromkeys(tx_ids):
            if tx_id not in self._txs:
                self._txs[tx_id] = _TxState(None, first_sent=now, last_news=now)
                new.append(tx_id)
        while len(self._txs) > TXS_TRACKED_MAX:
            del self._txs[next(iter(self._txs))]
            self.counters["tx_tracking_evicted"] += 1
        self._send_watch(new)
        await trio.lowlevel.checkpoint()

    def _send_watch(self, ids: list[bytes]) -> None:
        for start in range(0, len(ids), WATCH_IDS_PER_FRAME):
            body = pack(["watch", next(self._req_ids), ids[start : start + WATCH_IDS_PER_FRAME]])
            for m in self._members.values():
                self._enqueue(m, body)

    async def flush(self, timeout_s: float = 2.0) -> bool:
        """Wait until every frame queued for a connected member has been handed to its socket
        (call before leaving the context right after `submit`); False on timeout."""
        with trio.move_on_after(timeout_s):
            # Polled: a rare call (before exiting), not worth an event on every write.
            while any(m.queue for m in self._members.values() if m.online):  # noqa: ASYNC110
                await trio.sleep(0.005)
            return True
        return False

    async def lookup(self, tx_id: bytes, timeout_s: float = 5.0) -> TxOutcome:
        """Ask every member for the first receipt of `tx_id` (whoever submitted it) and decide
        as for our own: "committed" with a `proof` once f+1 distinct members' bundles verify
        and agree (raft: one); "unknown" when every member answered that it has none;
        "unreachable" when no member could be asked; else "pending" saying how many members
        have none. Does not wait for it to commit (use `wait_one`)."""
        needed = self.confirmations_needed
        if not self.connected_members() and all(m.last_error for m in self._members.values()):
            # Every member has been tried (entering the client waits for them) and failed.
            return TxOutcome(tx_id, "unreachable", reason=self._unreachable_reason())
        vouched: dict[int, Vouch] = {}
        none: list[int] = []
        problems: dict[int, str] = {}
        found: list[int] = []

        async def ask(i: int, done: trio.CancelScope) -> None:
            try:
                bundle = await self.receipt(i, tx_id, timeout_s=timeout_s)
            except ClientError as exc:
                problems[i] = str(exc)
                return
            if bundle is None:
                none.append(i)
                return
            if bundle.receipt.tx_id != tx_id or bundle.signer() != i:
                problems[i] = "answered with another transaction's or member's receipt"
                return
            header_hash = bundle.header.hash
            wrong = verify_bundle(bundle, self.genesis, self.verifier, header_hash=header_hash)
            if wrong is not None:
                problems[i] = wrong
                return
            receipt_bytes = bundle.receipt.encode()
            vouched[i] = Vouch(receipt_bytes, header_hash, bundle)
            if confirmations(vouched, receipt_bytes, header_hash) >= needed and not found:
                found.append(i)
                done.cancel()

        with trio.move_on_after(timeout_s):
            async with trio.open_nursery() as nursery:
                for i in self._members:
                    nursery.start_soon(ask, i, nursery.cancel_scope)
        decision = tally(vouched, {}, needed)
        if decision.status == "committed":
            first = decision.bundles[0]
            return TxOutcome(
                tx_id,
                "committed",
                first.receipt,
                first.header.height,
                decision.block_hash,
                decision.reason,
                decision.confirmations,
                proof=from_bundles(decision.bundles),
            )
        if len(none) == len(self._members):
            return TxOutcome(
                tx_id,
                "unknown",
                reason=f"unknown to all {len(none)} members: none holds a receipt for it",
            )
        if len(problems) == len(self._members) and not self.connected_members():
            return TxOutcome(tx_id, "unreachable", reason=self._unreachable_reason())
        parts = [decision.reason]
        if none:
            parts.append(
                f"no receipt at {', '.join(self.genesis.members[i].name for i in sorted(none))}"
            )
        for i, p in sorted(problems.items()):
            parts.append(f"{self.genesis.members[i].name}: {p}")
        return TxOutcome(
            tx_id, "pending", reason="; ".join(parts), confirmations=decision.confirmations
        )

    # --- following blocks --------------------------------------------------------------------

    def follow(
        self, from_height: int = 1, *, credit: int = CREDIT_DEFAULT
    ) -> AsyncGenerator[CommittedBlock, None]:
        """Committed blocks from `from_height` on, in order, forever (follow.py): in pbft
        each once f+1 members signed the same block, in raft as one member signed it; each
        links to the one before by prev_hash. Close it (`aclosing`) or cancel to stop.

            async with contextlib.aclosing(client.follow(1)) as blocks:
                async for block in blocks:
                    print(block.height, block.block_hash.hex(), len(block.receipts))
        """
        self._require_open()
        return follow_blocks(self._follow_link, from_height, credit)

    # --- requests to one member -------------------------------------------------------------

    async def _request(self, member: int, method: str, *args: Any, timeout_s: float) -> Any:
        """One request to one member: its "ok" payload, or ClientError."""
        self._require_open()
        m = self._members.get(member)
        if m is None:
            raise ClientError(f"no address for member {member}")
        req_id = next(self._req_ids)
        waiter = _Waiter(member)
        self._waiters[req_id] = waiter
        try:
            with trio.move_on_after(timeout_s) as scope:
                while not m.online:
                    await m.connected.wait()
                if not self._enqueue(m, pack([method, req_id, *args])):
                    raise ClientError(f"member {m.name} is not reading our requests")
                await waiter.done.wait()
        finally:
            del self._waiters[req_id]
        response = waiter.response
        why = f" ({m.last_error})" if m.last_error else ""
        if response is None and scope.cancelled_caught:
            raise ClientError(f"member {m.name} did not answer {method} within {timeout_s} s{why}")
        if response is None:
            raise ClientError(f"lost the connection to member {m.name} during {method}{why}")
        if isinstance(response, ErrorReply):
            raise ClientError(f"member {m.name}: {response.message}")
        return response.payload

    async def get(self, key: bytes, timeout_s: float = 5.0) -> bytes | None:
        """Fast-path read: the value of `key` that a quorum (genesis.quorum) of distinct
        members sign, each reply checked with `verify_read`; ClientError when no quorum
        agrees within `timeout_s`. In raft, one member's answer: a linearizable ReadIndex read
        (a member that cannot confirm the leader's commit index refuses)."""
        needed = self.genesis.quorum if self.genesis.mode == "pbft" else 1
        agree: dict[bytes | None, set[int]] = {}
        problems: dict[int, str] = {}
        result: list[bytes | None] = []

        async def ask(i: int, done: trio.CancelScope) -> None:
            try:
                payload = await self._request(i, "get", key, timeout_s=timeout_s)
                reply = ReadReply.from_array(payload)
            except (ClientError, WireFormatError) as exc:
                problems[i] = str(exc)
                return
            wrong = verify_read(reply, self.genesis, self.verifier, key=key, signer=i)
            if wrong is not None:
                problems[i] = wrong
                return
            members = agree.setdefault(reply.value, set())
            members.add(i)
            if len(members) >= needed and not result:
                result.append(reply.value)
                done.cancel()

        with trio.move_on_after(timeout_s):
            async with trio.open_nursery() as nursery:
                for i in self._members:
                    nursery.start_soon(ask, i, nursery.cancel_scope)
        if result:
            return result[0]
        counts = sorted((len(m) for m in agree.values()), reverse=True)
        detail = "; ".join(
            f"{self.genesis.members[i].name}: {p}" for i, p in sorted(problems.items())
        )
        raise ClientError(
            f"no {needed} {'member' if needed == 1 else 'members'} agreed on the value of "
            f"{key!r} within {timeout_s} s "
            f"(matching answers: {counts or 'none'}"
            + (f"; {detail}" if detail else "")
            + "); use an ordered read (tx submit get KEY) when the key is changing"
        )

    async def find_leader(self, timeout_s: float = 5.0) -> int:
        """raft: the member that reports itself leader (waits out an election)."""
        with trio.move_on_after(timeout_s):
            while True:
                for i in self._members:
                    with contextlib.suppress(ClientError):
                        s = await self.status(i, timeout_s=1.0)
                        if s.get("role") == "leader":
                            return i
                await trio.sleep(0.05)
        raise ClientError(f"no member reported itself leader within {timeout_s:g} s")

    async def transfer_leadership(
        self, leader: int, target: int, term: int, timeout_s: float = 5.0
    ) -> None:
        """raft maintenance: ask `leader`, which leads `term`, to hand leadership to `target`
        (TimeoutNow). Signed with this client's keys, which must be a member's: members refuse
        a transfer signed by a client key. Returns once the leader accepted the request (the
        transfer has begun), not once leadership moved. Each call signs a new body (a fresh
        nonce): asked again in the same term, after a transfer that was abandoned or refused,
        the leader takes it as the new request it is, not as a replay."""
        if self.keys is None:
            raise ClientError("leadership transfer is signed: this client needs a member's key")
        key = self.keys.public
        nonce = secrets.token_bytes(TRANSFER_NONCE_BYTES)
        body = transfer_body(target, term, key, leader, nonce)
        signature = Ed25519Signer(self.keys).sign(Domain.MAINTENANCE, self.chain_id, body)
        await self._request(leader, "transfer", target, body, signature, timeout_s=timeout_s)

    async def status(self, member: int, timeout_s: float = 2.0) -> dict[str, Any]:
        """One member's status document (what `consortium status` shows)."""
        payload = await self._request(member, "status", timeout_s=timeout_s)
        try:
            return decode_status(payload)
        except WireFormatError as exc:
            raise ClientError(f"member {member}: {exc}") from None

    async def clients(self, member: int, timeout_s: float = 2.0) -> ClientList:
        """One member's admitted clients and pending client changes, at its head."""
        payload = await self._request(member, "clients", timeout_s=timeout_s)
        try:
            return ClientList.from_array(payload)
        except WireFormatError as exc:
            raise ClientError(f"member {member}: {exc}") from None

    async def block(self, member: int, height: int, timeout_s: float = 5.0) -> Any:
        """One member's stored block at `height`, as it sent it (None when it has none)."""
        return await self._request(member, "block", height, timeout_s=timeout_s)

    async def receipt(self, member: int, tx_id: bytes, timeout_s: float = 5.0) -> Bundle | None:
        """One member's bundle for the first receipt of `tx_id` (None when it has none). One
        member is one member: check it with verify_bundle, and ask f+1 to be sure."""
        payload = await self._request(member, "receipt", tx_id, timeout_s=timeout_s)
        if payload is None:
            return None
        try:
            return Bundle.from_array(payload)
        except WireFormatError as exc:
            raise ClientError(f"member {member}: {exc}") from None


async def _set_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


class _FollowLink:
    """The client's side of its follows (follow.FollowLink): its connections, its request
    ids, and the routing of follow frames (ConsortiumClient._dispatch)."""

    def __init__(self, client: ConsortiumClient) -> None:
        self._client = client

    @property
    def genesis(self) -> Genesis:
        return self._client.genesis

    @property
    def verifier(self) -> Verifier:
        return self._client.verifier

    @property
    def confirmations_needed(self) -> int:
        return self._client.confirmations_needed

    @property
    def counters(self) -> Counter[str]:
        return self._client.counters

    def members(self) -> list[int]:
        return list(self._client._members)

    def connection(self, member: int) -> int | None:
        m = self._client._members[member]
        return m.connections if m.online else None

    def send(self, member: int, message: list[object]) -> bool:
        return self._client._enqueue(self._client._members[member], pack(message))

    def next_req_id(self) -> int:
        return next(self._client._req_ids)

    def route(self, stream: FollowStream) -> None:
        self._client._follow_streams[stream.follow_id] = stream

    def unroute(self, follow_id: int) -> None:
        self._client._follow_streams.pop(follow_id, None)
