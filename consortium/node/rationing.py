"""Rationed client-signature verification: a flood of badly signed transactions gets a bounded
share of the verification threads and of the event loop, and honest clients keep theirs.

Checking a signature is the one thing a stranger with no key can make a member do at will (a
submit of forged transactions costs the sender nothing and the member an Ed25519 check each).
Three rules, all per connection first, because clients behind one address (one NAT, or every
client of a test on 127.0.0.1) share it with whoever attacks from there:

- **A budget of failed checks per connection.** Each connection may fail BAD_SIGNATURES_BURST
  checks, then BAD_SIGNATURES_PER_S a second: beyond that its next request waits (the
  connection is slowed, and since it has one request in progress, it waits in TCP). A
  connection with BAD_SIGNATURES_CLOSE failed checks and fewer valid ones is told why in one
  frame and closed. A connection whose checks all pass never waits here.
- **A budget per source address, and a penalty.** Failed checks of all connections from one
  address also draw on SOURCE_BAD_SIGNATURES_PER_S; a connection with failures waits for that
  too, so many connections from one address fail no faster than one. When a connection is
  closed for bad signatures its address is penalised for SOURCE_PENALTY_S: a new connection
  from it starts as failing (last in line, drawing on the address' budget) until its own valid
  signatures prove it, so reconnecting does not reset the budget. Its first request is not
  held for the address' budget, though: its first SUSPECT_FIRST_CHUNK signatures are checked
  at once, at the gate in the failing rank, so an honest client from the same address (one
  NAT) proves itself after the failing chunks already at the gate, not after the flood's debt.
  A budget's debt never exceeds one burst (its tokens stop at minus the burst), so however
  many connections failed together, the address waits at most burst/rate.
- **Proven first.** Signatures are checked VERIFY_CHUNK at a time, at a gate with as many
  slots as verification threads; a waiting connection with a record of valid signatures goes
  ahead of an unproven one, which goes ahead of a failing one. However many connections flood,
  a proven client's chunk waits for at most the chunks already being checked.

The counters join the client port's (consortium_client_port_events_total{event}):
`bad_signatures` (failed checks), `slowed_bad_signatures` (a request waited for budget),
`closed_bad_signatures`, `source_penalised` (a penalty began), `verify_waited_priority` (a chunk
of an unproven or failing connection waited at the gate).
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import trio

from consortium.ledger.tx import Transaction
from consortium.node.verification import TxSignatureCache

VERIFY_CHUNK = 64  # signatures checked per turn at the gate
SUSPECT_FIRST_CHUNK = 8  # a suspect connection's first signatures, checked without budget
BAD_SIGNATURES_BURST = 256  # failed checks a connection may make before it is slowed
BAD_SIGNATURES_PER_S = 64.0  # ...and then this many a second
BAD_SIGNATURES_CLOSE = 2048  # failed checks (with fewer valid) that close a connection
SOURCE_BAD_SIGNATURES_BURST = 1024  # failed checks from one address before its connections wait
SOURCE_BAD_SIGNATURES_PER_S = 256.0  # ...and then this many a second over all its connections
SOURCE_PENALTY_S = 10.0  # an address whose connection was closed for bad signatures, this long
SOURCES_TRACKED_MAX = 4096  # addresses with a budget or penalty remembered (oldest forgotten)
PROVEN_RATIO = 8  # a proven connection has at least this many valid checks per failed one

PROVEN, UNPROVEN, FAILING = 0, 1, 2


class RationedConnection(Protocol):
    peer: str

    @property
    def open(self) -> bool: ...

    def close_soon(self, reason: str, message: str) -> None: ...


def source_of(peer: str) -> str:
    """The address part of a connection's peer ("host:port", or "name@host:port" with TLS)."""
    address = peer.rsplit("@", 1)[-1]
    return address.rsplit(":", 1)[0] if ":" in address else address


