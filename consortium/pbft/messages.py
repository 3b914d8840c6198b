"""PBFT protocol messages and their wire form (Castro & Liskov 1999, §4.2; TOCS 2002, §2.3).

Every message travels as the msgpack array [body, signature] (a PRE-PREPARE adds the batch:
[body, signature, [tx, ...]]). The body is the canonical encoding of a fixed-order array whose
first element names the kind and whose last is the sender's member index; the signature is the
sender's Ed25519 signature over Domain.PBFT + chain id + body, verified over the body bytes
exactly as received (a non-canonical body is refused at decode, so no re-encoding is needed).

    PRE-PREPARE  ["preprepare", view, seq, digest, proposed_ms, sender]   + the batch
    PREPARE      ["prepare", view, seq, digest, sender]
    COMMIT       ["commit", view, seq, digest, sender]     (= certificates.commit_body)
    CHECKPOINT   ["checkpoint", seq, block_hash, sender]   (= certificates.checkpoint_body)
    FETCH        ["fetch", seq, sender]    a lagging replica asks for a batch it is missing

Because each vote is signed by its author, a vote relayed by another replica is as good as one
received directly: the author is the signer, not the connection. Batches travel with the
PRE-PREPARE; the digest binds the ordered tx ids and the proposed timestamp
(ledger.block.batch_digest), and the client signatures are checked separately.
"""

from __future__ import annotations

from dataclasses import dataclass

from consortium.crypto.codec import (
    WireFormatError,
    as_bytes,
    as_int,
    as_list,
    pack,
    unpack,
    unpack_canonical,
)
from consortium.crypto.signing import Domain, Signer
from consortium.ledger.certificates import SignedVote, checkpoint_body, commit_body
from consortium.ledger.genesis import Params
from consortium.ledger.tx import Transaction

__all__ = [
    "Checkpoint",
    "Commit",
    "Fetch",
    "Message",
    "PrePrepare",
    "Prepare",
    "WireFormatError",
    "decode",
    "encode",
]

BODY_BYTES_MAX = 256
_MEMBERS_MAX = 1024


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
        *,
        view: int,
        seq: int,
        digest: bytes,
        proposed_ms: int,
        sender: int,
        txs: tuple[Transaction, ...],
    ) -> PrePrepare:
        body = pack(["preprepare", view, seq, digest, proposed_ms, sender])
        sig = signer.sign(Domain.PBFT, chain_id, body)
        return cls(
            view=view,
            seq=seq,
            digest=digest,
            proposed_ms=proposed_ms,
            sender=sender,
            txs=txs,
            body=body,
            signature=sig,
        )


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
        cls, signer: Signer, chain_id: bytes, *, view: int, seq: int, digest: bytes, sender: int
    ) -> Prepare:
        body = pack(["prepare", view, seq, digest, sender])
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
        cls, signer: Signer, chain_id: bytes, *, view: int, seq: int, digest: bytes, sender: int
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
        cls, signer: Signer, chain_id: bytes, *, seq: int, block_hash: bytes, sender: int
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


@dataclass(frozen=True, slots=True, kw_only=True)
class Fetch:
    seq: int
    sender: int
    body: bytes
    signature: bytes

    @classmethod
    def create(cls, signer: Signer, chain_id: bytes, *, seq: int, sender: int) -> Fetch:
        body = pack(["fetch", seq, sender])
        return cls(
            seq=seq, sender=sender, body=body, signature=signer.sign(Domain.PBFT, chain_id, body)
        )


Message = PrePrepare | Prepare | Commit | Checkpoint | Fetch


def encode(msg: Message) -> bytes:
    if isinstance(msg, PrePrepare):
        return pack([msg.body, msg.signature, [t.to_array() for t in msg.txs]])
    return pack([msg.body, msg.signature])


def decode(frame: bytes, params: Params) -> Message:
    """Decode one frame; raises only WireFormatError. Signatures are NOT checked here."""
    envelope = as_list(unpack(frame, max_len=params.frame_bytes_max), what="pbft message")
    if len(envelope) not in (2, 3):
        raise WireFormatError(
            "pbft message: expected [body, signature] or [body, signature, batch]"
        )
    body = as_bytes(envelope[0], "body", max_len=BODY_BYTES_MAX)
    signature = as_bytes(envelope[1], "signature", size=64)
    b = as_list(unpack_canonical(body, max_len=BODY_BYTES_MAX), what="body")
    if not b or not isinstance(b[0], str):
        raise WireFormatError("body: missing kind")
    kind = b[0]
    if kind == "preprepare":
        if len(envelope) != 3:
            raise WireFormatError("preprepare: the batch is missing")
        as_list(b, 6, "preprepare")
        raw_txs = as_list(envelope[2], what="batch")
        if len(raw_txs) > params.batch_txs_max:
            raise WireFormatError(f"batch: more than {params.batch_txs_max} transactions")
        return PrePrepare(
            view=as_int(b[1], "view"),
            seq=as_int(b[2], "seq"),
            digest=as_bytes(b[3], "digest", size=32),
            proposed_ms=as_int(b[4], "proposed_ms"),
            sender=as_int(b[5], "sender", hi=_MEMBERS_MAX),
            txs=tuple(Transaction.from_array(t, params) for t in raw_txs),
            body=body,
            signature=signature,
        )
    if len(envelope) != 2:
        raise WireFormatError(f"{kind}: unexpected batch")
    if kind in ("prepare", "commit"):
        as_list(b, 5, kind)
        cls = Prepare if kind == "prepare" else Commit
        return cls(
            view=as_int(b[1], "view"),
            seq=as_int(b[2], "seq"),
            digest=as_bytes(b[3], "digest", size=32),
            sender=as_int(b[4], "sender", hi=_MEMBERS_MAX),
            body=body,
            signature=signature,
        )
    if kind == "checkpoint":
        as_list(b, 4, kind)
        return Checkpoint(
            seq=as_int(b[1], "seq"),
            block_hash=as_bytes(b[2], "block_hash", size=32),
            sender=as_int(b[3], "sender", hi=_MEMBERS_MAX),
            body=body,
            signature=signature,
        )
    if kind == "fetch":
        as_list(b, 3, kind)
        return Fetch(
            seq=as_int(b[1], "seq"),
            sender=as_int(b[2], "sender", hi=_MEMBERS_MAX),
            body=body,
            signature=signature,
        )
    raise WireFormatError(f"unknown pbft message kind {kind[:16]!r}")
