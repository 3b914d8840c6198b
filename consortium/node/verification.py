"""Client-signature verification off the event loop, with a bounded cache.

Every PBFT replica verifies every client signature (clients submit to all members, so a backup
has usually checked a transaction before the PRE-PREPARE that carries it arrives). libsodium
releases the GIL, so batches are verified on worker threads. The cache is keyed by id AND
signature: the id hashes only the unsigned body, so a copy of a valid transaction with a forged
signature has the same id and must not ride on the valid copy's result.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import trio

from consortium.crypto.signing import Verifier
from consortium.ledger.tx import Transaction


class TxSignatureCache:
    def __init__(self, verifier: Verifier, *, entries_max: int = 262_144, threads: int = 2) -> None:
        self._verifier = verifier
        self._entries_max = entries_max
        self._results: OrderedDict[bytes, bool] = OrderedDict()
        self._limiter = trio.CapacityLimiter(threads)
        self._threads = threads
        self.verified = 0  # signatures actually checked (cache misses)
        self.hits = 0

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
        ok = tx.verify_signature(self._verifier)
        self.verified += 1
        self._remember(key, ok)
        return ok

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
        if missing:
            verifier = self._verifier

            def run(chunk: list[int]) -> list[bool]:
                return [txs[i].verify_signature(verifier) for i in chunk]

            if len(missing) < 8:
                chunks = [missing]
            else:
                step = (len(missing) + self._threads - 1) // self._threads
                chunks = [missing[i : i + step] for i in range(0, len(missing), step)]
            outcomes: list[list[bool]] = [[] for _ in chunks]

            async def worker(k: int) -> None:
                outcomes[k] = await trio.to_thread.run_sync(run, chunks[k], limiter=self._limiter)

            async with trio.open_nursery() as nursery:
                for k in range(len(chunks)):
                    nursery.start_soon(worker, k)
            for chunk, oks in zip(chunks, outcomes, strict=True):
                for i, ok in zip(chunk, oks, strict=True):
                    results[i] = ok
                    self._remember(self._key(txs[i]), ok)
            self.verified += len(missing)
        return [bool(r) for r in results]
