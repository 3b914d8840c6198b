"""Admitting and revoking client keys while the network runs.

A client change is a small signed document, proposed by anyone, approved by members:

    change body   canonical [chain_id, kind, client_key, label, nonce, expiry_ms, created_ms]
                  kind "admit" | "revoke"; label a name for operators (at most 64 characters);
                  created_ms when it was proposed (the proposer's clock)
    change id     digest_of(["client-change", body])  (never equal to a transaction id)
    approval      [member public key, signature over Domain.CLIENT_CHANGE + chain_id + body]

It reaches the ledger inside an ordinary transaction whose only operation is
["config", body, [approval, ...]] (ledger/tx.py), submitted by any admitted client or any
member (the transaction's own signature says who submitted it; validity comes from the
approvals). Execution (ledger/state.py) accepts it only if, deterministically on every member
and in the offline audit:

    - the approvals are by distinct genesis members, every signature is valid, and there are
      at least genesis.quorum of them (pbft: 2f+1 of 3f+1, so at least f+1 honest members
      approved and f liars cannot admit anyone; raft: a majority, the same quorum that commits
      an entry: members trust each other there, and a majority keeps one operator's machine
      from changing the client set alone);
    - the change names this chain, has not executed before (replay protection by change id,
      which stays in the replay set until the change's expiry), has not expired and expires
      at most CHANGE_TTL_MAX_MS after the block time and after its creation (a week, so that
      operators of several organisations have time to sign, each on its own machine);
    - it was created no later than the block time, and AFTER the block time of the last
      accepted change of the same key (state `changed_ms`): approvals collected before a later
      change of a key can never be used after it (e.g. an old admission re-admitting a key
      revoked since). Members sign only changes created before their clock (`client sign`),
      so this holds as closely as the members' clocks agree;
    - the key is a valid Ed25519 key of prime order (small-order and non-canonical keys
      are refused, as at genesis) and not a member's key;
    - it changes something: admitting a key that is (or will be, once pending changes take
      effect) admitted, or revoking one that is not, is refused.

An accepted change is pending until the first checkpoint boundary after its block: committed
at height h, it takes effect at E = (h // K + 1) * K (K = params.checkpoint_interval), before
the transactions of block E execute. Transactions of a revoked client in blocks >= E get the
rejected receipt `unknown_client`; what it committed before stays.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from consortium.crypto.codec import (
    WireFormatError,
    as_bytes,
    as_int,
    as_list,
    as_str,
    digest_of,
    pack,
    unpack_canonical,
)
from consortium.crypto.keys import InvalidKeyError, validate_public_key
from consortium.crypto.signing import Domain, Signer, verify_ed25519

ChangeKind = Literal["admit", "revoke"]
ADMIT: ChangeKind = "admit"
REVOKE: ChangeKind = "revoke"
LABEL_CHARS_MAX = 64
NONCE_BYTES_MAX = 32
APPROVALS_MAX = 128  # more than any genesis has members; bounds the verification work
CHANGE_BODY_BYTES_MAX = 256
CHANGE_TTL_MAX_MS = 7 * 24 * 3600 * 1000
PROPOSAL_FORMAT = "consortium-client-change/1"

Approval = tuple[bytes, bytes]  # (member public key, signature)
SignatureCheck = Callable[[bytes, Domain, bytes, bytes, bytes], bool]


class ProposalError(ValueError):
    """A proposal file that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True, slots=True)
class ClientChange:
    body: bytes  # canonical encoding of the fields below; what members sign
    id: bytes
    chain_id: bytes
    kind: ChangeKind
    client_key: bytes
    label: str
    nonce: bytes
    expiry_ms: int
    created_ms: int

    @classmethod
    def create(
        cls,
        chain_id: bytes,
        kind: ChangeKind,
        client_key: bytes,
        label: str,
        nonce: bytes,
        expiry_ms: int,
        *,
        created_ms: int,
    ) -> ClientChange:
        body = pack([chain_id, kind, client_key, label, nonce, expiry_ms, created_ms])
        return cls.decode(body)

    @classmethod
    def decode(cls, body: bytes) -> ClientChange:
        """Raises WireFormatError only. The key's length is checked here; whether it is a
        usable point is decided at execution (a deterministic rejected receipt)."""
        as_bytes(body, "client change", max_len=CHANGE_BODY_BYTES_MAX)
        f = as_list(unpack_canonical(body), 7, "client change")
        kind = as_str(f[1], "client change kind", max_len=8)
        if kind not in (ADMIT, REVOKE):
            raise WireFormatError(f"client change kind: {kind!r} is not admit or revoke")
        return cls(
            body=body,
            id=change_id(body),
            chain_id=as_bytes(f[0], "client change chain_id", size=32),
            kind=ADMIT if kind == ADMIT else REVOKE,
            client_key=as_bytes(f[2], "client change key", size=32),
            label=as_str(f[3], "client change label", max_len=LABEL_CHARS_MAX),
            nonce=as_bytes(f[4], "client change nonce", max_len=NONCE_BYTES_MAX),
            expiry_ms=as_int(f[5], "client change expiry_ms"),
            created_ms=as_int(f[6], "client change created_ms"),
        )

    def approve(self, signer: Signer) -> Approval:
        return signer.public_key, signer.sign(Domain.CLIENT_CHANGE, self.chain_id, self.body)

    def describe(self) -> str:
        label = f" ({self.label})" if self.label else ""
        return f"{self.kind} client {self.client_key.hex()}{label}"


