"""Who the members are, and the v2 changes of clients and members (docs/design/membership.md,
part 1).

A configuration is the member set plus the mode:

    configuration  ["consortium-config/1", chain_id, epoch, mode,
                    [[id, name, public_key, peer_address, client_address, role], ...]]
    config digest  SHA-256 of its canonical encoding (as the chain id is of genesis's)

    - epoch 0 is the genesis configuration: genesis member i has id i and is a voter. Each
      accepted member change makes the next epoch;
    - ids are below 65,536, distinct and sorted. An added member gets 1 + the highest id ever
      given (`next_id`), so an id is never reused and added members are primary last;
    - names (1 to 64 characters) and keys are unique; keys are Ed25519 keys of prime order and
      addresses are advertised host:port, both as genesis checks them;
    - role "voter" or "learner". Learners exist only in raft: they get the log and sign blocks,
      but never vote, approve or count;
    - at most MEMBERS_MAX members, and at least the voters genesis needs (pbft 4, raft 1);
    - n, f and the quorum are over the voters, with Genesis.f's and Genesis.quorum's formulas;
    - params are not part of it: they stay fixed by the chain id.

A v2 change, of clients or of members, names the configuration it is approved under:

    change body  canonical ["consortium-change/2", chain_id, epoch, config_digest, kind,
                            [op, ...], nonce: bytes <= 32, expiry_ms, created_ms], <= 2,048 bytes
                 kind "clients", exactly one op:  ["admit", client_key, label <= 64]
                                                  ["revoke", client_key]
                 kind "members", 1 to 4 ops:      ["add", name, public_key, peer_address,
                                                   client_address]
                                                  ["remove", id]  ["rotate", id, new_public_key]
                                                  ["address", id, peer_address, client_address]
                                                  ["promote", id]               (raft only)
    change id    digest_of(["config-change", body])  (v1's is "client-change": never equal)
    approval     [voter key, signature over Domain.CONFIG + chain_id + body]
    possession   [new key, signature over Domain.POSSESSION + chain_id + body]: one for each key
                 an add or rotate brings in, so nobody enrols a key its holder did not sign for.
                 The tags differ, so an approval is never a possession, nor the reverse.

Decoding checks shapes and bounds only, and raises WireFormatError alone. Whether a key is a
usable point, an address well formed, a name or key free, an id known, is decided at
execution as a rejected receipt, by the pure functions here, in the design's order:
`apply_ops` (the change, then each op on a working copy, then the result),
`possession_problem`, then `approval_problem` against the voters of the configuration in force.
v1 client changes (ledger/admission.py) are untouched by this module.

A member change accepted at height c takes effect at `effective_height`: pbft
E = ceil((c+L)/K)*K (K = params.checkpoint_interval, L = params.window), so the configuration
of any sequence number is fixed by blocks at least L below it; raft at the end of block c.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise
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
from consortium.crypto.hashing import sha256
from consortium.crypto.keys import InvalidKeyError, validate_public_key
from consortium.crypto.signing import Domain, Ed25519Verifier, Signer, Verifier
from consortium.ledger.admission import LABEL_CHARS_MAX, NONCE_BYTES_MAX, Approval, Refusal
from consortium.ledger.genesis import (
    MODES,
    Genesis,
    GenesisError,
    Mode,
    Params,
    parse_advertised_address,
)

CONFIG_FORMAT = "consortium-config/1"
CHANGE_FORMAT = "consortium-change/2"
MEMBERS_MAX = 128  # APPROVALS_MAX bounds a quorum anyway
MEMBER_IDS = 1 << 16  # every id is below this
NAME_CHARS_MAX = 64
ADDRESS_CHARS_MAX = 259  # host:port with the longest DNS name (253 characters) and a 5-digit port
VOTERS_MIN: dict[Mode, int] = {"pbft": 4, "raft": 1}  # as at genesis
# Above the largest valid configuration (MEMBERS_MAX members with the longest names and
# addresses of 4-byte characters: about 290 kB; the tests build it).
CONFIGURATION_BYTES_MAX = 512 * 1024
CHAIN_ENTRY_BYTES_MAX = 1 << 20  # a chain entry: a configuration, a header, a certificate
CHANGE_BODY_BYTES_MAX = 2048
MEMBER_OPS_MAX = 4
POSSESSIONS_MAX = MEMBER_OPS_MAX  # one per add or rotate, at most

Role = Literal["voter", "learner"]
VOTER: Role = "voter"
LEARNER: Role = "learner"
Kind = Literal["clients", "members"]
CLIENTS: Kind = "clients"
MEMBERS: Kind = "members"
Possession = tuple[bytes, bytes]  # (new public key, signature)

_ED25519 = Ed25519Verifier()


# --- the configuration ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemberInfo:
    id: int
    name: str
    public_key: bytes
    peer_address: str
    client_address: str
    role: Role = VOTER

    def to_array(self) -> list[Any]:
        return [
            self.id,
            self.name,
            self.public_key,
            self.peer_address,
            self.client_address,
            self.role,
        ]


@dataclass(frozen=True, slots=True)
class Configuration:
    """Members in id order. Built by `genesis_configuration`, `apply_ops` and `decode`, which
    keep the rules of the module docstring; the constructor itself checks nothing."""

    chain_id: bytes
    epoch: int
    mode: Mode
    members: tuple[MemberInfo, ...]
    # Derived once: headers, votes and receipts are checked against these many times.
    _encoded: bytes = field(init=False, repr=False, compare=False)
    _digest: bytes = field(init=False, repr=False, compare=False)
    _voters: tuple[MemberInfo, ...] = field(init=False, repr=False, compare=False)
    _by_id: dict[int, MemberInfo] = field(init=False, repr=False, compare=False)
    _by_key: dict[bytes, MemberInfo] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        encoded = pack(
            [
                CONFIG_FORMAT,
                self.chain_id,
                self.epoch,
                self.mode,
                [m.to_array() for m in self.members],
            ]
        )
        object.__setattr__(self, "_encoded", encoded)
        object.__setattr__(self, "_digest", sha256(encoded))
        object.__setattr__(self, "_voters", tuple(m for m in self.members if m.role == VOTER))
        object.__setattr__(self, "_by_id", {m.id: m for m in self.members})
        object.__setattr__(self, "_by_key", {m.public_key: m for m in self.members})

    def encode(self) -> bytes:
        return self._encoded

    @property
    def digest(self) -> bytes:
        return self._digest

    @property
    def voters(self) -> tuple[MemberInfo, ...]:
        return self._voters

    @property
    def n(self) -> int:
        return len(self._voters)

    @property
    def f(self) -> int:
        """Faults tolerated among the voters: Byzantine with n >= 3f+1 in pbft, crashes with
        n >= 2f+1 in raft (Genesis.f)."""
        return (self.n - 1) // 3 if self.mode == "pbft" else (self.n - 1) // 2

    @property
    def quorum(self) -> int:
        """pbft ceil((n+f+1)/2), raft a majority, of the voters (Genesis.quorum)."""
        if self.mode == "pbft":
            return (self.n + self.f + 2) // 2
        return self.n // 2 + 1

    def member(self, id: int) -> MemberInfo | None:
        return self._by_id.get(id)

    def by_key(self, key: bytes) -> MemberInfo | None:
        return self._by_key.get(key)

    def key_of(self, id: int) -> bytes | None:
        m = self._by_id.get(id)
        return None if m is None else m.public_key

    def primary(self, view: int) -> int:
        """The id of the primary (pbft) of this configuration's `view`: views restart at 0 in
        every epoch and rotate over the voters in id order."""
        return self._voters[view % len(self._voters)].id

    @classmethod
    def decode(cls, data: bytes) -> Configuration:
        """A configuration from its canonical encoding, with every rule of the module
        docstring checked; raises WireFormatError only."""
        a = as_list(unpack_canonical(data, max_len=CONFIGURATION_BYTES_MAX), 5, "configuration")
        if a[0] != CONFIG_FORMAT:
            raise WireFormatError(f"configuration: format {str(a[0])[:32]!r}, not {CONFIG_FORMAT}")
        mode = as_str(a[3], "configuration mode", max_len=8)
        if mode not in MODES:
            raise WireFormatError(f"configuration mode: {mode!r} is not pbft or raft")
        rows = as_list(a[4], what="configuration members")
        if len(rows) > MEMBERS_MAX:
            raise WireFormatError(f"configuration: {len(rows)} members, at most {MEMBERS_MAX}")
        members = tuple(_member_from_array(r) for r in rows)
        config = cls(
            as_bytes(a[1], "configuration chain_id", size=32),
            as_int(a[2], "configuration epoch"),
            "pbft" if mode == "pbft" else "raft",
            members,
        )
        if any(x.id >= y.id for x, y in pairwise(members)):
            raise WireFormatError("configuration: member ids are not sorted and distinct")
        if len({m.name for m in members}) != len(members):
            raise WireFormatError("configuration: a name is listed twice")
        if len(config._by_key) != len(members):
            raise WireFormatError("configuration: a public key is listed twice")
        if config.mode == "pbft" and len(config.voters) != len(members):
            raise WireFormatError("configuration: learners exist only in raft")
        if config.n < VOTERS_MIN[config.mode]:
            raise WireFormatError(
                f"configuration: {config.n} voters, {config.mode} needs {VOTERS_MIN[config.mode]}"
            )
        return config


def _member_from_array(v: Any) -> MemberInfo:
    r = as_list(v, 6, "member")
    role = as_str(r[5], "member role", max_len=8)
    if role not in (VOTER, LEARNER):
        raise WireFormatError(f"member role: {role!r} is not voter or learner")
    key = as_bytes(r[2], "member public_key", size=32)
    try:
        validate_public_key(key)
    except InvalidKeyError as exc:
        raise WireFormatError(f"member public_key: {exc}") from None
    return MemberInfo(
        as_int(r[0], "member id", hi=MEMBER_IDS - 1),
        _name(r[1], "member name"),
        key,
        _valid_address(r[3], "member peer_address"),
        _valid_address(r[4], "member client_address"),
        VOTER if role == VOTER else LEARNER,
    )


def _name(v: Any, what: str) -> str:
    name = as_str(v, what, max_len=NAME_CHARS_MAX)
    if not name:
        raise WireFormatError(f"{what}: empty")
    return name


def _valid_address(v: Any, what: str) -> str:
    address = as_str(v, what, max_len=ADDRESS_CHARS_MAX)
    try:
        parse_advertised_address(address, what)
    except GenesisError as exc:
        raise WireFormatError(str(exc)) from None
    return address


def genesis_configuration(genesis: Genesis) -> Configuration:
    """Epoch 0: genesis member i as id i, a voter, with its genesis name, key and addresses."""
    return Configuration(
        genesis.chain_id,
        0,
        genesis.mode,
        tuple(
            MemberInfo(i, m.name, m.public_key, m.peer_address, m.client_address, VOTER)
            for i, m in enumerate(genesis.members)
        ),
    )


def effective_height(mode: Mode, accepted_at: int, params: Params) -> int:
    """Where a member change accepted in block `accepted_at` (c) takes effect (E).

    pbft: E = ceil((c+L)/K)*K. Block E still executes and is certified under the old
    configuration, which then gives way; the new one orders E+1 on. E >= c+L, so a replica
    that executed every block up to seq-L-1 knows which configuration orders seq.
    raft: E = c; the new configuration is in force from the end of block c."""
    if mode == "raft":
        return accepted_at
    k = params.checkpoint_interval
    return -(-(accepted_at + params.window) // k) * k


def next_id(config: Configuration, highest_id: int) -> int:
    """The id the next added member gets: 1 + the highest id ever given, which is
    `highest_id` (over every earlier configuration) or one of `config`'s."""
    return 1 + max(highest_id, config.members[-1].id)


