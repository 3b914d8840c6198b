"""The client library against fake members (tests/client/fakes.py): real ClientServers on
127.0.0.1 whose handlers build real blocks and sign real bundles and reads with the members'
Ed25519 keys.

n = 4, f = 1: a result needs f+1 = 2 distinct members' verified bundles agreeing on the
receipt and block hash; a fast-path read needs the quorum, 3.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import trio

from consortium.client.client import ConsortiumClient, _TxState
from consortium.client.errors import ClientError
from consortium.client.receipts import from_bundles
from consortium.client.sync import SyncClient
from consortium.client.tally import tally
from consortium.crypto.merkle import MerkleTree
from consortium.crypto.signing import Domain, Ed25519Signer
from consortium.ledger.block import Block, receipts_root
from consortium.ledger.certificates import SignedVote, block_signature_body
from consortium.ledger.tx import Put
from consortium.protocol.messages import (
    BlockReceipts,
    SubmitVerdict,
    decode_response,
    encode_block_receipts,
)
from consortium.protocol.receipts import loads, verify_receipt
from tests.client.fakes import (
    GENESIS,
    PARAMS,
    FakeLedger,
    FakeMember,
    client_of,
    cluster,
    committed_in,
    honest,
)
from tests.ledger.chain_fixture import CLIENT, MEMBERS, ChainBuilder, build_chain

# --- transactions ----------------------------------------------------------------------------


async def test_transactions_commit_at_f_plus_1_matching_verified_receipts() -> None:
    members = honest()
    with trio.fail_after(10):
        async with cluster(*members) as c, client_of(c) as client:
            assert client.connected_members() == [0, 1, 2, 3]
            txs = [client.make_tx([Put(b"k%d" % i, b"v")]) for i in range(20)]
            ids = await client.submit(txs)
            assert ids == [t.id for t in txs]
            outcomes = await client.wait(ids, timeout_s=5)
            assert all(committed_in(o, members[0].ledger) for o in outcomes)
            assert all(o.confirmations >= 2 and o.receipt is not None for o in outcomes)
            assert {o.receipt.status for o in outcomes if o.receipt} == {"ok"}
            assert all(m.submits == 1 for m in members)  # one frame per member for all 20
            assert client.counters["bundle_invalid"] == 0


async def test_a_single_lying_member_cannot_commit_a_transaction() -> None:
    ledger = FakeLedger()
    liar = FakeMember(1, FakeLedger(extra_blocks=1))  # validly signed, another block
    with trio.fail_after(10):
        async with (
            cluster(
                FakeMember(0, ledger),
                liar,
                FakeMember(2, ledger, silent=True),
                FakeMember(3, ledger, silent=True),
            ) as c,
            client_of(c) as client,
        ):
            [outcome] = await client.submit_and_wait([client.make_tx([Put(b"k", b"v")])], 0.6)
            assert outcome.status == "pending"
            assert outcome.confirmations == 1
            assert outcome.reason == "1 of 2 confirmations"


async def test_the_honest_result_wins_over_a_liar() -> None:
    ledger = FakeLedger()
    members = [
        FakeMember(0, ledger),
        FakeMember(1, FakeLedger(extra_blocks=1)),
        FakeMember(2, ledger),
        FakeMember(3, ledger, silent=True),
    ]
    with trio.fail_after(10):
        async with cluster(*members) as c, client_of(c) as client:
            [outcome] = await client.submit_and_wait([client.make_tx([Put(b"k", b"v")])], 5)
            assert committed_in(outcome, ledger)
            assert outcome.confirmations == 2


@pytest.mark.parametrize("block_pushes", [False, True])
async def test_bundles_count_once_per_signing_member_on_its_own_connection(
    block_pushes: bool,
) -> None:
    """As single pushes and as "receipts" pushes (whose signer the client reads once)."""
    ledger = FakeLedger()
    members = [
        FakeMember(0, ledger, block_pushes=block_pushes),
        FakeMember(1, ledger, sign_as=0, block_pushes=block_pushes),  # relays 0's signatures
        FakeMember(2, ledger, sign_as=3, block_pushes=block_pushes),  # same, for member 3
        FakeMember(3, ledger, silent=True),
    ]
    with trio.fail_after(10):
        async with cluster(*members) as c, client_of(c) as client:
            [outcome] = await client.submit_and_wait([client.make_tx([Put(b"k", b"v")])], 0.6)
            assert outcome.status == "pending" and outcome.confirmations == 1
            assert client.counters["bundle_wrong_signer"] >= 2


async def test_a_receipts_push_with_a_wrong_proof_counts_for_nothing() -> None:
    """Its block signature is good (checked once per push): each entry's proof still must be,
    while no proof of that receipt in that header has been checked yet."""
    ledger = FakeLedger()
    members = [
        FakeMember(0, ledger, block_pushes=True, bad_proofs=True),
        FakeMember(1, ledger, block_pushes=True, bad_proofs=True),
        FakeMember(2, ledger, silent=True),
        FakeMember(3, ledger, silent=True),
    ]
    with trio.fail_after(10):
        async with cluster(*members) as c, client_of(c) as client:
            [outcome] = await client.submit_and_wait([client.make_tx([Put(b"k", b"v")])], 0.6)
            assert outcome.status == "pending" and outcome.confirmations == 0
            assert client.counters["bundle_invalid"] >= 2  # (more: resubmitted, pushed again)
            assert client.counters["bundle_proven_before"] == 0


async def test_a_receipt_proven_in_a_header_is_not_proven_again_for_the_next_signer() -> None:
    """The second member's push of the same block vouches for the receipt the first one's
    proved (its signature over the header is checked; the header's receipts root fixes the
    receipt at its index): no second decode and Merkle check, and the receipt document, made
    of both members' bundles, still verifies offline."""
    members = honest(block_pushes=True)
    with trio.fail_after(10):
        async with cluster(*members) as c, client_of(c) as client:
            txs = [client.make_tx([Put(b"k%d" % i, b"v")]) for i in range(20)]
            outcomes = await client.submit_and_wait(txs, 5)
            assert all(committed_in(o, members[0].ledger) for o in outcomes)
            # Each decided by its second member's push, through the shortcut.
            assert client.counters["bundle_proven_before"] == 20
            assert client.counters["bundle_invalid"] == 0
            for o in outcomes:
                assert o.proof is not None and len(set(o.proof.signers())) >= 2
                assert verify_receipt(loads(o.receipt_document(GENESIS)), GENESIS) is None


