"""PBFT protocol messages and their wire form (Castro & Liskov, OSDI 1999 §4.2-4.3; TOCS 2002
§2.3 and §4, the variant with signatures rather than authenticators).

Theory of operation
-------------------
Every message travels as one canonical msgpack array [body, signature]; a PRE-PREPARE appends
its batch: [body, signature, [tx.to_array(), ...]]. The body is the canonical encoding of a
fixed-order array naming the kind first and the sender last:

    PRE-PREPARE  ["preprepare", view, seq, digest, proposed_ms, sender]   + the batch
    PREPARE      ["prepare", view, seq, digest, sender]
    COMMIT       ["commit", view, seq, digest, sender]     == certificates.commit_body
    CHECKPOINT   ["checkpoint", seq, block_hash, sender]   == certificates.checkpoint_body

The signature is the sender's, over Domain.PBFT + chain id + body (consortium.crypto.signing),
and it is checked over the body bytes exactly as received: `decode` refuses a non-canonical
frame or body, so nothing is ever re-encoded before verifying. Because COMMIT and CHECKPOINT
bodies are exactly the certificate bodies, a commit or checkpoint certificate is just the
signed messages kept as SignedVote(body, signature).

The digest binds the ordered transaction ids and the proposed timestamp
(ledger.block.batch_digest); it is not checked here, nor are signatures, membership or limits
that depend on the network's state: `decode` checks shape only and raises only WireFormatError,
and the replica validates the rest and counts what it drops.
"""

from __future__ import annotations

from dataclasses import dataclass

from consortium.crypto.codec import (
    WireFormatError,
    as_bytes,
    as_int,
    as_list,
    pack,
    unpack_canonical,
)
from consortium.crypto.keys import SIGNATURE_BYTES
from consortium.crypto.signing import Domain, Signer
from consortium.ledger.block import batch_digest
from consortium.ledger.certificates import SignedVote, checkpoint_body, commit_body
from consortium.ledger.genesis import Params
from consortium.ledger.tx import Transaction

__all__ = [
    "BODY_BYTES_MAX",
    "Checkpoint",
    "Commit",
    "Message",
    "PrePrepare",
    "Prepare",
    "WireFormatError",
    "decode",
    "encode",
    "preprepare_body",
    "prepare_body",
]

BODY_BYTES_MAX = 256  # every body is a short array of small ints and two 32-byte hashes
DIGEST_BYTES = 32


def preprepare_body(view: int, seq: int, digest: bytes, proposed_ms: int, sender: int) -> bytes:
    return pack(["preprepare", view, seq, digest, proposed_ms, sender])


def prepare_body(view: int, seq: int, digest: bytes, sender: int) -> bytes:
    return pack(["prepare", view, seq, digest, sender])


@dataclass(frozen=True, slots=True, kw_only=True)
class PrePrepare:
    view: int
    seq: int
    digest: bytes
    proposed_ms: int
    sender: int
    txs: tuple[Transaction, ...]
    body: bytes
    signature: bytes

    @classmethod
    def create(
        cls,
        signer: Signer,
        chain_id: bytes,
        view: int,
        seq: int,
        proposed_ms: int,
        sender: int,
        txs: tuple[Transaction, ...],
        *,
        digest: bytes | None = None,  # tests only: a digest that does not match the batch
    ) -> PrePrepare:
        if digest is None:
            digest = batch_digest(proposed_ms, [t.id for t in txs])
        body = preprepare_body(view, seq, digest, proposed_ms, sender)
        return cls(
            view=view,
            seq=seq,
            digest=digest,
            proposed_ms=proposed_ms,
            sender=sender,
            txs=txs,
            body=body,
            signature=signer.sign(Domain.PBFT, chain_id, body),
        )

    @property
    def batch_bytes(self) -> int:
        return sum(t.size for t in self.txs)

    def vote(self) -> SignedVote:
        return SignedVote(self.body, self.signature)


