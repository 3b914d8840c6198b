"""The client-signature cache: verified once, on worker threads, then served from the cache;
trusted without a check only where the trust model says so (raft forwarding)."""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace
from pathlib import Path

import trio

from consortium.cli.network import init_network, load_client_setup
from consortium.crypto.keys import KeyPair
from consortium.crypto.signing import Ed25519Signer, Ed25519Verifier
from consortium.ledger.tx import Put, Transaction
from consortium.node.config import load_identity
from consortium.node.events import PeerMessage
from consortium.node.runtime import make_node
from consortium.node.verification import CountingVerifier, TxSignatureCache, message_kind
from consortium.pbft.messages import PrePrepare, encode

KEY = KeyPair.from_seed(hashlib.sha256(b"client").digest())
CHAIN = b"\x07" * 32


def tx(i: int, *, forged: bool = False) -> Transaction:
    t = Transaction.create(KEY, CHAIN, b"%d" % i, 10**13, [Put(b"k", b"v")])
    if forged:
        t = Transaction(
            t.body, bytes(64), t.id, t.chain_id, t.client_key, t.nonce, t.expiry_ms, t.ops
        )
    return t


async def test_signatures_are_checked_once_then_served_from_the_cache() -> None:
    with trio.fail_after(10):
        verifier = CountingVerifier(Ed25519Verifier())
        cache = TxSignatureCache(verifier)
        txs = [tx(i) for i in range(20)] + [tx(99, forged=True)]
        assert await cache.verify_all(txs) == [True] * 20 + [False]
        assert cache.verified == 21
        assert await cache.verify_all(txs) == [True] * 20 + [False]
        assert cache.verified == 21 and cache.hits == 21
        assert cache.check(txs[0]) and not cache.check(txs[-1])
        assert cache.verified == 21  # the core's synchronous check hit the cache too


async def test_trusted_transactions_are_not_checked_and_a_known_verdict_is_kept() -> None:
    verifier = CountingVerifier(Ed25519Verifier())
    cache = TxSignatureCache(verifier)
    forged = tx(1, forged=True)
    assert await cache.verify_all([forged]) == [False]
    cache.trust([tx(2), forged])
    assert cache.trusted == 1  # a verdict we reached ourselves is never overridden
    assert cache.check(tx(2)) and not cache.check(forged)
    assert cache.verified == 1


def test_message_kinds_are_read_without_decoding() -> None:
    from consortium.crashft import messages as m

    assert message_kind(m.encode(m.Heartbeat(1, 2, 3))) == "heartbeat"
    assert message_kind(m.encode(m.Forward(()))) == "forward"
    assert message_kind(b"") == "unknown" and message_kind(b"\xc1\xc1\xc1") == "unknown"


def test_a_kind_neither_protocol_has_is_counted_as_other() -> None:
    """Kinds become metric labels: only the protocols' own kinds are kept apart."""
    from consortium.crypto.codec import pack

    assert message_kind(pack(["junk0001", 1])) == "other"
    assert message_kind(pack([pack(["commit", 1, 2, b"d", 0]), b"s" * 64])) == "commit"


async def test_a_preprepares_signature_is_verified_once_by_the_shell_and_core(
    tmp_path: Path,
) -> None:
    """The pump verified a PRE-PREPARE's signature (before spending client-signature checks on
    its batch) and the core verified it again: two Ed25519 checks per batch on the core's
    thread. The pump's check is now the core's, made ahead: one check per PRE-PREPARE, and a
    forged one is still refused."""
    init_network(tmp_path / "net", members=4, clients=1, mode="pbft")
    primary = load_identity(tmp_path / "net" / "nodes" / "n1")
    backup = load_identity(tmp_path / "net" / "nodes" / "n2")
    client = load_client_setup(tmp_path / "net").keys()[0]
    node = make_node(backup.config, backup.genesis, backup.keys)
    try:
        now = int(time.time() * 1000)
        signer = Ed25519Signer(primary.keys)

        def preprepare(seq: int) -> PrePrepare:
            tx = Transaction.create(
                client, node.chain_id, b"%d" % seq, now + 60_000, [Put(b"k", b"v")]
            )
            return PrePrepare.create(signer, node.chain_id, 0, seq, now, 0, (tx,))

        before = node.verifier.count
        msg = await node.mode.decode(0, encode(preprepare(1)))
        node._handle(PeerMessage(0, msg))
        assert node.verifier.count - before == 1
        assert node.core.status()["in_flight"] == 1  # accepted
        forged = replace(preprepare(2), signature=bytes(64))
        msg = await node.mode.decode(0, encode(forged))
        node._handle(PeerMessage(0, msg))
        assert node.core.rejected["bad_signature"] == 1
        assert node.core.status()["in_flight"] == 1
    finally:
        node.store.close()