async def test_a_push_of_another_header_or_another_entry_is_proven_in_full() -> None:
    """The shortcut needs the very header proven before and the very entry: a member whose
    block differs (validly signed, another block) is checked in full and does not agree."""
    ledger = FakeLedger()
    members = [
        FakeMember(0, ledger, block_pushes=True),
        FakeMember(1, FakeLedger(extra_blocks=1), block_pushes=True),
        FakeMember(2, ledger, silent=True),
        FakeMember(3, ledger, silent=True),
    ]
    with trio.fail_after(10):
        async with cluster(*members) as c, client_of(c) as client:
            [outcome] = await client.submit_and_wait([client.make_tx([Put(b"k", b"v")])], 0.6)
            assert outcome.status == "pending" and outcome.confirmations == 1
            assert client.counters["bundle_proven_before"] == 0


def _push(member: int, block: Block, indexes: list[int], bad_proof: bool = False) -> BlockReceipts:
    """Member `member`'s "receipts" push of `block`'s entries at `indexes`, as it sends it
    (bad_proof: each entry's Merkle path one hash too long)."""
    tree = MerkleTree([r.encode() for r in block.receipts])
    body = block_signature_body(block.height, block.hash, member)
    signature = Ed25519Signer(MEMBERS[member]).sign(Domain.BLOCK, GENESIS.chain_id, body)
    frame = encode_block_receipts(
        block.header, SignedVote(body, signature), tree, [block.receipts[i] for i in indexes]
    )
    push = decode_response(frame, 1 << 24)
    assert isinstance(push, BlockReceipts)
    if bad_proof:
        for entry in push.entries:
            entry[1].append(b"\0" * 32)
    return push


