"""Review 1 (issue 6): failing tests for client admission as merged (69217cf) and the bounded
state cache (d228597). Each test states the expected behaviour; it fails on main today."""

from __future__ import annotations

import dataclasses
import hashlib
from types import SimpleNamespace
from typing import Any

import pytest

from consortium.crypto import signing
from consortium.crypto.keys import KeyPair
from consortium.crypto.signing import Domain, Ed25519Signer
from consortium.ledger import store as store_module
from consortium.ledger.admission import ADMIT, ClientChange
from consortium.ledger.genesis import Params
from consortium.ledger.state import CachedTable, KeyValueState
from consortium.ledger.tx import ConfigChange, Put, Transaction
from consortium.node.client import is_final_rejection
from consortium.node.service import ClientService
from tests.ledger.chain_fixture import CREATED_MS, MEMBERS, ChainBuilder, make_genesis

K = 4
PARAMS = Params(checkpoint_interval=K, window=2 * K)
NEW = KeyPair.from_seed(hashlib.sha256(b"review1 new client").digest())


def _admit(chain: ChainBuilder, key: bytes) -> ConfigChange:
    c = ClientChange.create(
        chain.genesis.chain_id,
        ADMIT,
        key,
        "new",
        b"r1",
        CREATED_MS + 3_600_000,
        created_ms=CREATED_MS,
    )
    approvals = tuple(
        (
            MEMBERS[i].public,
            Ed25519Signer(MEMBERS[i]).sign(Domain.CLIENT_CHANGE, c.chain_id, c.body),
        )
        for i in (0, 1, 2)
    )
    return ConfigChange(c, approvals)


def _service_on(app: KeyValueState) -> ClientService:
    """The member's submit-time client check, run against `app` (its state at its height)."""
    service = ClientService.__new__(ClientService)
    service.node = SimpleNamespace(app=app)  # type: ignore[assignment]
    return service


@pytest.mark.parametrize("mode", ["pbft", "raft"])
def test_a_lagging_member_s_unknown_client_is_not_reported_as_final(mode: str) -> None:
    """unknown_client became state-dependent with admission: a member that has not executed
    the block admitting a key still answers plain `unknown_client` at submit, and the client
    library treats that as FINAL (client.py FINAL_REJECTIONS; f+1 in pbft, ONE member in raft),
    while the up-to-date members commit the very same transaction. The client then reports
    `rejected` for a transaction that commits (e.g. raft: a retransmission reaches a lagging
    follower after the leader accepted the first copy)."""
    genesis = make_genesis(PARAMS, mode=mode)  # type: ignore[arg-type]
    chain = ChainBuilder(genesis)
    lagging = KeyValueState.for_genesis(genesis, chain.head.state_root)  # still at genesis
    chain.add([chain.tx(_admit(chain, NEW.public))])
    while chain.head.height < K:
        chain.add([])
    tx = chain.tx(Put(b"k", b"v"), signer=NEW)
    committed = chain.add([tx])
    assert committed.receipts[0].status == "ok"  # the up-to-date members commit it

    answer = _service_on(lagging)._admission_check(tx)
    assert answer.startswith("unknown_client")
    assert not is_final_rejection(answer), (
        f"a lagging member's {answer!r} is final for the client, yet the transaction commits"
    )


