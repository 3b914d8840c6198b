"""The proofs a member sends a client, how a member builds them, and the pure checks of them.

- A receipt bundle (`Bundle`): a receipt, its RFC 6962 inclusion proof against the header's
  receipts_root (leaf = receipt.encode()), the size of that tree, the block header, and one
  member's block signature [body, sig] with body = block_signature_body(height, header.hash,
  signer) under Domain.BLOCK. `receipt_bundle` is the one place a bundle is built from a
  block's parts: the member's answers, pushes and caches all go through it.
- A signed read (`ReadReply`): [key, value|nil, height, block_hash, signer, sig] with sig over
  `read_body` under Domain.READ.
- A followed block (`FollowedBlock`): a block's header and receipts with one member's block
  signature over it.

Member and client alike use these: the member to build what it sends, the client to check
what it receives. Every check is pure (no I/O, no clock) and returns what is wrong (a
sentence) or None. The wire protocol around them is in messages.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from consortium.crypto.codec import (
    WireFormatError,
    as_bytes,
    as_int,
    as_list,
    pack,
    unpack_canonical,
)
from consortium.crypto.merkle import MerkleTree, merkle_root, verify_inclusion
from consortium.crypto.signing import Domain, Signer, Verifier
from consortium.ledger.block import BlockHeader, Receipt, receipts_root
from consortium.ledger.certificates import (
    VOTE_BODY_BYTES_MAX,
    SignedVote,
    block_signature_body,
)
from consortium.ledger.genesis import Genesis
from consortium.protocol.limits import KEY_BYTES_MAX, PROOF_HASHES_MAX

# --- receipt bundles -------------------------------------------------------------------------


def vote_signer(vote: SignedVote) -> int | None:
    """The member index a block signature names, or None when its body is malformed."""
    try:
        body = as_list(
            unpack_canonical(vote.body, max_len=VOTE_BODY_BYTES_MAX), 4, "block signature"
        )
    except WireFormatError:
        return None
    signer = body[3]
    return signer if isinstance(signer, int) and not isinstance(signer, bool) else None


@dataclass(frozen=True, slots=True)
class Bundle:
    """A receipt with what proves it: a Merkle path to the header, one member's block
    signature over that header's hash."""

    receipt: Receipt
    proof: tuple[bytes, ...]
    tree_size: int
    header: BlockHeader
    signature: SignedVote

    def to_array(self) -> list[Any]:
        return [
            self.receipt.to_array(),
            list(self.proof),
            self.tree_size,
            self.header.to_array(),
            self.signature.to_array(),
        ]

    def encode(self) -> bytes:
        return pack(self.to_array())

    @classmethod
    def from_array(cls, v: Any) -> Bundle:
        a = as_list(v, 5, "bundle")
        proof = as_list(a[1], what="proof")
        if len(proof) > PROOF_HASHES_MAX:
            raise WireFormatError("proof: too long")
        return cls(
            Receipt.from_array(a[0]),
            tuple(as_bytes(p, "proof hash", size=32) for p in proof),
            as_int(a[2], "tree_size"),
            BlockHeader.from_array(a[3]),
            SignedVote.from_array(a[4]),
        )

    def signer(self) -> int | None:
        """The member index the block signature names, or None when its body is malformed."""
        return vote_signer(self.signature)

    def verify(self, genesis: Genesis, verifier: Verifier) -> str | None:
        return verify_bundle(self, genesis, verifier)


def receipt_bundle(
    header: BlockHeader,
    receipts: Sequence[Receipt],
    index: int,
    signature: SignedVote,
    tree: MerkleTree | None = None,
) -> Bundle:
    """The bundle of the receipt at `index` of the block that `header` heads and whose
    receipts are `receipts`, with `signature` (a member's block signature over it). Pass
    `tree`, the receipts' Merkle tree, to share it between the receipts of one block. Its
    wire form is `.to_array()`."""
    if tree is None:
        tree = MerkleTree([r.encode() for r in receipts])
    return Bundle(receipts[index], tuple(tree.proof(index)), tree.size, header, signature)