@dataclass(frozen=True, slots=True, kw_only=True)
class Prepare:
    view: int
    seq: int
    digest: bytes
    sender: int
    body: bytes
    signature: bytes

    @classmethod
    def create(
        cls, signer: Signer, chain_id: bytes, view: int, seq: int, digest: bytes, sender: int
    ) -> Prepare:
        body = prepare_body(view, seq, digest, sender)
        return cls(
            view=view,
            seq=seq,
            digest=digest,
            sender=sender,
            body=body,
            signature=signer.sign(Domain.PBFT, chain_id, body),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Commit:
    view: int
    seq: int
    digest: bytes
    sender: int
    body: bytes
    signature: bytes

    @classmethod
    def create(
        cls, signer: Signer, chain_id: bytes, view: int, seq: int, digest: bytes, sender: int
    ) -> Commit:
        body = commit_body(view, seq, digest, sender)
        return cls(
            view=view,
            seq=seq,
            digest=digest,
            sender=sender,
            body=body,
            signature=signer.sign(Domain.PBFT, chain_id, body),
        )

    def vote(self) -> SignedVote:
        return SignedVote(self.body, self.signature)


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint:
    seq: int
    block_hash: bytes
    sender: int
    body: bytes
    signature: bytes

    @classmethod
    def create(
        cls, signer: Signer, chain_id: bytes, seq: int, block_hash: bytes, sender: int
    ) -> Checkpoint:
        body = checkpoint_body(seq, block_hash, sender)
        return cls(
            seq=seq,
            block_hash=block_hash,
            sender=sender,
            body=body,
            signature=signer.sign(Domain.PBFT, chain_id, body),
        )

    def vote(self) -> SignedVote:
        return SignedVote(self.body, self.signature)


Message = PrePrepare | Prepare | Commit | Checkpoint


def encode(msg: Message) -> bytes:
    """The frame of `msg`; for a decoded message this is exactly the frame it came from."""
    if isinstance(msg, PrePrepare):
        return pack([msg.body, msg.signature, [t.to_array() for t in msg.txs]])
    return pack([msg.body, msg.signature])


ENVELOPE_BYTES_MAX = 64 * 1024  # a batch's framing overhead, generously


def decode(frame: bytes, params: Params) -> Message:
    """Decode one frame; raises only WireFormatError. Shape only: no signature is checked."""
    if len(frame) > params.batch_bytes_max + ENVELOPE_BYTES_MAX:
        # No honest message is larger than a full batch: refuse before decoding anything.
        raise WireFormatError(f"message of {len(frame)} bytes exceeds a full batch")
    envelope = as_list(unpack_canonical(frame, max_len=params.frame_bytes_max), what="pbft message")
    if len(envelope) not in (2, 3):
        raise WireFormatError(
            "pbft message: expected [body, signature] or [body, signature, batch]"
        )
    body = as_bytes(envelope[0], "body", max_len=BODY_BYTES_MAX)
    signature = as_bytes(envelope[1], "signature", size=SIGNATURE_BYTES)
    fields = as_list(unpack_canonical(body, max_len=BODY_BYTES_MAX), what="body")
    if not fields or not isinstance(fields[0], str):
        raise WireFormatError("body: the first field must name the message kind")
    kind = fields[0]
    if kind == "preprepare":
        if len(envelope) != 3:
            raise WireFormatError("preprepare: the batch is missing")
        as_list(fields, 6, kind)
        raw_txs = as_list(envelope[2], what="batch")
        # Limits before any transaction is decoded or verified: a peer's oversize batch costs
        # us one look at its length, not a decode and thousands of signature checks.
        if len(raw_txs) > params.batch_txs_max:
            raise WireFormatError(f"batch: more than {params.batch_txs_max} transactions")
        return PrePrepare(
            view=as_int(fields[1], "view"),
            seq=as_int(fields[2], "seq"),
            digest=as_bytes(fields[3], "digest", size=DIGEST_BYTES),
            proposed_ms=as_int(fields[4], "proposed_ms"),
            sender=as_int(fields[5], "sender"),
            txs=tuple(Transaction.from_array(t, params) for t in raw_txs),
            body=body,
            signature=signature,
        )
    if len(envelope) != 2:
        raise WireFormatError(f"{kind[:16]}: unexpected third field")
    if kind in ("prepare", "commit"):
        as_list(fields, 5, kind)
        cls = Prepare if kind == "prepare" else Commit
        return cls(
            view=as_int(fields[1], "view"),
            seq=as_int(fields[2], "seq"),
            digest=as_bytes(fields[3], "digest", size=DIGEST_BYTES),
            sender=as_int(fields[4], "sender"),
            body=body,
            signature=signature,
        )
    if kind == "checkpoint":
        as_list(fields, 4, kind)
        return Checkpoint(
            seq=as_int(fields[1], "seq"),
            block_hash=as_bytes(fields[2], "block_hash", size=DIGEST_BYTES),
            sender=as_int(fields[3], "sender"),
            body=body,
            signature=signature,
        )
    raise WireFormatError(f"unknown pbft message kind {kind[:16]!r}")
