"""Blocks, block signatures and bundles for the protocol's tests: a real block of real
receipts, signed with the members' Ed25519 keys."""

from __future__ import annotations

import hashlib
from typing import Any

from consortium.crypto.keys import KeyPair
from consortium.crypto.signing import Domain, Ed25519Signer, Ed25519Verifier
from consortium.ledger.block import Block
from consortium.ledger.certificates import SignedVote, block_signature_body
from consortium.ledger.tx import Put
from consortium.protocol.verify import Bundle, receipt_bundle
from tests.ledger.chain_fixture import MEMBERS, ChainBuilder, make_genesis

GENESIS = make_genesis()
VERIFIER = Ed25519Verifier()
LIMIT = 1 << 20
OUTSIDER = KeyPair.from_seed(hashlib.sha256(b"outsider").digest())


def block_vote(block: Block, signer: int, keys: KeyPair | None = None, **kw: Any) -> SignedVote:
    body = block_signature_body(
        kw.get("height", block.height), kw.get("block_hash", block.hash), signer
    )
    domain = kw.get("domain", Domain.BLOCK)
    chain_id = kw.get("chain_id", block.header.chain_id)
    return SignedVote(body, Ed25519Signer(keys or MEMBERS[signer]).sign(domain, chain_id, body))


def make_block(builder: ChainBuilder | None = None, count: int = 5) -> Block:
    builder = builder or ChainBuilder()
    builder.add_puts(2)
    return builder.add([builder.tx(Put(b"key %d" % i, b"v")) for i in range(count)])


BLOCK = make_block()


def bundle_of(block: Block, index: int, vote: SignedVote) -> Bundle:
    return receipt_bundle(block.header, block.receipts, index, vote)


def good_bundle(index: int = 2, signer: int = 1) -> Bundle:
    return bundle_of(BLOCK, index, block_vote(BLOCK, signer))