_CHAIN_IDS: list[tuple[Genesis, bytes]] = []
_CHAIN_IDS_MAX = 8


def chain_id_of(genesis: Genesis) -> bytes:
    """genesis.chain_id, remembered per Genesis object: it hashes the whole genesis, and the
    client checks one bundle per member and transaction."""
    for known, chain_id in _CHAIN_IDS:
        if known is genesis:
            return chain_id
    chain_id = genesis.chain_id
    if len(_CHAIN_IDS) >= _CHAIN_IDS_MAX:
        del _CHAIN_IDS[0]
    _CHAIN_IDS.append((genesis, chain_id))
    return chain_id


def verify_bundle(
    bundle: Bundle,
    genesis: Genesis,
    verifier: Verifier,
    *,
    header_hash: bytes | None = None,
) -> str | None:
    """What is wrong with `bundle`, or None: chain id, the header's consensus mode (genesis'
    mode: verify_receipt refuses a document whose header names the other one), receipt
    inclusion (leaf = receipt.encode(), index and tree size) against header.receipts_root,
    and a block signature by a genesis member over (height, header hash, signer) in
    Domain.BLOCK. `header_hash` may pass bundle.header.hash, computed once per block."""
    mode = bundle.header.consensus[0]
    return _chain_problem(bundle.header, genesis) or (
        (
            f"the header is a {mode} block; this genesis is {genesis.mode}"
            if mode != genesis.mode
            else None
        )
        or inclusion_problem(
            bundle.receipt, bundle.receipt.encode(), bundle.proof, bundle.tree_size, bundle.header
        )
        or verify_header_signature(
            bundle.header, bundle.signature, genesis, verifier, header_hash=header_hash
        )[0]
    )


def verify_header_signature(
    header: BlockHeader,
    signature: SignedVote,
    genesis: Genesis,
    verifier: Verifier,
    *,
    header_hash: bytes | None = None,
) -> tuple[str | None, int | None]:
    """The block-signature half of verify_bundle, for receipts that share a header and its
    signature (a "receipts" push: checked once for all of them): (what is wrong or None, the
    member the signature names or None)."""
    problem = _chain_problem(header, genesis)
    if problem is not None:
        return problem, None
    signer = vote_signer(signature)
    if signer is None or not 0 <= signer < genesis.n:
        return "block signature is not by a member", signer
    block_hash = header.hash if header_hash is None else header_hash
    if signature.body != block_signature_body(header.height, block_hash, signer):
        return "block signature is for another block", signer
    member = genesis.members[signer]
    if not verifier.verify(
        member.public_key, Domain.BLOCK, chain_id_of(genesis), signature.body, signature.signature
    ):
        return f"bad block signature by {member.name}", signer
    return None, signer


def inclusion_problem(
    receipt: Receipt, leaf: bytes, proof: Sequence[bytes], tree_size: int, header: BlockHeader
) -> str | None:
    """The inclusion half of verify_bundle: what is wrong with `receipt` (whose canonical
    encoding is `leaf`) as a receipt of the block `header` heads, or None."""
    if receipt.height != header.height:
        return f"receipt height {receipt.height} differs from the header's {header.height}"
    if not 0 <= receipt.index < tree_size:
        return f"receipt index {receipt.index} outside a tree of {tree_size}"
    if not verify_inclusion(leaf, receipt.index, tree_size, proof, header.receipts_root):
        return "receipt is not in the block (bad Merkle proof)"
    return None


def _chain_problem(header: BlockHeader, genesis: Genesis) -> str | None:
    chain_id = chain_id_of(genesis)
    if header.chain_id != chain_id:
        return (
            f"bundle is for another chain ({header.chain_id.hex()[:8]}…, "
            f"we are on {chain_id.hex()[:8]}…)"
        )
    return None


# --- signed reads ----------------------------------------------------------------------------


def read_body(
    key: bytes, value: bytes | None, height: int, block_hash: bytes, signer: int
) -> bytes:
    """The bytes a member signs (Domain.READ) for a fast-path read."""
    return pack(["read", key, value, height, block_hash, signer])


