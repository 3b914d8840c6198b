"""Certificates stored beside blocks, checkable offline from the genesis file alone.

They live in the ledger (not in a consensus core) because the audit checks them and the ledger
must not import a core. The PBFT core signs exactly these bodies.

    COMMIT body       ["commit", view, seq, digest, sender]          Domain.PBFT
    CHECKPOINT body   ["checkpoint", seq, block_hash, sender]        Domain.PBFT
    block signature   ["block", height, block_hash, signer]          Domain.BLOCK

A commit certificate is Q signed COMMITs from distinct members for one (view, seq, digest);
a checkpoint certificate is Q signed CHECKPOINTs for one (seq, block hash); f+1 block signatures
from distinct members certify a header (and so any receipt proved against it). Honest replicas
may hold different valid certificates for one block, which is why certificates are never hashed
into blocks. Each vote keeps the exact signed bytes, so verification never re-encodes.
"""

from __future__ import annotations

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
from consortium.crypto.signing import Domain, Verifier
from consortium.ledger.genesis import Genesis

VOTE_BODY_BYTES_MAX = 256


@dataclass(frozen=True, slots=True)
class SignedVote:
    body: bytes
    signature: bytes

    def to_array(self) -> list[bytes]:
        return [self.body, self.signature]

    @classmethod
    def from_array(cls, v: Any) -> SignedVote:
        a = as_list(v, 2, "signed vote")
        return cls(
            as_bytes(a[0], "vote body", max_len=VOTE_BODY_BYTES_MAX),
            as_bytes(a[1], "vote signature", size=64),
        )


def commit_body(view: int, seq: int, digest: bytes, sender: int) -> bytes:
    return pack(["commit", view, seq, digest, sender])


def checkpoint_body(seq: int, block_hash: bytes, sender: int) -> bytes:
    return pack(["checkpoint", seq, block_hash, sender])


def block_signature_body(height: int, block_hash: bytes, signer: int) -> bytes:
    return pack(["block", height, block_hash, signer])


_VOTE_FIELDS = {
    "commit": "(view, seq, digest)",
    "checkpoint": "(seq, block hash)",
    "block": "(height, block hash)",
}


def _decode_body(body: bytes, kind: str, n_fields: int) -> list[Any]:
    a = as_list(unpack_canonical(body, max_len=VOTE_BODY_BYTES_MAX), n_fields, kind)
    if a[0] != kind:
        raise WireFormatError(f"expected a {kind} vote, got {str(a[0])[:16]!r}")
    return a


def _check_signers(
    votes: tuple[SignedVote, ...],
    genesis: Genesis,
    verifier: Verifier,
    domain: Domain,
    expect: list[Any],
    kind: str,
    needed: int,
) -> str | None:
    """Shared check: each vote decodes to `expect` + [signer], signers distinct members, valid."""
    signers: set[int] = set()
    for i, vote in enumerate(votes):
        try:
            a = _decode_body(vote.body, kind, len(expect) + 2)
        except WireFormatError as exc:
            return f"{kind} vote {i}: {exc}"
        if a[1:-1] != expect:
            return f"{kind} vote {i} is not for this {_VOTE_FIELDS[kind]}"
        signer = a[-1]
        # bool is an int in Python; a canonical signer index is a plain integer.
        if not isinstance(signer, int) or isinstance(signer, bool) or not 0 <= signer < genesis.n:
            return f"{kind} vote {i}: signer {signer!r} is not a member"
        if signer in signers:
            return f"{kind} vote {i}: member {genesis.members[signer].name} counted twice"
        if not verifier.verify(
            genesis.members[signer].public_key, domain, genesis.chain_id, vote.body, vote.signature
        ):
            return f"{kind} vote {i}: bad signature by {genesis.members[signer].name}"
        signers.add(signer)
    if len(signers) < needed:
        return f"{len(signers)} distinct {kind} signatures, {needed} needed"
    return None


