"""Certificates stored beside blocks, checkable offline against the configuration that
ordered their height (ledger/membership.py; genesis_configuration(genesis) at epoch 0).

They live in the ledger (not in a consensus core) because the audit checks them and the ledger
must not import a core. The PBFT core signs exactly these bodies.

    COMMIT body       ["commit", epoch, view, seq, digest, sender]        Domain.PBFT
    CHECKPOINT body   ["checkpoint", epoch, seq, block_hash, sender]      Domain.PBFT
    block signature   ["block", height, block_hash, signer]               Domain.BLOCK

Senders and signers are member ids (genesis member i is id i). A commit certificate is Q
signed COMMITs from distinct voters of one configuration, each naming its epoch, for one
(view, seq, digest); a checkpoint certificate is Q signed CHECKPOINTs for one (seq, block
hash), likewise; f+1 block signatures from distinct members of config(height) certify a
header (and so any receipt proved against it). Block bodies name no epoch: the height decides
the configuration.

Legacy bodies. Certificates stored before protocol version 3 hold 5-field COMMIT and 4-field
CHECKPOINT bodies with no epoch: they are valid only against an epoch-0 configuration and only
when the caller says the certificate comes from a store (`stored=True`), never from the wire.
Honest replicas may hold different valid certificates for one block, which is why certificates
are never hashed into blocks. Each vote keeps the exact signed bytes, so verification never
re-encodes.
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
from consortium.ledger.membership import VOTER, Configuration

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


def commit_body(epoch: int, view: int, seq: int, digest: bytes, sender: int) -> bytes:
    return pack(["commit", epoch, view, seq, digest, sender])


def checkpoint_body(epoch: int, seq: int, block_hash: bytes, sender: int) -> bytes:
    return pack(["checkpoint", epoch, seq, block_hash, sender])


def legacy_commit_body(view: int, seq: int, digest: bytes, sender: int) -> bytes:
    """A COMMIT body as protocol version 2 signed it (stored certificates only)."""
    return pack(["commit", view, seq, digest, sender])


def legacy_checkpoint_body(seq: int, block_hash: bytes, sender: int) -> bytes:
    """A CHECKPOINT body as protocol version 2 signed it (stored certificates only)."""
    return pack(["checkpoint", seq, block_hash, sender])


def block_signature_body(height: int, block_hash: bytes, signer: int) -> bytes:
    return pack(["block", height, block_hash, signer])


_VOTE_FIELDS = {
    "commit": "(view, seq, digest)",
    "checkpoint": "(seq, block hash)",
    "block": "(height, block hash)",
}


def _decode_body(body: bytes, kind: str, n_fields: tuple[int, ...]) -> list[Any]:
    a = as_list(unpack_canonical(body, max_len=VOTE_BODY_BYTES_MAX), what=kind)
    if len(a) not in n_fields:
        raise WireFormatError(f"{kind}: expected {n_fields[0]} fields, got {len(a)}")
    if a[0] != kind:
        raise WireFormatError(f"expected a {kind} vote, got {str(a[0])[:16]!r}")
    return a


def _check_signers(
    votes: tuple[SignedVote, ...],
    config: Configuration,
    verifier: Verifier,
    domain: Domain,
    expect: list[Any],
    kind: str,
    needed: int,
    *,
    epoch_tagged: bool = True,
    stored: bool = False,
) -> str | None:
    """Shared check: each vote decodes to [kind, epoch] + `expect` + [signer] (block
    signatures: no epoch), naming `config`'s epoch; signers are distinct members of `config`
    (voters, for pbft votes) and each signature is valid under the signer's key there. A
    legacy vote without the epoch counts only when `stored` and `config` is epoch 0."""
    fields = len(expect) + 2
    legacy_ok = epoch_tagged and stored and config.epoch == 0
    shapes = (fields + 1, fields) if legacy_ok else (fields + 1,) if epoch_tagged else (fields,)
    signers: set[int] = set()
    for i, vote in enumerate(votes):
        try:
            a = _decode_body(vote.body, kind, shapes)
        except WireFormatError as exc:
            return f"{kind} vote {i}: {exc}"
        if epoch_tagged and len(a) == fields + 1:
            epoch = a[1]
            if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch != config.epoch:
                return f"{kind} vote {i} names epoch {epoch!r}, not {config.epoch}"
            a = [a[0], *a[2:]]
        if a[1:-1] != expect:
            return f"{kind} vote {i} is not for this {_VOTE_FIELDS[kind]}"
        signer = a[-1]
        # bool is an int in Python; a canonical signer id is a plain integer.
        member = (
            config.member(signer)
            if isinstance(signer, int) and not isinstance(signer, bool)
            else None
        )
        if member is None or (epoch_tagged and member.role != VOTER):
            if not epoch_tagged:  # (block signatures: the words receipts have always used)
                return f"{kind} vote {i}: signer {signer!r} is not a member"
            return f"{kind} vote {i}: signer {signer!r} is not a member of epoch {config.epoch}"
        if signer in signers:
            return f"{kind} vote {i}: member {member.name} counted twice"
        if not verifier.verify(
            member.public_key, domain, config.chain_id, vote.body, vote.signature
        ):
            return f"{kind} vote {i}: bad signature by {member.name}"
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

    def verify(
        self, config: Configuration, verifier: Verifier, *, stored: bool = False
    ) -> str | None:
        """Q distinct voters of `config`, each COMMIT naming its epoch (`stored`: legacy
        epoch-less bodies also count at epoch 0)."""
        return _check_signers(
            self.votes,
            config,
            verifier,
            Domain.PBFT,
            [self.view, self.seq, self.digest],
            "commit",
            config.quorum,
            stored=stored,
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

    def verify(
        self, config: Configuration, verifier: Verifier, *, stored: bool = False
    ) -> str | None:
        """Q distinct voters of `config`, each CHECKPOINT naming its epoch (`stored`: legacy
        epoch-less bodies also count at epoch 0)."""
        return _check_signers(
            self.votes,
            config,
            verifier,
            Domain.PBFT,
            [self.seq, self.block_hash],
            "checkpoint",
            config.quorum,
            stored=stored,
        )


def verify_block_signatures(
    votes: tuple[SignedVote, ...],
    height: int,
    block_hash: bytes,
    config: Configuration,
    verifier: Verifier,
    needed: int,
) -> str | None:
    """f+1 distinct member signatures over (chain id, height, block hash) certify a header;
    `config` is config(height), whose members and keys count."""
    return _check_signers(
        votes,
        config,
        verifier,
        Domain.BLOCK,
        [height, block_hash],
        "block",
        needed,
        epoch_tagged=False,
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