# --- the v2 change -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AdmitClient:
    client_key: bytes
    label: str

    def to_array(self) -> list[Any]:
        return ["admit", self.client_key, self.label]


@dataclass(frozen=True, slots=True)
class RevokeClient:
    client_key: bytes

    def to_array(self) -> list[Any]:
        return ["revoke", self.client_key]


@dataclass(frozen=True, slots=True)
class AddMember:
    """Adds a voter in pbft and a learner in raft, with id `next_id`."""

    name: str
    public_key: bytes
    peer_address: str
    client_address: str

    def to_array(self) -> list[Any]:
        return ["add", self.name, self.public_key, self.peer_address, self.client_address]


@dataclass(frozen=True, slots=True)
class RemoveMember:
    id: int

    def to_array(self) -> list[Any]:
        return ["remove", self.id]


@dataclass(frozen=True, slots=True)
class RotateKey:
    id: int
    public_key: bytes  # the new key

    def to_array(self) -> list[Any]:
        return ["rotate", self.id, self.public_key]


@dataclass(frozen=True, slots=True)
class SetAddresses:
    id: int
    peer_address: str
    client_address: str

    def to_array(self) -> list[Any]:
        return ["address", self.id, self.peer_address, self.client_address]


@dataclass(frozen=True, slots=True)
class PromoteLearner:
    """raft only: a learner becomes a voter."""

    id: int

    def to_array(self) -> list[Any]:
        return ["promote", self.id]


