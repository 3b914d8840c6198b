"""The f+1 tally (client/tally.py), pure: no sockets, no clock. Each member's vouch is its
verified bundle; the tally counts distinct members agreeing on the receipt AND the block.

n = 4, f = 1: pbft needs f+1 = 2 agreeing members, raft 1.
"""

from __future__ import annotations

import pytest

from consortium.client.tally import Vouch, confirmations, is_final_rejection, tally
from consortium.protocol.verify import Bundle
from tests.ledger.chain_fixture import ChainBuilder
from tests.protocol.fixtures import BLOCK, block_vote, bundle_of, good_bundle, make_block

F_PLUS_1 = 2
# A liar's block: validly signed by the liar, another block (one more block before it).
_fork = ChainBuilder()
_fork.add([])
FORK = make_block(_fork)


def vouch(bundle: Bundle) -> Vouch:
    return Vouch(bundle.receipt.encode(), bundle.header.hash, bundle)


def honest(member: int, index: int = 2) -> Vouch:
    return vouch(good_bundle(index, member))


def liar(member: int, index: int = 2) -> Vouch:
    return vouch(bundle_of(FORK, index, block_vote(FORK, member)))


def test_f_plus_1_distinct_members_agreeing_commit_and_f_do_not() -> None:
    one = tally({0: honest(0)}, {}, F_PLUS_1)
    assert (one.status, one.confirmations, one.reason) == ("pending", 1, "1 of 2 confirmations")
    assert one.bundles == () and one.block_hash is None
    two = tally({0: honest(0), 3: honest(3)}, {}, F_PLUS_1)
    assert (two.status, two.confirmations) == ("committed", 2)
    assert two.block_hash == BLOCK.hash
    assert [b.signer() for b in two.bundles] == [0, 3]  # in the order they came
    assert two.reason == BLOCK.receipts[2].reason
    three = tally({2: honest(2), 0: honest(0), 1: honest(1)}, {}, F_PLUS_1)
    assert three.confirmations == 3 and [b.signer() for b in three.bundles] == [2, 0, 1]


def test_a_lying_member_never_makes_up_a_quorum_and_the_honest_result_wins() -> None:
    assert tally({0: honest(0), 1: liar(1)}, {}, F_PLUS_1).status == "pending"
    decided = tally({1: liar(1), 0: honest(0), 2: honest(2)}, {}, F_PLUS_1)
    assert decided.status == "committed" and decided.block_hash == BLOCK.hash
    assert {b.signer() for b in decided.bundles} == {0, 2}


def test_agreement_is_on_the_receipt_and_the_block_together() -> None:
    """Same block, another receipt (another transaction's, or a tampered result): no agreement;
    same receipt bytes in another block: none either."""
    other_receipt = honest(1, index=3)
    assert tally({0: honest(0), 1: other_receipt}, {}, F_PLUS_1).status == "pending"
    a, b = honest(0), honest(1)
    moved = Vouch(b.receipt, FORK.hash, b.bundle)
    assert tally({0: a, 1: moved}, {}, F_PLUS_1).status == "pending"
    assert confirmations({0: a, 1: moved}, a.receipt, a.block_hash) == 1
    assert confirmations({0: a, 1: b}, a.receipt, a.block_hash) == 2


def test_a_final_rejection_needs_f_plus_1_members_saying_the_same() -> None:
    assert tally({}, {0: "bad_signature"}, F_PLUS_1).status == "pending"
    split = tally({}, {0: "bad_signature", 1: "wrong_chain"}, F_PLUS_1)
    assert split.status == "pending" and split.confirmations == 0
    rejected = tally({}, {0: "wrong_chain", 2: "wrong_chain", 3: "bad_signature"}, F_PLUS_1)
    assert (rejected.status, rejected.reason, rejected.confirmations) == (
        "rejected",
        "wrong_chain",
        2,
    )
    # Two reasons both at f+1 (more liars than tolerated): the first in order, every time.
    both = {0: "wrong_chain", 1: "wrong_chain", 2: "bad_signature", 3: "bad_signature"}
    assert tally({}, both, F_PLUS_1).reason == "bad_signature"


def test_a_proven_receipt_wins_over_rejections() -> None:
    """f+1 members proving the receipt means it is in the ledger, whatever others said at
    submit (a member rejecting a transaction that then commits elsewhere)."""
    decided = tally(
        {0: honest(0), 1: honest(1)}, {2: "bad_signature", 3: "bad_signature"}, F_PLUS_1
    )
    assert decided.status == "committed"


def test_raft_needs_one_member() -> None:
    decided = tally({1: honest(1)}, {}, 1)
    assert decided.status == "committed" and decided.confirmations == 1
    assert tally({}, {1: "malformed: transaction: expected an array"}, 1).status == "rejected"
    assert tally({}, {}, 1).reason == "0 of 1 confirmations"


def test_the_pending_reason_counts_the_largest_agreeing_group() -> None:
    pending = tally({0: honest(0), 1: liar(1), 2: liar(2)}, {}, 3)
    assert (pending.status, pending.confirmations) == ("pending", 2)
    assert pending.reason == "2 of 3 confirmations"


@pytest.mark.parametrize(
    ("reason", "final"),
    [
        ("bad_signature", True),
        ("wrong_chain", True),
        ("malformed: transaction: expected an array", True),
        ("unknown_client", False),  # depends on the member's head
        ("unknown_client: admitted at height 9", False),
        ("expired", False),  # depends on the member's clock and head
        ("overloaded: too many pending receipts", False),
        ("duplicate", False),
    ],
)
def test_only_rejections_every_member_decides_alike_from_the_bytes_are_final(
    reason: str, final: bool
) -> None:
    assert is_final_rejection(reason) is final


def test_the_tally_reads_only_what_it_is_given() -> None:
    """Pure: the same inputs give the same decision, and the inputs are left as they were."""
    vouched = {0: honest(0), 1: honest(1)}
    rejected = {2: "bad_signature"}
    before = (dict(vouched), dict(rejected))
    assert tally(vouched, rejected, F_PLUS_1) == tally(vouched, rejected, F_PLUS_1)
    assert (vouched, rejected) == before
