"""A member's submit path for client changes (node/service.py): the transaction's own
signature first, then the change's approvals, on the worker threads."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from consortium.crypto import signing
from consortium.crypto.keys import KeyPair
from consortium.crypto.signing import Ed25519Verifier
from consortium.ledger.admission import ADMIT, ClientChange
from consortium.ledger.state import KeyValueState
from consortium.ledger.tx import ConfigChange, Transaction
from consortium.node import api
from consortium.node.bundles import ReceiptBundles
from consortium.node.service import ClientService
from consortium.node.verification import TxSignatureCache
from tests.ledger.chain_fixture import MEMBERS, make_genesis

NEW = KeyPair.from_seed(hashlib.sha256(b"service admission client").digest())
GENESIS = make_genesis()


class _Conn:
    def __init__(self) -> None:
        self.watched: set[bytes] = set()
        self.replies: list[Any] = []

    def reply(self, req_id: int, payload: Any) -> None:
        self.replies.append(payload)


def _service() -> tuple[ClientService, list[Transaction]]:
    proposed: list[Transaction] = []

    async def propose(txs: list[Transaction]) -> None:
        proposed.extend(txs)

    node = SimpleNamespace(
        genesis=GENESIS,
        chain_id=GENESIS.chain_id,
        app=KeyValueState.for_genesis(GENESIS, b"\0" * 32),
        store=SimpleNamespace(known_tx_ids=lambda ids: set(), receipt_positions=lambda ids: {}),
        tx_cache=TxSignatureCache(Ed25519Verifier()),
        metrics=SimpleNamespace(submitted=0, rejected_at_submit={}),
        propose=propose,
        watch=lambda tx_id, conn, expiry: True,
        first_receipt_bundle=lambda tx_id: None,
        expiry_now_ms=lambda: int(time.time() * 1000),
    )
    service = ClientService.__new__(ClientService)
    service.node = node  # type: ignore[assignment]
    service._bundles = ReceiptBundles(node)  # type: ignore[arg-type]
    return service, proposed


def _change_tx(signers: tuple[int, ...], *, nonce: bytes) -> Transaction:
    now = int(time.time() * 1000)
    change = ClientChange.create(
        GENESIS.chain_id, ADMIT, NEW.public, "new", b"c", now + 3_600_000, created_ms=now
    )
    op = ConfigChange(
        change, tuple(change.approve(signing.Ed25519Signer(MEMBERS[i])) for i in signers)
    )
    return Transaction.create(MEMBERS[3], GENESIS.chain_id, nonce, now + 60_000, [op])


async def test_approvals_are_checked_after_the_signature_and_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service, proposed = _service()
    good = _change_tx((0, 1, 2), nonce=b"good")
    short = _change_tx((0, 1), nonce=b"short")
    forged = dataclasses.replace(_change_tx((0, 1, 2), nonce=b"forged"), signature=bytes(64))
    loop_thread = threading.get_ident()
    on_loop = 0
    inner = signing._VERIFIER

    class Counting:
        def verify(self, *args: Any) -> bool:
            nonlocal on_loop
            on_loop += threading.get_ident() == loop_thread
            return inner.verify(*args)

    monkeypatch.setattr(signing, "_VERIFIER", Counting())
    conn = _Conn()
    request = api.SubmitRequest(1, [t.to_array() for t in (good, short, forged)])
    await service._submit(conn, request)  # type: ignore[arg-type]
    [verdicts] = conn.replies
    assert [v[1] for v in verdicts] == ["accepted", "rejected", "rejected"]
    assert verdicts[1][2].startswith("config_no_quorum"), verdicts[1]
    assert verdicts[2][2] == "bad_signature"
    assert proposed == [good]
    assert on_loop == 0, f"{on_loop} approval signatures verified on the event loop"
