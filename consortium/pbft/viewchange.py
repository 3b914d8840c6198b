"""View-change proofs: checking VIEW-CHANGE and NEW-VIEW, and computing a NEW-VIEW from a
quorum of VIEW-CHANGEs (Castro & Liskov, OSDI 1999 §4.4, the variant with signatures; TOCS 2002
§2.3.5 and §4.4 for the timers).

Theory of operation
-------------------
A VIEW-CHANGE(v, stable checkpoint certificate C, P) from replica i says "I move to view v";
C proves the state at its sequence number s (Q signed CHECKPOINTs; none at genesis) and P holds,
for each sequence number in (s, s+L] that i prepared, the prepared certificate of the highest
view: the primary's signed PRE-PREPARE plus Q-1 signed PREPAREs from distinct backups, all for
one (view, seq, digest). Everything in it is signed by the member it names, so any replica can
check a VIEW-CHANGE without trusting whoever relays it.

The primary of v collects Q valid VIEW-CHANGEs for v and sends NEW-VIEW(v, those VIEW-CHANGEs,
O), where O is computed, deterministically, from them alone:

    min_s = the highest stable sequence number among them (its certificate comes with it)
    max_s = the highest sequence number of any prepared certificate among them
    for every seq in (min_s, max_s]: a PRE-PREPARE(v, seq, d) where d is the digest of the
        prepared certificate with the highest view for seq, or the null request's digest (an
        empty batch, proposed_ms 0) when no VIEW-CHANGE holds one

Every replica recomputes O from the included VIEW-CHANGEs and accepts the NEW-VIEW only if the
primary's re-issued PRE-PREPAREs are exactly O: a primary that leaves out, reorders or alters
anything is caught and replaced. Safety: a batch that committed at seq in view v' was prepared
by Q replicas in v', at least f+1 of them honest, so every quorum of VIEW-CHANGEs for a later
view includes one that carries a prepared certificate for seq with view >= v', and by induction
every certificate for seq from a view >= v' names the same digest.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from consortium.crypto.codec import WireFormatError, as_list, unpack_canonical
from consortium.crypto.signing import Domain, Verifier
from consortium.ledger.block import batch_digest
from consortium.ledger.certificates import CheckpointCertificate, CommitCertificate, SignedVote
from consortium.pbft import rules
from consortium.pbft.messages import (
    NewView,
    Prepare,
    PreparedProof,
    ViewChange,
    new_view_digest,
    proofs_digest_of,
)

NULL_PROPOSED_MS = 0
NULL_DIGEST = batch_digest(NULL_PROPOSED_MS, [])


@dataclass(frozen=True, slots=True)
class Members:
    """What checking a proof needs: the chain, the voters' keys by member id, the quorum, the
    window, the epoch every signed body must name, and the epoch's start (S_e: a VIEW-CHANGE
    whose stable seq is the start carries no certificate, as seq 0 at genesis)."""

    chain_id: bytes
    keys: Mapping[int, bytes]
    quorum: int
    window: int
    epoch: int = 0
    start: int = 0
    end: int | None = None  # E, once a change is pending: nothing above it was prepared
    ids: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ids", tuple(sorted(self.keys)))

    @property
    def n(self) -> int:
        return len(self.keys)

    def primary(self, view: int) -> int:
        return self.ids[view % len(self.ids)]

    def signed(self, verifier: Verifier, sender: int, body: bytes, signature: bytes) -> bool:
        key = self.keys.get(sender)
        return key is not None and verifier.verify(key, Domain.PBFT, self.chain_id, body, signature)


def _quorum_of_votes(
    members: Members,
    verifier: Verifier,
    votes: Sequence[SignedVote],
    kind: str,
    expect: list[object],
) -> str | None:
    """Q distinct members' valid votes, each body == [kind, epoch, *expect, signer] with this
    epoch (never a legacy epoch-less body: those are valid only from a store)."""
    signers: set[int] = set()
    for vote in votes:
        try:
            fields = as_list(unpack_canonical(vote.body, max_len=256), len(expect) + 3, kind)
        except WireFormatError as exc:
            return f"{kind} vote: {exc}"
        epoch = fields[1]
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch != members.epoch:
            return f"{kind} vote for epoch {epoch!r}, not {members.epoch}"
        if fields[0] != kind or fields[2:-1] != expect:
            return f"{kind} vote for something else"
        signer = fields[-1]
        if not isinstance(signer, int) or isinstance(signer, bool) or signer in signers:
            return f"{kind} vote: bad or repeated signer"
        if not members.signed(verifier, signer, vote.body, vote.signature):
            return f"{kind} vote: bad signature"
        signers.add(signer)
    if len(signers) < members.quorum:
        return f"{len(signers)} {kind} votes, {members.quorum} needed"
    return None


def check_checkpoint_certificate(
    members: Members, verifier: Verifier, cert: CheckpointCertificate
) -> str | None:
    if cert.seq <= 0:
        return "checkpoint certificate for seq 0"
    return _quorum_of_votes(
        members, verifier, cert.votes, "checkpoint", [cert.seq, cert.block_hash]
    )


def check_commit_certificate(
    members: Members, verifier: Verifier, cert: CommitCertificate
) -> str | None:
    return _quorum_of_votes(
        members, verifier, cert.votes, "commit", [cert.view, cert.seq, cert.digest]
    )


def check_proof(members: Members, verifier: Verifier, proof: PreparedProof) -> str | None:
    """A prepared certificate: the primary's PRE-PREPARE and Q-1 matching PREPAREs."""
    pp = proof.preprepare
    primary = members.primary(pp.view)
    if pp.epoch != members.epoch or any(p.epoch != members.epoch for p in proof.prepares):
        return f"prepared proof: a message of another epoch than {members.epoch}"
    if pp.sender != primary:
        return "prepared proof: pre-prepare not from the primary of its view"
    if not members.signed(verifier, pp.sender, pp.body, pp.signature):
        return "prepared proof: bad pre-prepare signature"
    if len(proof.prepares) > members.quorum - 1:
        # Exactly what prepared needs: more would only let a VIEW-CHANGE, and so a NEW-VIEW,
        # grow with n instead of Q (genesis sizes the frame limit for Q-1).
        return f"prepared proof: {len(proof.prepares)} prepares, at most {members.quorum - 1}"
    by_sender: dict[int, Prepare] = {}
    for prepare in proof.prepares:
        if (prepare.view, prepare.seq, prepare.digest) != (pp.view, pp.seq, pp.digest):
            return "prepared proof: a prepare for something else"
        if prepare.sender == primary or prepare.sender in by_sender:
            return "prepared proof: prepare from the primary or repeated"
        if not members.signed(verifier, prepare.sender, prepare.body, prepare.signature):
            return "prepared proof: bad prepare signature"
        by_sender[prepare.sender] = prepare
    # Each PREPARE matches and is signed by a distinct backup: the predicate itself decides.
    if rules.prepared(pp, by_sender, members.quorum) is None:
        return f"prepared proof: {len(by_sender)} prepares, {members.quorum - 1} needed"
    return None


