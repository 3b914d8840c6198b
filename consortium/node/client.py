"""The client library (Trio).

    async with ConsortiumClient(genesis, keys) as client:
        tx = client.make_tx([Put(b"greeting", b"hello")])
        [outcome] = await client.submit_and_wait([tx], timeout_s=10)
        outcome.status      # "committed" | "rejected" | "pending"

How it decides, in pbft mode (n = 3f+1, up to f members may lie):
- submit sends the transactions to EVERY member, so a silent or censoring primary cannot hide
  them from the others, and returns the ids at once (ids are chosen by the client: a
  resubmission is always safe, it executes at most once).
- A transaction is "committed" once f+1 distinct members have sent receipt bundles that verify
  (Merkle proof of the receipt in the block, the member's signature over the block hash) and
  agree on the receipt and the block hash: at least one of them is honest.
- "rejected" needs f+1 members agreeing on the same rejection reason at submit.
- A timeout ends in "pending", never an ambiguous failure: the transaction may still commit.
  While waiting, transactions with no news for `retransmit_s` are resubmitted to all members.
- Reads on the fast path (`get`) need a quorum of matching signed replies.
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import trio

from consortium.crypto.codec import WireFormatError, as_int, as_list, pack, unpack
from consortium.crypto.keys import KeyPair
from consortium.crypto.merkle import verify_inclusion
from consortium.crypto.signing import Ed25519Verifier
from consortium.ledger.block import Receipt
from consortium.ledger.genesis import Genesis
from consortium.ledger.tx import Op, Transaction
from consortium.node.api import Bundle, ReadReply
from consortium.node.framing import FrameError, FrameReader, encode_frame

OutcomeStatus = Literal["committed", "rejected", "pending"]
BACKOFF_MAX_S = 1.0
SUBMITS_TRACKED_MAX = 10_000
FINAL_REJECTIONS = frozenset({"bad_signature", "wrong_chain", "unknown_client"})


class ClientError(RuntimeError):
    """A request that could not be answered as asked (no quorum, member unreachable)."""


@dataclass(frozen=True, slots=True)
class TxOutcome:
    tx_id: bytes
    status: OutcomeStatus
    receipt: Receipt | None = None
    height: int | None = None
    block_hash: bytes | None = None
    reason: str = ""
    confirmations: int = 0


@dataclass
class _TxState:
    tx: Transaction
    # (receipt bytes, block hash) -> members that vouched for it with a valid bundle
    confirmations: dict[tuple[bytes, bytes], dict[int, Bundle]] = field(default_factory=dict)
    rejections: dict[str, set[int]] = field(default_factory=dict)
    last_news: float = 0.0


@dataclass
class _Member:
    index: int
    address: tuple[str, int]
    stream: trio.SocketStream | None = None
    lock: trio.Lock = field(default_factory=trio.Lock)
    connected: trio.Event = field(default_factory=trio.Event)
    last_error: str = ""


class ConsortiumClient:
    def __init__(
        self,
        genesis: Genesis,
        keys: KeyPair | None = None,
        *,
        addresses: dict[int, tuple[str, int]] | None = None,
        frame_bytes_max: int | None = None,
        retransmit_s: float = 1.0,
        connect_timeout_s: float = 1.0,
    ) -> None:
        self.genesis = genesis
        self.keys = keys
        self.chain_id = genesis.chain_id
        self.verifier = Ed25519Verifier()
        self.confirmations_needed = genesis.f + 1 if genesis.mode == "pbft" else 1
        self.retransmit_s = retransmit_s
        self.connect_timeout_s = connect_timeout_s
        self._frame_max = frame_bytes_max or genesis.params.frame_bytes_max
        if addresses is None:
            addresses = {}
            for m in genesis.members:
                host, _, port = m.client_address.rpartition(":")
                addresses[m.index] = (host.strip("[]"), int(port))
        self._members = {i: _Member(i, a) for i, a in addresses.items()}
        self._req_ids = itertools.count(1)
        self._replies: dict[int, tuple[trio.Event, list[Any]]] = {}
        self._submit_reqs: dict[int, int] = {}
        self._txs: dict[bytes, _TxState] = {}
        self._changed = trio.Event()
        self._verified_blocks: dict[tuple[int, bytes, bytes], bool] = {}
        self._nursery: trio.Nursery | None = None
        self._cm: Any = None

    # --- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> ConsortiumClient:
        self._cm = trio.open_nursery()
        self._nursery = await self._cm.__aenter__()
        for member in self._members.values():
            self._nursery.start_soon(self._member_loop, member)
        # Give every member a moment to accept us, so the first submit reaches all of them;
        # members that are down are simply not waited for beyond this.
        with trio.move_on_after(self.connect_timeout_s):
            for member in self._members.values():
                await member.connected.wait()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
        result: bool | None = await self._cm.__aexit__(exc_type, exc, tb)
        return result

    async def _member_loop(self, member: _Member) -> None:
        backoff = 0.05
        while True:
            try:
                stream = await trio.open_tcp_stream(*member.address)
            except OSError as exc:
                member.last_error = str(exc)
                await trio.sleep(backoff)
                backoff = min(BACKOFF_MAX_S, backoff * 2)
                continue
            backoff = 0.05
            member.stream = stream
            member.connected.set()
            try:
                reader = FrameReader(stream, self._frame_max)
                while True:
                    frame = await reader.read()
                    if frame is None:
                        break
                    self._dispatch(member.index, frame)
            except (FrameError, OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                member.last_error = str(exc)
            finally:
                member.stream = None
                member.connected = trio.Event()
                await trio.aclose_forcefully(stream)

    async def _send(self, member: _Member, frame: bytes) -> bool:
        stream = member.stream
        if stream is None:
            return False
        try:
            async with member.lock:
                await stream.send_all(encode_frame(frame))
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            member.last_error = str(exc)
            return False
        return True

    # --- incoming ---------------------------------------------------------------------------

    def _dispatch(self, member: int, frame: bytes) -> None:
        try:
            msg = as_list(unpack(frame, max_len=self._frame_max), 3, "reply")
            req_id = as_int(msg[0], "req_id")
        except WireFormatError:
            return  # a member sending garbage gets no say
        if req_id == 0:
            if msg[1] == "receipt":
                self._on_bundle(member, msg[2])
            return
        outstanding = self._submit_reqs.get(req_id)
        if outstanding is not None:
            if msg[1] == "ok":
                self._on_submit_reply(member, msg[2])
            if outstanding <= 1:
                del self._submit_reqs[req_id]
            else:
                self._submit_reqs[req_id] = outstanding - 1
            return
        waiter = self._replies.get(req_id)
        if waiter is None:
            return
        event, slot = waiter
        slot.append((member, msg[1], msg[2]))
        event.set()

    def _on_bundle(self, member: int, raw: Any) -> None:
        try:
            bundle = Bundle.from_array(raw)
        except WireFormatError:
            return
        state = self._txs.get(bundle.receipt.tx_id)
        if state is None or bundle.signer() != member:
            return
        if not self._bundle_ok(bundle):
            return
        key = (bundle.receipt.encode(), bundle.header.hash)
        state.confirmations.setdefault(key, {})[member] = bundle
        state.last_news = time.monotonic()
        self._changed.set()

    def _bundle_ok(self, bundle: Bundle) -> bool:
        # One signature check per (member, block): every receipt of a block shares it.
        signer = bundle.signer()
        key = (signer if signer is not None else -1, bundle.header.hash, bundle.signature.signature)
        cached = self._verified_blocks.get(key)
        if cached:
            return (
                verify_inclusion(
                    bundle.receipt.encode(),
                    bundle.receipt.index,
                    bundle.tree_size,
                    bundle.proof,
                    bundle.header.receipts_root,
                )
                and bundle.receipt.height == bundle.header.height
            )
        ok = bundle.verify(self.genesis, self.verifier) is None
        if ok:
            if len(self._verified_blocks) > 100_000:
                self._verified_blocks.clear()
            self._verified_blocks[key] = True
        return ok

    def _on_submit_reply(self, member: int, verdicts: Any) -> None:
        if not isinstance(verdicts, list):
            return
        for v in verdicts:
            if not isinstance(v, list) or len(v) != 3 or not isinstance(v[0], bytes):
                continue
            state = self._txs.get(v[0])
            if state is None:
                continue
            if v[1] == "rejected" and isinstance(v[2], str):
                # Only reasons every member decides alike from the bytes are final; "expired"
                # (each member's clock) or "overloaded" may differ, and the tx may still commit.
                if v[2] in FINAL_REJECTIONS or v[2].startswith("malformed"):
                    state.rejections.setdefault(v[2], set()).add(member)
                state.last_news = time.monotonic()
            elif v[1] == "committed":
                self._on_bundle(member, v[2])
            elif v[1] == "accepted":
                state.last_news = time.monotonic()
        self._changed.set()

    # --- requests ---------------------------------------------------------------------------

    async def _request(self, member: int, method: str, *args: Any, timeout_s: float) -> Any:
        m = self._members[member]
        req_id = next(self._req_ids)
        event = trio.Event()
        slot: list[Any] = []
        self._replies[req_id] = (event, slot)
        try:
            with trio.fail_after(timeout_s):
                while m.stream is None:
                    await m.connected.wait()
                if not await self._send(m, pack([method, req_id, *args])):
                    raise ClientError(f"member {member} unreachable: {m.last_error}")
                await event.wait()
        except trio.TooSlowError:
            raise ClientError(
                f"member {self.genesis.members[member].name} did not answer within {timeout_s} s"
                + (f" ({m.last_error})" if m.last_error else "")
            ) from None
        finally:
            del self._replies[req_id]
        _, kind, payload = slot[0]
        if kind != "ok":
            raise ClientError(f"member {member}: {payload}")
        return payload

    def make_tx(
        self, ops: Sequence[Op], *, expiry_s: float = 60.0, nonce: bytes | None = None
    ) -> Transaction:
        if self.keys is None:
            raise ClientError("this client has no key; give keys= to sign transactions")
        expiry_ms = int((time.time() + expiry_s) * 1000)
        return Transaction.create(
            self.keys, self.chain_id, nonce or secrets.token_bytes(16), expiry_ms, list(ops)
        )

    async def submit(self, txs: Sequence[Transaction]) -> list[bytes]:
        """Send to every connected member; returns the ids at once."""
        now = time.monotonic()
        for tx in txs:
            state = self._txs.setdefault(tx.id, _TxState(tx))
            state.last_news = now
        await self._broadcast_submit(list(txs))
        return [tx.id for tx in txs]

    async def _broadcast_submit(self, txs: list[Transaction]) -> None:
        req_id = next(self._req_ids)
        self._submit_reqs[req_id] = len(self._members)  # replies still expected
        while len(self._submit_reqs) > SUBMITS_TRACKED_MAX:
            del self._submit_reqs[next(iter(self._submit_reqs))]
        frame = pack(["submit", req_id, [t.to_array() for t in txs]])
        async with trio.open_nursery() as nursery:
            for m in self._members.values():
                nursery.start_soon(self._send, m, frame)

    def outcome(self, tx_id: bytes) -> TxOutcome:
        state = self._txs.get(tx_id)
        if state is None:
            return TxOutcome(tx_id, "pending", reason="unknown to this client")
        best = 0
        for (_receipt, block_hash), members in state.confirmations.items():
            best = max(best, len(members))
            if len(members) >= self.confirmations_needed:
                bundle = next(iter(members.values()))
                return TxOutcome(
                    tx_id,
                    "committed",
                    bundle.receipt,
                    bundle.header.height,
                    block_hash,
                    bundle.receipt.reason,
                    len(members),
                )
        for reason, rejecting in sorted(state.rejections.items()):
            if len(rejecting) >= self.confirmations_needed:
                return TxOutcome(tx_id, "rejected", reason=reason, confirmations=len(rejecting))
        return TxOutcome(
            tx_id,
            "pending",
            reason=f"{best} of {self.confirmations_needed} confirmations",
            confirmations=best,
        )

    async def wait(self, tx_ids: Sequence[bytes], timeout_s: float) -> list[TxOutcome]:
        deadline = trio.current_time() + timeout_s
        while True:
            outcomes = [self.outcome(t) for t in tx_ids]
            pending = [o.tx_id for o in outcomes if o.status == "pending"]
            if not pending or trio.current_time() >= deadline:
                for o in outcomes:
                    if o.status != "pending":
                        self._txs.pop(o.tx_id, None)
                return outcomes
            now = time.monotonic()
            stale = [
                self._txs[t].tx
                for t in pending
                if t in self._txs and now - self._txs[t].last_news >= self.retransmit_s
            ]
            if stale:
                for t in stale:
                    self._txs[t.id].last_news = now
                await self._broadcast_submit(stale)
            self._changed = trio.Event()
            with trio.move_on_at(min(deadline, trio.current_time() + self.retransmit_s / 2)):
                await self._changed.wait()

    async def submit_and_wait(
        self, txs: Sequence[Transaction], timeout_s: float
    ) -> list[TxOutcome]:
        ids = await self.submit(txs)
        return await self.wait(ids, timeout_s)

    async def get(self, key: bytes, timeout_s: float = 5.0) -> bytes | None:
        """Fast-path read: a quorum of members' signed replies agreeing on the value."""
        replies: dict[bytes | None, set[int]] = {}
        done = trio.Event()
        needed = self.genesis.quorum if self.genesis.mode == "pbft" else 1

        async def ask(i: int) -> None:
            try:
                payload = await self._request(i, "get", key, timeout_s=timeout_s)
                reply = ReadReply.from_array(payload)
            except (ClientError, WireFormatError):
                return
            if (
                reply.signer != i
                or reply.key != key
                or not reply.verify(self.genesis, self.verifier)
            ):
                return
            replies.setdefault(reply.value, set()).add(i)
            if len(replies[reply.value]) >= needed:
                done.set()

        with trio.move_on_after(timeout_s):
            async with trio.open_nursery() as nursery:
                for i in self._members:
                    nursery.start_soon(ask, i)
                await done.wait()
                nursery.cancel_scope.cancel()
        for value, members in replies.items():
            if len(members) >= needed:
                return value
        raise ClientError(
            f"no {needed} members agreed on the value of {key!r} within {timeout_s} s "
            f"(answers: {sorted((len(m) for m in replies.values()), reverse=True)}); "
            "use an ordered read (tx submit get KEY) when the key is changing"
        )

    async def status(self, member: int, timeout_s: float = 2.0) -> dict[str, Any]:
        payload = await self._request(member, "status", timeout_s=timeout_s)
        doc = json.loads(payload)
        assert isinstance(doc, dict)
        return doc

    async def block(self, member: int, height: int, timeout_s: float = 5.0) -> Any:
        return await self._request(member, "block", height, timeout_s=timeout_s)

    async def receipt(self, member: int, tx_id: bytes, timeout_s: float = 5.0) -> Bundle | None:
        payload = await self._request(member, "receipt", tx_id, timeout_s=timeout_s)
        return None if payload is None else Bundle.from_array(payload)