@dataclass
class _Bucket:
    """Failed checks allowed: `tokens` (may go below zero, down to -burst: a chunk is charged
    after it is checked, and connections that waited together are charged together), refilled
    at `rate` a second up to `burst`."""

    burst: float
    rate: float
    tokens: float
    at: float

    def refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now

    def charge(self, failed: int, now: float) -> None:
        """Take `failed` tokens, but leave no debt beyond one burst: without the floor, many
        connections charged at once (each after its chunk) drove it minutes deep, and every
        new connection from the address waited that out."""
        self.refill(now)
        self.tokens = max(-self.burst, self.tokens - failed)

    def wait_s(self, now: float) -> float:
        self.refill(now)
        return 0.0 if self.tokens > 0 else (1 - self.tokens) / self.rate


@dataclass
class _Record:
    source: str
    bucket: _Bucket
    valid: int = 0
    failed: int = 0
    suspect: bool = False  # opened from a penalised address: failing until proven

    def unchecked_suspect(self) -> bool:
        """Suspect, and not one of its signatures checked yet: its first chunk (small) does not
        wait for the address' budget."""
        return self.suspect and not self.valid and not self.failed

    def rank(self) -> int:
        if self.valid and self.failed * PROVEN_RATIO <= self.valid:
            return PROVEN
        if self.failed or self.suspect:
            return FAILING
        return UNPROVEN


@dataclass
class _Source:
    bucket: _Bucket
    penalty_until: float = 0.0
    connections: int = 0


@dataclass
class _Gate:
    """`slots` holders at a time; a released slot goes to the best-ranked waiter, first come
    first served within a rank. Waiters are connections with a request in progress, so at
    most the client port's connection limit of them."""

    slots: int
    waiting: tuple[deque[trio.Event], ...] = field(
        default_factory=lambda: (deque(), deque(), deque())
    )

    async def acquire(self, rank: int) -> bool:
        """Take a slot; whether it had to wait for one."""
        if self.slots > 0 and not any(self.waiting[r] for r in range(rank + 1)):
            self.slots -= 1
            await trio.lowlevel.checkpoint()
            return False
        handed = trio.Event()
        self.waiting[rank].append(handed)
        try:
            await handed.wait()
        except BaseException:
            if handed.is_set():
                self.release()  # handed over as we were cancelled: pass it on
            else:
                self.waiting[rank].remove(handed)
            raise
        return True

    def release(self) -> None:
        for queue in self.waiting:
            if queue:
                queue.popleft().set()  # the slot passes straight to it
                return
        self.slots += 1


