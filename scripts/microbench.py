"""Micro-benchmarks behind figures in docs/bench.md: Ed25519 sign and verify (the signer and
verifier the node uses, and cryptography's signer for comparison), and the CPU one side of a
Trio round trip between two processes over loopback TCP costs (the event loop's own floor).

    .venv/bin/python scripts/microbench.py

Loopback only (127.0.0.1, an ephemeral port); bounded (a few seconds); stops by itself.
"""

from __future__ import annotations

import multiprocessing
import resource
import time
from collections.abc import Callable
from multiprocessing.connection import Connection

import trio

from consortium.crypto.keys import KeyPair
from consortium.crypto.signing import Domain, Ed25519Signer, Ed25519Verifier, signed_message

ROUNDS = 5_000
MESSAGE = b"x" * 120
CHAIN = b"c" * 32


def per_call_us(fn: Callable[[], object], n: int = ROUNDS) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def echo_process(port_out: Connection, rounds: int) -> None:
    """The other member: a separate process answering each message (its CPU is its own)."""

    async def serve() -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port_out.send(listeners[0].socket.getsockname()[1])
        stream = await listeners[0].accept()
        for _ in range(rounds):
            if not await stream.receive_some(65536):
                return
            await stream.send_all(b"y" * 100)

    trio.run(serve)


async def pingpong(port: int, rounds: int) -> tuple[float, float]:
    """(round-trip us, this side's CPU us per round trip: one send and one receive)."""
    client = await trio.open_tcp_stream("127.0.0.1", port)
    cpu0, t0 = cpu_s(), time.perf_counter()
    for _ in range(rounds):
        await client.send_all(MESSAGE)
        await client.receive_some(65536)
    elapsed, cpu = time.perf_counter() - t0, cpu_s() - cpu0
    await client.aclose()
    return elapsed / rounds * 1e6, cpu / rounds * 1e6


def main() -> None:
    keys = KeyPair.generate()
    signer = Ed25519Signer(keys)
    verifier = Ed25519Verifier()
    sig = signer.sign(Domain.PBFT, CHAIN, MESSAGE)
    raw = signed_message(Domain.PBFT, CHAIN, MESSAGE)
    rows = [
        ("sign, libsodium (the node's signer)", lambda: signer.sign(Domain.PBFT, CHAIN, MESSAGE)),
        ("sign, cryptography", lambda: keys.private.sign(raw)),
        (
            "verify, libsodium (the node's)",
            lambda: verifier.verify(keys.public, Domain.PBFT, CHAIN, MESSAGE, sig),
        ),
    ]
    for label, call in rows:
        print(f"{label:<38}{per_call_us(call):7.1f} us")
    ours, theirs = multiprocessing.Pipe()
    echo = multiprocessing.Process(target=echo_process, args=(theirs, ROUNDS), daemon=True)
    echo.start()
    try:
        rtt, cpu = trio.run(pingpong, ours.recv(), ROUNDS)
    finally:
        echo.join(timeout=10)
        if echo.is_alive():
            echo.kill()
    print(f"trio loopback round trip, 2 processes {rtt:7.1f} us")
    print(f"trio CPU per round trip, one side     {cpu:7.1f} us (one send, one receive)")


if __name__ == "__main__":
    main()
