"""The request pool of a PBFT replica and the primary's batching (Castro & Liskov, OSDI 1999
§4.2 and §4.6 "batching"; TOCS 2002 §5.1.4 "request batching").

Theory of operation
-------------------
- Clients send each transaction to every replica; the shell verifies the client signature and
  calls propose(). Every replica keeps the transaction in this pool until a batch holding it
  commits: the primary to batch it, a backup so that the view-change issue can start a timer
  for requests it holds and has not executed (the paper's backups do the same).
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

from consortium.ledger.tx import Transaction


class TxPool:
    def __init__(self, txs_max: int, bytes_max: int, remembered_max: int) -> None:
        self.txs_max = txs_max
        self.bytes_max = bytes_max
        self.remembered_max = remembered_max
        self._pending: OrderedDict[bytes, tuple[Transaction, int]] = OrderedDict()
        self._bytes = 0
        self._in_flight: dict[bytes, int] = {}  # tx id -> seq of an accepted batch
        self._committed: OrderedDict[bytes, None] = OrderedDict()

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    @property
    def first_arrival_ms(self) -> int | None:
        if not self._pending:
            return None
        _, arrival_ms = next(iter(self._pending.values()))
        return arrival_ms

    def add(self, tx: Transaction, now_ms: int) -> str | None:
        """Queue `tx`; returns why it was not queued, if it was not."""
        if tx.id in self._pending or tx.id in self._in_flight or tx.id in self._committed:
            return "tx_duplicate"
        if len(self._pending) >= self.txs_max or self._bytes + tx.size > self.bytes_max:
            return "pool_full"
        self._pending[tx.id] = (tx, now_ms)
        self._bytes += tx.size
        return None

    def take_batch(self, txs_max: int, bytes_max: int) -> tuple[Transaction, ...]:
        """The primary: remove and return the oldest pending transactions that fit a batch."""
        batch: list[Transaction] = []
        size = 0
        while self._pending and len(batch) < txs_max:
            tx, _ = next(iter(self._pending.values()))
            if size + tx.size > bytes_max:
                break
            self._remove(tx.id)
            batch.append(tx)
            size += tx.size
        return tuple(batch)

    def in_flight(self, seq: int, txs: tuple[Transaction, ...]) -> None:
        for tx in txs:
            self._in_flight[tx.id] = seq

    def committed(self, seq: int, txs: tuple[Transaction, ...]) -> None:
        for tx in txs:
            if self._in_flight.get(tx.id) == seq:
                del self._in_flight[tx.id]
            self._remove(tx.id)
            self._committed[tx.id] = None
            self._committed.move_to_end(tx.id)
        while len(self._committed) > self.remembered_max:
            self._committed.popitem(last=False)

    def _remove(self, tx_id: bytes) -> None:
        entry = self._pending.pop(tx_id, None)
        if entry is not None:
            self._bytes -= entry[0].size

    def check(self) -> None:
        assert len(self._pending) <= self.txs_max
        assert 0 <= self._bytes <= self.bytes_max
        assert len(self._committed) <= self.remembered_max
