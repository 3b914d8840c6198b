"""The test-only lying member (consortium/testing/faults.py, `forge_receipts`): what it tells
clients must be a lie that only the f+1 tally can refuse, or `bench --lying-receipts`
measures nothing. Its signature and proofs check out; its receipts differ from the honest
ones, and its header is not the one honest members sign."""

from __future__ import annotations

from consortium.crypto.signing import Ed25519Signer
from consortium.protocol.verify import verify_bundle
from consortium.testing.faults import FORGED_REASON, forge_receipts
from tests.ledger.chain_fixture import MEMBERS
from tests.protocol.fixtures import BLOCK, GENESIS, VERIFIER, block_vote, bundle_of


def test_a_lying_members_receipts_verify_one_by_one_but_disagree_with_the_honest_ones() -> None:
    liar = 2
    forged, vote = forge_receipts(BLOCK, Ed25519Signer(MEMBERS[liar]), GENESIS.chain_id, liar)
    honest_vote = block_vote(BLOCK, 1)
    for index, receipt in enumerate(BLOCK.receipts):
        lie = bundle_of(forged, index, vote)
        truth = bundle_of(BLOCK, index, honest_vote)
        assert verify_bundle(truth, GENESIS, VERIFIER) is None
        # Signed by a member, included in the header it signed: nothing but the tally refuses.
        assert verify_bundle(lie, GENESIS, VERIFIER) is None
        assert lie.signer() == liar
        assert lie.receipt.tx_id == receipt.tx_id
        assert (lie.receipt.status, lie.receipt.reason) == ("rejected", FORGED_REASON)
        assert lie.receipt.encode() != receipt.encode()
        assert lie.header.hash != BLOCK.header.hash
        assert lie.header.prev_hash == BLOCK.header.prev_hash