async def test_a_wrong_proof_counts_once_that_receipt_is_proven_under_that_header() -> None:
    """A member's signature over a header vouches for every receipt in it: once one member's
    proof put the receipt at its index under that header, another member's push of the same
    entry under the same header counts on its checked signature, whatever proof it carries.
    Before that, its own proof must hold."""
    b = ChainBuilder(genesis=GENESIS)
    tx = b.tx(Put(b"k", b"v"))
    block = b.add([tx, b.tx(Put(b"o", b"v"))])
    client = ConsortiumClient(GENESIS, CLIENT)
    client._txs[tx.id] = state = _TxState(tx)
    client._on_block_receipts(1, _push(1, block, [0], bad_proof=True))  # nothing proven yet
    assert client.counters["bundle_invalid"] == 1 and not state.vouched
    client._on_block_receipts(0, _push(0, block, [0]))
    assert state.proven is not None and state.confirmed_at is None
    client._on_block_receipts(2, _push(2, block, [0], bad_proof=True))
    assert client.counters["bundle_proven_before"] == 1
    decided = tally(state.vouched, state.rejected, client.confirmations_needed)
    assert decided.status == "committed" and decided.block_hash == block.hash
    assert state.proven is None  # forgotten at the decision
    assert verify_receipt(from_bundles(decided.bundles), GENESIS) is None


async def test_another_entry_in_the_same_header_is_not_taken_for_the_proven_one() -> None:
    """A block holds the id twice; a Byzantine member pushes the second occurrence's receipt
    (rejected: duplicate; validly proven) first. Honest members' pushes of the first receipt
    under the very same header are not credited with it (the shortcut needs the very entry)."""
    b = ChainBuilder(genesis=GENESIS)
    tx = b.tx(Put(b"k", b"v"))
    block = b.add([tx, tx])
    assert block.receipts[1].reason == "duplicate"
    client = ConsortiumClient(GENESIS, CLIENT)
    client._txs[tx.id] = state = _TxState(tx)
    client._on_block_receipts(1, _push(1, block, [1]))
    client._on_block_receipts(0, _push(0, block, [0]))
    client._on_block_receipts(2, _push(2, block, [0]))
    decided = tally(state.vouched, state.rejected, client.confirmations_needed)
    assert decided.status == "committed"
    assert all(v.receipt == block.receipts[0] for v in decided.bundles)
    assert client.counters["bundle_proven_before"] == 1  # member 2, after member 0's proof


async def test_the_same_entry_under_another_header_is_proven_in_full() -> None:
    """A liar signs a header whose receipts root holds our receipt unchanged (another receipt
    forged) and pushes first: honest pushes of the real header are proven in full (the
    shortcut needs the very header), and the receipt document verifies offline."""
    b = ChainBuilder(genesis=GENESIS)
    tx, other = b.tx(Put(b"k", b"v")), b.tx(Put(b"o", b"v"))
    block = b.add([tx, other])
    lie = (
        block.receipts[0],
        dataclasses.replace(block.receipts[1], status="rejected", reason="x", results=()),
    )
    forged = Block(
        dataclasses.replace(block.header, receipts_root=receipts_root(lie)), block.txs, lie
    )
    client = ConsortiumClient(GENESIS, CLIENT)
    client._txs[tx.id] = state = _TxState(tx)
    client._on_block_receipts(1, _push(1, forged, [0]))
    client._on_block_receipts(0, _push(0, block, [0]))
    client._on_block_receipts(2, _push(2, block, [0]))
    decided = tally(state.vouched, state.rejected, client.confirmations_needed)
    assert decided.status == "committed" and decided.block_hash == block.hash
    assert verify_receipt(from_bundles(decided.bundles), GENESIS) is None


async def test_a_committed_bundle_in_the_submit_reply_counts() -> None:
    members = honest(in_verdict=True)
    with trio.fail_after(10):
        async with cluster(*members) as c, client_of(c) as client:
            [outcome] = await client.submit_and_wait([client.make_tx([Put(b"k", b"v")])], 5)
            assert committed_in(outcome, members[0].ledger)


async def test_a_stateless_rejection_is_final_at_f_plus_1_members() -> None:
    with trio.fail_after(10):
        async with cluster(*honest(reject="bad_signature")) as c, client_of(c) as client:
            [outcome] = await client.submit_and_wait([client.make_tx([Put(b"k", b"v")])], 5)
            assert (outcome.status, outcome.reason) == ("rejected", "bad_signature")
            assert outcome.confirmations >= 2


