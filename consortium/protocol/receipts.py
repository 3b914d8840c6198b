"""Receipt documents: a transaction's receipt with everything needed to check it offline.

A receipt document proves that one transaction committed, with one result, at one height of
the ledger whose genesis file you hold, without asking any member. It carries:

    receipt          the receipt's canonical bytes (the Merkle leaf)
    proof, tree_size its RFC 6962 inclusion path in the block's receipts tree
    header           the block header's canonical bytes (block hash = SHA-256 of them)
    block_signatures member signatures over (height, block hash), each [body, signature]

and is accepted when the header is for this genesis' chain and mode, the receipt is in the
header's receipts tree, and enough DISTINCT genesis members signed the header's hash: f+1 in
pbft (so at least one honest member vouches for it), 1 in raft (crash faults only: members are
trusted not to lie; the signature makes the receipt attributable).

The file is JSON (docs/client.md, "Receipt documents", specifies it for other implementations):

    {
      "format": "consortium-receipt/1",
      "chain_id": hex, "tx_id": hex, "status": "ok" | "rejected", "reason": str,
      "height": int, "index": int, "block_hash": hex,           <- what it claims, for people
      "receipt": hex, "proof": [hex, ...], "tree_size": int,     <- what proves it
      "header": hex,
      "block_signatures": [{"signer": name, "body": hex, "signature": hex}, ...]
    }

The claims are redundant: reading a document checks each equals what the bytes say, so a
document cannot claim more than it proves. The bytes are msgpack as the ledger hashes them
(canonical: one encoding per value); a non-canonical encoding is refused, so the hash of what
you read is the hash the members signed.

Pure functions: no I/O, no clock; `verify_receipt` returns what is wrong (a sentence) or None.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from consortium.crypto.codec import WireFormatError, as_list, unpack_canonical
from consortium.crypto.merkle import verify_inclusion
from consortium.crypto.signing import Ed25519Verifier, Verifier
from consortium.ledger.block import BlockHeader, Receipt
from consortium.ledger.certificates import SignedVote, verify_block_signatures
from consortium.ledger.genesis import Genesis
from consortium.ledger.membership import genesis_configuration

FORMAT = "consortium-receipt/1"
PROOF_HASHES_MAX = 64
SIGNATURES_MAX = 1024
DOCUMENT_BYTES_MAX = 1 << 20
_KEYS = (
    "format",
    "chain_id",
    "tx_id",
    "status",
    "reason",
    "height",
    "index",
    "block_hash",
    "receipt",
    "proof",
    "tree_size",
    "header",
    "block_signatures",
)


class ReceiptFormatError(ValueError):
    """A receipt document that cannot be read (not what it claims, or not a document)."""


def signatures_needed(genesis: Genesis) -> int:
    """Distinct member block signatures a receipt needs: f+1 in pbft, 1 in raft."""
    return genesis.f + 1 if genesis.mode == "pbft" else 1


@dataclass(frozen=True, slots=True)
class ReceiptProof:
    """A receipt, its inclusion proof, its block header and member signatures over it."""

    receipt: Receipt
    proof: tuple[bytes, ...]
    tree_size: int
    header: BlockHeader
    signatures: tuple[SignedVote, ...]

    @property
    def block_hash(self) -> bytes:
        return self.header.hash

    def signers(self) -> list[int]:
        """The member indices the signature bodies name (unchecked; -1 when unreadable)."""
        out = []
        for vote in self.signatures:
            try:
                signer = as_list(unpack_canonical(vote.body), 4, "block signature")[3]
            except WireFormatError:
                signer = -1
            out.append(signer if isinstance(signer, int) and not isinstance(signer, bool) else -1)
        return out

    def to_document(self, genesis: Genesis) -> dict[str, Any]:
        """The JSON document (a dict; `dumps` writes it)."""
        names = {m.index: m.name for m in genesis.members}
        r = self.receipt
        return {
            "format": FORMAT,
            "chain_id": self.header.chain_id.hex(),
            "tx_id": r.tx_id.hex(),
            "status": r.status,
            "reason": r.reason,
            "height": r.height,
            "index": r.index,
            "block_hash": self.block_hash.hex(),
            "receipt": r.encode().hex(),
            "proof": [p.hex() for p in self.proof],
            "tree_size": self.tree_size,
            "header": self.header.encode().hex(),
            "block_signatures": [
                {"signer": names.get(s, "?"), "body": v.body.hex(), "signature": v.signature.hex()}
                for s, v in sorted(
                    zip(self.signers(), self.signatures, strict=True), key=lambda sv: sv[0]
                )
            ],
        }

    def dumps(self, genesis: Genesis) -> str:
        return json.dumps(self.to_document(genesis), indent=2) + "\n"


def _hex(doc: dict[str, Any], key: str, size: int | None = None) -> bytes:
    value = doc[key]
    try:
        if not isinstance(value, str):
            raise ValueError
        raw = bytes.fromhex(value)
    except ValueError:
        raise ReceiptFormatError(f"'{key}' must be a hex string") from None
    if size is not None and len(raw) != size:
        raise ReceiptFormatError(f"'{key}' must be {size} bytes ({2 * size} hex digits)")
    return raw


def _int(doc: dict[str, Any], key: str) -> int:
    value = doc[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ReceiptFormatError(f"'{key}' must be a non-negative integer")
    return value


def loads(text: str | bytes) -> ReceiptProof:
    """Read a receipt document; ReceiptFormatError says what is wrong with it. Reading does
    not verify it (verify_receipt does), but it refuses a document whose claims (tx_id,
    status, height, ...) differ from what its bytes say."""
    if len(text) > DOCUMENT_BYTES_MAX:
        raise ReceiptFormatError(f"larger than {DOCUMENT_BYTES_MAX} bytes: not a receipt document")
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ReceiptFormatError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ReceiptFormatError("not a receipt document (expected a JSON object)")
    if doc.get("format") != FORMAT:
        raise ReceiptFormatError(f"'format' must be {FORMAT!r}, found {doc.get('format')!r}")
    for key in _KEYS:
        if key not in doc:
            raise ReceiptFormatError(f"missing '{key}'")
    unknown = sorted(set(doc) - set(_KEYS))
    if unknown:
        raise ReceiptFormatError(f"unknown key '{unknown[0]}'")
    try:
        receipt = Receipt.from_array(unpack_canonical(_hex(doc, "receipt")))
    except WireFormatError as exc:
        raise ReceiptFormatError(f"'receipt' does not decode: {exc}") from None
    try:
        header = BlockHeader.from_array(unpack_canonical(_hex(doc, "header")))
    except WireFormatError as exc:
        raise ReceiptFormatError(f"'header' does not decode: {exc}") from None
    proof_list = doc["proof"]
    if not isinstance(proof_list, list) or len(proof_list) > PROOF_HASHES_MAX:
        raise ReceiptFormatError(f"'proof' must be a list of at most {PROOF_HASHES_MAX} hashes")
    proof = tuple(_hex({"proof": p}, "proof", 32) for p in proof_list)
    sig_list = doc["block_signatures"]
    if not isinstance(sig_list, list) or len(sig_list) > SIGNATURES_MAX:
        raise ReceiptFormatError("'block_signatures' must be a list")
    signatures = []
    for i, item in enumerate(sig_list):
        if not isinstance(item, dict) or not {"body", "signature"} <= set(item):
            raise ReceiptFormatError(f"block_signatures[{i}]: expected body and signature")
        try:
            signatures.append(
                SignedVote.from_array([_hex(item, "body"), _hex(item, "signature", 64)])
            )
        except (WireFormatError, ReceiptFormatError) as exc:
            raise ReceiptFormatError(f"block_signatures[{i}]: {exc}") from None
    result = ReceiptProof(receipt, proof, _int(doc, "tree_size"), header, tuple(signatures))
    claims = {
        "chain_id": header.chain_id.hex(),
        "tx_id": receipt.tx_id.hex(),
        "status": receipt.status,
        "reason": receipt.reason,
        "height": receipt.height,
        "index": receipt.index,
        "block_hash": result.block_hash.hex(),
    }
    for key, actual in claims.items():
        if doc[key] != actual:
            raise ReceiptFormatError(
                f"'{key}' says {doc[key]!r} but the receipt and header bytes say {actual!r}"
            )
    return result


def verify_receipt(
    proof: ReceiptProof, genesis: Genesis, verifier: Verifier | None = None
) -> str | None:
    """What is wrong with `proof` against `genesis`, or None when it proves its receipt:
    the header is for this chain and mode, the receipt is the leaf at receipt.index of a
    receipts tree of tree_size leaves whose root is header.receipts_root (RFC 6962), and at
    least signatures_needed(genesis) distinct genesis members signed ["block", height, block
    hash, signer] under Domain.BLOCK for this chain."""
    verifier = verifier or Ed25519Verifier()
    header, receipt = proof.header, proof.receipt
    chain_id = genesis.chain_id
    if header.chain_id != chain_id:
        return (
            f"the receipt is for another network: chain id {header.chain_id.hex()[:16]}…, "
            f"this genesis is {chain_id.hex()[:16]}…"
        )
    if header.consensus[0] != genesis.mode:
        return f"the header is a {header.consensus[0]} block; this genesis is {genesis.mode}"
    if receipt.height != header.height:
        return f"the receipt says height {receipt.height}, the header {header.height}"
    if not 0 <= receipt.index < proof.tree_size:
        return f"receipt index {receipt.index} is outside a tree of {proof.tree_size} receipts"
    if not verify_inclusion(
        receipt.encode(), receipt.index, proof.tree_size, proof.proof, header.receipts_root
    ):
        return (
            "the Merkle proof does not lead from the receipt to the header's receipts root: "
            "the receipt is not in this block"
        )
    needed = signatures_needed(genesis)
    problem = verify_block_signatures(
        proof.signatures,
        header.height,
        header.hash,
        genesis_configuration(genesis),
        verifier,
        needed,
    )
    if problem is not None:
        return f"block signatures: {problem}"
    return None


def describe(proof: ReceiptProof, genesis: Genesis) -> list[str]:
    """What a verified receipt proves, in lines for people."""
    r = proof.receipt
    names = [genesis.members[s].name if 0 <= s < genesis.n else str(s) for s in proof.signers()]
    return [
        f"tx id      {r.tx_id.hex()}",
        f"status     {r.status}" + (f" ({r.reason})" if r.reason else ""),
        f"block      height {r.height}, index {r.index}, hash {proof.block_hash.hex()}",
        f"network    {genesis.chain_name} ({genesis.mode}, chain id "
        f"{genesis.chain_id.hex()[:16]}…)",
        f"signed by  {', '.join(names)} ({len(names)} of {genesis.n} members; "
        f"{signatures_needed(genesis)} needed)",
    ]