class VerificationRation:
    """See the module docstring. One per client port; `forget(conn)` when a connection ends."""

    def __init__(self) -> None:
        self._gate: _Gate | None = None  # as many slots as the cache has threads (first use)
        self._records: dict[int, _Record] = {}  # id(conn) -> record, while it is open
        self._sources: OrderedDict[str, _Source] = OrderedDict()
        self.counters: Counter[str] = Counter()

    def _source(self, address: str, now: float) -> _Source:
        source = self._sources.get(address)
        if source is None:
            bucket = _Bucket(
                SOURCE_BAD_SIGNATURES_BURST,
                SOURCE_BAD_SIGNATURES_PER_S,
                SOURCE_BAD_SIGNATURES_BURST,
                now,
            )
            source = self._sources[address] = _Source(bucket)
            self._prune(now)
        return source

    def _prune(self, now: float) -> None:
        """Forget addresses with no open connection, no penalty and a full budget, then the
        oldest beyond SOURCES_TRACKED_MAX (a penalty may be lost to a flood of addresses: the
        per-connection rules still hold)."""
        if len(self._sources) <= SOURCES_TRACKED_MAX:
            return
        for address, source in list(self._sources.items()):
            source.bucket.refill(now)
            if (
                not source.connections
                and source.penalty_until <= now
                and source.bucket.tokens >= source.bucket.burst
            ):
                del self._sources[address]
        while len(self._sources) > SOURCES_TRACKED_MAX:
            self._sources.popitem(last=False)

    def _record(self, conn: RationedConnection, now: float) -> _Record:
        record = self._records.get(id(conn))
        if record is None:
            address = source_of(conn.peer)
            source = self._source(address, now)
            source.connections += 1
            record = self._records[id(conn)] = _Record(
                address,
                _Bucket(BAD_SIGNATURES_BURST, BAD_SIGNATURES_PER_S, BAD_SIGNATURES_BURST, now),
                suspect=source.penalty_until > now,
            )
        return record

    def forget(self, conn: RationedConnection) -> None:
        record = self._records.pop(id(conn), None)
        if record is not None and (source := self._sources.get(record.source)) is not None:
            source.connections = max(0, source.connections - 1)

    def rank(self, conn: RationedConnection) -> int:
        return self._record(conn, trio.current_time()).rank()

    async def admit(self, conn: RationedConnection) -> None:
        """Wait while `conn` (with failures, or suspect) is over its budget or its address'
        (called before a submit is decoded, so a slowed connection costs the loop nothing)."""
        record = self._record(conn, trio.current_time())
        slowed = False
        while conn.open:
            if not record.failed and record.rank() != FAILING:
                break  # never failed (and not suspect, or proven since): no budget to wait for
            if record.unchecked_suspect():
                break  # its first, small chunk proves it or not (see verify)
            now = trio.current_time()
            source = self._sources.get(record.source)
            wait = max(
                record.bucket.wait_s(now),
                source.bucket.wait_s(now) if source is not None else 0.0,
            )
            if wait <= 0:
                break
            if not slowed:
                slowed = True
                self.counters["slowed_bad_signatures"] += 1
            await trio.sleep(wait)

    async def verify(
        self, conn: RationedConnection, cache: TxSignatureCache, txs: Sequence[Transaction]
    ) -> list[bool] | None:
        """Check `txs`' signatures for `conn`, VERIFY_CHUNK at a time at the gate in its rank,
        within its budgets; None when the connection was closed for bad signatures (or went
        away) meanwhile: nothing more to answer."""
        results: list[bool] = []
        record = self._record(conn, trio.current_time())
        # A suspect connection's first chunk is small: it is checked without waiting for the
        # address' budget (admit lets it through), so it must cost little.
        first = SUSPECT_FIRST_CHUNK if record.unchecked_suspect() else VERIFY_CHUNK
        starts = [0, *range(first, len(txs), VERIFY_CHUNK)] if txs else []
        for k, start in enumerate(starts):
            if start:
                await self.admit(conn)
            if not conn.open:
                return None
            chunk = txs[start : starts[k + 1] if k + 1 < len(starts) else len(txs)]
            record = self._record(conn, trio.current_time())
            rank = record.rank()
            if self._gate is None:
                self._gate = _Gate(cache.threads)
            gate = self._gate
            if await gate.acquire(rank) and rank != PROVEN:
                self.counters["verify_waited_priority"] += 1
            try:
                oks = await cache.verify_all(chunk)
            finally:
                gate.release()
            results.extend(oks)
            self._charge(conn, record, sum(oks), len(oks) - sum(oks))
            if not conn.open:
                return None
        return results

    def _charge(self, conn: RationedConnection, record: _Record, valid: int, failed: int) -> None:
        record.valid += valid
        if not failed:
            return
        now = trio.current_time()
        record.failed += failed
        self.counters["bad_signatures"] += failed
        record.bucket.charge(failed, now)
        source = self._source(record.source, now)
        source.bucket.charge(failed, now)
        if record.failed >= BAD_SIGNATURES_CLOSE and record.valid < record.failed:
            self.counters["closed_bad_signatures"] += 1
            if source.penalty_until <= now:
                self.counters["source_penalised"] += 1
            source.penalty_until = now + SOURCE_PENALTY_S
            conn.close_soon(
                "bad signatures",
                f"closing the connection: {record.failed} transactions with bad signatures "
                f"(and {record.valid} valid); this address is served last for "
                f"{SOURCE_PENALTY_S:g} s",
            )