@pytest.mark.parametrize("reason", ["expired", "overloaded: too many pending receipts"])
async def test_a_rejection_that_may_change_is_never_final(reason: str) -> None:
    with trio.fail_after(10):
        async with cluster(*honest(reject=reason)) as c, client_of(c) as client:
            [outcome] = await client.submit_and_wait([client.make_tx([Put(b"k", b"v")])], 0.6)
            assert outcome.status == "pending"
            assert client.counters["resubmitted"] >= 1


async def test_unknown_client_is_never_final_but_shown_in_the_pending_reason() -> None:
    """unknown_client depends on the member's state (a lagging member has not executed the
    admitting block yet), so even every member saying it leaves the outcome pending; the
    reason names who says it, so the user sees why."""
    with trio.fail_after(10):
        async with cluster(*honest(reject="unknown_client")) as c, client_of(c) as client:
            [outcome] = await client.submit_and_wait([client.make_tx([Put(b"k", b"v")])], 0.6)
            assert outcome.status == "pending"
            assert "members report unknown_client (n1, n2, n3, n4)" in outcome.reason, (
                outcome.reason
            )
            assert client.counters["resubmitted"] >= 1


async def test_one_member_rejecting_is_not_enough() -> None:
    ledger = FakeLedger()
    members = [FakeMember(0, ledger, reject="bad_signature")] + [
        FakeMember(i, ledger, silent=True) for i in (1, 2, 3)
    ]
    with trio.fail_after(10):
        async with cluster(*members) as c, client_of(c) as client:
            [outcome] = await client.submit_and_wait([client.make_tx([Put(b"k", b"v")])], 0.5)
            assert outcome.status == "pending"


async def test_silent_members_get_the_transaction_again_until_it_commits() -> None:
    members = honest(drop_submits=2)
    with trio.fail_after(10):
        async with cluster(*members) as c, client_of(c, retransmit_s=0.1) as client:
            [outcome] = await client.submit_and_wait([client.make_tx([Put(b"k", b"v")])], 5)
            assert committed_in(outcome, members[0].ledger)
            assert client.counters["resubmitted"] >= 2
            assert all(m.submits >= 3 for m in members)


async def test_a_member_that_is_down_is_tolerated_and_rejoined_when_it_returns() -> None:
    members = honest()
    with trio.fail_after(15):
        async with cluster(*members[:3]) as c, client_of(c, connect_timeout_s=0.3) as client:
            assert client.connected_members() == [0, 1, 2]
            [outcome] = await client.submit_and_wait([client.make_tx([Put(b"a", b"1")])], 5)
            assert committed_in(outcome, members[0].ledger)
            # Member 2 goes away and comes back on its port; the client reconnects.
            port = c.ports[2]
            c.stop(2)
            while 2 in client.connected_members():  # noqa: ASYNC110
                await trio.sleep(0.01)
            await c.start(members[2], port=port)
            assert await client.wait_connected(3, timeout_s=5)
            assert client.connected_members() == [0, 1, 2]


async def test_waiting_for_an_unknown_id_times_out_as_pending() -> None:
    with trio.fail_after(10):
        async with cluster(*honest()) as c, client_of(c) as client:
            [outcome] = await client.wait([b"\x01" * 32], timeout_s=0.1)
            assert (outcome.status, outcome.reason) == ("pending", "unknown to this client")


async def test_a_client_must_be_entered_and_needs_keys_to_sign() -> None:
    client = ConsortiumClient(GENESIS)
    with pytest.raises(ClientError, match="no key"):
        client.make_tx([Put(b"k", b"v")])
    with pytest.raises(ClientError, match="async with"):
        await client.status(0)
    keyed = ConsortiumClient(GENESIS, CLIENT)
    tx = keyed.make_tx([Put(b"k", b"v")], expiry_s=30, nonce=b"fixed")
    assert tx.nonce == b"fixed" and tx.verify_signature(keyed.verifier)
    assert abs(tx.expiry_ms - (time.time() + 30) * 1000) < 5_000
    assert keyed.confirmations_needed == GENESIS.f + 1 == 2


# --- reads and single-member requests --------------------------------------------------------


