"""Client transactions.

Wire form: the array [body, signature], where body is the canonical msgpack encoding of
[chain_id, client_key, nonce, expiry_ms, ops]. The id is SHA-256 of body — the *unsigned* bytes —
so a client knows its id before submitting, retries are safe, and re-encoding or malleating the
signature never makes a new id. The signature is over Domain.TX + chain_id + body, checked over
the body bytes exactly as received (a non-canonical body is refused at decode).

Operations (the default key-value application):
    ["put", key, value]                      set key
    ["del", key]                             remove key (a no-op if absent)
    ["cas", key, expected | nil, new | nil]  set (or remove, if new is nil) only if the current
                                             value equals expected (nil: the key is absent);
                                             otherwise the whole transaction is rejected
    ["get", key]                             read key, ordered like any write
    ["config", change, [[member_key, sig]...]] admit or revoke a client key, approved by a quorum
                                             of members (ledger/admission.py); it must be the
                                             transaction's only operation (v1: executed only
                                             while the configuration's epoch is 0)
    ["config", change, approvals, possessions] a v2 change of clients or members
                                             (ledger/membership.py): at most 128 approvals
                                             under Domain.CONFIG, at most 4 proofs of
                                             possession, a body of at most 2,048 bytes; also
                                             the transaction's only operation

Both config ops are ConfigChange ops (`CONFIG_OPS`, `is_config`): a transaction with one holds
nothing else.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from consortium.crypto.codec import (
    WireFormatError,
    array_header_bytes,
    as_bytes,
    as_int,
    as_list,
    pack,
    unpack_canonical,
)
from consortium.crypto.hashing import sha256
from consortium.crypto.keys import SIGNATURE_BYTES, KeyPair
from consortium.crypto.signing import Domain, Signer, Verifier
from consortium.ledger.admission import Approval, ClientChange, decode_approvals
from consortium.ledger.genesis import Params
from consortium.ledger.membership import (
    CHANGE_BODY_BYTES_MAX,
    ChangeV2,
    Possession,
    decode_possessions,
)

NONCE_BYTES_MAX = 32


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class Delete:
    key: bytes


@dataclass(frozen=True, slots=True)
class CompareAndSet:
    key: bytes
    expected: bytes | None
    new: bytes | None


@dataclass(frozen=True, slots=True)
class Get:
    key: bytes


@dataclass(frozen=True, slots=True)
class ConfigChange:
    change: ClientChange
    approvals: tuple[Approval, ...]


@dataclass(frozen=True, slots=True)
class ConfigChangeV2:
    """A v2 change of clients or members with its approvals and proofs of possession. A class
    of its own rather than a second shape of ConfigChange: every reader of a v1 change's
    fields (client_key, kind) keeps its type; `is_config` covers both."""

    change: ChangeV2
    approvals: tuple[Approval, ...]
    possessions: tuple[Possession, ...]


Op = Put | Delete | CompareAndSet | Get | ConfigChange | ConfigChangeV2
CONFIG_OPS = (ConfigChange, ConfigChangeV2)


def is_config(op: Op) -> bool:
    """Whether `op` is a change of clients or members, v1 or v2."""
    return isinstance(op, CONFIG_OPS)


def op_to_array(op: Op) -> list[Any]:
    match op:
        case Put(key=k, value=v):
            return ["put", k, v]
        case Delete(key=k):
            return ["del", k]
        case CompareAndSet(key=k, expected=e, new=n):
            return ["cas", k, e, n]
        case Get(key=k):
            return ["get", k]
        case ConfigChange(change=c, approvals=a):
            return ["config", c.body, [list(x) for x in a]]
        case ConfigChangeV2(change=c, approvals=a, possessions=p):
            return ["config", c.encode(), [list(x) for x in a], [list(x) for x in p]]


def op_from_array(v: Any, params: Params) -> Op:
    arr = as_list(v, what="op")
    if not arr:
        raise WireFormatError("op: empty")
    kind = arr[0]
    kmax, vmax = params.key_bytes_max, params.value_bytes_max
    if kind == "put" and len(arr) == 3:
        return Put(as_bytes(arr[1], "key", max_len=kmax), as_bytes(arr[2], "value", max_len=vmax))
    if kind == "del" and len(arr) == 2:
        return Delete(as_bytes(arr[1], "key", max_len=kmax))
    if kind == "cas" and len(arr) == 4:
        exp = None if arr[2] is None else as_bytes(arr[2], "expected", max_len=vmax)
        new = None if arr[3] is None else as_bytes(arr[3], "new", max_len=vmax)
        return CompareAndSet(as_bytes(arr[1], "key", max_len=kmax), exp, new)
    if kind == "get" and len(arr) == 2:
        return Get(as_bytes(arr[1], "key", max_len=kmax))
    if kind == "config" and len(arr) == 3:
        return ConfigChange(ClientChange.decode(arr[1]), decode_approvals(arr[2]))
    if kind == "config" and len(arr) == 4:
        return ConfigChangeV2(
            ChangeV2.decode(as_bytes(arr[1], "config change", max_len=CHANGE_BODY_BYTES_MAX)),
            decode_approvals(arr[2]),
            decode_possessions(arr[3]),
        )
    raise WireFormatError(f"op: unknown operation {str(kind)[:16]!r} or wrong arity")


TX_FRAMING_BYTES_MAX = 8  # msgpack around one transaction: [bin32 body, bin8 signature]


def tx_wire_bytes_max(params: Params) -> int:
    """The most one transaction can take on the wire: the largest body, its signature and
    their framing."""
    return params.tx_bytes_max + SIGNATURE_BYTES + TX_FRAMING_BYTES_MAX


def batch_wire_bytes_max(params: Params) -> int:
    """The most a full batch's array of transactions can take in a frame: batch_bytes_max of
    transactions (or batch_txs_max of the largest, if less), each with its framing, and the
    array's header. What every frame carrying a batch is sized by."""
    count = params.batch_txs_max
    payload = min(params.batch_bytes_max, count * (params.tx_bytes_max + SIGNATURE_BYTES))
    return array_header_bytes(count) + payload + count * TX_FRAMING_BYTES_MAX