def check_view_change(members: Members, verifier: Verifier, vc: ViewChange) -> str | None:
    """Everything but the sender's own signature, which the replica checks first."""
    if vc.proofs_digest != proofs_digest_of(vc.stable, vc.prepared):
        return "view change: proofs do not match the signed digest"
    if vc.epoch != members.epoch:
        return f"view change: epoch {vc.epoch}, not {members.epoch}"
    if vc.stable is None:
        # The epoch's start needs none: its certificate was made by the previous
        # configuration, which this epoch never checks (0 at genesis).
        if vc.stable_seq != members.start:
            return "view change: a stable sequence number without its certificate"
    else:
        if vc.stable.seq != vc.stable_seq:
            return "view change: certificate for another sequence number"
        if members.end is not None and vc.stable_seq > members.end:
            return "view change: a certificate above the epoch's end"
        if vc.stable_seq <= members.start:
            return "view change: a certificate at or below the epoch's start"
        problem = check_checkpoint_certificate(members, verifier, vc.stable)
        if problem is not None:
            return f"view change: {problem}"
    last = vc.stable_seq
    for proof in vc.prepared:
        if not last < proof.seq <= vc.stable_seq + members.window:
            return "view change: prepared proofs out of order or outside the window"
        if members.end is not None and proof.seq > members.end:
            return "view change: a prepared proof above the epoch's end"
        if proof.view >= vc.view:
            return "view change: a prepared proof from a view not below the new one"
        problem = check_proof(members, verifier, proof)
        if problem is not None:
            return f"view change: {problem}"
        last = proof.seq
    return None