async def test_a_read_needs_a_quorum_of_matching_signed_replies() -> None:
    ledger = FakeLedger()
    truth = {b"k": b"true"}
    members = [
        FakeMember(0, ledger, values=truth),
        FakeMember(1, ledger, values=truth),
        FakeMember(2, ledger, values=truth),
        FakeMember(3, ledger, values={b"k": b"lie"}),
    ]
    with trio.fail_after(10):
        async with cluster(*members) as c, client_of(c) as client:
            assert await client.get(b"k", timeout_s=5) == b"true"
            assert await client.get(b"absent", timeout_s=5) is None


async def test_a_read_without_a_quorum_is_a_clear_error() -> None:
    ledger = FakeLedger()
    members = [
        FakeMember(0, ledger, values={b"k": b"a"}),
        FakeMember(1, ledger, values={b"k": b"a"}),
        FakeMember(2, ledger, values={b"k": b"b"}),
        FakeMember(3, ledger, values={b"k": b"a"}, sign_as=0),  # forged attribution
    ]
    with trio.fail_after(10):
        async with cluster(*members) as c, client_of(c) as client:
            with pytest.raises(ClientError, match=r"no 3 members agreed.*signed as member 0"):
                await client.get(b"k", timeout_s=1)


async def test_status_and_block_requests_to_one_member() -> None:
    members = honest()
    members[1].status = "not json"
    with trio.fail_after(10):
        async with cluster(*members) as c, client_of(c) as client:
            assert await client.status(0, timeout_s=5) == {"member": 0}
            with pytest.raises(ClientError, match="status: not JSON"):
                await client.status(1, timeout_s=5)
            await client.submit_and_wait([client.make_tx([Put(b"k", b"v")])], 5)
            head = members[0].ledger.builder.head
            assert await client.block(2, head.height, timeout_s=5) == head.to_array()
            assert await client.block(2, 999, timeout_s=5) is None
            c.stop(3)
            while 3 in client.connected_members():  # noqa: ASYNC110
                await trio.sleep(0.01)
            with pytest.raises(ClientError, match=r"did not answer status within 0\.2 s"):
                await client.status(3, timeout_s=0.2)


# --- the blocking wrapper --------------------------------------------------------------------


def test_the_sync_client_submits_and_reads_from_outside_trio() -> None:
    members = honest(values={b"k": b"v"})
    ready = threading.Event()
    box: dict[str, Any] = {}

    def serve() -> None:
        async def main() -> None:
            async with cluster(*members) as c:
                box["addresses"] = c.addresses()
                box["token"] = trio.lowlevel.current_trio_token()
                box["stop"] = stop = trio.Event()
                ready.set()
                await stop.wait()

        trio.run(main)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert ready.wait(10)
        options = {"addresses": box["addresses"], "connect_timeout_s": 2.0}
        with SyncClient(GENESIS, CLIENT, **options) as client:
            [outcome] = client.submit_and_wait([client.make_tx([Put(b"k", b"w")])], timeout_s=5)
            assert committed_in(outcome, members[0].ledger)
            assert client.get(b"k", timeout_s=5) == b"v"
            assert client.status(0, timeout_s=5) == {"member": 0}
            # submit returns the id at once; wait on it in a later call, same connection.
            tx = client.make_tx([Put(b"k2", b"x")])
            assert client.submit([tx]) == [tx.id]
            later = client.wait_one(tx.id, timeout_s=5)
            assert committed_in(later, members[0].ledger)
            assert later.proof is not None
            assert verify_receipt(later.proof, GENESIS) is None
            assert client.lookup(tx.id, timeout_s=5).status == "committed"
            with pytest.raises(ClientError, match="no address for member 9"):
                client.status(9, timeout_s=0.1)  # errors come through as they are
        # A fresh wrapper (another connection) waits on an id it never submitted.
        other = SyncClient(GENESIS, **options)
        try:
            assert committed_in(other.wait_one(tx.id, timeout_s=5), members[0].ledger)
            unknown = other.wait_one(b"\x07" * 32, timeout_s=0.3)
            assert unknown.status == "pending"
        finally:
            other.close()
            other.close()  # idempotent
    finally:
        stop: Callable[[], None] = box["stop"].set
        trio.from_thread.run_sync(stop, trio_token=box["token"])
        thread.join(10)


# --- receipts, lookups and waiting on ids submitted elsewhere ----------------------------------


