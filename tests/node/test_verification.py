"""The client-signature cache: verified once, on worker threads, then served from the cache;
trusted without a check only where the trust model says so (raft forwarding)."""

from __future__ import annotations

import hashlib

from consortium.crypto.keys import KeyPair
from consortium.crypto.signing import Ed25519Verifier
from consortium.ledger.tx import Put, Transaction
from consortium.node.verification import CountingVerifier, TxSignatureCache, message_kind

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