def change_id(body: bytes) -> bytes:
    return digest_of(["client-change", body])


def decode_approvals(v: Any) -> tuple[Approval, ...]:
    arr = as_list(v, what="approvals")
    if len(arr) > APPROVALS_MAX:
        raise WireFormatError(f"approvals: more than {APPROVALS_MAX}")
    out: list[Approval] = []
    for a in arr:
        pair = as_list(a, 2, "approval")
        out.append(
            (as_bytes(pair[0], "approval key", size=32), as_bytes(pair[1], "approval sig", size=64))
        )
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str  # the receipt reason: config_<what>
    detail: str  # a sentence for operators


def check_approvals(
    change: ClientChange | tuple[bytes, bytes],
    approvals: Sequence[Approval],
    member_keys: Sequence[bytes],
    quorum: int,
    verify: SignatureCheck = verify_ed25519,
    *,
    domain: Domain = Domain.CLIENT_CHANGE,
    whose: str = "genesis",
) -> Refusal | None:
    """None if `approvals` are valid signatures (under `domain`) of at least `quorum`
    distinct keys of `member_keys`.

    v1, as always: a ClientChange, the genesis members' keys and genesis.quorum, under
    Domain.CLIENT_CHANGE. Generalised (docs/design/membership.md 1.3) for a v2 change:
    `change` is (chain_id, change body), `member_keys` the voters of the configuration in
    force (learners never approve) and `quorum` its quorum, under Domain.CONFIG, and `whose`
    names it ("configuration 3") in the refusals. membership.approval_problem judges the same
    from a Configuration (this module cannot import that one's: it imports this).

    Strict on purpose: one duplicate, one non-member or one bad signature refuses the whole
    change, so every approval in an accepted change in the ledger is a member's real one."""
    chain_id, body = (change.chain_id, change.body) if isinstance(change, ClientChange) else change
    members = set(member_keys)
    seen: set[bytes] = set()
    for key, sig in approvals:
        if key in seen:
            return Refusal("config_duplicate_signer", f"member {key.hex()[:16]}… signed twice")
        seen.add(key)
        if key not in members:
            what = "a genesis member" if whose == "genesis" else f"a voter of {whose}"
            return Refusal("config_non_member_signer", f"signer {key.hex()[:16]}… is not {what}")
        if not verify(key, domain, chain_id, body, sig):
            return Refusal(
                "config_bad_signature",
                f"member {key.hex()[:16]}…'s signature does not verify for this change and chain",
            )
    if len(seen) < quorum:
        signatures = "1 member signature" if len(seen) == 1 else f"{len(seen)} member signatures"
        return Refusal("config_no_quorum", f"{signatures}, {quorum} needed ({whose} quorum)")
    return None


def check_client_key(key: bytes, member_keys: Iterable[bytes]) -> Refusal | None:
    try:
        validate_public_key(key)
    except InvalidKeyError as exc:
        return Refusal("config_invalid_key", str(exc))
    if key in set(member_keys):
        return Refusal("config_member_key", "the key is a member's key, not a client's")
    return None


