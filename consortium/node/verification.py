"""Client-signature verification off the event loop, with a bounded cache.

Every PBFT replica verifies every client signature (clients submit to all members, so a backup
has usually checked a transaction before the PRE-PREPARE that carries it arrives). libsodium
releases the GIL, so batches are verified on worker threads. The cache is keyed by id AND
signature: the id hashes only the unsigned body, so a copy of a valid transaction with a forged
signature has the same id and must not ride on the valid copy's result.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TypeVar

import trio

from consortium.crypto.signing import Domain, Signer, Verifier
from consortium.ledger.tx import Transaction
from consortium.node.metrics import VERIFY_S_BUCKETS, Histogram

T = TypeVar("T")

INLINE_MAX = 2  # verify_all checks this many cache misses on the event loop, more on threads
VERIFIED_AHEAD_MAX = 8192  # signatures checked ahead of the core and not yet asked again


class TxSignatureCache:
    def __init__(self, verifier: Verifier, *, entries_max: int = 65_536, threads: int = 2) -> None:
        self._verifier = verifier
        self._entries_max = entries_max
        self._results: OrderedDict[bytes, bool] = OrderedDict()
        self._limiter = trio.CapacityLimiter(threads)
        self._threads = threads
        self.verified = 0  # signatures actually checked (cache misses)
        self.hits = 0
        self.trusted = 0  # taken as verified from a trusted member (raft forwarding)
        self.verify_s = Histogram(VERIFY_S_BUCKETS)  # time of each check (cache misses)

    @property
    def threads(self) -> int:
        """Worker threads checking signatures (rationing.py gives its gate as many slots)."""
        return self._threads

    @staticmethod
    def _key(tx: Transaction) -> bytes:
        return tx.id + tx.signature

    def _remember(self, key: bytes, ok: bool) -> None:
        self._results[key] = ok
        if len(self._results) > self._entries_max:
            self._results.popitem(last=False)

    def check(self, tx: Transaction) -> bool:
        """Synchronous check for the core's tx_ok: the cache, else verify inline."""
        key = self._key(tx)
        ok = self._results.get(key)
        if ok is not None:
            self.hits += 1
            return ok
        started = time.perf_counter()
        ok = tx.verify_signature(self._verifier)
        self.verify_s.observe(time.perf_counter() - started)
        self.verified += 1
        self._remember(key, ok)
        return ok

    def trust(self, txs: Sequence[Transaction]) -> None:
        """Record `txs` as verified without checking them: raft mode, where the member that
        took them from a client checked each signature before forwarding it, and members trust
        each other (the offline audit still checks every client signature in the ledger)."""
        for tx in txs:
            key = self._key(tx)
            if key not in self._results:
                self._remember(key, True)
                self.trusted += 1

    async def verify_all(self, txs: Sequence[Transaction]) -> list[bool]:
        """Results for `txs`, verifying cache misses on worker threads in parallel chunks."""
        results: list[bool | None] = []
        missing: list[int] = []
        for i, tx in enumerate(txs):
            ok = self._results.get(self._key(tx))
            if ok is None:
                missing.append(i)
            else:
                self.hits += 1
            results.append(ok)
        if 0 < len(missing) <= INLINE_MAX:
            # One or two: verifying here costs less than the hand-off to a worker thread and
            # back (and an idle network's latency is made of such hand-offs).
            for i in missing:
                ok = self.check(txs[i])
                results[i] = ok
            missing = []
        if missing:
            verifier = self._verifier

            def run(chunk: list[int]) -> list[tuple[bool, float]]:
                # Timed on the worker thread; observed back on the event loop (the histogram
                # is not shared between threads).
                timed: list[tuple[bool, float]] = []
                for i in chunk:
                    started = time.perf_counter()
                    ok = txs[i].verify_signature(verifier)
                    timed.append((ok, time.perf_counter() - started))
                return timed

            if len(missing) < 8:
                chunks = [missing]
            else:
                step = (len(missing) + self._threads - 1) // self._threads
                chunks = [missing[i : i + step] for i in range(0, len(missing), step)]
            outcomes: list[list[tuple[bool, float]]] = [[] for _ in chunks]

            async def worker(k: int) -> None:
                outcomes[k] = await trio.to_thread.run_sync(run, chunks[k], limiter=self._limiter)

            async with trio.open_nursery() as nursery:
                for k in range(len(chunks)):
                    nursery.start_soon(worker, k)
            for chunk, oks in zip(chunks, outcomes, strict=True):
                for i, (ok, seconds) in zip(chunk, oks, strict=True):
                    self.verify_s.observe(seconds)
                    results[i] = ok
                    self._remember(self._key(txs[i]), ok)
            self.verified += len(missing)
        return [bool(r) for r in results]

    async def run_sync(self, fn: Callable[[], T]) -> T:
        """Run `fn` (other signature checks, e.g. a client change's approvals) on the same
        worker threads, under the same limit, so it never holds up the event loop."""
        return await trio.to_thread.run_sync(fn, limiter=self._limiter)