async def test_a_committed_outcome_carries_a_receipt_document_that_verifies_offline() -> None:
    members = honest()
    with trio.fail_after(10):
        async with cluster(*members) as c, client_of(c) as client:
            tx = client.make_tx([Put(b"k", b"v")])
            [outcome] = await client.submit_and_wait([tx], 5)
            assert outcome.proof is not None
            signers = outcome.proof.signers()
            assert len(set(signers)) == len(signers) >= 2
            text = outcome.receipt_document(GENESIS)
            proof = loads(text)
            assert proof.receipt == outcome.receipt
            assert proof.block_hash == outcome.block_hash
            assert verify_receipt(proof, GENESIS) is None
            [pending] = await client.wait([b"\x01" * 32], 0.1)
            with pytest.raises(ClientError, match="pending: no receipt yet"):
                pending.receipt_document(GENESIS)


async def test_another_client_waits_on_an_id_it_did_not_submit() -> None:
    members = honest()
    with trio.fail_after(10):
        async with cluster(*members) as c, client_of(c) as submitter, client_of(c) as watcher:
            tx = submitter.make_tx([Put(b"k", b"v")])
            [tx_id] = await submitter.submit([tx])
            outcome = await watcher.wait_one(tx_id, timeout_s=5)
            assert committed_in(outcome, members[0].ledger)
            assert outcome.proof is not None and verify_receipt(outcome.proof, GENESIS) is None
            assert all(m.watches >= 1 for m in members)
            # Never submitted anywhere: pending at the deadline, watched again on the way.
            nowhere = await watcher.wait_one(b"\x02" * 32, timeout_s=0.7)
            assert nowhere.status == "pending"
            assert all(m.watches >= 3 for m in members)  # retransmit_s = 0.2: asked again


async def test_lookup_decides_at_f_plus_1_agreeing_members_and_says_who_has_none() -> None:
    ledger = FakeLedger()
    liar = FakeMember(1, FakeLedger(extra_blocks=1))  # its own block, validly signed
    members = [FakeMember(0, ledger), liar, FakeMember(2, ledger), FakeMember(3, ledger)]
    with trio.fail_after(10):
        async with cluster(*members) as c, client_of(c) as client:
            tx = client.make_tx([Put(b"k", b"v")])
            ledger.commit([tx])
            outcome = await client.lookup(tx.id, timeout_s=5)
            assert committed_in(outcome, ledger)
            assert outcome.proof is not None and 1 not in outcome.proof.signers()
            unknown = await client.lookup(b"\x03" * 32, timeout_s=5)
            assert unknown.status == "unknown"
            assert unknown.reason.startswith("unknown to all 4 members"), unknown.reason
            # Only the liar knows it: one member is not enough.
            liar.ledger.commit([tx2 := client.make_tx([Put(b"j", b"v")])])
            lonely = await client.lookup(tx2.id, timeout_s=5)
            assert lonely.status == "pending" and lonely.confirmations == 1


async def test_an_id_some_members_do_not_hold_is_pending_not_unknown() -> None:
    """ "unknown" needs every member's word: one that does not answer leaves it pending."""
    ledger = FakeLedger()
    members = [FakeMember(i, ledger) for i in range(3)]
    with trio.fail_after(10):
        async with cluster(*members) as c, client_of(c, connect_timeout_s=0.3) as client:
            outcome = await client.lookup(b"\x03" * 32, timeout_s=0.5)
            assert outcome.status == "pending"
            assert outcome.reason.endswith("no receipt at n1, n2, n3"), outcome.reason


async def test_a_transaction_over_the_size_limit_is_rejected_with_the_reason() -> None:
    """Members cannot decode an oversize transaction, so their verdict carries no id; its
    position in the request names it. A valid transaction sent with it still commits."""
    members = honest()
    with trio.fail_after(10):
        async with cluster(*members) as c, client_of(c) as client:
            good = client.make_tx([Put(b"k", b"v")])
            big = client.make_tx([Put(b"k", b"x" * (PARAMS.tx_bytes_max + 1))])
            outcomes = await client.submit_and_wait([good, big], 5)
            assert committed_in(outcomes[0], members[0].ledger)
            assert outcomes[1].status == "rejected", outcomes[1]
            assert outcomes[1].reason.startswith("malformed: transaction body"), outcomes[1]
            assert outcomes[1].confirmations >= 2


