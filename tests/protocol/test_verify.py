"""The proofs a member sends (protocol/verify.py): the one bundle builder, and the pure checks
of receipt bundles, signed reads and followed blocks."""

from __future__ import annotations

from dataclasses import replace

import pytest

from consortium.crypto.codec import pack
from consortium.crypto.keys import KeyPair
from consortium.crypto.merkle import MerkleTree
from consortium.crypto.signing import Domain, Ed25519Signer, Ed25519Verifier
from consortium.ledger.block import Receipt
from consortium.ledger.certificates import SignedVote, block_signature_body
from consortium.ledger.genesis import Params
from consortium.protocol.messages import BlockReceipts, decode_response, encode_block_receipts
from consortium.protocol.verify import (
    Bundle,
    FollowedBlock,
    ReadReply,
    receipt_bundle,
    verify_bundle,
    verify_followed,
    verify_read,
)
from tests.ledger.chain_fixture import MEMBERS, ChainBuilder, build_chain, make_genesis
from tests.protocol.fixtures import (
    BLOCK,
    GENESIS,
    LIMIT,
    OUTSIDER,
    VERIFIER,
    block_vote,
    bundle_of,
    good_bundle,
    make_block,
)

# --- the one bundle builder ------------------------------------------------------------------


def test_a_bundle_is_built_from_the_blocks_parts_with_or_without_a_shared_tree() -> None:
    vote = block_vote(BLOCK, 1)
    tree = MerkleTree([r.encode() for r in BLOCK.receipts])
    for index in range(len(BLOCK.receipts)):
        bundle = receipt_bundle(BLOCK.header, BLOCK.receipts, index, vote)
        assert receipt_bundle(BLOCK.header, BLOCK.receipts, index, vote, tree) == bundle
        assert bundle.receipt == BLOCK.receipts[index]
        assert bundle.proof == tuple(tree.proof(index)) and bundle.tree_size == tree.size
        assert (bundle.header, bundle.signature) == (BLOCK.header, vote)
        assert bundle.to_array() == [
            BLOCK.receipts[index].to_array(),
            tree.proof(index),
            tree.size,
            BLOCK.header.to_array(),
            vote.to_array(),
        ]
        assert verify_bundle(bundle, GENESIS, VERIFIER) is None


def test_a_receipts_push_carries_exactly_the_bundles_the_builder_makes() -> None:
    """A "receipts" push shares the header and block signature between its entries: each entry
    with them is the very bundle the builder makes for that receipt."""
    vote = block_vote(BLOCK, 2)
    tree = MerkleTree([r.encode() for r in BLOCK.receipts])
    some = [BLOCK.receipts[1], BLOCK.receipts[4]]
    push = decode_response(encode_block_receipts(BLOCK.header, vote, tree, some), LIMIT)
    assert isinstance(push, BlockReceipts)
    assert push.bundles() == [
        receipt_bundle(BLOCK.header, BLOCK.receipts, r.index, vote, tree) for r in some
    ]


def test_a_bundle_round_trips_and_still_verifies() -> None:
    bundle = good_bundle()
    again = Bundle.from_array(bundle.to_array())
    assert again == bundle
    assert again.encode() == bundle.encode() == pack(bundle.to_array())
    assert verify_bundle(again, GENESIS, VERIFIER) is None
    assert bundle.signer() == 1


# --- verify_bundle ---------------------------------------------------------------------------


@pytest.mark.parametrize("index", range(5))
@pytest.mark.parametrize("signer", range(4))
def test_a_correct_bundle_verifies_for_every_receipt_and_member(index: int, signer: int) -> None:
    assert verify_bundle(good_bundle(index, signer), GENESIS, VERIFIER) is None


def test_a_wrong_proof_is_refused() -> None:
    bundle = good_bundle(2)
    flipped = bytes([bundle.proof[0][0] ^ 1]) + bundle.proof[0][1:]
    for proof in ((flipped, *bundle.proof[1:]), bundle.proof[:-1], (*bundle.proof, b"\0" * 32)):
        wrong = replace(bundle, proof=proof)
        assert (
            verify_bundle(wrong, GENESIS, VERIFIER)
            == "receipt is not in the block (bad Merkle proof)"
        )
    other = good_bundle(3)
    assert "bad Merkle proof" in str(
        verify_bundle(replace(bundle, proof=other.proof), GENESIS, VERIFIER)
    )


def test_a_tampered_receipt_is_refused() -> None:
    bundle = good_bundle(1)
    receipt = bundle.receipt
    for tampered in (
        replace(receipt, status="rejected", reason="duplicate"),
        replace(receipt, results=(b"forged",)),
        replace(receipt, tx_id=b"\x07" * 32),
        replace(receipt, index=2),
    ):
        wrong = verify_bundle(replace(bundle, receipt=tampered), GENESIS, VERIFIER)
        assert wrong == "receipt is not in the block (bad Merkle proof)"
    wrong = verify_bundle(replace(bundle, receipt=replace(receipt, height=9)), GENESIS, VERIFIER)
    assert wrong == f"receipt height 9 differs from the header's {BLOCK.height}"
    wrong = verify_bundle(replace(bundle, tree_size=1), GENESIS, VERIFIER)
    assert wrong == "receipt index 1 outside a tree of 1"
    wrong = verify_bundle(replace(bundle, tree_size=9), GENESIS, VERIFIER)
    assert wrong == "receipt is not in the block (bad Merkle proof)"


