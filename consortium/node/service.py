"""The client API of a member: what a ClientServer request does against the node.

submit   each transaction is checked before it reaches the core, cheapest check first, and
         rejected with a reason that changes nothing: malformed, wrong_chain, unknown_client,
         expired, bad_signature. expired is judged against the earlier of our wall clock and
         the network's agreed time (Node.expiry_now_ms), so neither a clock of ours far ahead
         nor a stale ledger refuses a transaction the network would still execute.
         unknown_client is judged against the admitted clients at our
         head (application state, a dict lookup); a key whose admission is pending is refused
         with "unknown_client: admitted at height E" (not final: it will be admitted), and a
         client change (which a member may submit too) must carry a valid quorum of approvals:
         those are checked only once the transaction's own signature verified, and on the
         worker threads too, so a forged transaction costs no approval verification.
         An id already committed is answered with its FIRST receipt (never a later
         duplicate's). Otherwise it is accepted: the connection is told its receipt when the
         block holding it executes.
receipt  the first receipt of an id, with its Merkle proof, header and our block signature
get      a fast-path read: our current value of a key, signed with the height and block hash
         it was read at (a client accepts it at a quorum of matching replies)
block    a stored block with its certificate and block signatures. The block is read, decoded
         (which checks it) and encoded on a worker thread (at most BLOCK_READ_THREADS over all
         connections), never on the event loop, and only for a connection still open; the
         encoded block (its certificate too: a stored block never changes) is kept for the
         BLOCK_REPLIES_CACHED most recently asked heights, so asking for one block again costs
         a copy; its block signatures (which arrive after it) are read at each request.
status   what `consortium status` shows
clients  the admitted clients at our head and the pending client changes
follow   committed blocks from a height on, each with our block signature (protocol/messages.py,
         "Follow"): one task per follow reads the store one block at a time, and only while
         the follow has credit, its connection's unsent bytes are under FOLLOW_QUEUE_BYTES
         (client_port.py) and all follows' connections' under FOLLOW_QUEUE_BYTES_TOTAL, so a
         slow follower costs a paused task, never memory; caught up, it sleeps until a block
         executes (one event per block for all follows, nothing per transaction). A block is
         sent as stored (header and receipts bytes spliced into the frame, never decoded), one
         per scheduling turn, and at most FOLLOWS_MAX follows run on the member.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from consortium.crypto.codec import WireFormatError, pack
from consortium.crypto.signing import Domain
from consortium.ledger.admission import check_approvals, check_client_key
from consortium.ledger.block import Block
from consortium.ledger.certificates import SignedVote
from consortium.ledger.genesis import Genesis
from consortium.ledger.state import KeyValueState
from consortium.ledger.store import BlockStore
from consortium.ledger.tx import ConfigChange, Transaction
from consortium.node import client_port
from consortium.node.bundles import ReceiptBundles
from consortium.node.config import NodeConfig
from consortium.node.errors import ReadRefused
from consortium.node.rationing import VerificationRation
from consortium.node.verification import CountingVerifier, TxSignatureCache
from consortium.node.watches import ReceiptWatches
from consortium.protocol import limits, messages
from consortium.protocol.tls import TlsIdentity

WATCHES_PER_CONNECTION_MAX = 20_000
ID_WATCHES_PER_CONNECTION_MAX = 5_000  # of them, watches by id (watches.watch_id)
# Committed ids one submit or watch request may have answered with their receipts (each costs
# a proof, and a block read for every block not cached: bundles.py). Beyond it a watch is
# answered with an error saying how many to ask again, a submit with "overloaded" verdicts
# (not final: a client resubmits them).
COMMITTED_LOOKUPS_PER_REQUEST_MAX = 1024


BLOCK_READ_THREADS = 2  # worker threads reading `block` requests' blocks, over all connections
BLOCK_REPLIES_CACHED = 8  # encoded blocks kept for `block` requests (the heights last asked)
BLOCK_REPLY_CACHE_BYTES = 64 << 20  # ...and at most this many bytes of them

FOLLOWS_MAX = 32  # follows running on this member, over all connections
FOLLOW_QUEUE_BYTES_TOTAL = 64 << 20  # every follow pauses while follows' connections hold this
FOLLOW_POLL_S = 1.0  # a caught-up follow also looks at the store this often (state transfer)
FOLLOW_FULL_POLL_S = 0.01  # how often a follow paused on a full connection looks again


class ServedMember(Protocol):
    """What the client service needs of the member it serves (runtime.Node)."""

    genesis: Genesis
    chain_id: bytes
    me: int
    config: NodeConfig
    store: BlockStore
    app: KeyValueState
    log: logging.Logger
    metrics: Any  # runtime.NodeMetrics
    tls: TlsIdentity | None
    client_listen: tuple[str, int]
    client_tls_status: Callable[[], dict[str, object]]
    client_port_events: Callable[[], dict[str, int]]
    tx_cache: TxSignatureCache
    verifier: CountingVerifier

    def leader_hint(self) -> int | None: ...

    def add_block_listener(self, listener: Any) -> None: ...

    def expiry_now_ms(self) -> int: ...

    async def propose(self, txs: list[Transaction]) -> None: ...

    async def read_value(self, key: bytes) -> list[Any]: ...

    async def transfer_leadership(self, target: int, term: int, body: bytes) -> str | None: ...

    def status_json(self) -> str: ...

    def own_block_signature(self, height: int) -> SignedVote: ...

    def first_receipt_bundle(self, tx_id: bytes) -> list[Any] | None: ...


@dataclass(eq=False)
class _Follow:
    conn: client_port.ClientConnection
    follow_id: int
    next_height: int
    credit: int
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    wakeup: trio.Event = field(default_factory=trio.Event)


class ClientService:
    """The member's client port: requests against the member, and the receipt watches of its
    connections (watches.py), told of each block as the member's block listener."""

    def __init__(self, node: ServedMember) -> None:
        self.node = node
        self._follows: dict[int, dict[int, _Follow]] = {}  # conn id -> follow id -> follow
        self._nursery: trio.Nursery | None = None
        self._server: client_port.ClientServer | None = None
        # What closes the connections of TLS keys no longer admitted, per port that pins them
        # (the client port's, the gateway's recheck_tls_keys), run when client changes apply.
        self.tls_rechecks: list[Callable[[], int]] = []
        self._bundles = ReceiptBundles(node)
        self._block_threads = trio.CapacityLimiter(BLOCK_READ_THREADS)
        self._blocks_encoded: OrderedDict[int, bytes] = OrderedDict()  # height -> _encode_block
        self.watches = ReceiptWatches(node.first_receipt_bundle)
        # Failed signature checks budgeted per connection and address, proven clients first.
        self.ration = VerificationRation()
        node.add_block_listener(self)

    # --- the member's block listener (runtime.BlockListener) ---------------------------------

    def executed(self, block: Block, vote: SignedVote) -> bool:
        """A block executed, not yet durable: its watched receipts are pushed now (sound:
        node/executor.py); whether any was."""
        return self.watches.executed(block, vote)

    def durable(self, block: Block, vote: SignedVote) -> None:
        self.watches.durable(block, vote)
        self._block_executed(block)

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        tls = self.node.tls if self.node.config.tls_client else None
        server = client_port.ClientServer(
            self,
            listen=self.node.client_listen,
            frame_bytes_max=self.node.genesis.params.frame_bytes_max,
            params=self.node.genesis.params,
            source_connections_max=self.node.config.client_connections_per_source,
            log=self.node.log,  # its lines carry the member's position too (logs.NodeContext)
            tls=tls,
            tls_accepts=self.tls_name if tls is not None else None,
        )
        self.node.client_tls_status = server.tls_status
        if tls is not None:
            self.tls_rechecks.append(server.recheck_tls_keys)
        self.node.client_port_events = lambda: {**server.counters, **self.ration.counters}
        self._server = server
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(server.run)
            task_status.started(server.listen_port)

    @property
    def connection_sources(self) -> Counter[str] | None:
        """The client port's connections by source (sources.ConnectionCaps), which the gateway
        counts its own into (one per-source limit for both ports); None before `run`."""
        return None if self._server is None else self._server.caps.sources

    def tls_name(self, key: bytes) -> str | None:
        """Who a client port (or gateway) TLS key belongs to: a client admitted now
        (node.app.admitted, read at each handshake and each request) or a member (operators' tools);
        None refuses the connection. A revocation also closes the open connections of its key when
        it takes effect (_block_executed)."""
        genesis = self.node.genesis
        admitted = self.node.app.admitted
        if key in admitted:
            return admitted[key] or "client"
        member = genesis.member_by_key(key)
        return None if member is None else member.name

    # --- ClientHandler ----------------------------------------------------------------------

    def disconnected(self, conn: client_port.ClientConnection) -> None:
        self.ration.forget(conn)
        self.watches.unwatch_connection(conn, set(conn.watched))
        for follow in self._follows.pop(conn.id, {}).values():
            follow.scope.cancel()

    def subscribed(self, conn: client_port.ClientConnection) -> bool:
        return bool(conn.watched) or bool(self._follows.get(conn.id))

    def unwatch(self, conn: client_port.ClientConnection, tx_ids: set[bytes]) -> None:
        self.watches.unwatch_connection(conn, tx_ids)

    async def handle(self, conn: client_port.ClientConnection, request: messages.Request) -> None:
        match request:
            case messages.SubmitRequest():
                await self._submit(conn, request)
            case messages.ReceiptRequest():
                bundles = await self._bundles.first_bundles([request.tx_id])
                conn.reply(request.req_id, bundles.get(request.tx_id))
            case messages.GetRequest():
                try:
                    conn.reply(request.req_id, await self.node.read_value(request.key))
                except ReadRefused as exc:
                    conn.error(request.req_id, f"read refused: {exc}", kind="overloaded")
            case messages.TransferRequest():
                checked = self._maintenance_refusal(request)
                why = (
                    checked
                    if isinstance(checked, str)
                    else await self.node.transfer_leadership(request.target, checked, request.body)
                )
                if why is None:
                    conn.reply(request.req_id, None)  # accepted: the transfer has begun
                else:
                    self.node.metrics.rejected_at_submit["maintenance_refused"] = (
                        self.node.metrics.rejected_at_submit.get("maintenance_refused", 0) + 1
                    )
                    conn.error(
                        request.req_id, f"leadership transfer refused: {why}", kind="bad_request"
                    )
            case messages.BlockRequest():
                await self._block_reply(conn, request.req_id, request.height)
            case messages.StatusRequest():
                conn.reply(request.req_id, self.node.status_json())
            case messages.ClientsRequest():
                conn.reply(request.req_id, self._clients().to_array())
            case messages.WatchRequest():
                await self._watch_ids(conn, request)
            case messages.FollowRequest():
                self._follow(conn, request)
            case messages.CreditRequest():
                follow = self._follows.get(conn.id, {}).get(request.follow_id)
                if follow is None:
                    conn.error(
                        request.req_id,
                        f"no follow {request.follow_id} on this connection",
                        kind="bad_request",
                    )
                    return
                follow.credit = min(limits.FOLLOW_CREDIT_MAX, follow.credit + request.credit)
                follow.wakeup.set()
                conn.reply(request.req_id, None)
            case messages.UnfollowRequest():
                follow = self._follows.get(conn.id, {}).pop(request.follow_id, None)
                if follow is not None:
                    follow.scope.cancel()
                conn.reply(request.req_id, None)
            case _:
                conn.error(request.req_id, "unsupported request", kind="bad_request")

    # --- follow -----------------------------------------------------------------------------

    def _follow(self, conn: client_port.ClientConnection, request: messages.FollowRequest) -> None:
        follows = self._follows.setdefault(conn.id, {})
        if len(follows) >= limits.FOLLOWS_PER_CONNECTION_MAX:
            conn.error(
                request.req_id,
                f"at most {limits.FOLLOWS_PER_CONNECTION_MAX} follows per connection",
                kind="too_many_follows",
            )
            return
        if sum(len(f) for f in self._follows.values()) >= FOLLOWS_MAX and not self._share_follow(
            len(follows)
        ):
            conn.error(
                request.req_id,
                f"at most {FOLLOWS_MAX} follows on this member: try later",
                kind="too_many_follows",
            )
            return
        if request.req_id in follows or self._nursery is None:
            conn.error(
                request.req_id, f"follow {request.req_id} is already running", kind="bad_request"
            )
            return
        follow = _Follow(conn, request.req_id, request.from_height, request.credit)
        follows[request.req_id] = follow
        conn.reply(request.req_id, self.node.store.height)
        self._nursery.start_soon(self._stream, follow)

    def _share_follow(self, mine: int) -> bool:
        """Every follow slot is taken: a connection following less than the fullest one (by
        two or more) takes the fullest one's newest follow, which ends with a reason (max-min
        fair: whoever fills the slots cannot lock others out). False when the asker already
        holds its fair part."""
        fullest = max(self._follows.values(), key=len, default=None)
        if fullest is None or len(fullest) < mine + 2:
            return False
        victim = next(reversed(fullest.values()))
        del fullest[victim.follow_id]
        victim.scope.cancel()
        victim.conn.error(
            victim.follow_id,
            "follow ended: this member shares its follow slots fairly among its clients; "
            "follow again later",
            kind="overloaded",
        )
        return True

    def _block_executed(self, block: Block) -> None:
        """A block is durable (durable()): wake the follows that wait for it; at a
        checkpoint boundary, where client changes take effect, close the TLS connections of
        keys no longer admitted, on every port that pins them (`tls_rechecks`: follow streams,
        waiting gateway requests and all)."""
        if self.tls_rechecks and block.height % self.node.genesis.params.checkpoint_interval == 0:
            for recheck in self.tls_rechecks:
                recheck()
        for follows in self._follows.values():
            for follow in follows.values():
                if follow.next_height == block.height:
                    follow.wakeup.set()

    async def _stream(self, follow: _Follow) -> None:
        """Send the follow's blocks in order while it has credit and room (see the module
        docstring); end it with an error after FOLLOW_PAUSE_MAX_S paused."""
        conn, store = follow.conn, self.node.store
        frame_max = self.node.genesis.params.frame_bytes_max
        paused_since: float | None = None
        why = ""
        try:
            with follow.scope:
                while conn.open:
                    now = trio.current_time()
                    # Over the member-wide budget only the connection with the most unsent
                    # bytes pauses: one slow reader never pauses everyone else's follows.
                    full = conn.queued_bytes > client_port.FOLLOW_QUEUE_BYTES or (
                        self._follow_queued_bytes() > FOLLOW_QUEUE_BYTES_TOTAL
                        and conn is self._heaviest_follower()
                    )
                    if follow.credit <= 0 or full:
                        paused_since = now if paused_since is None else paused_since
                        if now - paused_since > client_port.FOLLOW_PAUSE_MAX_S:
                            why = f"follow ended: paused {client_port.FOLLOW_PAUSE_MAX_S:g} s " + (
                                "(the client reads too slowly)" if full else "without credit"
                            )
                            break
                        await self._sleep(follow, FOLLOW_FULL_POLL_S if full else FOLLOW_POLL_S)
                        continue
                    paused_since = None
                    if follow.next_height > store.height:
                        await self._sleep(follow, FOLLOW_POLL_S)
                        continue
                    frame = self._block_frame(follow.follow_id, follow.next_height)
                    if len(frame) > frame_max:
                        why = f"follow ended: block {follow.next_height} exceeds the frame limit"
                        break
                    if not conn.push(frame):
                        return  # closed (slow consumer): nothing more to say
                    follow.next_height += 1
                    follow.credit -= 1
                    await trio.lowlevel.checkpoint()  # one block per turn: others run between
        finally:
            follows = self._follows.get(conn.id, {})
            if follows.get(follow.follow_id) is follow:
                del follows[follow.follow_id]
        if why:
            conn.error(follow.follow_id, why, kind="overloaded")

    def _heaviest_follower(self) -> client_port.ClientConnection | None:
        conns = [f.conn for fs in self._follows.values() for f in fs.values()]
        return max(conns, key=lambda c: c.queued_bytes, default=None)

    def _follow_queued_bytes(self) -> int:
        """Unsent bytes of the connections that follow (at most FOLLOWS_MAX of them)."""
        conns = {id(f.conn): f.conn for fs in self._follows.values() for f in fs.values()}
        return sum(c.queued_bytes for c in conns.values())

    @staticmethod
    async def _sleep(follow: _Follow, timeout_s: float) -> None:
        follow.wakeup = trio.Event()
        with trio.move_on_after(timeout_s):
            await follow.wakeup.wait()

    def _block_frame(self, follow_id: int, height: int) -> bytes:
        """messages.encode_followed_block of a stored block, from its stored bytes (canonical
        msgpack, so splicing them is the same frame) without decoding them."""
        raw = self.node.store.raw_block(height)
        assert raw is not None, "heights up to store.height are stored"
        _, header, receipts = raw
        vote = self.node.own_block_signature(height)
        return messages.encode_followed_block_raw(follow_id, header, receipts, vote)

    def _maintenance_refusal(self, request: messages.TransferRequest) -> int | str:
        """The term a maintenance request is signed for, or why it is refused: not signed by
        a member's key (a client key cannot move leadership), for another target, or addressed
        to another member. The term and replays are checked where the term lives, in the
        event loop with the core (raft_mode.RaftMode.transfer)."""
        node = self.node
        try:
            target, term, key, addressed = messages.decode_transfer_body(request.body)
        except WireFormatError as exc:
            return f"malformed request ({exc})"
        if target != request.target:
            return "the signed target differs from the request's"
        if addressed != node.me:
            return f"signed for member {addressed}, not this one (sign it for the leader asked)"
        if node.genesis.member_by_key(key) is None:
            return (
                "signed by a key that is not a member's: only a member's key may move "
                "leadership (consortium leader transfer --home MEMBER_HOME)"
            )
        if not node.verifier.verify(
            key, Domain.MAINTENANCE, node.chain_id, request.body, request.signature
        ):
            return "bad signature"
        return term

    async def _watch_ids(
        self, conn: client_port.ClientConnection, request: messages.WatchRequest
    ) -> None:
        """Watch ids by id: each one not in the ledger is watched (watches.watch_id: forgotten
        after ID_WATCH_AGE_S, within its own share of the node-wide bound); the committed ones are
        answered with their first receipts, at most COMMITTED_LOOKUPS_PER_REQUEST_MAX (the
        rest: an error saying to ask again)."""
        ids = list(dict.fromkeys(request.tx_ids))  # a request repeating an id costs one
        known = self.node.store.known_tx_ids(ids)
        # Watch before looking receipts up: the lookups yield, and an id that commits then
        # must find its watch in place.
        full = False
        for tx_id in ids:
            if tx_id not in known and not full:
                full = not self.watches.watch_id(tx_id, conn, ID_WATCHES_PER_CONNECTION_MAX)
        committed = [t for t in ids if t in known]
        answered = committed[:COMMITTED_LOOKUPS_PER_REQUEST_MAX]
        for bundle in (await self._bundles.first_bundles(answered)).values():
            conn.push_receipt(bundle)  # already committed: its first receipt
        if full:
            conn.error(request.req_id, "too many pending receipts watched", kind="overloaded")
        elif len(committed) > len(answered):
            conn.error(
                request.req_id,
                f"{len(committed) - len(answered)} committed ids not answered (at most "
                f"{COMMITTED_LOOKUPS_PER_REQUEST_MAX} per request): ask again",
                kind="overloaded",
            )
        else:
            conn.reply(request.req_id, None)

    def _watch(
        self, conn: client_port.ClientConnection, tx_id: bytes, expiry_ms: int | None = None
    ) -> bool:
        """Push `tx_id`'s receipt to `conn` when it executes. The node forgets the watch when
        it pushes the receipt, or once the transaction has expired (it can never execute)."""
        if len(conn.watched) >= WATCHES_PER_CONNECTION_MAX:
            return False
        return self.watches.watch(tx_id, conn, expiry_ms)

    async def _submit(
        self, conn: client_port.ClientConnection, request: messages.SubmitRequest
    ) -> None:
        node = self.node
        params = node.genesis.params
        # A connection over its budget of failed signature checks waits here, before any of
        # its request is decoded (rationing.py).
        await self.ration.admit(conn)
        if not conn.open:
            return
        # Not our wall clock alone: a member whose clock is far ahead refused every honest
        # transaction as expired (Node.expiry_now_ms).
        now_ms = node.expiry_now_ms()
        verdicts: list[list[Any]] = []
        candidates: list[tuple[int, Transaction]] = []
        decoded: list[Transaction | str] = []
        for raw in request.txs:
            try:
                decoded.append(Transaction.from_array(raw, params))
            except WireFormatError as exc:
                decoded.append(str(exc))
        # One indexed query for the whole request: which ids are in the ledger already. Their
        # receipts are looked up in one batch, each block read once (bundles.py), yielding
        # between blocks; a request repeating an id costs one lookup.
        known = node.store.known_tx_ids([t.id for t in decoded if isinstance(t, Transaction)])
        firsts = await self._bundles.first_bundles(
            list(
                dict.fromkeys(t.id for t in decoded if isinstance(t, Transaction) and t.id in known)
            )[:COMMITTED_LOOKUPS_PER_REQUEST_MAX]
        )
        admitted = node.app.admitted
        first_copy: dict[bytes, int] = {}  # id -> index of its first verdict in this request
        accepted_detail = self._leader_hint()
        copies: list[tuple[int, int]] = []
        for tx in decoded:
            if isinstance(tx, str):
                verdicts.append([b"", "rejected", f"malformed: {tx}"])
                continue
            verdicts.append([tx.id, "accepted", accepted_detail])
            # An id already committed is answered with its FIRST receipt, before any other
            # check: it may have expired since, or be resubmitted with a mangled signature.
            if tx.id in known:
                first = firsts.get(tx.id)
                verdicts[-1] = (
                    [tx.id, "committed", first]
                    if first is not None
                    else [tx.id, "rejected", "overloaded: too many committed ids in one request"]
                )
                continue
            if tx.id in first_copy:
                # A copy within this request: one check and one proposal is enough.
                copies.append((len(verdicts) - 1, first_copy[tx.id]))
                continue
            first_copy[tx.id] = len(verdicts) - 1
            reason = ""
            if tx.chain_id != node.chain_id:
                reason = "wrong_chain"
            elif tx.client_key not in admitted or isinstance(tx.ops[0], ConfigChange):
                reason = self._admission_check(tx)
            elif tx.expiry_ms < now_ms:
                reason = "expired"
            if reason:
                verdicts[-1] = [tx.id, "rejected", reason]
                continue
            candidates.append((len(verdicts) - 1, tx))
        if candidates:
            checked = await self.ration.verify(conn, node.tx_cache, [tx for _, tx in candidates])
            if checked is None:
                return  # closed for bad signatures meanwhile (told why), or gone
            oks = checked
            # Only now, for signed client changes, the approvals (off the event loop).
            changes = [
                (i, tx)
                for (i, tx), ok in zip(candidates, oks, strict=True)
                if ok and isinstance(tx.ops[0], ConfigChange)
            ]
            refused: dict[int, str] = {}
            if changes:
                whys = await self._change_refusals(node.tx_cache, [tx for _, tx in changes])
                refused = {i: why for (i, _), why in zip(changes, whys, strict=True) if why}
            # Again one query: which committed while we verified.
            known = node.store.known_tx_ids([tx.id for _, tx in candidates])
            accepted: list[Transaction] = []
            committed = await self._bundles.first_bundles(
                [
                    tx.id
                    for (_, tx), ok in zip(candidates, oks, strict=True)
                    if ok and tx.id in known
                ]
            )  # few: the ids that committed while we verified
            for (i, tx), ok in zip(candidates, oks, strict=True):
                if not ok:
                    verdicts[i] = [tx.id, "rejected", "bad_signature"]
                elif i in refused:
                    verdicts[i] = [tx.id, "rejected", refused[i]]
                elif (first := committed.get(tx.id)) is not None:
                    # It committed while we verified: answer with its receipt, do not watch.
                    verdicts[i] = [tx.id, "committed", first]
                elif not self._watch(conn, tx.id, tx.expiry_ms):
                    verdicts[i] = [tx.id, "rejected", "overloaded: too many pending receipts"]
                else:
                    accepted.append(tx)
            if accepted:
                await node.propose(accepted)
        for i, first_i in copies:
            verdicts[i] = verdicts[first_i]
        node.metrics.submitted += len(verdicts)
        for v in verdicts:
            if v[1] == "rejected":
                key = str(v[2]).split(":")[0]
                node.metrics.rejected_at_submit[key] = (
                    node.metrics.rejected_at_submit.get(key, 0) + 1
                )
        conn.reply(request.req_id, verdicts)

    def _leader_hint(self) -> str:
        """raft: "leader:N" on what a follower accepts and forwards (N, the leader's index in
        genesis), so the client submits straight to the leader next time; "" otherwise."""
        leader = self.node.leader_hint()
        return "" if leader is None else f"{messages.LEADER_HINT}{leader}"

    def _admission_check(self, tx: Transaction) -> str:
        """The rare path of the client check: a key not admitted now, or a client change (whose
        submitter must be a client or a member; its key and approvals are checked after its
        signature, by _change_refusals)."""
        app = self.node.app
        op = tx.ops[0]
        if isinstance(op, ConfigChange):
            if tx.client_key not in app.admitted and tx.client_key not in app.member_keys:
                return "unknown_client"
            return ""
        pending = app.pending_admission(tx.client_key)
        if pending is not None:
            return f"unknown_client: admitted at height {pending.effective_height}"
        return "unknown_client"

    async def _change_refusals(self, cache: TxSignatureCache, txs: list[Transaction]) -> list[str]:
        """Why each signed client change would be refused ("" if not): its key, then its
        approvals (Q signature checks each), on the signature worker threads. A change seen
        twice in one request is checked once."""
        app = self.node.app
        member_keys, quorum = app.member_keys, app.quorum

        def check() -> list[str]:
            seen: dict[tuple[bytes, tuple[tuple[bytes, bytes], ...]], str] = {}
            out: list[str] = []
            for tx in txs:
                op = tx.ops[0]
                assert isinstance(op, ConfigChange)
                key = (op.change.body, op.approvals)
                if key not in seen:
                    refusal = check_client_key(
                        op.change.client_key, member_keys
                    ) or check_approvals(op.change, op.approvals, member_keys, quorum)
                    seen[key] = "" if refusal is None else f"{refusal.reason}: {refusal.detail}"
                out.append(seen[key])
            return out

        return await cache.run_sync(check)

    def _clients(self) -> messages.ClientList:
        app = self.node.app
        listed = sorted(app.admitted.items())[: limits.CLIENTS_LISTED_MAX]
        return messages.ClientList(
            self.node.store.height, tuple(listed), tuple(app.pending), len(app.admitted)
        )

    async def _block_reply(
        self, conn: client_port.ClientConnection, req_id: int, height: int
    ) -> None:
        """Answer a `block` request: [header, txs, receipts, certificate, block signatures],
        or None for a height not stored (see the module docstring for its costs)."""
        encoded = self._blocks_encoded.get(height)
        if encoded is None:
            if height > self.node.store.height or height < 0:
                conn.reply(req_id, None)
                return
            read = await trio.to_thread.run_sync(
                self._encode_block, height, limiter=self._block_threads
            )
            if read is None:
                conn.reply(req_id, None)
                return
            encoded = read
            self._blocks_encoded[height] = encoded
            while len(self._blocks_encoded) > BLOCK_REPLIES_CACHED or (
                len(self._blocks_encoded) > 1
                and sum(map(len, self._blocks_encoded.values())) > BLOCK_REPLY_CACHE_BYTES
            ):
                self._blocks_encoded.popitem(last=False)
        else:
            self._blocks_encoded.move_to_end(height)
        if not conn.open:
            return  # gone while we read: nothing to encode a reply for
        signatures = [v.to_array() for v in self.node.store.block_signatures(height)]
        # pack([req_id, "ok", [header, txs, receipts, certificate, signatures]]), spliced.
        conn.push(b"".join((b"\x93", pack(req_id), pack("ok"), b"\x95", encoded, pack(signatures))))

    def _encode_block(self, height: int) -> bytes | None:
        """The first four parts of a `block` answer, each encoded (run on a worker thread);
        None when `height` is not stored."""
        stored = self.node.store.read_block(height)
        if stored is None:
            return None
        return b"".join(
            (
                pack(stored.block.header.to_array()),
                pack([t.to_array() for t in stored.block.txs]),
                pack([r.to_array() for r in stored.block.receipts]),
                pack(stored.certificate),
            )
        )
