"""PBFT protocol messages and their wire form (Castro & Liskov, OSDI 1999 §4.2-4.3; TOCS 2002
§2.3 and §4, the variant with signatures rather than authenticators).

Theory of operation
-------------------
Every message travels as one canonical msgpack array [body, signature]; a PRE-PREPARE appends
its batch: [body, signature, [tx.to_array(), ...]]. The body is the canonical encoding of a
fixed-order array naming the kind first, the sender's epoch (configuration number,
ledger/membership.py) second and the sender (its member id) last:

    PRE-PREPARE  ["preprepare", epoch, view, seq, digest, proposed_ms, sender]   + the batch
    PREPARE      ["prepare", epoch, view, seq, digest, sender]
    COMMIT       ["commit", epoch, view, seq, digest, sender]   == certificates.commit_body
    CHECKPOINT   ["checkpoint", epoch, seq, block_hash, sender] == certificates.checkpoint_body
    VIEW-CHANGE  ["viewchange", epoch, view, stable_seq, proofs_digest, sender]
                 + [stable checkpoint certificate or nil, [prepared proof, ...]]
    NEW-VIEW     ["newview", epoch, view, proofs_digest, sender]
                 + [[VIEW-CHANGE frame, ...], [[PRE-PREPARE body, signature], ...]]
    BATCH-REQ    ["batchreq", epoch, digest, sender]            ask any replica for a batch
    BATCH        ["batch", epoch, digest, proposed_ms, sender]  + the batch (checked by digest)
    FETCH        ["fetch", epoch, from_seq, sender]             state transfer: blocks from a seq
    BLOCKS       ["blocks", epoch, from_seq, height, sender]   height: how far the sender
                 claims to have executed (its ledger height when it answered)
                 + [stable checkpoint certificate or nil, [[proposed_ms, batch, commit
                   certificate], ...]]   each block checked by its own commit certificate
    VIEW-QUERY   ["viewquery", epoch, nonce, sender]            a recovering member asks a
                                                                peer's view (pbft/recovery.py)
    VIEW-REPORT  ["viewreport", epoch, nonce, view, last_executed, sender]   the answer, signed
                                                                over the asker's fresh nonce

The epoch is where pbft/epochs.py routes a message: a replica (pbft/replica.py) handles only
its own epoch's. `create` takes it as the keyword `epoch` (0 by default: the genesis
configuration).

VIEW-CHANGE and NEW-VIEW sign a short body that binds their proofs by digest
(proofs_digest = SHA-256 of the canonical encoding of the attached proofs), so bodies stay
small and fixed-shape while a relay still cannot change a single proof. A prepared proof is
[PRE-PREPARE body, its signature, [[PREPARE body, signature], ...]]: batches travel by digest
and are fetched with BATCH-REQ, so every VIEW-CHANGE and NEW-VIEW fits the frame limit.

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
from typing import Any

from consortium.crypto.codec import (
    WireFormatError,
    array_header_bytes,
    as_bytes,
    as_int,
    as_list,
    bin_header_bytes,
    digest_of,
    pack,
    unpack_canonical,
)
from consortium.crypto.keys import SIGNATURE_BYTES
from consortium.crypto.signing import Domain, Signer
from consortium.ledger.block import batch_digest
from consortium.ledger.certificates import (
    CheckpointCertificate,
    CommitCertificate,
    SignedVote,
    checkpoint_body,
    commit_body,
)
from consortium.ledger.genesis import Params, full_batch_frame_fix
from consortium.ledger.tx import TX_FRAMING_BYTES_MAX, Transaction, batch_wire_bytes_max

__all__ = [
    "BODY_BYTES_MAX",
    "Batch",
    "BatchRequest",
    "Blocks",
    "Checkpoint",
    "Commit",
    "Fetch",
    "Message",
    "NewView",
    "PrePrepare",
    "Prepare",
    "PreparedProof",
    "ViewChange",
    "ViewQuery",
    "ViewReport",
    "WireFormatError",
    "decode",
    "encode",
    "frame_bytes_limit",
    "preprepare_body",
    "prepare_body",
]

BODY_BYTES_MAX = 256  # every body is a short array of small ints and two 32-byte hashes
DIGEST_BYTES = 32
NONCE_BYTES = 16  # VIEW-QUERY / VIEW-REPORT: fresh per recovering start (pbft/recovery.py)
SENDER_MAX = (1 << 16) - 1  # member ids are below 2^16 (ledger/membership.py MEMBER_IDS)


def preprepare_body(
    view: int, seq: int, digest: bytes, proposed_ms: int, sender: int, epoch: int = 0
) -> bytes:
    return pack(["preprepare", epoch, view, seq, digest, proposed_ms, sender])


def prepare_body(view: int, seq: int, digest: bytes, sender: int, epoch: int = 0) -> bytes:
    return pack(["prepare", epoch, view, seq, digest, sender])


@dataclass(frozen=True, slots=True, kw_only=True)
class PrePrepare:
    epoch: int = 0  # the sender's configuration (body field 2)
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
        epoch: int = 0,
    ) -> PrePrepare:
        if digest is None:
            digest = batch_digest(proposed_ms, [t.id for t in txs])
        body = preprepare_body(view, seq, digest, proposed_ms, sender, epoch)
        return cls(
            epoch=epoch,
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
    epoch: int = 0  # the sender's configuration (body field 2)
    view: int
    seq: int
    digest: bytes
    sender: int
    body: bytes
    signature: bytes

    @classmethod
    def create(
        cls,
        signer: Signer,
        chain_id: bytes,
        view: int,
        seq: int,
        digest: bytes,
        sender: int,
        *,
        epoch: int = 0,
    ) -> Prepare:
        body = prepare_body(view, seq, digest, sender, epoch)
        return cls(
            epoch=epoch,
            view=view,
            seq=seq,
            digest=digest,
            sender=sender,
            body=body,
            signature=signer.sign(Domain.PBFT, chain_id, body),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Commit:
    epoch: int = 0  # the sender's configuration (body field 2)
    view: int
    seq: int
    digest: bytes
    sender: int
    body: bytes
    signature: bytes

    @classmethod
    def create(
        cls,
        signer: Signer,
        chain_id: bytes,
        view: int,
        seq: int,
        digest: bytes,
        sender: int,
        *,
        epoch: int = 0,
    ) -> Commit:
        body = commit_body(epoch, view, seq, digest, sender)
        return cls(
            epoch=epoch,
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
    epoch: int = 0  # the sender's configuration (body field 2)
    seq: int
    block_hash: bytes
    sender: int
    body: bytes
    signature: bytes

    @classmethod
    def create(
        cls,
        signer: Signer,
        chain_id: bytes,
        seq: int,
        block_hash: bytes,
        sender: int,
        *,
        epoch: int = 0,
    ) -> Checkpoint:
        body = checkpoint_body(epoch, seq, block_hash, sender)
        return cls(
            epoch=epoch,
            seq=seq,
            block_hash=block_hash,
            sender=sender,
            body=body,
            signature=signer.sign(Domain.PBFT, chain_id, body),
        )

    def vote(self) -> SignedVote:
        return SignedVote(self.body, self.signature)


@dataclass(frozen=True, slots=True, kw_only=True)
class PreparedProof:
    """A prepared certificate: the primary's signed PRE-PREPARE (its batch travels separately,
    by digest) and Q-1 signed PREPAREs from distinct backups for the same (view, seq, digest).
    Self-authenticating: anyone can check it with the members' keys (pbft/viewchange.py)."""

    preprepare: PrePrepare  # txs empty when it came over the wire
    prepares: tuple[Prepare, ...]

    @property
    def view(self) -> int:
        return self.preprepare.view

    @property
    def seq(self) -> int:
        return self.preprepare.seq

    @property
    def digest(self) -> bytes:
        return self.preprepare.digest

    def without_batch(self, prepares_max: int | None = None) -> PreparedProof:
        """As a VIEW-CHANGE carries it: the PRE-PREPARE without its batch and, with
        `prepares_max`, at most that many PREPAREs (a proof restored from a store written when
        proofs kept every matching PREPARE, Q-1 being what check_proof admits)."""
        return PreparedProof(
            preprepare=PrePrepare(
                epoch=self.preprepare.epoch,
                view=self.preprepare.view,
                seq=self.preprepare.seq,
                digest=self.preprepare.digest,
                proposed_ms=self.preprepare.proposed_ms,
                sender=self.preprepare.sender,
                txs=(),
                body=self.preprepare.body,
                signature=self.preprepare.signature,
            ),
            prepares=self.prepares[:prepares_max],
        )

    def to_array(self) -> list[object]:
        pp = self.preprepare
        return [pp.body, pp.signature, [[p.body, p.signature] for p in self.prepares]]


