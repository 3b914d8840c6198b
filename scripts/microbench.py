"""Micro-benchmarks behind figures in docs/bench.md: Ed25519 sign and verify (the signer and
verifier the node uses, and cryptography's signer for comparison), the CPU one side of a
Trio round trip between two processes over loopback TCP costs (the event loop's own floor),
and the hot paths the compiled modules serve (consortium/compiled.py): run it as installed
and with CONSORTIUM_PURE=1 to compare compiled with source.

    .venv/bin/python scripts/microbench.py
    CONSORTIUM_PURE=1 .venv/bin/python scripts/microbench.py
    .venv/bin/python scripts/microbench.py --floor [--block-txs 114] [--dir DIR]

--floor measures, one at a time and each alone on the machine, the work a pbft member does for
every transaction whatever the code around it (docs/bench.md, "The floor"): decoding it from
a client's submission, checking its signature, executing it in a block of the bench's size,
and writing that block durably (SQLite, WAL, fsync) into a store that grows to the bench's
20,000 transactions. CPU time (user and system), not wall time. Every transaction executes
(each receipt is checked ok): the store writes its key, its index row and its replay entry. Put
the store (--dir) on the disk members use: on a tmpfs, fsync costs nothing.

Loopback only (127.0.0.1, an ephemeral port); bounded (a few seconds); stops by itself.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection

import trio

from consortium import compiled
from consortium.crypto.codec import _refuse_non_wire, pack, unpack, unpack_canonical
from consortium.crypto.keys import KeyPair
from consortium.crypto.merkle import MerkleTree, verify_inclusion
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


def hot_paths() -> list[tuple[str, Callable[[], object], int]]:
    """(label, call, rounds) for the compiled modules' hot paths, on a receipts push of 110
    entries (a pbft block's worth under load) shaped as the members send it."""
    from consortium.ledger.digests import row_digest

    entry = [
        [b"t" * 32, "ok", "", [b"v"], 5, 0],  # a receipt
        [bytes([i]) * 32 for i in range(7)],  # its Merkle path in a tree of 110
    ]
    frame = pack([0, "receipts", [[b"h" * 32] * 8, [b"s" * 64], 110, [entry] * 110]])
    value = unpack(frame)
    leaves = [bytes([i % 256]) * 100 for i in range(110)]
    tree = MerkleTree(leaves)
    proof, root = tree.proof(37), tree.root
    row = (b"i" * 32, 12_345, 7, 1, 1_767_225_600_000)
    return [
        ("canonical decode, 110-receipt push", lambda: unpack_canonical(frame), 2_000),
        ("  of it: the non-wire walk", lambda: _refuse_non_wire(value), 2_000),
        ("row digest (tx index row)", lambda: row_digest("tx_index", row), 100_000),
        ("Merkle tree of 110 leaves", lambda: MerkleTree(leaves), 500),
        (
            "inclusion check, 110 leaves",
            lambda: verify_inclusion(leaves[37], 37, 110, proof, root),
            20_000,
        ),
    ]


def main() -> None:
    print(f"hot modules: {compiled.describe()}")
    for label, call, rounds in hot_paths():
        print(f"{label:<38}{per_call_us(call, rounds):7.2f} us")
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


BLOCK_TXS = 114  # the bench's pbft n=4 blocks under load (docs/bench.json: txs_per_block)
FLOOR_TXS = 20_064  # 176 such blocks: about the bench's --txs 20000
SUBMIT_TXS = 100  # transactions per client submit frame in the bench (window 200: two lanes of 100)


def floor(block_txs: int, directory: str | None) -> None:
    """CPU per transaction of each step a pbft member cannot skip, alone (see the docstring)."""
    from pathlib import Path

    from consortium.cli.network import init_network, load_client_setup
    from consortium.ledger.block import OK
    from consortium.ledger.state import build_block
    from consortium.ledger.store import BlockStore
    from consortium.ledger.tx import Put, Transaction
    from consortium.node.config import load_identity

    count = FLOOR_TXS // block_txs * block_txs
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        home = Path(tmp)
        init_network(home / "net", members=4, clients=1)
        genesis = load_identity(home / "net" / "nodes" / "n1").genesis
        params = genesis.params
        key = load_client_setup(home / "net").keys()[0]
        # Within the network's expiry horizon, and after the run: every transaction executes.
        expiry = int(time.time() * 1000) + params.tx_ttl_max_ms // 2
        probe = Transaction.create(key, genesis.chain_id, b"0" * 16, expiry, [Put(b"k" * 12, b"")])
        value = b"v" * max(0, 200 - probe.size)  # the bench's 200 encoded bytes
        txs = [
            Transaction.create(
                key, genesis.chain_id, b"%016d" % i, expiry, [Put(b"k%011d" % i, value)]
            )
            for i in range(count)
        ]
        frames = [
            pack([[t.body, t.signature] for t in txs[i : i + SUBMIT_TXS]])
            for i in range(0, count, SUBMIT_TXS)
        ]
        start = time.process_time()
        decoded = [
            Transaction.from_array(raw, params)
            for frame in frames
            for raw in unpack_canonical(frame)
        ]
        decode_us = (time.process_time() - start) / count * 1e6
        assert [t.id for t in decoded] == [t.id for t in txs]
        verifier = Ed25519Verifier()
        start = time.process_time()
        assert all(t.verify_signature(verifier) for t in decoded)
        verify_us = (time.process_time() - start) / count * 1e6
        store = BlockStore.open(home / "ledger.sqlite", genesis)
        execute_s = write_s = 0.0
        try:
            for i in range(0, count, block_txs):
                head = store.head
                started = time.process_time()
                block, execution = build_block(
                    head,
                    ("pbft", 0, head.height + 1),
                    head.timestamp_ms + 1,
                    tuple(decoded[i : i + block_txs]),
                    store.app,
                )
                written = time.process_time()
                store.save(blocks=[(block, execution, None)])
                done = time.process_time()
                execute_s += written - started
                write_s += done - written
                assert all(r.status == OK for r in block.receipts), block.receipts[0]
            assert store.height == count // block_txs
            assert store.read_tx_position(txs[-1].id) is not None
        finally:
            store.close()
    where = directory or tempfile.gettempdir()
    print(f"{count} transactions in blocks of {block_txs}, the store in {where}")
    rows = [
        ("decode from a submit frame (and its id)", decode_us),
        ("client signature check", verify_us),
        ("execute (state, receipts, roots, header)", execute_s / count * 1e6),
        ("durable block write (SQLite, fsync)", write_s / count * 1e6),
    ]
    for label, us in rows:
        print(f"{label:<42}{us:7.1f} us per transaction")
    print(f"{'sum':<42}{sum(us for _, us in rows):7.1f} us per transaction")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--floor", action="store_true", help="the per-transaction floor instead")
    parser.add_argument("--block-txs", type=int, default=BLOCK_TXS, help="with --floor")
    parser.add_argument(
        "--dir", default=None, help="with --floor: the store's disk (default: the temp directory)"
    )
    args = parser.parse_args()
    if args.floor:
        floor(args.block_txs, args.dir)
    else:
        main()