@dataclass(frozen=True, slots=True)
class ReadReply:
    key: bytes
    value: bytes | None
    height: int
    block_hash: bytes
    signer: int
    signature: bytes

    @classmethod
    def signed(
        cls,
        signer: Signer,
        chain_id: bytes,
        member: int,
        key: bytes,
        value: bytes | None,
        height: int,
        block_hash: bytes,
    ) -> ReadReply:
        body = read_body(key, value, height, block_hash, member)
        signature = signer.sign(Domain.READ, chain_id, body)
        return cls(key, value, height, block_hash, member, signature)

    def to_array(self) -> list[Any]:
        return [self.key, self.value, self.height, self.block_hash, self.signer, self.signature]

    @classmethod
    def from_array(cls, v: Any) -> ReadReply:
        a = as_list(v, 6, "read reply")
        value = None if a[1] is None else as_bytes(a[1], "value")
        return cls(
            as_bytes(a[0], "key", max_len=KEY_BYTES_MAX),
            value,
            as_int(a[2], "height"),
            as_bytes(a[3], "block_hash", size=32),
            as_int(a[4], "signer", hi=1 << 16),
            as_bytes(a[5], "signature", size=64),
        )

    def verify(self, genesis: Genesis, verifier: Verifier) -> bool:
        return verify_read(self, genesis, verifier) is None


def verify_read(
    reply: ReadReply,
    genesis: Genesis,
    verifier: Verifier,
    *,
    key: bytes | None = None,
    signer: int | None = None,
) -> str | None:
    """What is wrong with a read reply, or None. `key` and `signer`: what was asked, of whom."""
    if key is not None and reply.key != key:
        return "reply is for another key"
    if signer is not None and reply.signer != signer:
        return f"reply from member {signer} is signed as member {reply.signer}"
    if not 0 <= reply.signer < genesis.n:
        return "reply is not signed by a member"
    member = genesis.members[reply.signer]
    body = read_body(reply.key, reply.value, reply.height, reply.block_hash, reply.signer)
    if not verifier.verify(
        member.public_key, Domain.READ, chain_id_of(genesis), body, reply.signature
    ):
        return f"bad read signature by {member.name}"
    return None


# --- followed blocks -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FollowedBlock:
    """One block of a follow, as one member sent it (check it with verify_followed)."""

    follow_id: int
    header: BlockHeader
    receipts: tuple[Receipt, ...]
    signature: SignedVote


def verify_followed(
    block: FollowedBlock, genesis: Genesis, verifier: Verifier, member: int
) -> str | None:
    """What is wrong with a followed block from `member`, or None: this chain, receipts that
    belong to this height in order, the header's transaction and receipts Merkle roots, and
    `member`'s block signature over (height, header hash) in Domain.BLOCK."""
    header = block.header
    chain_id = chain_id_of(genesis)
    if header.chain_id != chain_id:
        return f"block {header.height} is for another chain"
    for i, r in enumerate(block.receipts):
        if r.height != header.height or r.index != i:
            return f"block {header.height}: receipt {i} does not belong at its place"
    if merkle_root([r.tx_id for r in block.receipts]) != header.tx_root:
        return f"block {header.height}: its transaction ids do not match the header's tx root"
    if receipts_root(block.receipts) != header.receipts_root:
        return f"block {header.height}: its receipts do not match the header's receipts root"
    return verify_block_signature(
        block.signature, header.height, header.hash, genesis, verifier, member
    )


def verify_block_signature(
    vote: SignedVote,
    height: int,
    block_hash: bytes,
    genesis: Genesis,
    verifier: Verifier,
    member: int,
) -> str | None:
    """What is wrong with `vote` as `member`'s block signature over (height, block_hash)."""
    if not 0 <= member < genesis.n:
        return f"{member} is not a member"
    if vote.body != block_signature_body(height, block_hash, member):
        return f"block {height}: the signature is not {genesis.members[member].name}'s over it"
    if not verifier.verify(
        genesis.members[member].public_key,
        Domain.BLOCK,
        chain_id_of(genesis),
        vote.body,
        vote.signature,
    ):
        return f"block {height}: bad block signature by {genesis.members[member].name}"
    return None