ClientOp = AdmitClient | RevokeClient
MemberOp = AddMember | RemoveMember | RotateKey | SetAddresses | PromoteLearner
ChangeOp = ClientOp | MemberOp


@dataclass(frozen=True, slots=True)
class ChangeV2:
    """A v2 change of clients or members, approved under configuration (epoch,
    config_digest). Its body is `encode()`, the exact bytes of a decoded one."""

    chain_id: bytes
    epoch: int
    config_digest: bytes
    kind: Kind
    ops: tuple[ChangeOp, ...]
    nonce: bytes
    expiry_ms: int
    created_ms: int

    @classmethod
    def create(
        cls,
        config: Configuration,
        kind: Kind,
        ops: Sequence[ChangeOp],
        nonce: bytes,
        expiry_ms: int,
        *,
        created_ms: int,
    ) -> ChangeV2:
        """A change to approve under `config`, refused (WireFormatError) as a received one
        would be."""
        change = cls(
            config.chain_id,
            config.epoch,
            config.digest,
            kind,
            tuple(ops),
            nonce,
            expiry_ms,
            created_ms,
        )
        return cls.decode(change.encode())

    def encode(self) -> bytes:
        return pack(
            [
                CHANGE_FORMAT,
                self.chain_id,
                self.epoch,
                self.config_digest,
                self.kind,
                [op.to_array() for op in self.ops],
                self.nonce,
                self.expiry_ms,
                self.created_ms,
            ]
        )

    @property
    def id(self) -> bytes:
        return change_id(self.encode())

    @property
    def new_keys(self) -> tuple[bytes, ...]:
        """The keys this change brings in (adds and rotations): each needs a possession."""
        return tuple(op.public_key for op in self.ops if isinstance(op, AddMember | RotateKey))

    def approve(self, signer: Signer) -> Approval:
        return signer.public_key, signer.sign(Domain.CONFIG, self.chain_id, self.encode())

    def prove_possession(self, signer: Signer) -> Possession:
        return signer.public_key, signer.sign(Domain.POSSESSION, self.chain_id, self.encode())

    @classmethod
    def decode(cls, body: bytes) -> ChangeV2:
        """Raises WireFormatError only. Lengths and bounds are checked here; whether keys are
        usable points and addresses well formed is decided at execution (`apply_ops`), a
        deterministic rejected receipt."""
        a = as_list(unpack_canonical(body, max_len=CHANGE_BODY_BYTES_MAX), 9, "change")
        if a[0] != CHANGE_FORMAT:
            raise WireFormatError(f"change: format {str(a[0])[:32]!r}, not {CHANGE_FORMAT}")
        kind = as_str(a[4], "change kind", max_len=8)
        if kind not in (CLIENTS, MEMBERS):
            raise WireFormatError(f"change kind: {kind!r} is not clients or members")
        rows = as_list(a[5], what="change ops")
        if kind == CLIENTS and len(rows) != 1:
            raise WireFormatError(f"change: a clients change has one op, not {len(rows)}")
        if kind == MEMBERS and not 1 <= len(rows) <= MEMBER_OPS_MAX:
            raise WireFormatError(
                f"change: a members change has 1 to {MEMBER_OPS_MAX} ops, not {len(rows)}"
            )
        return cls(
            as_bytes(a[1], "change chain_id", size=32),
            as_int(a[2], "change epoch"),
            as_bytes(a[3], "change config_digest", size=32),
            CLIENTS if kind == CLIENTS else MEMBERS,
            tuple(_op_from_array(r, kind) for r in rows),
            as_bytes(a[6], "change nonce", max_len=NONCE_BYTES_MAX),
            as_int(a[7], "change expiry_ms"),
            as_int(a[8], "change created_ms"),
        )