@dataclass(frozen=True, slots=True)
class Transaction:
    body: bytes  # canonical encoding of the unsigned fields; what is hashed and signed
    signature: bytes
    id: bytes  # sha256(body)
    chain_id: bytes
    client_key: bytes
    nonce: bytes
    expiry_ms: int
    ops: tuple[Op, ...]

    @classmethod
    def create(
        cls,
        signer: Signer | KeyPair,
        chain_id: bytes,
        nonce: bytes,
        expiry_ms: int,
        ops: list[Op] | tuple[Op, ...],
    ) -> Transaction:
        from consortium.crypto.signing import signer_for

        s: Signer = signer_for(signer) if isinstance(signer, KeyPair) else signer
        body = pack([chain_id, s.public_key, nonce, expiry_ms, [op_to_array(o) for o in ops]])
        sig = s.sign(Domain.TX, chain_id, body)
        return cls(body, sig, sha256(body), chain_id, s.public_key, nonce, expiry_ms, tuple(ops))

    def to_array(self) -> list[bytes]:
        return [self.body, self.signature]

    def encode(self) -> bytes:
        return pack(self.to_array())

    @property
    def size(self) -> int:
        return len(self.body) + len(self.signature)

    def verify_signature(self, verifier: Verifier) -> bool:
        return verifier.verify(self.client_key, Domain.TX, self.chain_id, self.body, self.signature)

    @classmethod
    def from_array(cls, v: Any, params: Params) -> Transaction:
        """Decode [body, signature]; raises WireFormatError (never anything else).

        A member decodes most transactions twice (from the client's submission, then inside
        the PRE-PREPARE or log entry that orders it): the second decode of the same bytes under
        the same parameters is served from a bounded cache (Transaction is immutable)."""
        arr = as_list(v, 2, "transaction")
        body = as_bytes(arr[0], "transaction body", max_len=params.tx_bytes_max)
        sig = as_bytes(arr[1], "transaction signature", size=64)
        return _decode_cached(body, sig, params)

    @classmethod
    def decode(cls, data: bytes, params: Params) -> Transaction:
        return cls.from_array(unpack_canonical(data, max_len=params.tx_bytes_max + 128), params)


DECODED_CACHE_MAX = 16_384  # recently decoded transactions (about 10 MB at most)


@functools.lru_cache(maxsize=DECODED_CACHE_MAX)
def _decode_cached(body: bytes, sig: bytes, params: Params) -> Transaction:
    fields_ = as_list(unpack_canonical(body), 5, "transaction body")
    chain_id = as_bytes(fields_[0], "chain_id", size=32)
    client_key = as_bytes(fields_[1], "client_key", size=32)
    nonce = as_bytes(fields_[2], "nonce", max_len=NONCE_BYTES_MAX)
    expiry_ms = as_int(fields_[3], "expiry_ms")
    ops_v = as_list(fields_[4], what="ops")
    if not 0 < len(ops_v) <= params.ops_per_tx_max:
        raise WireFormatError(f"ops: a transaction has 1..{params.ops_per_tx_max} operations")
    ops = tuple(op_from_array(o, params) for o in ops_v)
    if len(ops) > 1 and any(isinstance(o, CONFIG_OPS) for o in ops):
        raise WireFormatError("ops: a config operation must be the transaction's only operation")
    return Transaction(body, sig, sha256(body), chain_id, client_key, nonce, expiry_ms, ops)
