"""Rationed signature verification (node/rationing.py), on trio's autojump clock with a stand-in
cache whose every chunk takes CHUNK_S: a connection failing its checks is slowed, then closed
and its address penalised; a proven connection goes ahead of any number of failing ones; and a
client from the attacker's own address (127.0.0.1 in every test) is never held by the penalty
once its signatures verify."""

from __future__ import annotations

from collections.abc import Sequence

import trio
import trio.testing

from consortium.node import rationing
from consortium.node.rationing import FAILING, PROVEN, UNPROVEN, VerificationRation

CHUNK_S = 0.01
GOOD, BAD = "good", "bad"


class FakeCache:
    """verify_all takes CHUNK_S per call; "good" verifies, anything else does not."""

    def __init__(self, threads: int = 1) -> None:
        self.threads = threads
        self.checked = 0
        self.calls: list[int] = []  # the size of each chunk checked

    async def verify_all(self, txs: Sequence[str]) -> list[bool]:
        self.calls.append(len(txs))
        await trio.sleep(CHUNK_S)
        self.checked += len(txs)
        return [tx == GOOD for tx in txs]


class Conn:
    def __init__(self, peer: str = "127.0.0.1:5000") -> None:
        self.peer = peer
        self.closed: list[str] = []

    @property
    def open(self) -> bool:
        return not self.closed

    def close_soon(self, reason: str, message: str) -> None:
        self.closed.append(message)


def _run(fn: object) -> None:
    trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))  # type: ignore[arg-type]


def test_source_of_strips_the_port_and_a_tls_name() -> None:
    assert rationing.source_of("10.0.0.7:5000") == "10.0.0.7"
    assert rationing.source_of("alice@10.0.0.7:5000") == "10.0.0.7"
    assert rationing.source_of("::1:5000") == "::1"


def test_a_failing_connection_is_slowed_after_its_burst_then_closed_and_its_address_penalised() -> (
    None
):
    async def main() -> None:
        ration, cache, conn = VerificationRation(), FakeCache(), Conn()
        assert ration.rank(conn) == UNPROVEN
        started = trio.current_time()
        # Its burst goes at the gate's pace, with no wait for budget.
        burst = rationing.BAD_SIGNATURES_BURST
        for _ in range(burst // rationing.VERIFY_CHUNK):
            await ration.admit(conn)
            assert await ration.verify(conn, cache, [BAD] * rationing.VERIFY_CHUNK) is not None
        assert ration.rank(conn) == FAILING
        assert ration.counters["slowed_bad_signatures"] == 0
        assert trio.current_time() - started < 1
        # Beyond it, each failed check costs 1/BAD_SIGNATURES_PER_S of waiting.
        started = trio.current_time()
        sent = 0
        while conn.open:
            await ration.admit(conn)
            if await ration.verify(conn, cache, [BAD] * rationing.VERIFY_CHUNK) is None:
                break
            sent += rationing.VERIFY_CHUNK
        assert ration.counters["slowed_bad_signatures"] > 0
        failed = burst + sent + rationing.VERIFY_CHUNK
        assert failed >= rationing.BAD_SIGNATURES_CLOSE
        assert trio.current_time() - started >= (sent - rationing.VERIFY_CHUNK) / (
            rationing.BAD_SIGNATURES_PER_S
        )
        assert conn.closed and "bad signatures" in conn.closed[0]
        assert ration.counters["closed_bad_signatures"] == 1
        assert ration.counters["source_penalised"] == 1
        assert ration.counters["bad_signatures"] == cache.checked
        ration.forget(conn)
        # A new connection from that address starts last in line, until it proves itself.
        newcomer = Conn("127.0.0.1:5001")
        assert ration.rank(newcomer) == FAILING
        assert await ration.verify(newcomer, cache, [GOOD] * 8) == [True] * 8
        assert ration.rank(newcomer) == PROVEN
        # Another address is not penalised; and the penalty ends.
        assert ration.rank(Conn("10.0.0.9:1")) == UNPROVEN
        await trio.sleep(rationing.SOURCE_PENALTY_S)
        assert ration.rank(Conn("127.0.0.1:5002")) == UNPROVEN

    _run(main)


def test_many_connections_from_one_address_fail_no_faster_than_its_budget() -> None:
    async def main() -> None:
        ration, cache = VerificationRation(), FakeCache(threads=64)
        flooders = [Conn(f"127.0.0.1:{6000 + i}") for i in range(32)]
        honest = Conn("127.0.0.1:7000")
        assert await ration.verify(honest, cache, [GOOD] * 4) == [True] * 4
        started = trio.current_time()

        async def flood(conn: Conn) -> None:
            while conn.open:
                await ration.admit(conn)
                if await ration.verify(conn, cache, [BAD] * 16) is None:
                    return

        honest_waits: list[float] = []

        async def client() -> None:
            for _ in range(50):
                at = trio.current_time()
                await ration.admit(honest)
                assert await ration.verify(honest, cache, [GOOD] * 4) == [True] * 4
                honest_waits.append(trio.current_time() - at)
                await trio.sleep(0.1)

        async with trio.open_nursery() as nursery:
            for conn in flooders:
                nursery.start_soon(flood, conn)
            await client()
            nursery.cancel_scope.cancel()
        elapsed = trio.current_time() - started
        # The address' budget bounds its failures, whatever the number of connections...
        bound = rationing.SOURCE_BAD_SIGNATURES_BURST + 32 * 16 * 2
        assert ration.counters["bad_signatures"] <= bound + elapsed * (
            rationing.SOURCE_BAD_SIGNATURES_PER_S
        )
        # ...and the honest client from the same address never waits for it.
        assert max(honest_waits) <= 2 * CHUNK_S

    _run(main)


def test_a_proven_connection_goes_ahead_of_any_number_of_failing_ones() -> None:
    async def main() -> None:
        ration, cache = VerificationRation(), FakeCache(threads=1)
        honest = Conn("127.0.0.1:7000")
        assert await ration.verify(honest, cache, [GOOD] * 4) == [True] * 4
        flooders = [Conn(f"127.0.0.1:{6000 + i}") for i in range(20)]
        for conn in flooders:  # each has failed once: last in line
            assert await ration.verify(conn, cache, [BAD]) == [False]

        async def flood(conn: Conn) -> None:
            await ration.verify(conn, cache, [BAD] * rationing.VERIFY_CHUNK * 3)

        async with trio.open_nursery() as nursery:
            for conn in flooders:
                nursery.start_soon(flood, conn)
            await trio.sleep(CHUNK_S / 2)  # the gate is busy and 19 chunks wait
            at = trio.current_time()
            assert await ration.verify(honest, cache, [GOOD] * 4) == [True] * 4
            # It waited for the chunk being checked, not for the 19 queued before it.
            assert trio.current_time() - at <= 2 * CHUNK_S
        assert ration.counters["verify_waited_priority"] >= 19

    _run(main)


def test_a_cancelled_waiter_passes_its_slot_on() -> None:
    async def main() -> None:
        ration, cache = VerificationRation(), FakeCache(threads=1)
        first, second, third = Conn("a:1"), Conn("a:2"), Conn("a:3")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ration.verify, first, cache, [GOOD])
            await trio.testing.wait_all_tasks_blocked()
            with trio.move_on_after(CHUNK_S / 2):
                await ration.verify(second, cache, [GOOD])  # waits at the gate, cancelled
        with trio.fail_after(1):
            assert await ration.verify(third, cache, [GOOD]) == [True]

    _run(main)