def change_id(body: bytes) -> bytes:
    return digest_of(["config-change", body])


def _op_from_array(v: Any, kind: str) -> ChangeOp:
    a = as_list(v, what="change op")
    op = (as_str(a[0], "change op", max_len=8) if a else "", len(a))
    if kind == CLIENTS:
        if op == ("admit", 3):
            return AdmitClient(_key(a[1]), as_str(a[2], "label", max_len=LABEL_CHARS_MAX))
        if op == ("revoke", 2):
            return RevokeClient(_key(a[1]))
    else:
        if op == ("add", 5):
            return AddMember(_name(a[1], "name"), _key(a[2]), _address(a[3]), _address(a[4]))
        if op == ("remove", 2):
            return RemoveMember(_id(a[1]))
        if op == ("rotate", 3):
            return RotateKey(_id(a[1]), _key(a[2]))
        if op == ("address", 4):
            return SetAddresses(_id(a[1]), _address(a[2]), _address(a[3]))
        if op == ("promote", 2):
            return PromoteLearner(_id(a[1]))
    raise WireFormatError(
        f"change op: {op[0]!r} with {op[1]} fields is not an op of a {kind} change"
    )


def _key(v: Any) -> bytes:
    return as_bytes(v, "public key", size=32)


def _id(v: Any) -> int:
    return as_int(v, "member id", hi=MEMBER_IDS - 1)