@dataclass(frozen=True, slots=True)
class Reissue:
    seq: int
    digest: bytes
    proposed_ms: int

    @property
    def null(self) -> bool:
        return self.digest == NULL_DIGEST and self.proposed_ms == NULL_PROPOSED_MS


@dataclass(frozen=True, slots=True)
class NewViewPlan:
    """O, as every replica computes it from the same VIEW-CHANGEs."""

    min_s: int
    stable: CheckpointCertificate | None
    reissue: tuple[Reissue, ...]  # for every seq in (min_s, max_s], in order

    @property
    def max_s(self) -> int:
        return self.reissue[-1].seq if self.reissue else self.min_s


def plan_new_view(view_changes: Iterable[ViewChange]) -> NewViewPlan:
    vcs = list(view_changes)
    assert vcs
    best_stable = max(vcs, key=lambda vc: vc.stable_seq)
    min_s = best_stable.stable_seq
    chosen: dict[int, PreparedProof] = {}
    for vc in vcs:
        for proof in vc.prepared:
            if proof.seq <= min_s:
                continue
            held = chosen.get(proof.seq)
            # The highest view wins; in a tie (impossible with at most f faulty) the smaller
            # digest, so that every replica computes the same O whatever the order.
            if held is None or (proof.view, held.digest) > (held.view, proof.digest):
                chosen[proof.seq] = proof
    max_s = max(chosen, default=min_s)
    reissue = []
    for seq in range(min_s + 1, max_s + 1):
        best = chosen.get(seq)
        if best is None:
            reissue.append(Reissue(seq, NULL_DIGEST, NULL_PROPOSED_MS))
        else:
            reissue.append(Reissue(seq, best.digest, best.preprepare.proposed_ms))
    return NewViewPlan(min_s, best_stable.stable, tuple(reissue))


def check_new_view(
    members: Members,
    verifier: Verifier,
    nv: NewView,
    decoded: Sequence[ViewChange],
) -> str | None:
    """The NEW-VIEW's own signature is checked by the caller; `decoded` are its VIEW-CHANGE
    frames, decoded, each already checked (signature and check_view_change) by the caller."""
    if nv.proofs_digest != new_view_digest(nv.view_change_frames, nv.preprepares):
        return "new view: contents do not match the signed digest"
    senders = {vc.sender for vc in decoded}
    if len(senders) != len(decoded) or len(senders) < members.quorum:
        return f"new view: {len(senders)} distinct view changes, {members.quorum} needed"
    if any(vc.view != nv.view for vc in decoded):
        return "new view: a view change for another view"
    plan = plan_new_view(decoded)
    if len(plan.reissue) != len(nv.preprepares):
        return (
            f"new view: {len(nv.preprepares)} pre-prepares, the view changes call for "
            f"{len(plan.reissue)}"
        )
    for want, pp in zip(plan.reissue, nv.preprepares, strict=True):
        if (pp.epoch, pp.view, pp.seq, pp.digest, pp.proposed_ms, pp.sender) != (
            nv.epoch,
            nv.view,
            want.seq,
            want.digest,
            want.proposed_ms,
            nv.sender,
        ):
            return f"new view: pre-prepare for seq {want.seq} is not the one recomputed"
        if not members.signed(verifier, pp.sender, pp.body, pp.signature):
            return f"new view: bad signature on the pre-prepare for seq {pp.seq}"
    return None
