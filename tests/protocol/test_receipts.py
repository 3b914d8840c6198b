"""Receipt documents checked offline: real blocks, real Ed25519 member signatures, and every
way we could think of to forge or tamper with one.

n = 4, f = 1 (pbft): a receipt needs f+1 = 2 distinct members' block signatures; raft needs 1.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from consortium.crypto.keys import KeyPair
from consortium.crypto.merkle import MerkleTree
from consortium.crypto.signing import Domain, Ed25519Signer
from consortium.ledger.block import Block
from consortium.ledger.certificates import SignedVote, block_signature_body
from consortium.ledger.genesis import Genesis
from consortium.ledger.tx import Put
from consortium.protocol.receipts import (
    ReceiptFormatError,
    ReceiptProof,
    describe,
    loads,
    signatures_needed,
    verify_receipt,
)
from tests.ledger.chain_fixture import ChainBuilder, block_signatures, make_genesis

GENESIS = make_genesis()


def chain(genesis: Genesis = GENESIS) -> tuple[ChainBuilder, Block]:
    builder = ChainBuilder(genesis=genesis)
    builder.add([builder.tx(Put(b"a", b"1"))])
    block = builder.add([builder.tx(Put(b"k%d" % i, b"v")) for i in range(5)])
    return builder, block


def proof_of(
    block: Block, index: int, signers: tuple[int, ...] = (0, 1), genesis: Genesis = GENESIS
) -> ReceiptProof:
    tree = MerkleTree([r.encode() for r in block.receipts])
    return ReceiptProof(
        block.receipts[index],
        tuple(tree.proof(index)),
        tree.size,
        block.header,
        tuple(block_signatures(genesis, block, signers)),
    )


def sign_block(
    block: Block, signer_index: int, key: KeyPair, genesis: Genesis = GENESIS
) -> SignedVote:
    body = block_signature_body(block.height, block.hash, signer_index)
    return SignedVote(body, Ed25519Signer(key).sign(Domain.BLOCK, genesis.chain_id, body))


def test_a_receipt_with_f_plus_1_member_signatures_verifies_and_survives_its_file() -> None:
    _, block = chain()
    proof = proof_of(block, 3)
    assert verify_receipt(proof, GENESIS) is None
    read = loads(proof.dumps(GENESIS))
    assert read == proof
    assert verify_receipt(read, GENESIS) is None
    lines = "\n".join(describe(read, GENESIS))
    assert block.receipts[3].tx_id.hex() in lines
    assert "height 2, index 3" in lines
    assert "n1, n2 (2 of 4 members; 2 needed)" in lines


def test_a_bad_merkle_proof_is_refused() -> None:
    _, block = chain()
    proof = proof_of(block, 3)
    forged = replace(proof, proof=(b"\x00" * 32, *proof.proof[1:]))
    assert "Merkle proof" in str(verify_receipt(forged, GENESIS))
    # The proof of another index does not prove this receipt either.
    other = proof_of(block, 2)
    assert "Merkle proof" in str(verify_receipt(replace(proof, proof=other.proof), GENESIS))


def test_a_tampered_receipt_is_not_in_the_block() -> None:
    _, block = chain()
    proof = proof_of(block, 1)
    lying = replace(proof, receipt=replace(proof.receipt, status="rejected", reason="cas_mismatch"))
    assert "not in this block" in str(verify_receipt(lying, GENESIS))
    elsewhere = replace(proof, receipt=replace(proof.receipt, index=2))
    assert "not in this block" in str(verify_receipt(elsewhere, GENESIS))


def test_the_same_member_signing_twice_counts_once() -> None:
    _, block = chain()
    proof = proof_of(block, 0, signers=(2, 2))
    assert "counted twice" in str(verify_receipt(proof, GENESIS))


def test_only_f_signatures_are_not_enough_in_pbft() -> None:
    _, block = chain()
    assert signatures_needed(GENESIS) == 2
    assert "1 distinct block signatures, 2 needed" in str(
        verify_receipt(proof_of(block, 0, signers=(1,)), GENESIS)
    )
    assert "0 distinct" in str(verify_receipt(proof_of(block, 0, signers=()), GENESIS))


def test_a_signature_by_a_key_that_is_not_a_member_is_refused() -> None:
    _, block = chain()
    outsider = KeyPair.generate()
    good = block_signatures(GENESIS, block, (0,))
    # Claims to be member n2, signed with an outsider's key.
    impostor = sign_block(block, 1, outsider)
    proof = replace(proof_of(block, 0), signatures=(*good, impostor))
    assert "bad signature by n2" in str(verify_receipt(proof, GENESIS))
    # Names a signer index no member has.
    stranger = sign_block(block, 7, outsider)
    proof = replace(proof_of(block, 0), signatures=(*good, stranger))
    assert "not a member" in str(verify_receipt(proof, GENESIS))


def test_signatures_for_another_block_or_domain_are_refused() -> None:
    builder, block = chain()
    earlier = builder.blocks[0][0]
    proof = replace(proof_of(block, 0), signatures=tuple(block_signatures(GENESIS, earlier)))
    assert "not for this (height, block hash)" in str(verify_receipt(proof, GENESIS))
    # A member's signature over the right body but in another domain (a read, say).
    body = block_signature_body(block.height, block.hash, 1)
    wrong_domain = SignedVote(
        body, Ed25519Signer(_member_key(1)).sign(Domain.READ, GENESIS.chain_id, body)
    )
    proof = replace(
        proof_of(block, 0),
        signatures=(*block_signatures(GENESIS, block, (0,)), wrong_domain),
    )
    assert "bad signature by n2" in str(verify_receipt(proof, GENESIS))


def _member_key(i: int) -> KeyPair:
    from tests.ledger.chain_fixture import MEMBERS

    return MEMBERS[i]


def test_a_tampered_header_loses_its_signatures_or_its_proof() -> None:
    _, block = chain()
    proof = proof_of(block, 4)
    later = replace(proof, header=replace(block.header, timestamp_ms=block.header.timestamp_ms + 1))
    assert "not for this (height, block hash)" in str(verify_receipt(later, GENESIS))
    rooted = replace(proof, header=replace(block.header, receipts_root=b"\x11" * 32))
    assert "Merkle proof" in str(verify_receipt(rooted, GENESIS))


def test_a_receipt_of_another_network_is_refused() -> None:
    _, block = chain()
    other = replace(GENESIS, chain_name="elsewhere")
    problem = verify_receipt(proof_of(block, 0), other)
    assert problem is not None and "another network" in problem


def test_raft_needs_one_member_signature() -> None:
    raft = make_genesis(mode="raft")
    _, block = chain(raft)
    assert signatures_needed(raft) == 1
    assert verify_receipt(proof_of(block, 0, signers=(2,), genesis=raft), raft) is None
    assert "0 distinct" in str(verify_receipt(proof_of(block, 0, signers=(), genesis=raft), raft))
    # A pbft receipt does not pass against the raft genesis (and the other way round).
    _, pbft_block = chain()
    assert verify_receipt(proof_of(pbft_block, 0), raft) is not None


def test_documents_whose_claims_differ_from_their_bytes_are_refused() -> None:
    _, block = chain()
    doc = proof_of(block, 2).to_document(GENESIS)
    for key, value in [
        ("status", "rejected"),
        ("height", 99),
        ("index", 0),
        ("tx_id", "00" * 32),
        ("block_hash", "00" * 32),
        ("chain_id", "00" * 32),
    ]:
        with pytest.raises(ReceiptFormatError, match=f"'{key}' says"):
            loads(json.dumps({**doc, key: value}))
    with pytest.raises(ReceiptFormatError, match="unknown key 'extra'"):
        loads(json.dumps({**doc, "extra": 1}))
    with pytest.raises(ReceiptFormatError, match="missing 'header'"):
        loads(json.dumps({k: v for k, v in doc.items() if k != "header"}))
    with pytest.raises(ReceiptFormatError, match="'format' must be"):
        loads(json.dumps({**doc, "format": "consortium-receipt/0"}))
    with pytest.raises(ReceiptFormatError, match="not JSON"):
        loads("{")
    with pytest.raises(ReceiptFormatError, match="'proof' must be a hex string"):
        loads(json.dumps({**doc, "proof": ["zz"]}))


def test_every_single_hex_digit_changed_in_the_proof_is_caught() -> None:
    """Flip each hex digit of every field that proves something: the document must fail to
    read or fail to verify, never pass."""
    _, block = chain()
    doc = proof_of(block, 2).to_document(GENESIS)
    assert verify_receipt(loads(json.dumps(doc)), GENESIS) is None
    checked = 0
    for key in ("receipt", "header"):
        for i in range(len(doc[key])):
            changed = dict(doc)
            digit = doc[key][i]
            changed[key] = doc[key][:i] + ("0" if digit != "0" else "1") + doc[key][i + 1 :]
            assert not _passes(changed), f"{key} digit {i} changed and it still verifies"
            checked += 1
    for n, item in enumerate(doc["proof"]):
        changed = dict(doc)
        changed["proof"] = list(doc["proof"])
        changed["proof"][n] = ("0" if item[0] != "0" else "1") + item[1:]
        assert not _passes(changed)
        checked += 1
    for n, sig in enumerate(doc["block_signatures"]):
        for field in ("body", "signature"):
            changed = dict(doc)
            changed["block_signatures"] = [dict(s) for s in doc["block_signatures"]]
            value = sig[field]
            changed["block_signatures"][n][field] = value[:-1] + ("0" if value[-1] != "0" else "1")
            assert not _passes(changed)
            checked += 1
    assert checked > 300


def _passes(doc: dict[str, object]) -> bool:
    try:
        return verify_receipt(loads(json.dumps(doc)), GENESIS) is None
    except ReceiptFormatError:
        return False