def _address(v: Any) -> str:
    return as_str(v, "address", max_len=ADDRESS_CHARS_MAX)


def decode_possessions(v: Any) -> tuple[Possession, ...]:
    arr = as_list(v, what="possessions")
    if len(arr) > POSSESSIONS_MAX:
        raise WireFormatError(f"possessions: more than {POSSESSIONS_MAX}")
    out: list[Possession] = []
    for p in arr:
        pair = as_list(p, 2, "possession")
        out.append(
            (
                as_bytes(pair[0], "possession key", size=32),
                as_bytes(pair[1], "possession sig", size=64),
            )
        )
    return tuple(out)


# --- judging a change ----------------------------------------------------------------------


def apply_ops(
    config: Configuration,
    change: ChangeV2,
    *,
    highest_id: int,
    used_keys: Collection[bytes],
    used_names: Collection[str],
) -> Configuration | Refusal:
    """The configuration after the member change `change` (epoch + 1), or why not.

    `highest_id` is the highest id ever given, `used_keys` every key that was ever a member's
    or a client's, and `used_names` every name a member ever had, over all configurations so
    far. Whether the change names `config` (config_superseded), whether another is pending,
    and its possessions and approvals are judged by the caller."""
    ops = [op for op in change.ops if isinstance(op, MemberOp)]
    if change.kind != MEMBERS or len(ops) != len(change.ops):
        raise ValueError("only a members change changes the configuration")
    if config.mode == "pbft" and any(isinstance(op, PromoteLearner) for op in ops):
        return Refusal("config_mode", "promote is a raft op: every pbft member is a voter")
    if config.mode == "raft" and len(ops) != 1:
        return Refusal(
            "config_not_single_server",
            f"a raft change is exactly one op, not {len(ops)}: add, promote, remove, "
            "rotate and address each need a change of their own",
        )
    members = {m.id: m for m in config.members}  # the working copy C', in id order
    keys = {m.public_key for m in config.members}  # of C and new in this change
    names = {m.name for m in config.members}
    touched: set[int] = set()
    new_id = next_id(config, highest_id)
    for op in ops:
        if isinstance(op, AddMember):
            refusal = (
                _key_problem(op.public_key, used_keys, keys)
                or _name_problem(op.name, used_names, names)
                or _address_problem(op.name, op.peer_address, op.client_address)
            )
            if refusal is not None:
                return refusal
            if new_id >= MEMBER_IDS:
                return Refusal(
                    "config_too_many_members",
                    f"member ids are used up: ids are never reused and stay below {MEMBER_IDS}",
                )
            role = LEARNER if config.mode == "raft" else VOTER
            members[new_id] = MemberInfo(
                new_id, op.name, op.public_key, op.peer_address, op.client_address, role
            )
            keys.add(op.public_key)
            names.add(op.name)
            touched.add(new_id)
            new_id += 1
            continue
        m = members.get(op.id)
        if m is None:
            return Refusal(
                "config_unknown_member",
                f"no member has id {op.id} in configuration {config.epoch} after the ops before",
            )
        if op.id in touched:
            return Refusal("config_conflicting_ops", f"{m.name} (id {m.id}) is changed by two ops")
        touched.add(op.id)
        match op:
            case RemoveMember():
                del members[op.id]
            case RotateKey(public_key=key):
                refusal = _key_problem(key, used_keys, keys)
                if refusal is not None:
                    return refusal
                members[op.id] = replace(m, public_key=key)
                keys.add(key)
            case SetAddresses(peer_address=peer, client_address=client):
                refusal = _address_problem(m.name, peer, client)
                if refusal is not None:
                    return refusal
                members[op.id] = replace(m, peer_address=peer, client_address=client)
            case PromoteLearner():
                if m.role != LEARNER:
                    return Refusal("config_not_learner", f"{m.name} is a voter already")
                members[op.id] = replace(m, role=VOTER)
    # (Adds take the highest ids and replacements keep their place: still in id order.)
    result = Configuration(config.chain_id, config.epoch + 1, config.mode, tuple(members.values()))
    if result.n < VOTERS_MIN[config.mode]:
        return Refusal(
            "config_too_few_members",
            f"{result.n} voters after the change, {config.mode} needs at least "
            f"{VOTERS_MIN[config.mode]}",
        )
    if len(result.members) > MEMBERS_MAX:
        return Refusal(
            "config_too_many_members",
            f"{len(result.members)} members after the change, at most {MEMBERS_MAX}",
        )
    return result