class CountingSigner:
    """A Signer that counts what it signs (bench figures: signatures per transaction)."""

    def __init__(self, inner: Signer) -> None:
        self._inner = inner
        self.count = 0

    @property
    def public_key(self) -> bytes:
        return self._inner.public_key

    def sign(self, domain: Domain, chain_id: bytes, body: bytes) -> bytes:
        self.count += 1
        return self._inner.sign(domain, chain_id, body)


class CountingVerifier:
    """A Verifier that counts checks made on the core's thread (protocol messages,
    handshakes); client signatures are counted by TxSignatureCache, on worker threads.

    verify_ahead() is for a check the shell makes before the core makes the same one (the
    pump verifies a PRE-PREPARE's signature before spending client-signature checks on its
    batch; the core then verifies it as it verifies every message): a valid signature checked
    ahead answers the core's check of the very same bytes once, from memory, instead of a
    second Ed25519 verification. Only a success is remembered, keyed by everything verified
    (key, domain, chain, body, signature), and at most VERIFIED_AHEAD_MAX of them: one the
    core never asks about (it dropped the message first) is forgotten oldest first."""

    def __init__(self, inner: Verifier) -> None:
        self._inner = inner
        self.count = 0
        self.verify_s = Histogram(VERIFY_S_BUCKETS)
        self._ahead: OrderedDict[tuple[bytes, Domain, bytes, bytes, bytes], None] = OrderedDict()
        self.reused = 0  # checks answered from verify_ahead's memory

    def verify(
        self, public_key: bytes, domain: Domain, chain_id: bytes, body: bytes, signature: bytes
    ) -> bool:
        if self._ahead:
            key = (public_key, domain, chain_id, body, signature)
            if key in self._ahead:
                del self._ahead[key]
                self.reused += 1
                return True
        self.count += 1
        started = time.perf_counter()
        ok = self._inner.verify(public_key, domain, chain_id, body, signature)
        self.verify_s.observe(time.perf_counter() - started)
        return ok

    def verify_ahead(
        self, public_key: bytes, domain: Domain, chain_id: bytes, body: bytes, signature: bytes
    ) -> bool:
        """verify(), and on success let the next verify() of exactly these bytes reuse it."""
        ok = self.verify(public_key, domain, chain_id, body, signature)
        if ok:
            self._ahead[(public_key, domain, chain_id, body, signature)] = None
            while len(self._ahead) > VERIFIED_AHEAD_MAX:
                self._ahead.popitem(last=False)
        return ok


# The kinds of both protocols (pbft/messages.py, crashft/messages.py). The kind is read from
# the frame before it is decoded, and each kind is a metric label kept for the process' life:
# anything else a peer sends is counted as "other", so a Byzantine member cannot add labels.
PEER_MESSAGE_KINDS = frozenset(
    {
        # pbft
        "preprepare",
        "prepare",
        "commit",
        "checkpoint",
        "viewchange",
        "newview",
        "batchreq",
        "batch",
        "fetch",
        "blocks",
        "viewquery",
        "viewreport",
        # raft
        "vote",
        "vote_reply",
        "append",
        "append_reply",
        "heartbeat",
        "heartbeat_reply",
        "snapshot",
        "timeout_now",
        "forward",
        "read",
        "read_reply",
        "term_query",
        "term_report",
    }
)


def message_kind(frame: bytes) -> str:
    """The kind of a peer frame, cheaply (no full decode): a raft frame is an array whose
    first element is the kind; a pbft frame is [body, signature, ...] whose body is such an
    array. "other" for a kind neither protocol has (PEER_MESSAGE_KINDS), "unknown" for a frame
    of neither shape."""
    kind = _frame_kind(frame)
    return kind if kind in PEER_MESSAGE_KINDS or kind == "unknown" else "other"


def _frame_kind(frame: bytes) -> str:
    i = 0
    for _ in range(2):
        if len(frame) < i + 2:
            return "unknown"
        head = frame[i]
        if 0x90 <= head <= 0x9F:
            i += 1
        elif head == 0xDC:
            i += 3
        else:
            return "unknown"
        if i >= len(frame):
            return "unknown"
        tag = frame[i]
        if 0xA0 <= tag <= 0xBF:
            n = tag & 0x1F
            return frame[i + 1 : i + 1 + n].decode("ascii", "replace")
        if tag == 0xC4 and i + 1 < len(frame):
            i += 2  # bin8 header: the signed body follows
        elif tag == 0xC5 and i + 2 < len(frame):
            i += 3
        else:
            return "unknown"
    return "unknown"