@dataclass(frozen=True, slots=True)
class CommitCertificate:
    view: int
    seq: int
    digest: bytes
    votes: tuple[SignedVote, ...]

    def to_array(self) -> list[Any]:
        return [self.view, self.seq, self.digest, [v.to_array() for v in self.votes]]

    def encode(self) -> bytes:
        return pack(["pbft-commit", *self.to_array()])

    @classmethod
    def from_array(cls, v: Any) -> CommitCertificate:
        a = as_list(v, 4, "commit certificate")
        votes = as_list(a[3], what="commit votes")
        if len(votes) > 1024:
            raise WireFormatError("commit certificate: too many votes")
        return cls(
            as_int(a[0], "view"),
            as_int(a[1], "seq"),
            as_bytes(a[2], "digest", size=32),
            tuple(SignedVote.from_array(x) for x in votes),
        )

    def verify(self, genesis: Genesis, verifier: Verifier) -> str | None:
        return _check_signers(
            self.votes,
            genesis,
            verifier,
            Domain.PBFT,
            [self.view, self.seq, self.digest],
            "commit",
            genesis.quorum,
        )


@dataclass(frozen=True, slots=True)
class CheckpointCertificate:
    seq: int
    block_hash: bytes
    votes: tuple[SignedVote, ...]

    def to_array(self) -> list[Any]:
        return [self.seq, self.block_hash, [v.to_array() for v in self.votes]]

    def encode(self) -> bytes:
        return pack(self.to_array())

    @classmethod
    def from_array(cls, v: Any) -> CheckpointCertificate:
        a = as_list(v, 3, "checkpoint certificate")
        votes = as_list(a[2], what="checkpoint votes")
        if len(votes) > 1024:
            raise WireFormatError("checkpoint certificate: too many votes")
        return cls(
            as_int(a[0], "seq"),
            as_bytes(a[1], "block hash", size=32),
            tuple(SignedVote.from_array(x) for x in votes),
        )

    def verify(self, genesis: Genesis, verifier: Verifier) -> str | None:
        return _check_signers(
            self.votes,
            genesis,
            verifier,
            Domain.PBFT,
            [self.seq, self.block_hash],
            "checkpoint",
            genesis.quorum,
        )


def verify_block_signatures(
    votes: tuple[SignedVote, ...],
    height: int,
    block_hash: bytes,
    genesis: Genesis,
    verifier: Verifier,
    needed: int,
) -> str | None:
    """f+1 distinct member signatures over (chain id, height, block hash) certify a header."""
    return _check_signers(
        votes, genesis, verifier, Domain.BLOCK, [height, block_hash], "block", needed
    )


def decode_certificate(data: bytes) -> CommitCertificate:
    a = as_list(unpack_canonical(data), 5, "certificate")
    if a[0] != "pbft-commit":
        raise WireFormatError(f"unknown certificate kind {str(a[0])[:16]!r}")
    return CommitCertificate.from_array(a[1:])


def raft_entry_body(term: int, index: int, digest: bytes, leader: int) -> bytes:
    """What a Raft leader signs for each batch entry it proposes (Domain.RAFT_ENTRY)."""
    return pack(["raft-entry", term, index, digest, leader])


@dataclass(frozen=True, slots=True)
class RaftEntryCertificate:
    """The proposing leader's signature over (chain id, term, index, batch digest), carried
    inside the log entry so every node stores the same one beside the block. Raft trusts its
    members not to lie; the signature makes the ledger attributable and auditable offline."""

    term: int
    index: int
    digest: bytes
    leader: int
    signature: bytes

    @property
    def body(self) -> bytes:
        return raft_entry_body(self.term, self.index, self.digest, self.leader)

    def encode(self) -> bytes:
        return pack(["raft-entry", self.term, self.index, self.digest, self.leader, self.signature])

    @classmethod
    def decode(cls, data: bytes) -> RaftEntryCertificate:
        a = as_list(unpack_canonical(data, max_len=VOTE_BODY_BYTES_MAX), 6, "raft certificate")
        if a[0] != "raft-entry":
            raise WireFormatError(f"unknown certificate kind {str(a[0])[:16]!r}")
        return cls(
            as_int(a[1], "term"),
            as_int(a[2], "index"),
            as_bytes(a[3], "digest", size=32),
            as_int(a[4], "leader", hi=1 << 16),
            as_bytes(a[5], "signature", size=64),
        )

    def verify(self, genesis: Genesis, verifier: Verifier) -> str | None:
        if not 0 <= self.leader < genesis.n:
            return f"leader {self.leader} is not a member"
        member = genesis.members[self.leader]
        if not verifier.verify(
            member.public_key, Domain.RAFT_ENTRY, genesis.chain_id, self.body, self.signature
        ):
            return f"bad entry signature by {member.name}"
        return None
