"""The request pool of a PBFT replica and the primary's batching (Castro & Liskov, OSDI 1999
§4.2 and §4.6 "batching"; TOCS 2002 §5.1.4 "request batching").

Theory of operation
-------------------
- Clients send each transaction to every replica; the shell verifies the client signature and
  calls propose(). Every replica keeps the transaction here until a batch holding it commits:
  pending until a batch holding it is accepted, then in flight. The primary batches pending
  ones; a backup times them (a request it holds and has not executed by its timer starts a
  view change), forwards old ones to the primary (a censored client's transaction is then
  either batched or proof that the primary must go), and, after a view change, makes the
  transactions of batches the new view does not re-issue pending again.
- Deduplication by id: against pending transactions, against those in a batch that is in flight
  (accepted, not yet committed), and against a bounded memory of recently committed ids, so a
  late copy of a committed transaction does not stay pending forever. Replay protection proper
  is the application's (an id executes at most once); this only avoids wasted batches.
- Bounded: at most txs_max pending transactions and bytes_max pending bytes; beyond that new
  ones are refused ("pool_full"), never queued without limit.
- The primary cuts a batch in arrival order, up to batch_txs_max transactions and
  batch_bytes_max bytes (a transaction larger than a whole batch is refused at propose, since
  no batch could carry it). When to cut is the replica's decision (it knows what is in flight).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from consortium.ledger.tx import Transaction
from consortium.pbft import reasons as drop


@dataclass(slots=True)
class _Pending:
    tx: Transaction
    arrival_ms: int
    forwarded_ms: int | None = None  # when this backup forwarded it to the primary


class TxPool:
    def __init__(self, txs_max: int, bytes_max: int, remembered_max: int) -> None:
        self.txs_max = txs_max
        self.bytes_max = bytes_max
        self.remembered_max = remembered_max
        self._pending: OrderedDict[bytes, _Pending] = OrderedDict()  # arrival order
        self._bytes = 0
        self._in_flight: dict[bytes, tuple[int, Transaction]] = {}  # id -> (seq, tx)
        self._committed: OrderedDict[bytes, None] = OrderedDict()

    @property
    def pending_count(self) -> int:
        """Transactions in no accepted batch yet."""
        return len(self._pending)

    @property
    def in_flight_count(self) -> int:
        return len(self._in_flight)

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    @property
    def first_arrival_ms(self) -> int | None:
        if not self._pending:
            return None
        return next(iter(self._pending.values())).arrival_ms

    def known(self, tx_id: bytes) -> bool:
        return tx_id in self._pending or tx_id in self._in_flight or tx_id in self._committed

    def add(self, tx: Transaction, now_ms: int) -> drop.Reason | None:
        """Queue `tx`; returns why it was not queued, if it was not."""
        if self.known(tx.id):
            return drop.TX_DUPLICATE
        if len(self._pending) >= self.txs_max or self._bytes + tx.size > self.bytes_max:
            return drop.POOL_FULL
        self._pending[tx.id] = _Pending(tx, now_ms)
        self._bytes += tx.size
        return None

    def to_front(self, tx_id: bytes) -> bool:
        """The primary: a backup forwarded this one because it waited too long: next batch."""
        if tx_id not in self._pending:
            return False
        self._pending.move_to_end(tx_id, last=False)
        return True

    def take_batch(self, txs_max: int, bytes_max: int) -> tuple[Transaction, ...]:
        """The primary: remove and return the oldest pending transactions that fit a batch."""
        batch: list[Transaction] = []
        size = 0
        while self._pending and len(batch) < txs_max:
            entry = next(iter(self._pending.values()))
            if size + entry.tx.size > bytes_max:
                break
            self._remove(entry.tx.id)
            batch.append(entry.tx)
            size += entry.tx.size
        return tuple(batch)

    def in_flight(self, seq: int, txs: tuple[Transaction, ...]) -> None:
        """A batch holding these was accepted: no longer pending (nor batched again)."""
        for tx in txs:
            self._remove(tx.id)
            if tx.id not in self._committed:
                self._in_flight[tx.id] = (seq, tx)

    def committed(self, seq: int, txs: tuple[Transaction, ...]) -> None:
        for tx in txs:
            self._in_flight.pop(tx.id, None)
            self._remove(tx.id)
            self._committed[tx.id] = None
            self._committed.move_to_end(tx.id)
        while len(self._committed) > self.remembered_max:
            self._committed.popitem(last=False)

    def release(self, keep: dict[int, bytes], digests: dict[int, bytes], now_ms: int) -> int:
        """A new view: in-flight transactions of batches it does not re-issue (keep: seq ->
        digest re-issued; digests: seq -> digest of the batch they were in) are pending again,
        so the new primary batches them. Over the limits they are dropped (clients resend)."""
        released = 0
        for tx_id, (seq, tx) in list(self._in_flight.items()):
            if keep.get(seq) is not None and keep.get(seq) == digests.get(seq):
                continue
            del self._in_flight[tx_id]
            if len(self._pending) < self.txs_max and self._bytes + tx.size <= self.bytes_max:
                self._pending[tx_id] = _Pending(tx, now_ms)
                self._bytes += tx.size
                released += 1
        return released

    def forget_forwarding(self) -> None:
        """A new primary: what was forwarded to the old one is forwarded again before it counts
        against the new one (once per view change, so linear in the pool is fine)."""
        for entry in self._pending.values():
            entry.forwarded_ms = None

    def overdue(self, now_ms: int, age_ms: int, limit: int) -> list[_Pending]:
        """The oldest pending entries older than age_ms (at most `limit`), oldest first."""
        out: list[_Pending] = []
        for entry in self._pending.values():
            if len(out) >= limit or now_ms - entry.arrival_ms < age_ms:
                break
            out.append(entry)
        return out

    def _remove(self, tx_id: bytes) -> None:
        entry = self._pending.pop(tx_id, None)
        if entry is not None:
            self._bytes -= entry.tx.size

    def check(self) -> None:
        assert len(self._pending) <= self.txs_max
        assert 0 <= self._bytes <= self.bytes_max
        assert len(self._committed) <= self.remembered_max
        assert not (self._pending.keys() & self._in_flight.keys())