def _key_problem(key: bytes, used: Collection[bytes], taken: set[bytes]) -> Refusal | None:
    try:
        validate_public_key(key)
    except InvalidKeyError as exc:
        return Refusal("config_invalid_key", str(exc))
    if key in used or key in taken:
        return Refusal(
            "config_key_used",
            f"key {key.hex()[:16]}… was a member's or a client's before: keys are never reused",
        )
    return None


def _name_problem(name: str, used: Collection[str], taken: set[str]) -> Refusal | None:
    if name in used or name in taken:
        return Refusal("config_name_used", f"a member was named {name!r}: names are never reused")
    return None


def _address_problem(name: str, *addresses: str) -> Refusal | None:
    for address in addresses:
        try:
            parse_advertised_address(address, f"{name}'s address")
        except GenesisError as exc:
            return Refusal("config_invalid_address", str(exc))
    return None


def possession_problem(
    change: ChangeV2, possessions: Iterable[Possession], verifier: Verifier = _ED25519
) -> Refusal | None:
    """None if each key the change brings in has exactly one valid possession and nothing
    else is there; otherwise config_bad_possession."""
    wanted = set(change.new_keys)
    body = change.encode()
    seen: set[bytes] = set()
    for key, sig in possessions:
        if key not in wanted:
            return Refusal(
                "config_bad_possession", f"{key.hex()[:16]}… is no new key of this change"
            )
        if key in seen:
            return Refusal("config_bad_possession", f"{key.hex()[:16]}… proves possession twice")
        seen.add(key)
        if not verifier.verify(key, Domain.POSSESSION, change.chain_id, body, sig):
            return Refusal(
                "config_bad_possession",
                f"{key.hex()[:16]}…'s possession does not verify for this change and chain",
            )
    for key in change.new_keys:
        if key not in seen:
            return Refusal("config_bad_possession", f"no proof of possession by {key.hex()[:16]}…")
    return None


def approval_problem(
    config: Configuration,
    change_body: bytes,
    approvals: Iterable[Approval],
    verifier: Verifier = _ED25519,
    *,
    domain: Domain = Domain.CONFIG,
) -> Refusal | None:
    """None if `approvals` are valid signatures (under `domain`) of at least `config.quorum`
    distinct voters of `config`, as admission.check_approvals judges v1 changes by genesis.

    Strict on purpose: one duplicate, one non-voter (a learner included) or one bad signature
    refuses the whole change, so every approval in an accepted change is a voter's real one."""
    seen: set[bytes] = set()
    for key, sig in approvals:
        if key in seen:
            return Refusal("config_duplicate_signer", f"member {key.hex()[:16]}… signed twice")
        seen.add(key)
        m = config.by_key(key)
        if m is None or m.role != VOTER:
            what = "a learner" if m is not None else "not a member"
            return Refusal(
                "config_non_member_signer",
                f"signer {key.hex()[:16]}… is {what} of configuration {config.epoch}: only "
                "voters approve",
            )
        if not verifier.verify(key, domain, config.chain_id, change_body, sig):
            return Refusal(
                "config_bad_signature",
                f"{m.name}'s signature does not verify for this change and chain",
            )
    if len(seen) < config.quorum:
        return Refusal(
            "config_no_quorum",
            f"{len(seen)} voter signature(s), {config.quorum} needed (the quorum of "
            f"configuration {config.epoch})",
        )
    return None
