"""The client library for code that does not run Trio (`SyncClient`)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import trio

from consortium.client.client import ConsortiumClient
from consortium.client.errors import ClientError
from consortium.client.outcome import TxOutcome
from consortium.crypto.keys import KeyPair
from consortium.ledger.genesis import Genesis
from consortium.ledger.tx import Op, Transaction

T = TypeVar("T")


class SyncClient:
    """The same client for code that does not run Trio: blocking calls, one connection to
    every member kept open by a Trio loop on a background thread, so `submit` then `wait`
    behave exactly as on ConsortiumClient (retransmission, f+1 confirmations, "pending").

        with SyncClient(genesis, keys) as client:
            tx = client.make_tx([Put(b"k", b"v")])
            [tx_id] = client.submit([tx])          # the id, at once
            outcome = client.wait_one(tx_id, timeout_s=10)

    It connects on first use (or on entering `with`) and disconnects on `close()` (or leaving
    `with`). Calls may come from any thread but not from inside a Trio run. Every call raises
    what the async method raises (ClientError)."""

    def __init__(self, genesis: Genesis, keys: KeyPair | None = None, **options: Any) -> None:
        """`options` are ConsortiumClient's keyword arguments."""
        self.genesis = genesis
        self.keys = keys
        self._options = options
        self._client: ConsortiumClient | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> SyncClient:
        self._open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self) -> tuple[ConsortiumClient, trio.lowlevel.TrioToken]:
        with self._lock:
            if self._client is not None and self._token is not None:
                return self._client, self._token
            started = threading.Event()
            failure: list[BaseException] = []

            async def main() -> None:
                try:
                    async with ConsortiumClient(self.genesis, self.keys, **self._options) as c:
                        self._stop = trio.Event()
                        self._token = trio.lowlevel.current_trio_token()
                        self._client = c
                        started.set()
                        await self._stop.wait()
                        await c.flush()
                finally:
                    self._client = None
                    started.set()

            def run() -> None:
                try:
                    trio.run(main)
                except BaseException as exc:
                    failure.append(exc)
                    started.set()

            self._thread = threading.Thread(target=run, name="consortium-client", daemon=True)
            self._thread.start()
            started.wait()
            if self._client is None or self._token is None:
                raise ClientError(f"the client could not start: {failure[:1]}")
            return self._client, self._token

    def close(self) -> None:
        """Send what is queued (up to 2 s), disconnect and stop the background thread."""
        with self._lock:
            thread, stop, token = self._thread, self._stop, self._token
            self._thread = self._stop = self._token = None
        if thread is None or stop is None or token is None:
            return
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(stop.set, trio_token=token)
        thread.join(10)

    def _run(self, fn: Callable[[ConsortiumClient], Awaitable[T]]) -> T:
        client, token = self._open()

        async def call() -> T:
            return await fn(client)

        return trio.from_thread.run(call, trio_token=token)

    def make_tx(
        self, ops: Sequence[Op], *, expiry_s: float = 60.0, nonce: bytes | None = None
    ) -> Transaction:
        """ConsortiumClient.make_tx (no I/O)."""
        client = ConsortiumClient(self.genesis, self.keys, **self._options)
        return client.make_tx(ops, expiry_s=expiry_s, nonce=nonce)

    def submit(self, txs: Sequence[Transaction]) -> list[bytes]:
        """Send to the members and return the ids at once (they were known before sending)."""
        return self._run(lambda c: c.submit(txs))

    def wait(self, tx_ids: Sequence[bytes], timeout_s: float) -> list[TxOutcome]:
        return self._run(lambda c: c.wait(tx_ids, timeout_s))

    def wait_one(self, tx_id: bytes, timeout_s: float) -> TxOutcome:
        return self._run(lambda c: c.wait_one(tx_id, timeout_s))

    def submit_and_wait(self, txs: Sequence[Transaction], timeout_s: float) -> list[TxOutcome]:
        return self._run(lambda c: c.submit_and_wait(txs, timeout_s))

    def lookup(self, tx_id: bytes, timeout_s: float = 5.0) -> TxOutcome:
        return self._run(lambda c: c.lookup(tx_id, timeout_s))

    def get(self, key: bytes, timeout_s: float = 5.0) -> bytes | None:
        return self._run(lambda c: c.get(key, timeout_s))

    def status(self, member: int, timeout_s: float = 2.0) -> dict[str, Any]:
        return self._run(lambda c: c.status(member, timeout_s))