def test_a_new_honest_connection_from_a_penalised_address_is_served_within_seconds() -> None:
    """60 connections fail together from one penalised address (each charged after its chunk);
    a new connection from that address with a valid transaction gets its verdict after the
    failing chunks at the gate, not after the address' debt (which stops at one burst)."""

    async def main() -> None:
        ration, cache = VerificationRation(), FakeCache(threads=2)
        # Penalise the address: one connection fails until it is closed.
        first = Conn("127.0.0.1:5999")
        while first.open:
            await ration.admit(first)
            await ration.verify(first, cache, [BAD] * rationing.VERIFY_CHUNK)
        ration.forget(first)
        assert ration.counters["source_penalised"] == 1

        async def flood(conn: Conn) -> None:
            while conn.open:
                await ration.admit(conn)
                if await ration.verify(conn, cache, [BAD] * rationing.VERIFY_CHUNK) is None:
                    return

        async with trio.open_nursery() as nursery:
            for i in range(60):
                nursery.start_soon(flood, Conn(f"127.0.0.1:{6000 + i}"))
            await trio.sleep(rationing.SOURCE_PENALTY_S / 2)  # their debt built up meanwhile
            newcomer = Conn("127.0.0.1:7000")
            assert ration.rank(newcomer) == FAILING  # the address is still penalised
            at = trio.current_time()
            await ration.admit(newcomer)
            assert await ration.verify(newcomer, cache, [GOOD]) == [True]
            waited = trio.current_time() - at
            assert ration.rank(newcomer) == PROVEN
            nursery.cancel_scope.cancel()
        # 60 failing chunks at most were ahead of it at the gate (2 slots, CHUNK_S each).
        assert waited <= 60 * CHUNK_S, waited
        # The debt of all those connections stayed within one burst.
        source = ration._sources["127.0.0.1"]
        assert source.bucket.tokens >= -rationing.SOURCE_BAD_SIGNATURES_BURST

    _run(main)


def test_a_suspect_connection_checks_a_small_first_chunk_then_waits_for_the_budget() -> None:
    async def main() -> None:
        ration, cache = VerificationRation(), FakeCache(threads=1)
        first = Conn("127.0.0.1:5999")
        while first.open:
            await ration.admit(first)
            await ration.verify(first, cache, [BAD] * rationing.VERIFY_CHUNK)
        ration.forget(first)
        suspect = Conn("127.0.0.1:6000")
        cache.calls.clear()
        assert await ration.verify(suspect, cache, [BAD] * 100) == [False] * 100
        assert cache.calls[0] == rationing.SUSPECT_FIRST_CHUNK
        assert sum(cache.calls) == 100
        # The rest waited for the address' budget (drawn down by the first connection).
        assert ration.counters["slowed_bad_signatures"] >= 1

    _run(main)
