"""A member's submit path (node/service.py): for a client change, the transaction's own
signature first, then the change's approvals, on the worker threads; the client check against
the member's state, whose `unknown_client` is never final; a transaction already in the ledger
answered with its receipt without holding the event loop."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
import trio

from consortium.client.tally import is_final_rejection
from consortium.crypto import signing
from consortium.crypto.keys import KeyPair
from consortium.crypto.signing import Domain, Ed25519Signer, Ed25519Verifier
from consortium.ledger.admission import ADMIT, ClientChange
from consortium.ledger.genesis import Params
from consortium.ledger.state import KeyValueState
from consortium.ledger.tx import ConfigChange, Put, Transaction
from consortium.node.client_port import ClientConnection
from consortium.node.service import ClientService
from consortium.node.verification import TxSignatureCache
from consortium.protocol.messages import SubmitRequest
from tests.ledger.chain_fixture import CREATED_MS, MEMBERS, ChainBuilder, build_chain, make_genesis
from tests.node.fakes import ReceiptNode, max_gap_while, open_store

K = 4
PARAMS = Params(checkpoint_interval=K, window=2 * K)
NEW = KeyPair.from_seed(hashlib.sha256(b"service admission client").digest())
GENESIS = make_genesis()


class _Conn:
    """What the submit path uses of a connection (client_port.ClientConnection)."""

    peer = "127.0.0.1:1"
    open = True

    def __init__(self) -> None:
        self.watched: set[bytes] = set()
        self.replies: list[Any] = []

    def close_soon(self, reason: str, message: str) -> None:
        raise AssertionError(f"closed: {message}")

    def reply(self, req_id: int, payload: Any) -> None:
        self.replies.append(payload)


def _service(leader: int | None = None) -> tuple[ClientService, list[Transaction]]:
    """A submit path over a stand-in member; `leader`: the raft leader it names to clients."""
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
        first_receipt_bundle=lambda tx_id: None,
        expiry_now_ms=lambda: int(time.time() * 1000),
        leader_hint=lambda: leader,
        add_block_listener=lambda listener: None,
    )
    return ClientService(node), proposed  # type: ignore[arg-type]


def _change_tx(signers: tuple[int, ...], *, nonce: bytes) -> Transaction:
    now = int(time.time() * 1000)
    change = ClientChange.create(
        GENESIS.chain_id, ADMIT, NEW.public, "new", b"c", now + 3_600_000, created_ms=now
    )
    op = ConfigChange(
        change, tuple(change.approve(signing.Ed25519Signer(MEMBERS[i])) for i in signers)
    )
    return Transaction.create(MEMBERS[3], GENESIS.chain_id, nonce, now + 60_000, [op])


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


async def test_approvals_are_checked_after_the_signature_and_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with trio.fail_after(10):
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
        request = SubmitRequest(1, [t.to_array() for t in (good, short, forged)])
        await service._submit(conn, request)  # type: ignore[arg-type]
        [verdicts] = conn.replies
        assert [v[1] for v in verdicts] == ["accepted", "rejected", "rejected"]
        assert verdicts[1][2].startswith("config_no_quorum"), verdicts[1]
        assert verdicts[2][2] == "bad_signature"
        assert proposed == [good]
        assert on_loop == 0, f"{on_loop} approval signatures verified on the event loop"


@pytest.mark.parametrize(("leader", "detail"), [(None, ""), (2, "leader:2")])
async def test_an_accepted_transaction_names_the_raft_leader_a_follower_knows(
    leader: int | None, detail: str
) -> None:
    """A raft follower accepts and forwards; its verdict names the leader, so the client
    submits straight there next (client/client.py _on_submit_reply)."""
    service, proposed = _service(leader)
    conn = _Conn()
    await service._submit(conn, SubmitRequest(1, [_change_tx((0, 1, 2), nonce=b"hint").to_array()]))  # type: ignore[arg-type]
    [[verdict]] = conn.replies
    assert verdict[1:] == ["accepted", detail] and len(proposed) == 1


# Review 1 (issue 6): client admission as merged (69217cf) (failing tests then).
@pytest.mark.parametrize("mode", ["pbft", "raft"])
def test_a_lagging_member_s_unknown_client_is_not_reported_as_final(mode: str) -> None:
    """unknown_client became state-dependent with admission: a member that has not executed
    the block admitting a key still answers plain `unknown_client` at submit, and the client
    library treats that as FINAL (client/tally.py FINAL_REJECTIONS; f+1 in pbft, ONE member in
    raft), while the up-to-date members commit the very same transaction. The client then reports
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


# (Review 2 of issue 6: a failing test that showed what the review found. "The same cost as
# above" is that of test_a_watch_of_committed_ids_does_not_freeze_the_members_event_loop, in
# tests/node/test_watches.py.)
async def test_a_submit_of_committed_transactions_does_not_freeze_the_members_event_loop(
    tmp_path: Path,
) -> None:
    """service.py _submit: an id already in the ledger is answered with its first receipt,
    built per transaction (the same cost as above) before any check and without yielding. A
    submit frame repeating one committed transaction (its bytes are public: `block`/follow
    return them) costs the same per copy; 16 MiB frames hold ~80,000 copies."""
    chain = build_chain(1, txs_per_block=512)
    node = ReceiptNode(0, open_store(tmp_path, "m0"))
    node.append(chain, 0)

    class _App:
        admitted: ClassVar[dict[bytes, str]] = {}

    class _Metrics:
        submitted = 0
        rejected_at_submit: ClassVar[dict[str, int]] = {}

    node.app = _App()  # type: ignore[attr-defined]
    node.metrics = _Metrics()  # type: ignore[attr-defined]
    node.chain_id = GENESIS.chain_id  # type: ignore[attr-defined]
    svc = ClientService(node)  # type: ignore[arg-type]
    conn = ClientConnection(1, "attacker", frames_max=100_000)
    txs = [tx.to_array() for tx in chain.blocks[0][0].txs][:300]

    async def work() -> None:
        await svc.handle(conn, SubmitRequest(1, txs))

    gap = await max_gap_while(work)
    node.store.close()
    assert gap < 0.25, f"the event loop was frozen for {gap:.2f} s of CPU by one submit request"