def effective_height(height: int, checkpoint_interval: int) -> int:
    """The first checkpoint boundary after `height`: where a change committed there applies."""
    return (height // checkpoint_interval + 1) * checkpoint_interval


@dataclass(frozen=True, slots=True)
class PendingChange:
    """An accepted change waiting for its effective height."""

    effective_height: int
    change_id: bytes
    kind: ChangeKind
    client_key: bytes
    label: str

    def to_array(self) -> list[Any]:
        return [self.effective_height, self.change_id, self.kind, self.client_key, self.label]

    @classmethod
    def from_array(cls, v: Any) -> PendingChange:
        a = as_list(v, 5, "pending change")
        kind = as_str(a[2], "pending change kind", max_len=8)
        if kind not in (ADMIT, REVOKE):
            raise WireFormatError(f"pending change kind: {kind!r}")
        return cls(
            as_int(a[0], "effective height"),
            as_bytes(a[1], "change id", size=32),
            ADMIT if kind == ADMIT else REVOKE,
            as_bytes(a[3], "client key", size=32),
            as_str(a[4], "label", max_len=LABEL_CHARS_MAX),
        )


# --- the proposal file operators pass around -----------------------------------------------


@dataclass
class Proposal:
    """A change and the approvals collected so far (JSON on disk; the body is authoritative,
    the readable fields are written for people and checked against it on load)."""

    change: ClientChange
    approvals: dict[bytes, bytes] = field(default_factory=dict)  # member key -> signature

    def add(self, approval: Approval) -> None:
        self.approvals[approval[0]] = approval[1]

    def approval_list(self) -> tuple[Approval, ...]:
        return tuple(sorted(self.approvals.items()))

    def to_json(self, member_names: dict[bytes, str] | None = None) -> str:
        names = member_names or {}
        c = self.change
        doc = {
            "format": PROPOSAL_FORMAT,
            "kind": c.kind,
            "client_key": c.client_key.hex(),
            "label": c.label,
            "created_ms": c.created_ms,
            "expiry_ms": c.expiry_ms,
            "chain_id": c.chain_id.hex(),
            "change_id": c.id.hex(),
            "change": c.body.hex(),
            "approvals": [
                {"member": names.get(k, "?"), "public_key": k.hex(), "signature": s.hex()}
                for k, s in self.approval_list()
            ],
        }
        return json.dumps(doc, indent=2) + "\n"

    def save(self, path: Path, member_names: dict[bytes, str] | None = None) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json(member_names))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Proposal:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ProposalError(f"{path}: cannot read proposal: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ProposalError(
                f"{path}: not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x}); "
                "a proposal is UTF-8 JSON"
            ) from None
        return cls.from_json(text, str(path))

    @classmethod
    def from_json(cls, text: str, where: str) -> Proposal:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProposalError(f"{where}: not valid JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("format") != PROPOSAL_FORMAT:
            raise ProposalError(
                f"{where}: not a client change proposal (format must be '{PROPOSAL_FORMAT}'); "
                "write one with `consortium client propose-admit` or `propose-revoke`"
            )
        try:
            change = ClientChange.decode(bytes.fromhex(str(doc.get("change"))))
        except (ValueError, WireFormatError) as exc:
            raise ProposalError(f"{where}: 'change' is not a client change body: {exc}") from None
        shown = {
            "kind": change.kind,
            "client_key": change.client_key.hex(),
            "label": change.label,
            "created_ms": change.created_ms,
            "expiry_ms": change.expiry_ms,
            "chain_id": change.chain_id.hex(),
            "change_id": change.id.hex(),
        }
        for key, value in shown.items():
            if doc.get(key) != value:
                raise ProposalError(
                    f"{where}: '{key}' is {doc.get(key)!r} but the signed change body says "
                    f"{value!r}; the file was edited, ask the proposer for the original"
                )
        approvals = doc.get("approvals", [])
        if not isinstance(approvals, list) or len(approvals) > APPROVALS_MAX:
            raise ProposalError(f"{where}: 'approvals' must be a list")
        proposal = cls(change)
        for i, a in enumerate(approvals):
            try:
                signer = bytes.fromhex(a["public_key"])
                sig = bytes.fromhex(a["signature"])
            except (TypeError, KeyError, ValueError):
                raise ProposalError(
                    f"{where}: approvals[{i}] needs hex 'public_key' and 'signature'"
                ) from None
            if len(signer) != 32 or len(sig) != 64:
                raise ProposalError(f"{where}: approvals[{i}]: a 32-byte key, a 64-byte signature")
            proposal.add((signer, sig))
        return proposal

    def merge(self, other: Proposal, where: str) -> None:
        if other.change.body != self.change.body:
            raise ProposalError(
                f"{where}: this proposal is for another change ({other.change.describe()}); "
                "merge only copies of one proposal"
            )
        for approval in other.approval_list():
            self.add(approval)