def proofs_digest_of(
    stable: CheckpointCertificate | None, proofs: tuple[PreparedProof, ...]
) -> bytes:
    return digest_of(
        [None if stable is None else stable.to_array(), [p.to_array() for p in proofs]]
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ViewChange:
    epoch: int = 0  # the sender's configuration (body field 2)
    view: int  # the view this replica moves to
    stable_seq: int
    proofs_digest: bytes
    sender: int
    stable: CheckpointCertificate | None
    prepared: tuple[PreparedProof, ...]  # at most one per seq, the highest view's
    body: bytes
    signature: bytes

    @classmethod
    def create(
        cls,
        signer: Signer,
        chain_id: bytes,
        view: int,
        stable: CheckpointCertificate | None,
        prepared: tuple[PreparedProof, ...],
        sender: int,
        *,
        epoch: int = 0,
        stable_seq: int | None = None,  # the epoch's start when `stable` is nil (epochs.py)
    ) -> ViewChange:
        if stable_seq is None or stable is not None:
            stable_seq = 0 if stable is None else stable.seq
        digest = proofs_digest_of(stable, prepared)
        body = pack(["viewchange", epoch, view, stable_seq, digest, sender])
        return cls(
            epoch=epoch,
            view=view,
            stable_seq=stable_seq,
            proofs_digest=digest,
            sender=sender,
            stable=stable,
            prepared=prepared,
            body=body,
            signature=signer.sign(Domain.PBFT, chain_id, body),
        )


def new_view_digest(frames: tuple[bytes, ...], preprepares: tuple[PrePrepare, ...]) -> bytes:
    return digest_of([list(frames), [[p.body, p.signature] for p in preprepares]])


@dataclass(frozen=True, slots=True, kw_only=True)
class NewView:
    epoch: int = 0  # the sender's configuration (body field 2)
    view: int
    proofs_digest: bytes
    sender: int
    view_change_frames: tuple[bytes, ...]  # the Q VIEW-CHANGEs, exactly as their senders signed
    preprepares: tuple[PrePrepare, ...]  # re-issued for (min_s, max_s], without batches
    body: bytes
    signature: bytes

    @classmethod
    def create(
        cls,
        signer: Signer,
        chain_id: bytes,
        view: int,
        view_change_frames: tuple[bytes, ...],
        preprepares: tuple[PrePrepare, ...],
        sender: int,
        *,
        epoch: int = 0,
    ) -> NewView:
        digest = new_view_digest(view_change_frames, preprepares)
        body = pack(["newview", epoch, view, digest, sender])
        return cls(
            epoch=epoch,
            view=view,
            proofs_digest=digest,
            sender=sender,
            view_change_frames=view_change_frames,
            preprepares=preprepares,
            body=body,
            signature=signer.sign(Domain.PBFT, chain_id, body),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchRequest:
    epoch: int = 0  # the sender's configuration (body field 2)
    digest: bytes
    sender: int
    body: bytes
    signature: bytes

    @classmethod
    def create(
        cls, signer: Signer, chain_id: bytes, digest: bytes, sender: int, *, epoch: int = 0
    ) -> BatchRequest:
        body = pack(["batchreq", epoch, digest, sender])
        return cls(
            epoch=epoch,
            digest=digest,
            sender=sender,
            body=body,
            signature=signer.sign(Domain.PBFT, chain_id, body),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Batch:
    """A batch sent by digest; valid when batch_digest(proposed_ms, ids) == digest, whoever
    sends it."""

    epoch: int = 0  # the sender's configuration (body field 2)
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
        proposed_ms: int,
        txs: tuple[Transaction, ...],
        sender: int,
        *,
        digest: bytes | None = None,  # tests only
        epoch: int = 0,
    ) -> Batch:
        if digest is None:
            digest = batch_digest(proposed_ms, [t.id for t in txs])
        body = pack(["batch", epoch, digest, proposed_ms, sender])
        return cls(
            epoch=epoch,
            digest=digest,
            proposed_ms=proposed_ms,
            sender=sender,
            txs=txs,
            body=body,
            signature=signer.sign(Domain.PBFT, chain_id, body),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Fetch:
    epoch: int = 0  # the sender's configuration (body field 2)
    from_seq: int
    sender: int
    body: bytes
    signature: bytes

    @classmethod
    def create(
        cls, signer: Signer, chain_id: bytes, from_seq: int, sender: int, *, epoch: int = 0
    ) -> Fetch:
        body = pack(["fetch", epoch, from_seq, sender])
        return cls(
            epoch=epoch,
            from_seq=from_seq,
            sender=sender,
            body=body,
            signature=signer.sign(Domain.PBFT, chain_id, body),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferredBlock:
    """One committed batch as state transfer carries it: checked by its commit certificate
    (Q signed COMMITs for (view, seq, digest)) and digest == batch_digest(proposed_ms, ids)."""

    proposed_ms: int
    txs: tuple[Transaction, ...]
    certificate: CommitCertificate

    @property
    def seq(self) -> int:
        return self.certificate.seq

    def to_array(self) -> list[object]:
        return [self.proposed_ms, [t.to_array() for t in self.txs], self.certificate.to_array()]


@dataclass(frozen=True, slots=True, kw_only=True)
class Blocks:
    epoch: int = 0  # the sender's configuration (body field 2)
    from_seq: int
    # The sender's ledger height as it answered: how far it claims to be. An answer with fewer
    # blocks than fit one frame while it claims more counts as slow (pbft/replica.py).
    height: int
    sender: int
    stable: CheckpointCertificate | None
    blocks: tuple[TransferredBlock, ...]
    body: bytes
    signature: bytes

    @classmethod
    def create(
        cls,
        signer: Signer,
        chain_id: bytes,
        from_seq: int,
        height: int,
        stable: CheckpointCertificate | None,
        blocks: tuple[TransferredBlock, ...],
        sender: int,
        *,
        epoch: int = 0,
    ) -> Blocks:
        body = pack(["blocks", epoch, from_seq, height, sender])
        return cls(
            epoch=epoch,
            from_seq=from_seq,
            height=height,
            sender=sender,
            stable=stable,
            blocks=blocks,
            body=body,
            signature=signer.sign(Domain.PBFT, chain_id, body),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ViewQuery:
    """A recovering member asks a peer for its view, with a nonce it chose for this start, so
    an answer recorded before its state was lost can never be replayed to it."""

    epoch: int = 0  # the sender's configuration (body field 2)
    nonce: bytes
    sender: int
    body: bytes
    signature: bytes

    @classmethod
    def create(
        cls, signer: Signer, chain_id: bytes, nonce: bytes, sender: int, *, epoch: int = 0
    ) -> ViewQuery:
        body = pack(["viewquery", epoch, nonce, sender])
        return cls(
            epoch=epoch,
            nonce=nonce,
            sender=sender,
            body=body,
            signature=signer.sign(Domain.PBFT, chain_id, body),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ViewReport:
    """The answer to a VIEW-QUERY: the sender's view (the one it is in or moving to) and the
    highest sequence number it executed, signed together with the asker's nonce."""

    epoch: int = 0  # the sender's configuration (body field 2)
    nonce: bytes
    view: int
    last_executed: int
    sender: int
    body: bytes
    signature: bytes

    @classmethod
    def create(
        cls,
        signer: Signer,
        chain_id: bytes,
        nonce: bytes,
        view: int,
        last_executed: int,
        sender: int,
        *,
        epoch: int = 0,
    ) -> ViewReport:
        body = pack(["viewreport", epoch, nonce, view, last_executed, sender])
        return cls(
            epoch=epoch,
            nonce=nonce,
            view=view,
            last_executed=last_executed,
            sender=sender,
            body=body,
            signature=signer.sign(Domain.PBFT, chain_id, body),
        )


Message = (
    PrePrepare
    | Prepare
    | Commit
    | Checkpoint
    | ViewChange
    | NewView
    | BatchRequest
    | Batch
    | Fetch
    | Blocks
    | ViewQuery
    | ViewReport
)
ENVELOPE_BYTES_MAX = 64 * 1024  # a message's framing and certificates, generously


def frame_bytes_limit(params: Params) -> int:
    """The largest frame decode() accepts: a full batch of transactions with each one's
    encoding overhead, plus the envelope. A BLOCKS answer is cut to fit it (transfer.py)."""
    batch = params.batch_bytes_max + params.batch_txs_max * TX_FRAMING_BYTES_MAX
    return min(params.frame_bytes_max, batch + ENVELOPE_BYTES_MAX)


def encode(msg: Message) -> bytes:
    """The frame of `msg`; for a decoded message this is exactly the frame it came from."""
    if isinstance(msg, PrePrepare):
        return pack([msg.body, msg.signature, [t.to_array() for t in msg.txs]])
    if isinstance(msg, ViewChange):
        stable = None if msg.stable is None else msg.stable.to_array()
        return pack([msg.body, msg.signature, stable, [p.to_array() for p in msg.prepared]])
    if isinstance(msg, NewView):
        pps = [[p.body, p.signature] for p in msg.preprepares]
        return pack([msg.body, msg.signature, list(msg.view_change_frames), pps])
    if isinstance(msg, Batch):
        return pack([msg.body, msg.signature, [t.to_array() for t in msg.txs]])
    if isinstance(msg, Blocks):
        stable = None if msg.stable is None else msg.stable.to_array()
        blocks = [b.to_array() for b in msg.blocks]
        return pack([msg.body, msg.signature, stable, blocks])
    return pack([msg.body, msg.signature])


def _fields(body: bytes) -> list[Any]:
    fields = as_list(unpack_canonical(body, max_len=BODY_BYTES_MAX), what="body")
    if not fields or not isinstance(fields[0], str):
        raise WireFormatError("body: the first field must name the message kind")
    return fields


def _signed(v: Any, what: str) -> tuple[bytes, bytes]:
    a = as_list(v, 2, what)
    return (
        as_bytes(a[0], f"{what} body", max_len=BODY_BYTES_MAX),
        as_bytes(a[1], f"{what} signature", size=SIGNATURE_BYTES),
    )


def _preprepare(body: bytes, signature: bytes, txs: tuple[Transaction, ...]) -> PrePrepare:
    fields = _fields(body)
    if fields[0] != "preprepare":
        raise WireFormatError("expected a preprepare body")
    as_list(fields, 7, "preprepare")
    return PrePrepare(
        epoch=as_int(fields[1], "epoch"),
        view=as_int(fields[2], "view"),
        seq=as_int(fields[3], "seq"),
        digest=as_bytes(fields[4], "digest", size=DIGEST_BYTES),
        proposed_ms=as_int(fields[5], "proposed_ms"),
        sender=as_int(fields[6], "sender", hi=SENDER_MAX),
        txs=txs,
        body=body,
        signature=signature,
    )


def _vote(body: bytes, signature: bytes) -> Prepare | Commit:
    fields = _fields(body)
    kind = fields[0]
    if kind not in ("prepare", "commit"):
        raise WireFormatError(f"expected a prepare or commit body, got {str(kind)[:16]!r}")
    as_list(fields, 6, kind)
    cls = Prepare if kind == "prepare" else Commit
    return cls(
        epoch=as_int(fields[1], "epoch"),
        view=as_int(fields[2], "view"),
        seq=as_int(fields[3], "seq"),
        digest=as_bytes(fields[4], "digest", size=DIGEST_BYTES),
        sender=as_int(fields[5], "sender", hi=SENDER_MAX),
        body=body,
        signature=signature,
    )


def _txs(v: Any, params: Params) -> tuple[Transaction, ...]:
    raw = as_list(v, what="batch")
    # Limits before any transaction is decoded or verified: a peer's oversize batch costs us
    # one look at its length, not a decode and thousands of signature checks.
    if len(raw) > params.batch_txs_max:
        raise WireFormatError(f"batch: more than {params.batch_txs_max} transactions")
    return tuple(Transaction.from_array(t, params) for t in raw)


def _stable(v: Any) -> CheckpointCertificate | None:
    return None if v is None else CheckpointCertificate.from_array(v)


def _proof(v: Any, params: Params) -> PreparedProof:
    a = as_list(v, 3, "prepared proof")
    pp = _preprepare(
        as_bytes(a[0], "preprepare body", max_len=BODY_BYTES_MAX),
        as_bytes(a[1], "preprepare signature", size=SIGNATURE_BYTES),
        (),
    )
    raw = as_list(a[2], what="prepares")
    if len(raw) > 1024:
        raise WireFormatError("prepared proof: too many prepares")
    prepares = []
    for item in raw:
        vote = _vote(*_signed(item, "prepare"))
        if not isinstance(vote, Prepare):
            raise WireFormatError("prepared proof: a commit among the prepares")
        prepares.append(vote)
    return PreparedProof(preprepare=pp, prepares=tuple(prepares))


def decode(frame: bytes, params: Params) -> Message:
    """Decode one frame; raises only WireFormatError. Shape only: no signature is checked."""
    if len(frame) > frame_bytes_limit(params):
        # No honest message is larger than a full batch (a NEW-VIEW carries proofs by digest,
        # well under it): refuse before decoding anything.
        raise WireFormatError(f"message of {len(frame)} bytes exceeds a full batch")
    envelope = as_list(unpack_canonical(frame, max_len=params.frame_bytes_max), what="pbft message")
    if len(envelope) not in (2, 3, 4):
        raise WireFormatError("pbft message: expected [body, signature, ...]")
    body = as_bytes(envelope[0], "body", max_len=BODY_BYTES_MAX)
    signature = as_bytes(envelope[1], "signature", size=SIGNATURE_BYTES)
    fields = _fields(body)
    kind = fields[0]
    extra = {
        "preprepare": 1,
        "viewchange": 2,
        "newview": 2,
        "batch": 1,
        "blocks": 2,
    }.get(kind, 0)
    if len(envelope) != 2 + extra:
        raise WireFormatError(f"{kind[:16]}: expected {2 + extra} fields")
    if kind == "preprepare":
        return _preprepare(body, signature, _txs(envelope[2], params))
    if kind in ("prepare", "commit"):
        return _vote(body, signature)
    if kind == "checkpoint":
        as_list(fields, 5, kind)
        return Checkpoint(
            epoch=as_int(fields[1], "epoch"),
            seq=as_int(fields[2], "seq"),
            block_hash=as_bytes(fields[3], "block_hash", size=DIGEST_BYTES),
            sender=as_int(fields[4], "sender", hi=SENDER_MAX),
            body=body,
            signature=signature,
        )
    if kind == "viewchange":
        as_list(fields, 6, kind)
        raw = as_list(envelope[3], what="prepared proofs")
        if len(raw) > params.window:
            raise WireFormatError(f"viewchange: more than {params.window} prepared proofs")
        return ViewChange(
            epoch=as_int(fields[1], "epoch"),
            view=as_int(fields[2], "view"),
            stable_seq=as_int(fields[3], "stable_seq"),
            proofs_digest=as_bytes(fields[4], "proofs_digest", size=DIGEST_BYTES),
            sender=as_int(fields[5], "sender", hi=SENDER_MAX),
            stable=_stable(envelope[2]),
            prepared=tuple(_proof(p, params) for p in raw),
            body=body,
            signature=signature,
        )
    if kind == "newview":
        as_list(fields, 5, kind)
        frames = as_list(envelope[2], what="view changes")
        pps = as_list(envelope[3], what="re-issued preprepares")
        if len(frames) > 1024 or len(pps) > params.window:
            raise WireFormatError("newview: too many view changes or preprepares")
        return NewView(
            epoch=as_int(fields[1], "epoch"),
            view=as_int(fields[2], "view"),
            proofs_digest=as_bytes(fields[3], "proofs_digest", size=DIGEST_BYTES),
            sender=as_int(fields[4], "sender", hi=SENDER_MAX),
            view_change_frames=tuple(as_bytes(f, "view change frame") for f in frames),
            preprepares=tuple(_preprepare(*_signed(p, "preprepare"), ()) for p in pps),
            body=body,
            signature=signature,
        )
    if kind == "batchreq":
        as_list(fields, 4, kind)
        return BatchRequest(
            epoch=as_int(fields[1], "epoch"),
            digest=as_bytes(fields[2], "digest", size=DIGEST_BYTES),
            sender=as_int(fields[3], "sender", hi=SENDER_MAX),
            body=body,
            signature=signature,
        )
    if kind == "batch":
        as_list(fields, 5, kind)
        return Batch(
            epoch=as_int(fields[1], "epoch"),
            digest=as_bytes(fields[2], "digest", size=DIGEST_BYTES),
            proposed_ms=as_int(fields[3], "proposed_ms"),
            sender=as_int(fields[4], "sender", hi=SENDER_MAX),
            txs=_txs(envelope[2], params),
            body=body,
            signature=signature,
        )
    if kind == "fetch":
        as_list(fields, 4, kind)
        return Fetch(
            epoch=as_int(fields[1], "epoch"),
            from_seq=as_int(fields[2], "from_seq"),
            sender=as_int(fields[3], "sender", hi=SENDER_MAX),
            body=body,
            signature=signature,
        )
    if kind == "blocks":
        as_list(fields, 5, kind)
        raw_blocks = as_list(envelope[3], what="blocks")
        if len(raw_blocks) > params.window:
            raise WireFormatError(f"blocks: more than {params.window} blocks")
        blocks = []
        for item in raw_blocks:
            a = as_list(item, 3, "transferred block")
            blocks.append(
                TransferredBlock(
                    proposed_ms=as_int(a[0], "proposed_ms"),
                    txs=_txs(a[1], params),
                    certificate=CommitCertificate.from_array(a[2]),
                )
            )
        return Blocks(
            epoch=as_int(fields[1], "epoch"),
            from_seq=as_int(fields[2], "from_seq"),
            height=as_int(fields[3], "height"),
            sender=as_int(fields[4], "sender", hi=SENDER_MAX),
            stable=_stable(envelope[2]),
            blocks=tuple(blocks),
            body=body,
            signature=signature,
        )
    if kind == "viewquery":
        as_list(fields, 4, kind)
        return ViewQuery(
            epoch=as_int(fields[1], "epoch"),
            nonce=as_bytes(fields[2], "nonce", size=NONCE_BYTES),
            sender=as_int(fields[3], "sender", hi=SENDER_MAX),
            body=body,
            signature=signature,
        )
    if kind == "viewreport":
        as_list(fields, 6, kind)
        return ViewReport(
            epoch=as_int(fields[1], "epoch"),
            nonce=as_bytes(fields[2], "nonce", size=NONCE_BYTES),
            view=as_int(fields[3], "view"),
            last_executed=as_int(fields[4], "last_executed"),
            sender=as_int(fields[5], "sender", hi=SENDER_MAX),
            body=body,
            signature=signature,
        )
    raise WireFormatError(f"unknown pbft message kind {kind[:16]!r}")


# --- worst-case sizes (genesis validation) ---------------------------------------------------

INT_MAX = 2**63 - 1  # the largest integer a field decodes to (codec.as_int): 9 bytes


class _Unsigned:
    """Signs nothing: 64 zero bytes, a signature's size (to size messages, never to send)."""

    public_key = bytes(32)

    def sign(self, domain: Domain, chain_id: bytes, body: bytes) -> bytes:
        return bytes(SIGNATURE_BYTES)


def worst_case_frames(params: Params, n: int, window: int | None = None) -> dict[str, int]:
    """The largest frame of each kind that n members with these parameters may have to send
    one another, computed from the real encodings with every field at its largest: integers
    at INT_MAX (the epoch too), the sender the largest member id (65,535), certificates of n
    votes (what their checks admit: sizing them at MEMBERS_MAX would refuse geneses that work,
    since frame_size_problem is asked of each configuration at its own n), prepared proofs of
    Q-1 PREPAREs (what check_proof admits, and what an honest replica keeps), a
    NEW-VIEW of Q VIEW-CHANGEs each with `window` proofs (params.window by default) and
    `window` re-issued PRE-PREPAREs, and a full batch where a message carries one
    (ledger.tx.batch_wire_bytes_max). A list of k equal items is sized as its msgpack header
    and k times one item, so the result costs a few small encodings whatever n and the window.
    decode() refuses any frame above frame_bytes_limit(params)."""
    window = params.window if window is None else window
    quorum = (n + (n - 1) // 3 + 2) // 2
    signer, chain_id, digest, top, last = _Unsigned(), bytes(32), bytes(32), INT_MAX, SENDER_MAX
    sig = bytes(SIGNATURE_BYTES)
    batch = batch_wire_bytes_max(params)

    def with_batch(frame: bytes) -> int:
        return len(frame) - 1 + batch  # its empty batch (a 1-byte array) made full

    pp = PrePrepare.create(signer, chain_id, top, top, top, last, (), digest=digest, epoch=top)
    commit = SignedVote(commit_body(top, top, top, digest, last), sig)
    checkpoint = SignedVote(checkpoint_body(top, top, digest, last), sig)
    stable = CheckpointCertificate(top, digest, (checkpoint,) * n)
    block = TransferredBlock(
        proposed_ms=top, txs=(), certificate=CommitCertificate(top, top, digest, (commit,) * n)
    )
    prepare = Prepare.create(signer, chain_id, top, top, digest, last, epoch=top)
    proofs = PreparedProof(preprepare=pp, prepares=(prepare,) * (quorum - 1))
    proof_bytes = len(pack(proofs.to_array()))
    bare_vc = encode(ViewChange.create(signer, chain_id, top, stable, (), last, epoch=top))
    view_change = len(bare_vc) - 1 + array_header_bytes(window) + window * proof_bytes
    bare_nv = encode(NewView.create(signer, chain_id, top, (), (), last, epoch=top))
    reissued = len(pack([pp.body, pp.signature]))
    new_view = (
        len(bare_nv)
        - 2
        + array_header_bytes(quorum)
        + quorum * (bin_header_bytes(view_change) + view_change)
        + array_header_bytes(window)
        + window * reissued
    )
    return {
        "PRE-PREPARE": with_batch(encode(pp)),
        "BATCH": with_batch(
            encode(Batch.create(signer, chain_id, top, (), last, digest=digest, epoch=top))
        ),
        "BLOCKS": with_batch(
            encode(Blocks.create(signer, chain_id, top, top, stable, (block,), last, epoch=top))
        ),
        "VIEW-CHANGE": view_change,
        "NEW-VIEW": new_view,
    }


KIB = 1024


def frame_size_problem(params: Params, n: int) -> str | None:
    """Why n pbft members with these parameters could not exchange every message they must, if
    they could not (the worst-case frames above against params.frame_bytes_max and what decode()
    accepts); None when they can. Found in review: legal parameters (256 KiB batches at
    n >= 10, window 256 at n >= 22) made every NEW-VIEW too big to decode, so after one primary
    crash the members cycled through views for ever. node/genesis.py asks it of every genesis."""
    frame_max = params.frame_bytes_max
    decode_max = frame_bytes_limit(params)
    sizes = worst_case_frames(params, n)
    for kind in ("PRE-PREPARE", "BATCH", "BLOCKS"):
        size = sizes[kind]
        if size > frame_max:
            return (
                f"a pbft {kind} carrying a full batch can take {size:,} bytes, more than "
                f"params.frame_bytes_max ({frame_max:,}): " + full_batch_frame_fix(size)
            )
        if size > decode_max:
            return (
                f"with {n} members a pbft {kind}'s certificates outgrow the "
                f"{ENVELOPE_BYTES_MAX // KIB} KiB a frame may add to a full batch: fewer members"
            )
    for kind in ("VIEW-CHANGE", "NEW-VIEW"):
        size = sizes[kind]
        if size <= decode_max:
            continue
        window = _window_that_fits(params, n, kind, decode_max)
        k = params.checkpoint_interval
        limit = (
            "params.frame_bytes_max"
            if decode_max == frame_max
            else f"a full batch of params.batch_bytes_max plus {ENVELOPE_BYTES_MAX // KIB} KiB"
        )
        if window is None:
            fix = "no window fits at this n: raise params.batch_bytes_max"
        elif window >= 2 * k:
            fix = f"lower params.window to {window - window % k} or less"
        else:
            # (the window is a multiple of the checkpoint interval, at least two of them)
            fix = (
                f"lower params.window to {window - window % 2} or less and "
                f"params.checkpoint_interval to {window // 2} or less"
            )
        return (
            f"with {n} members and params.window = {params.window} a pbft {kind} can take "
            f"{size:,} bytes, more than the {decode_max:,} a member decodes ({limit}), so "
            f"no view change could complete: {fix}"
        )
    return None


def _window_that_fits(params: Params, n: int, kind: str, limit: int) -> int | None:
    """The largest window, at most params.window, whose worst-case `kind` frame fits `limit`
    (frames grow with the window: a binary search); None if not even a window of 2 does."""

    def fits(window: int) -> bool:
        return worst_case_frames(params, n, window)[kind] <= limit

    low, high = 2, params.window
    if not fits(low):
        return None
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low