async def test_a_reply_with_fewer_verdicts_than_transactions_names_no_one_by_position() -> None:
    """A member's verdict list that does not match the request cannot be read by position:
    the empty ids in it are ignored, not pinned on whichever transaction sat there."""
    client = ConsortiumClient(GENESIS, CLIENT)
    a, b = (client.make_tx([Put(k, b"v")]) for k in (b"a", b"b"))
    for tx in (a, b):
        client._txs[tx.id] = _TxState(tx)
    verdicts = [SubmitVerdict(b"", "rejected", "malformed: x").to_array()]
    client._on_submit_reply(0, verdicts, (a.id, b.id))
    assert not client._txs[a.id].rejected and not client._txs[b.id].rejected
    client._on_submit_reply(0, [*verdicts, verdicts[0]], (a.id, b.id))
    assert client._txs[a.id].rejected == {0: "malformed: x"} == client._txs[b.id].rejected


async def test_with_no_member_reachable_the_outcome_says_so_not_pending() -> None:
    with trio.fail_after(10):
        async with cluster() as c, client_of(c, connect_timeout_s=0.3) as client:
            tx = client.make_tx([Put(b"k", b"v")])
            [outcome] = await client.submit_and_wait([tx], 0.3)
            assert outcome.status == "unreachable", outcome
            assert outcome.reason.startswith("no member reachable: n1: "), outcome.reason
            lookup = await client.lookup(tx.id, timeout_s=5)
            assert lookup.status == "unreachable", lookup


async def test_a_transaction_handed_to_a_member_is_pending_even_when_members_go_away() -> None:
    """Once a member took it, it may commit: pending, not unreachable, after they go."""
    members = honest(silent=True)
    with trio.fail_after(10):
        async with cluster(*members) as c, client_of(c) as client:
            tx = client.make_tx([Put(b"k", b"v")])
            await client.submit([tx])
            await client.flush()
            for i in range(4):
                c.stop(i)
            while client.connected_members():  # noqa: ASYNC110
                await trio.sleep(0.01)
            [outcome] = await client.wait([tx.id], 0.1)
            assert outcome.status == "pending", outcome


async def test_a_client_cancelled_while_it_connects_leaves_nothing_open(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Cancelled while entering (waiting for members to accept), the client left its nursery
    open, and trio reported the cancel scope stack corrupted when the caller's scope ended."""
    async with cluster() as c:  # no member listens: every connect attempt fails, retried
        client = ConsortiumClient(GENESIS, CLIENT, addresses=c.addresses(), connect_timeout_s=60)
        with trio.move_on_after(1) as scope:
            async with client:
                raise AssertionError("entered although no member is up")
        assert scope.cancelled_caught
        assert client.connected_members() == []
        await trio.sleep(1)  # the caller's scopes still work
        with pytest.raises(ClientError, match="not connected"):
            client._require_open()


# --- major: "rejected" that is not final ---------------------------------------------------


# (Review 2 of issue 6: a failing test that showed what the review found.)
async def test_unknown_client_from_f_plus_1_members_is_not_a_final_rejection() -> None:
    """client.py FINAL_REJECTIONS holds 'unknown_client' as 'decided alike from the bytes',
    but since client admission (issue 6) it depends on each member's head: a member that has
    not executed the admission yet (catching up after a restart, or a Byzantine one) answers
    'unknown_client' while up-to-date members accept and order the transaction. With f+1 = 2
    such answers `wait` returns 'rejected' (tx submit exits 1) for a transaction that then
    commits: an ambiguous failure, which the issue rules out."""
    client = ConsortiumClient(GENESIS)
    tx = build_chain(0).tx(Put(b"k", b"v"))
    client._txs[tx.id] = _TxState(tx, first_sent=trio.current_time())
    for lagging in (0, 1):
        client._on_submit_reply(lagging, [[tx.id, "rejected", "unknown_client"]])
    for up_to_date in (2, 3):
        client._on_submit_reply(up_to_date, [[tx.id, "accepted", ""]])
    outcome = client.outcome(tx.id)
    assert outcome.status == "pending", f"{outcome.status}: {outcome.reason}"