def test_a_tampered_header_is_refused() -> None:
    bundle = good_bundle(1)
    header = replace(bundle.header, state_root=b"\x09" * 32)  # another block hash
    wrong = verify_bundle(replace(bundle, header=header), GENESIS, VERIFIER)
    assert wrong == "block signature is for another block"


def test_a_wrong_signer_is_refused() -> None:
    bundle = good_bundle(0, signer=1)
    cases = [
        # member 2's key over a body that names member 1 (n2 is member 1's name)
        (block_vote(BLOCK, 1, MEMBERS[2]), "bad block signature by n2"),
        # a key genesis does not list, naming member 1
        (block_vote(BLOCK, 1, OUTSIDER), "bad block signature by n2"),
        # the right key, the wrong domain or chain
        (block_vote(BLOCK, 1, domain=Domain.PBFT), "bad block signature by n2"),
        (block_vote(BLOCK, 1, chain_id=b"\x05" * 32), "bad block signature by n2"),
        # a body naming no member, or no body at all
        (block_vote(BLOCK, 9, OUTSIDER), "block signature is not by a member"),
        (SignedVote(b"\xc1", bytes(64)), "block signature is not by a member"),
        # a signature over another block
        (block_vote(BLOCK, 1, height=BLOCK.height + 1), "block signature is for another block"),
    ]
    for vote, expected in cases:
        assert verify_bundle(replace(bundle, signature=vote), GENESIS, VERIFIER) == expected


def test_a_bundle_from_another_chain_is_refused() -> None:
    other = make_genesis(Params(batch_txs_max=3))
    block = make_block(ChainBuilder(genesis=other))
    bundle = bundle_of(block, 0, block_vote(block, 1))
    assert verify_bundle(bundle, other, VERIFIER) is None
    wrong = verify_bundle(bundle, GENESIS, VERIFIER)
    assert wrong is not None and wrong.startswith("bundle is for another chain")


# --- verify_read -----------------------------------------------------------------------------


def signed_read(
    member: int = 2, value: bytes | None = b"v", keys: KeyPair | None = None
) -> ReadReply:
    return ReadReply.signed(
        Ed25519Signer(keys or MEMBERS[member]),
        GENESIS.chain_id,
        member,
        b"key",
        value,
        BLOCK.height,
        BLOCK.hash,
    )


def test_a_signed_read_verifies_and_round_trips() -> None:
    for value in (b"v", None, b""):
        reply = signed_read(value=value)
        assert ReadReply.from_array(reply.to_array()) == reply
        assert verify_read(reply, GENESIS, VERIFIER, key=b"key", signer=2) is None
        assert reply.verify(GENESIS, VERIFIER)


def test_a_tampered_or_misattributed_read_is_refused() -> None:
    reply = signed_read()
    assert verify_read(replace(reply, value=b"w"), GENESIS, VERIFIER) == "bad read signature by n3"
    assert verify_read(replace(reply, value=None), GENESIS, VERIFIER) == "bad read signature by n3"
    assert verify_read(replace(reply, height=1), GENESIS, VERIFIER) == "bad read signature by n3"
    assert verify_read(reply, GENESIS, VERIFIER, key=b"other") == "reply is for another key"
    assert verify_read(reply, GENESIS, VERIFIER, signer=1) == (
        "reply from member 1 is signed as member 2"
    )
    assert verify_read(signed_read(9, keys=OUTSIDER), GENESIS, VERIFIER) == (
        "reply is not signed by a member"
    )
    assert verify_read(signed_read(2, keys=OUTSIDER), GENESIS, VERIFIER) == (
        "bad read signature by n3"
    )
    other = make_genesis(Params(batch_txs_max=3))
    assert verify_read(reply, other, VERIFIER) == "bad read signature by n3"
    # A block signature is never a read signature (domain separation).
    vote = block_vote(BLOCK, 2)
    assert verify_read(replace(reply, signature=vote.signature), GENESIS, VERIFIER) is not None


# --- verify_followed ------------------------------------------------------------------------


def test_verify_followed_checks_roots_and_the_senders_signature() -> None:
    block = build_chain(1).blocks[0][0]
    verifier = Ed25519Verifier()

    def followed(receipts: tuple[Receipt, ...], signer: int, as_member: int) -> FollowedBlock:
        body = block_signature_body(block.height, block.hash, as_member)
        sig = Ed25519Signer(MEMBERS[signer]).sign(Domain.BLOCK, GENESIS.chain_id, body)
        return FollowedBlock(1, block.header, receipts, SignedVote(body, sig))

    assert verify_followed(followed(block.receipts, 2, 2), GENESIS, verifier, 2) is None
    assert "not n2's" in str(verify_followed(followed(block.receipts, 2, 2), GENESIS, verifier, 1))
    assert "bad block signature by n2" in str(
        verify_followed(followed(block.receipts, 3, 1), GENESIS, verifier, 1)
    )
    assert "tx root" in str(
        verify_followed(followed(block.receipts[:2], 2, 2), GENESIS, verifier, 2)
    )
    swapped = (block.receipts[1], block.receipts[0], *block.receipts[2:])
    assert "does not belong" in str(verify_followed(followed(swapped, 2, 2), GENESIS, verifier, 2))
    forged = tuple(Receipt(r.tx_id, "rejected", "x", (), r.height, r.index) for r in block.receipts)
    assert "receipts root" in str(verify_followed(followed(forged, 2, 2), GENESIS, verifier, 2))