def test_a_forged_config_submission_costs_no_approval_verification_on_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At submit, a config transaction's approvals are verified (Q Ed25519 checks, inline on
    the event loop) BEFORE the transaction's own signature is checked (on worker threads).
    Anyone can take a change with valid approvals from the ledger, wrap it in transactions
    claiming a member's key with garbage signatures, and make each cost Q verifications on the
    member's event loop: measured 334 us per copy here, so one 16 MiB submit frame of ~30,000
    copies of one forged transaction (no valid signature needed; approvals copied from any
    accepted change) stalls the loop that runs the consensus core for about 10 s, from an
    unauthenticated client when the client port is plain."""
    genesis = make_genesis(PARAMS)
    chain = ChainBuilder(genesis)
    op = _admit(chain, NEW.public)
    real = Transaction.create(MEMBERS[3], genesis.chain_id, b"x", CREATED_MS + 60_000, [op])
    forged = dataclasses.replace(real, signature=bytes(64))
    calls = 0
    inner = signing._VERIFIER

    class Counting:
        def verify(self, *args: Any) -> bool:
            nonlocal calls
            calls += 1
            return inner.verify(*args)

    monkeypatch.setattr(signing, "_VERIFIER", Counting())
    _service_on(chain.app)._admission_check(forged)
    assert calls == 0, (
        f"{calls} approval signatures verified for a transaction with a forged signature"
    )


def test_the_state_cache_is_bounded_in_bytes_not_only_in_entries() -> None:
    """d228597 bounds each CachedTable to STATE_CACHE_MAX entries, whatever their size: with
    default params a client writing and reading 32 KiB values makes a member hold about
    2 GiB of cached values (plus Python overhead), which is not "bounded whatever the size of
    its state" in any useful sense. Expect a byte budget (here: at most 256 MiB).

    (Adjusted by the fix: the original measured STATE_CACHE_MAX x the largest entry, which
    stays the worst case only without a byte budget; now the store's two tables, kv and
    replay, each have STATE_CACHE_BYTES_MAX, and a table read full of the largest values
    holds no more than that.)"""
    p = Params()
    largest = p.key_bytes_max + p.value_bytes_max
    worst = min(store_module.STATE_CACHE_MAX * largest, store_module.STATE_CACHE_BYTES_MAX)
    assert 2 * worst <= 256 << 20, f"worst-case kv + replay cache: {2 * worst / 2**30:.1f} GiB"
    budget = 1 << 20
    value = b"v" * p.value_bytes_max
    table: CachedTable[bytes] = CachedTable(lambda key: value, bytes_max=budget)
    for i in range(200):
        assert table.get(b"k%04d" % i) == value
        assert table.cached_bytes <= budget
    assert table.cached_bytes > budget - largest  # it does cache up to its budget


def test_a_key_revoked_after_an_approval_was_signed_is_not_re_admitted_by_it() -> None:
    """The ledger side of the previous test: approvals of a change expiring far ahead stay
    usable for as long as its expiry, across a revocation of the same key (the replay set only
    covers changes that executed, and this one was refused as too far when first submitted)."""
    from consortium.ledger.admission import REVOKE

    genesis = make_genesis(PARAMS)
    chain = ChainBuilder(genesis)
    year = 365 * 24 * 3600 * 1000
    signed = lambda kind, nonce, expiry: _approved(chain, kind, nonce, expiry)  # noqa: E731
    bomb = signed(ADMIT, b"bomb", CREATED_MS + year)
    first = chain.add([chain.tx(bomb)])
    assert first.receipts[0].reason == "config_expiry_too_far"  # looks dead
    chain.add([chain.tx(signed(ADMIT, b"a2", CREATED_MS + 3_600_000))])
    while chain.head.height < K:
        chain.add([])
    assert NEW.public in chain.app.admitted
    chain.add([chain.tx(signed(REVOKE, b"r", CREATED_MS + 3_600_000))])  # the key is compromised
    while chain.head.height < 2 * K:
        chain.add([])
    assert NEW.public not in chain.app.admitted
    later = CREATED_MS + year - 24 * 3600 * 1000
    replay = chain.add([chain.tx(bomb, expiry_ms=later + 60_000)], proposed_ms=later)
    while chain.head.height < 4 * K:
        chain.add([], proposed_ms=later)
    assert replay.receipts[0].status == "rejected" and NEW.public not in chain.app.admitted, (
        "an approval signed before the revocation re-admitted the revoked key"
    )


def _approved(chain: ChainBuilder, kind: Any, nonce: bytes, expiry: int) -> ConfigChange:
    # (Adjusted by the fix: a change now says when it was created, which must follow the
    # key's last accepted change; each is created when it is signed, at the chain's head.)
    c = ClientChange.create(
        chain.genesis.chain_id,
        kind,
        NEW.public,
        "new",
        nonce,
        expiry,
        created_ms=chain.head.timestamp_ms,
    )
    approvals = tuple(
        (
            MEMBERS[i].public,
            Ed25519Signer(MEMBERS[i]).sign(Domain.CLIENT_CHANGE, c.chain_id, c.body),
        )
        for i in (0, 1, 2)
    )
    return ConfigChange(c, approvals)
