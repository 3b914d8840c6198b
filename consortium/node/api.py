"""The client protocol: requests, replies, receipt bundles, signed reads, and the client port.

Same framing as between members (4-byte length, one msgpack value), on a separate port that
never carries peer messages. Every value is a canonical msgpack array (our codec has no maps,
so status travels as a JSON string).

    requests   ["submit", req_id, [tx, ...]]      many transactions ([body, signature]) per frame
               ["receipt", req_id, tx_id]          the first receipt of an id, as a bundle, or nil
               ["get", req_id, key]                fast-path read: a signed read reply
               ["block", req_id, height]           a stored block (raw), or nil
               ["status", req_id]                  a JSON string
               ["watch", req_id, [tx_id, ...]]     push these receipts when they execute
               ["transfer", req_id, target, body, sig]   raft maintenance, signed (MAINTENANCE)
                                                   over pack(["transfer", target, term, key,
                                                   addressed, nonce]) by a member's key only
               ["clients", req_id]                 the admitted clients and pending changes
               ["follow", req_id, from_height, credit]
                                                   stream committed blocks from from_height on
               ["credit", req_id, follow_id, n]    let follow follow_id send n more blocks
               ["unfollow", req_id, follow_id]     end follow follow_id
    replies    [req_id, "ok", payload] | [req_id, "error", message]      (req_id >= 1)
    pushes     [0, "receipt", bundle]
               [0, "receipts", [header, block_signature, tree_size, [[receipt, proof], ...]]]
                                                   this connection's receipts in one block
               [0, "error", message]               the server is closing this connection
               [follow_id, "block", [header, [receipt, ...], block_signature]]
                                                   one committed block of a follow

Submit payload: one [tx_id, status, detail] per transaction, status one of
    "accepted"    detail "": its receipt will be pushed when its block executes (raft: a
                  follower that forwards it to the leader says "leader:N", N the leader's
                  index in genesis, so the client submits to the leader next time)
    "committed"   detail is the bundle of its FIRST receipt
    "rejected"    detail is the reason (malformed: ..., wrong_chain, unknown_client,
                  bad_signature, expired, overloaded: ...)
A receipt bundle is [receipt, proof, tree_size, header, block_signature]: the receipt, its
RFC 6962 inclusion proof against header.receipts_root (leaf = receipt.encode()), the size of
that tree, the block header, and one member's block signature [body, sig] with
body = block_signature_body(height, header.hash, signer) under Domain.BLOCK. When a block
executes, a member pushes every receipt a connection watches in that block in ONE "receipts"
frame: the header and block signature once, then each receipt with its proof (each entry and
the shared parts make exactly the bundle above; `BlockReceipts.bundles`).
A clients reply is [height, [[key, label], ...], [pending change, ...], admitted count]: the
admitted clients at our head (sorted by key, at most CLIENTS_LISTED_MAX of them) and the client
changes waiting for their effective height (ledger/admission.py, PendingChange.to_array).
A read reply is [key, value|nil, height, block_hash, signer, sig] with sig over
pack(["read", key, value, height, block_hash, signer]) under Domain.READ.

Follow (a stream of committed blocks, with flow control by credit): the reply to "follow" is
[req_id, "ok", head height], then the member sends blocks from_height, from_height+1, ... in
order, each as [follow_id, "block", [header, receipts, block_signature]] (follow_id is the
follow's req_id; receipts are the block's receipts in order, whose ids are its transactions;
block_signature is the member's own [body, sig] as in a bundle), first from its store, then
live as blocks execute. It sends at most `credit` blocks (1..FOLLOW_CREDIT_MAX) before the
client grants more with "credit" (the credits add up, capped at FOLLOW_CREDIT_MAX). A follow
without credit, or whose connection has more than FOLLOW_QUEUE_BYTES unsent, pauses (no store
reads, no memory); paused longer than FOLLOW_PAUSE_MAX_S it ends with [follow_id, "error",
why]. A connection has at most FOLLOWS_PER_CONNECTION_MAX follows. `verify_followed` checks a
block as one member sent it; a client agrees on it with others (node/client.py follow).

Frames must be canonical msgpack (one encoding per value); a request that is not gets an error
reply when its req_id can be read. Decoders raise only WireFormatError. `verify_bundle` and
`verify_read` are pure and return what is wrong (a sentence) or None.

The server (`ClientServer`) accepts at most `connections_max` clients; per connection one task
reads requests and hands each to the injected `ClientHandler`, one task writes replies. Replies
and pushes are queued without blocking, bounded in frames and bytes: a client that does not
read is disconnected (slow consumer), never allowed to grow our memory. A malformed request is
answered with an error when its req_id can be recovered; an oversize or undecodable frame closes
that connection (after a best-effort [0, "error", why]); every other client is unaffected.

TLS (operator option, node.toml `[tls] client = true`; docs/tls.md): each connection must open
with a TLS 1.3 handshake within `handshake_timeout_s` (at most `handshakes_max` at a time), the
client presenting a certificate whose key `tls_accepts` admits (an admitted client's or a
member's). A key it does not admit gets [0, "error", why] inside TLS, then the connection
closes. The pin holds for the connection's life: each request re-checks the key (a lookup), and
`recheck_tls_keys` (called by the member when a block applies client changes) closes the
connections whose key is no longer admitted, follow streams included. A client that connects
without TLS to a TLS port, or with TLS to a plain one, gets [0, "error", why] in plain framing
naming the setting to change, and the member logs and counts it (`tls_required`,
`tls_unexpected`).
"""

from __future__ import annotations

import itertools
import json
import logging
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import trio

from consortium.crypto.codec import (
    WireFormatError,
    array_header_bytes,
    as_bytes,
    as_int,
    as_list,
    as_str,
    pack,
    unpack,
    unpack_canonical,
)
from consortium.crypto.merkle import MerkleTree, merkle_root, verify_inclusion
from consortium.crypto.signing import Domain, Signer, Verifier
from consortium.ledger.admission import PendingChange
from consortium.ledger.block import Block, BlockHeader, Receipt, receipts_root
from consortium.ledger.certificates import (
    VOTE_BODY_BYTES_MAX,
    CommitCertificate,
    SignedVote,
    block_signature_body,
    commit_body,
)
from consortium.ledger.genesis import Genesis, Mode, Params
from consortium.ledger.tx import batch_wire_bytes_max, tx_wire_bytes_max
from consortium.node.framing import FrameError, FrameReader, encode_frames, take_batch
from consortium.node.logs import RateLimitedLog
from consortium.node.tls import (
    SniffStream,
    TlsIdentity,
    TlsRefused,
    explain_failure,
    is_tls_hello,
    peer_key,
)

PUSH = 0  # the req_id of server pushes
CLIENTS_LISTED_MAX = 100_000
TX_IDS_PER_REQUEST_MAX = 10_000
TXS_PER_REQUEST_MAX = 100_000
KEY_BYTES_MAX = 4096
PROOF_HASHES_MAX = 64
MESSAGE_CHARS_MAX = 4096
METHOD_CHARS_MAX = 16
COALESCE_BYTES_MAX = 1 << 20
OUTBOUND_BYTES_MAX = 64 << 20
SLOW_CONSUMER = "slow consumer"
FLUSH_S = 1.0  # how long queued replies may still be written after the client stops sending
TLS_HANDSHAKE_TIMEOUT_S = 5.0
TLS_HANDSHAKES_MAX = 64
FOLLOW_CREDIT_MAX = 1024  # blocks a follow may have in flight
FOLLOWS_PER_CONNECTION_MAX = 8
FOLLOW_QUEUE_BYTES = 4 << 20  # a follow pauses while its connection has more than this unsent
FOLLOW_PAUSE_MAX_S = 60.0  # a follow paused (no credit, or a full connection) this long ends
SNIFF_BYTES = 64 * 1024


# --- requests --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubmitRequest:
    req_id: int
    txs: list[Any]  # raw [body, signature] arrays; the handler decodes them with the params


@dataclass(frozen=True, slots=True)
class ReceiptRequest:
    req_id: int
    tx_id: bytes


@dataclass(frozen=True, slots=True)
class GetRequest:
    req_id: int
    key: bytes


@dataclass(frozen=True, slots=True)
class BlockRequest:
    req_id: int
    height: int


@dataclass(frozen=True, slots=True)
class StatusRequest:
    req_id: int


@dataclass(frozen=True, slots=True)
class WatchRequest:
    req_id: int
    tx_ids: list[bytes]


@dataclass(frozen=True, slots=True)
class TransferRequest:
    """Maintenance (raft): hand leadership to member `target` (its index in genesis). Signed
    (Domain.MAINTENANCE) by a member's key over `transfer_body`: the client port is reachable
    by anyone who can reach the member and a leader transferring proposes nothing, so a
    request signed by a client key, for another term, or already seen (carried out or
    refused) is refused. The reply comes when the leader accepted the request (the transfer
    has begun), not once leadership moved."""

    req_id: int
    target: int
    body: bytes
    signature: bytes


TRANSFER_NONCE_BYTES = 16


def transfer_body(target: int, term: int, signer_key: bytes, addressed: int, nonce: bytes) -> bytes:
    """The signed body of a transfer request to member `addressed` (the leader asked) in its
    current `term`, with a `nonce` the client draws for each request. Freshness comes from the
    term, not from a clock: a leader accepts only a request for the term it leads (a leader
    whose wall clock is wrong is the very one an operator needs to move, and a timestamp check
    refused it), and within a term it refuses a body it has already seen, carried out or
    refused. The term moves on only when a member campaigns (a transfer's target does on
    TimeoutNow); a transfer abandoned after an election timeout leaves it as it was, and
    without the nonce an operator asking again signed the same body and was refused as a
    replay for the rest of the term. Naming `addressed` binds the signature to that member,
    so a request seen on the wire cannot be replayed at another member."""
    assert len(nonce) == TRANSFER_NONCE_BYTES
    return pack(["transfer", target, term, signer_key, addressed, nonce])


def decode_transfer_body(body: bytes) -> tuple[int, int, bytes, int]:
    """(target, term, signer key, addressed member); raises WireFormatError. (The nonce only
    makes the body new: the leader compares whole bodies.)"""
    a = as_list(unpack_canonical(body, max_len=256), 6, "transfer body")
    if a[0] != "transfer":
        raise WireFormatError("transfer body: not a transfer")
    as_bytes(a[5], "nonce", size=TRANSFER_NONCE_BYTES)
    return (
        as_int(a[1], "target", hi=1 << 16),
        as_int(a[2], "term"),
        as_bytes(a[3], "key", size=32),
        as_int(a[4], "addressed member", hi=1 << 16),
    )


@dataclass(frozen=True, slots=True)
class ClientsRequest:
    req_id: int


@dataclass(frozen=True, slots=True)
class FollowRequest:
    req_id: int
    from_height: int
    credit: int


@dataclass(frozen=True, slots=True)
class CreditRequest:
    req_id: int
    follow_id: int
    credit: int


@dataclass(frozen=True, slots=True)
class UnfollowRequest:
    req_id: int
    follow_id: int


Request = (
    SubmitRequest
    | ReceiptRequest
    | GetRequest
    | BlockRequest
    | StatusRequest
    | WatchRequest
    | TransferRequest
    | ClientsRequest
    | FollowRequest
    | CreditRequest
    | UnfollowRequest
)


class RequestError(WireFormatError):
    """A request that cannot be served; `req_id` is set when it could be recovered."""

    def __init__(self, message: str, req_id: int | None) -> None:
        super().__init__(message)
        self.req_id = req_id


def encode_request(request: Request) -> bytes:
    match request:
        case SubmitRequest(req_id=r, txs=txs):
            return pack(["submit", r, list(txs)])
        case ReceiptRequest(req_id=r, tx_id=t):
            return pack(["receipt", r, t])
        case GetRequest(req_id=r, key=k):
            return pack(["get", r, k])
        case BlockRequest(req_id=r, height=h):
            return pack(["block", r, h])
        case StatusRequest(req_id=r):
            return pack(["status", r])
        case WatchRequest(req_id=r, tx_ids=ids):
            return pack(["watch", r, list(ids)])
        case TransferRequest(req_id=r, target=t, body=b, signature=sig):
            return pack(["transfer", r, t, b, sig])
        case ClientsRequest(req_id=r):
            return pack(["clients", r])
        case FollowRequest(req_id=r, from_height=h, credit=c):
            return pack(["follow", r, h, c])
        case CreditRequest(req_id=r, follow_id=f, credit=c):
            return pack(["credit", r, f, c])
        case UnfollowRequest(req_id=r, follow_id=f):
            return pack(["unfollow", r, f])


def decode_request(frame: bytes, frame_bytes_max: int) -> Request:
    """Raises RequestError (a WireFormatError) only; its req_id is set when recoverable."""
    try:
        msg = as_list(unpack(frame, max_len=frame_bytes_max), what="request")
    except WireFormatError as exc:
        raise RequestError(str(exc), None) from None
    req_id: int | None = None
    try:
        if len(msg) < 2:
            raise WireFormatError("request: expected [method, req_id, ...]")
        req_id = as_int(msg[1], "req_id", lo=1)
        method = as_str(msg[0], "method", max_len=METHOD_CHARS_MAX)
        unpack_canonical(frame)  # one encoding per value, as on every port (DESIGN.md)
        if method == "submit":
            as_list(msg, 3, "submit")
            txs = as_list(msg[2], what="transactions")
            if len(txs) > TXS_PER_REQUEST_MAX:
                raise WireFormatError(f"submit: more than {TXS_PER_REQUEST_MAX} transactions")
            return SubmitRequest(req_id, txs)
        if method == "receipt":
            as_list(msg, 3, "receipt")
            return ReceiptRequest(req_id, as_bytes(msg[2], "tx_id", size=32))
        if method == "get":
            as_list(msg, 3, "get")
            return GetRequest(req_id, as_bytes(msg[2], "key", max_len=KEY_BYTES_MAX))
        if method == "block":
            as_list(msg, 3, "block")
            return BlockRequest(req_id, as_int(msg[2], "height"))
        if method == "status":
            as_list(msg, 2, "status")
            return StatusRequest(req_id)
        if method == "watch":
            as_list(msg, 3, "watch")
            ids = as_list(msg[2], what="tx_ids")
            if len(ids) > TX_IDS_PER_REQUEST_MAX:
                raise WireFormatError(f"watch: more than {TX_IDS_PER_REQUEST_MAX} ids")
            return WatchRequest(req_id, [as_bytes(t, "tx_id", size=32) for t in ids])
        if method == "transfer":
            as_list(msg, 5, "transfer")
            return TransferRequest(
                req_id,
                as_int(msg[2], "target", hi=1 << 16),
                as_bytes(msg[3], "transfer body", max_len=256),
                as_bytes(msg[4], "signature", size=64),
            )
        if method == "clients":
            as_list(msg, 2, "clients")
            return ClientsRequest(req_id)
        if method == "follow":
            as_list(msg, 4, "follow")
            return FollowRequest(
                req_id,
                as_int(msg[2], "from_height"),
                as_int(msg[3], "credit", lo=1, hi=FOLLOW_CREDIT_MAX),
            )
        if method == "credit":
            as_list(msg, 4, "credit")
            return CreditRequest(
                req_id,
                as_int(msg[2], "follow_id", lo=1),
                as_int(msg[3], "credit", lo=1, hi=FOLLOW_CREDIT_MAX),
            )
        if method == "unfollow":
            as_list(msg, 3, "unfollow")
            return UnfollowRequest(req_id, as_int(msg[2], "follow_id", lo=1))
        raise WireFormatError(f"unknown method {method!r}")
    except WireFormatError as exc:
        raise RequestError(str(exc), req_id) from None


@dataclass(frozen=True, slots=True)
class ClientList:
    """One member's answer to "clients"."""

    height: int
    admitted: tuple[tuple[bytes, str], ...]  # sorted by key
    pending: tuple[PendingChange, ...]
    admitted_count: int  # may exceed len(admitted) (CLIENTS_LISTED_MAX)

    def to_array(self) -> list[Any]:
        return [
            self.height,
            [[k, label] for k, label in self.admitted],
            [p.to_array() for p in self.pending],
            self.admitted_count,
        ]

    @classmethod
    def from_array(cls, v: Any) -> ClientList:
        a = as_list(v, 4, "clients reply")
        admitted = []
        for item in as_list(a[1], what="admitted clients"):
            pair = as_list(item, 2, "admitted client")
            admitted.append((as_bytes(pair[0], "client key", size=32), as_str(pair[1], "label")))
        return cls(
            as_int(a[0], "height"),
            tuple(admitted),
            tuple(PendingChange.from_array(p) for p in as_list(a[2], what="pending changes")),
            as_int(a[3], "admitted count"),
        )


# --- receipt bundles -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bundle:
    """A receipt with what proves it: a Merkle path to the header, one member's block
    signature over that header's hash."""

    receipt: Receipt
    proof: tuple[bytes, ...]
    tree_size: int
    header: BlockHeader
    signature: SignedVote

    def to_array(self) -> list[Any]:
        return [
            self.receipt.to_array(),
            list(self.proof),
            self.tree_size,
            self.header.to_array(),
            self.signature.to_array(),
        ]

    def encode(self) -> bytes:
        return pack(self.to_array())

    @classmethod
    def from_array(cls, v: Any) -> Bundle:
        a = as_list(v, 5, "bundle")
        proof = as_list(a[1], what="proof")
        if len(proof) > PROOF_HASHES_MAX:
            raise WireFormatError("proof: too long")
        return cls(
            Receipt.from_array(a[0]),
            tuple(as_bytes(p, "proof hash", size=32) for p in proof),
            as_int(a[2], "tree_size"),
            BlockHeader.from_array(a[3]),
            SignedVote.from_array(a[4]),
        )

    def signer(self) -> int | None:
        """The member index the block signature names, or None when its body is malformed."""
        try:
            body = as_list(
                unpack_canonical(self.signature.body, max_len=VOTE_BODY_BYTES_MAX),
                4,
                "block signature",
            )
        except WireFormatError:
            return None
        signer = body[3]
        return signer if isinstance(signer, int) and not isinstance(signer, bool) else None

    def verify(self, genesis: Genesis, verifier: Verifier) -> str | None:
        return verify_bundle(self, genesis, verifier)


def bundle_for(
    block: Block, index: int, signature: SignedVote, tree: MerkleTree | None = None
) -> Bundle:
    """The bundle for the receipt at `index` of `block` (pass `tree` to share it per block)."""
    if tree is None:
        tree = MerkleTree([r.encode() for r in block.receipts])
    return Bundle(
        block.receipts[index], tuple(tree.proof(index)), tree.size, block.header, signature
    )


_CHAIN_IDS: list[tuple[Genesis, bytes]] = []
_CHAIN_IDS_MAX = 8


def chain_id_of(genesis: Genesis) -> bytes:
    """genesis.chain_id, remembered per Genesis object: it hashes the whole genesis, and the
    client checks one bundle per member and transaction."""
    for known, chain_id in _CHAIN_IDS:
        if known is genesis:
            return chain_id
    chain_id = genesis.chain_id
    if len(_CHAIN_IDS) >= _CHAIN_IDS_MAX:
        del _CHAIN_IDS[0]
    _CHAIN_IDS.append((genesis, chain_id))
    return chain_id


def verify_bundle(
    bundle: Bundle,
    genesis: Genesis,
    verifier: Verifier,
    *,
    header_hash: bytes | None = None,
) -> str | None:
    """What is wrong with `bundle`, or None: chain id, receipt inclusion (leaf =
    receipt.encode(), index and tree size) against header.receipts_root, and a block
    signature by a genesis member over (height, header hash, signer) in Domain.BLOCK.
    `header_hash` may pass bundle.header.hash, computed once per block."""
    header = bundle.header
    receipt = bundle.receipt
    chain_id = chain_id_of(genesis)
    if header.chain_id != chain_id:
        return (
            f"bundle is for another chain ({header.chain_id.hex()[:8]}…, "
            f"we are on {chain_id.hex()[:8]}…)"
        )
    if receipt.height != header.height:
        return f"receipt height {receipt.height} differs from the header's {header.height}"
    if not 0 <= receipt.index < bundle.tree_size:
        return f"receipt index {receipt.index} outside a tree of {bundle.tree_size}"
    if not verify_inclusion(
        receipt.encode(), receipt.index, bundle.tree_size, bundle.proof, header.receipts_root
    ):
        return "receipt is not in the block (bad Merkle proof)"
    signer = bundle.signer()
    if signer is None or not 0 <= signer < genesis.n:
        return "block signature is not by a member"
    block_hash = header.hash if header_hash is None else header_hash
    if bundle.signature.body != block_signature_body(header.height, block_hash, signer):
        return "block signature is for another block"
    member = genesis.members[signer]
    if not verifier.verify(
        member.public_key,
        Domain.BLOCK,
        chain_id,
        bundle.signature.body,
        bundle.signature.signature,
    ):
        return f"bad block signature by {member.name}"
    return None


# --- signed reads ----------------------------------------------------------------------------


def read_body(
    key: bytes, value: bytes | None, height: int, block_hash: bytes, signer: int
) -> bytes:
    """The bytes a member signs (Domain.READ) for a fast-path read."""
    return pack(["read", key, value, height, block_hash, signer])


@dataclass(frozen=True, slots=True)
class ReadReply:
    key: bytes
    value: bytes | None
    height: int
    block_hash: bytes
    signer: int
    signature: bytes

    @classmethod
    def signed(
        cls,
        signer: Signer,
        chain_id: bytes,
        member: int,
        key: bytes,
        value: bytes | None,
        height: int,
        block_hash: bytes,
    ) -> ReadReply:
        body = read_body(key, value, height, block_hash, member)
        signature = signer.sign(Domain.READ, chain_id, body)
        return cls(key, value, height, block_hash, member, signature)

    def to_array(self) -> list[Any]:
        return [self.key, self.value, self.height, self.block_hash, self.signer, self.signature]

    @classmethod
    def from_array(cls, v: Any) -> ReadReply:
        a = as_list(v, 6, "read reply")
        value = None if a[1] is None else as_bytes(a[1], "value")
        return cls(
            as_bytes(a[0], "key", max_len=KEY_BYTES_MAX),
            value,
            as_int(a[2], "height"),
            as_bytes(a[3], "block_hash", size=32),
            as_int(a[4], "signer", hi=1 << 16),
            as_bytes(a[5], "signature", size=64),
        )

    def verify(self, genesis: Genesis, verifier: Verifier) -> bool:
        return verify_read(self, genesis, verifier) is None


def verify_read(
    reply: ReadReply,
    genesis: Genesis,
    verifier: Verifier,
    *,
    key: bytes | None = None,
    signer: int | None = None,
) -> str | None:
    """What is wrong with a read reply, or None. `key` and `signer`: what was asked, of whom."""
    if key is not None and reply.key != key:
        return "reply is for another key"
    if signer is not None and reply.signer != signer:
        return f"reply from member {signer} is signed as member {reply.signer}"
    if not 0 <= reply.signer < genesis.n:
        return "reply is not signed by a member"
    member = genesis.members[reply.signer]
    body = read_body(reply.key, reply.value, reply.height, reply.block_hash, reply.signer)
    if not verifier.verify(
        member.public_key, Domain.READ, chain_id_of(genesis), body, reply.signature
    ):
        return f"bad read signature by {member.name}"
    return None


# --- responses -------------------------------------------------------------------------------


VerdictStatus = Literal["accepted", "committed", "rejected"]
LEADER_HINT = "leader:"  # raft: an accepted verdict's detail naming the leader ("leader:2")


def leader_hint(detail: str, n: int) -> int | None:
    """The leader index an accepted verdict's detail names (raft), or None."""
    if not detail.startswith(LEADER_HINT):
        return None
    index = detail[len(LEADER_HINT) :]
    if not (index.isascii() and index.isdigit()) or len(index) > 6:  # ('²'.isdigit())
        return None
    value = int(index)
    return value if value < n else None


@dataclass(frozen=True, slots=True)
class SubmitVerdict:
    """One transaction's answer to a submit. tx_id is b"" when the transaction was malformed."""

    tx_id: bytes
    status: VerdictStatus
    detail: str | Bundle  # the reason ("" when accepted), or the bundle when committed

    def to_array(self) -> list[Any]:
        detail = self.detail.to_array() if isinstance(self.detail, Bundle) else self.detail
        return [self.tx_id, self.status, detail]

    @classmethod
    def from_array(cls, v: Any) -> SubmitVerdict:
        a = as_list(v, 3, "verdict")
        tx_id = as_bytes(a[0], "tx_id", max_len=32)
        if len(tx_id) not in (0, 32):
            raise WireFormatError("verdict tx_id: expected 0 or 32 bytes")
        status = as_str(a[1], "verdict status", max_len=16)
        if status == "committed":
            return cls(tx_id, "committed", Bundle.from_array(a[2]))
        if status == "accepted":
            return cls(tx_id, "accepted", as_str(a[2], "detail", max_len=MESSAGE_CHARS_MAX))
        if status == "rejected":
            return cls(tx_id, "rejected", as_str(a[2], "reason", max_len=MESSAGE_CHARS_MAX))
        raise WireFormatError(f"verdict status {status!r}")


def encode_verdicts(verdicts: Sequence[SubmitVerdict]) -> list[Any]:
    """The submit reply payload."""
    return [v.to_array() for v in verdicts]


def decode_verdicts(payload: Any) -> list[SubmitVerdict]:
    return [SubmitVerdict.from_array(v) for v in as_list(payload, what="verdicts")]


@dataclass(frozen=True, slots=True)
class OkReply:
    req_id: int
    payload: Any


@dataclass(frozen=True, slots=True)
class ErrorReply:
    req_id: int  # PUSH (0): the server is closing the connection
    message: str


@dataclass(frozen=True, slots=True)
class ReceiptPush:
    bundle: Bundle


@dataclass(frozen=True, slots=True)
class BlockReceipts:
    """One block's receipts for one connection: the header and block signature once, and per
    receipt the raw [receipt, proof] entry, decoded only when asked (`bundle`), so a client
    that has decided a transaction already spends nothing more on it."""

    header: BlockHeader
    signature: SignedVote
    tree_size: int
    entries: list[list[Any]]  # each [receipt array, proof array], shape-checked

    def tx_id_at(self, i: int) -> bytes | None:
        receipt = self.entries[i][0]
        if isinstance(receipt, list) and receipt and isinstance(receipt[0], bytes):
            return receipt[0]
        return None

    def bundle(self, i: int) -> Bundle:
        """The bundle of entry i; raises WireFormatError."""
        receipt, proof = self.entries[i]
        proof = as_list(proof, what="proof")
        if len(proof) > PROOF_HASHES_MAX:
            raise WireFormatError("proof: too long")
        return Bundle(
            Receipt.from_array(receipt),
            tuple(as_bytes(p, "proof hash", size=32) for p in proof),
            self.tree_size,
            self.header,
            self.signature,
        )

    def bundles(self) -> list[Bundle]:
        return [self.bundle(i) for i in range(len(self.entries))]


@dataclass(frozen=True, slots=True)
class FollowedBlock:
    """One block of a follow, as one member sent it (check it with verify_followed)."""

    follow_id: int
    header: BlockHeader
    receipts: tuple[Receipt, ...]
    signature: SignedVote


def encode_followed_block(
    follow_id: int, header: BlockHeader, receipts: Sequence[Receipt], signature: SignedVote
) -> bytes:
    return pack(
        [
            follow_id,
            "block",
            [header.to_array(), [r.to_array() for r in receipts], signature.to_array()],
        ]
    )


def encode_followed_block_raw(
    follow_id: int, header: bytes, receipts: bytes, signature: SignedVote
) -> bytes:
    """encode_followed_block from the header's and the receipts' canonical encodings (as the
    block store holds them): the same bytes, without decoding and re-encoding a block."""
    return b"".join(
        (
            b"\x93",
            pack(follow_id),
            pack("block"),
            b"\x93",
            header,
            receipts,
            pack(signature.to_array()),
        )
    )


def verify_followed(
    block: FollowedBlock, genesis: Genesis, verifier: Verifier, member: int
) -> str | None:
    """What is wrong with a followed block from `member`, or None: this chain, receipts that
    belong to this height in order, the header's transaction and receipts Merkle roots, and
    `member`'s block signature over (height, header hash) in Domain.BLOCK."""
    header = block.header
    chain_id = chain_id_of(genesis)
    if header.chain_id != chain_id:
        return f"block {header.height} is for another chain"
    for i, r in enumerate(block.receipts):
        if r.height != header.height or r.index != i:
            return f"block {header.height}: receipt {i} does not belong at its place"
    if merkle_root([r.tx_id for r in block.receipts]) != header.tx_root:
        return f"block {header.height}: its transaction ids do not match the header's tx root"
    if receipts_root(block.receipts) != header.receipts_root:
        return f"block {header.height}: its receipts do not match the header's receipts root"
    return verify_block_signature(
        block.signature, header.height, header.hash, genesis, verifier, member
    )


def verify_block_signature(
    vote: SignedVote,
    height: int,
    block_hash: bytes,
    genesis: Genesis,
    verifier: Verifier,
    member: int,
) -> str | None:
    """What is wrong with `vote` as `member`'s block signature over (height, block_hash)."""
    if not 0 <= member < genesis.n:
        return f"{member} is not a member"
    if vote.body != block_signature_body(height, block_hash, member):
        return f"block {height}: the signature is not {genesis.members[member].name}'s over it"
    if not verifier.verify(
        genesis.members[member].public_key,
        Domain.BLOCK,
        chain_id_of(genesis),
        vote.body,
        vote.signature,
    ):
        return f"block {height}: bad block signature by {genesis.members[member].name}"
    return None


Response = OkReply | ErrorReply | ReceiptPush | BlockReceipts | FollowedBlock


def encode_block_receipts(
    header: BlockHeader, signature: SignedVote, tree: MerkleTree, receipts: Sequence[Receipt]
) -> bytes:
    """The "receipts" push of `receipts` (all from the block `header` heads, whose receipts
    make `tree`)."""
    entries = [[r.to_array(), tree.proof(r.index)] for r in receipts]
    return pack([PUSH, "receipts", [header.to_array(), signature.to_array(), tree.size, entries]])


def worst_case_frames(params: Params, n: int, mode: Mode) -> dict[str, int]:
    """The largest client frames that any member or client must get through
    params.frame_bytes_max (the client port's frame limit), from the real encodings with every
    integer at its largest: a submit of the largest transaction, and the reply to "block" for
    a block of a full batch (its header, transactions, a receipt per transaction with the
    longest reason a receipt decodes with, the certificate, n block signatures). Receipts of
    reads (`get` results) are left out: a read's value is bounded per operation
    (value_bytes_max), not per frame."""
    top, digest = 2**63 - 1, bytes(32)
    batch = batch_wire_bytes_max(params)
    consensus: tuple[str | int, ...] = (
        ("pbft", top, top) if mode == "pbft" else ("raft", top, top, top)
    )
    header = BlockHeader(digest, top, digest, top, digest, digest, digest, consensus)
    receipt = len(Receipt(digest, "rejected", "r" * 64, (), top, top).encode())
    if mode == "pbft":
        commit = SignedVote(commit_body(top, top, digest, n - 1), bytes(64))
        certificate = CommitCertificate(top, top, digest, (commit,) * n).encode()
    else:
        certificate = bytes(256)
    signature = SignedVote(block_signature_body(top, digest, n - 1), bytes(64)).to_array()
    block = pack([top, "ok", [header.to_array(), [], [], certificate, [signature] * n]])
    count = params.batch_txs_max
    receipts = array_header_bytes(count) + count * receipt
    return {
        "submit": len(pack(["submit", top, []])) + tx_wire_bytes_max(params),
        "block": len(block) - 2 + batch + receipts,  # (its two empty arrays, filled)
    }


def encode_response(response: Response) -> bytes:
    match response:
        case OkReply(req_id=r, payload=p):
            return pack([r, "ok", p])
        case ErrorReply(req_id=r, message=m):
            return pack([r, "error", m])
        case ReceiptPush(bundle=b):
            return pack([PUSH, "receipt", b.to_array()])
        case BlockReceipts(header=h, signature=v, tree_size=size, entries=entries):
            return pack([PUSH, "receipts", [h.to_array(), v.to_array(), size, entries]])
        case FollowedBlock(follow_id=f, header=h, receipts=rs, signature=v):
            return encode_followed_block(f, h, rs, v)


def decode_response(frame: bytes, frame_bytes_max: int) -> Response:
    """Raises WireFormatError only."""
    msg = as_list(unpack_canonical(frame, max_len=frame_bytes_max), 3, "response")
    req_id = as_int(msg[0], "req_id")
    kind = as_str(msg[1], "response kind", max_len=16)
    if kind == "error":
        return ErrorReply(req_id, as_str(msg[2], "message", max_len=MESSAGE_CHARS_MAX))
    if req_id == PUSH:
        if kind == "receipt":
            return ReceiptPush(Bundle.from_array(msg[2]))
        if kind == "receipts":
            a = as_list(msg[2], 4, "receipts")
            tree_size = as_int(a[2], "tree_size", hi=1 << 32)
            entries = as_list(a[3], what="receipt entries")
            if len(entries) > tree_size:
                raise WireFormatError("receipts: more entries than the tree has leaves")
            for entry in entries:
                as_list(entry, 2, "receipt entry")
            return BlockReceipts(
                BlockHeader.from_array(a[0]), SignedVote.from_array(a[1]), tree_size, entries
            )
        raise WireFormatError(f"unknown push {kind!r}")
    if kind == "ok":
        return OkReply(req_id, msg[2])
    if kind == "block":
        a = as_list(msg[2], 3, "followed block")
        return FollowedBlock(
            req_id,
            BlockHeader.from_array(a[0]),
            tuple(Receipt.from_array(r) for r in as_list(a[1], what="receipts")),
            SignedVote.from_array(a[2]),
        )
    raise WireFormatError(f"unknown response kind {kind!r}")


def encode_status(doc: dict[str, Any]) -> str:
    """Status as a JSON string (our canonical msgpack has no maps)."""
    return json.dumps(doc, sort_keys=True, default=str)


def decode_status(payload: Any) -> dict[str, Any]:
    """Raises WireFormatError only."""
    text = as_str(payload, "status", max_len=16 << 20)
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise WireFormatError(f"status: not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise WireFormatError("status: expected a JSON object")
    return doc


# --- server ----------------------------------------------------------------------------------


class ClientHandler(Protocol):
    async def handle(self, conn: ClientConnection, request: Request) -> None:
        """Serve one request: answer with conn.reply/conn.error; may push later."""

    def disconnected(self, conn: ClientConnection) -> None:
        """The connection is gone: forget what was kept for it."""


class ClientConnection:
    """One client. Replies and pushes are queued without blocking; a client that does not read
    (its queue is full) is disconnected rather than allowed to grow our memory."""

    def __init__(
        self, conn_id: int, peer: str, frames_max: int, bytes_max: int = OUTBOUND_BYTES_MAX
    ) -> None:
        self.id = conn_id
        self.peer = peer
        self._frames_max = frames_max
        self._bytes_max = bytes_max
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._wakeup = trio.Event()
        self._finishing = False
        self.scope = trio.CancelScope()
        self.closed_reason = ""
        self.frames_sent = 0
        self.watched: set[bytes] = set()  # ids whose receipts the node will push here
        self.tls_key: bytes | None = None  # the client's TLS certificate key (a TLS port)

    @property
    def open(self) -> bool:
        return not self.closed_reason

    @property
    def queued_bytes(self) -> int:
        """Bytes queued and not yet written (a follow pauses above FOLLOW_QUEUE_BYTES)."""
        return self._queued_bytes

    def push(self, body: bytes) -> bool:
        """Queue one encoded response (a frame body). False when the connection is closed, or
        is closed now because its queue is full (slow consumer)."""
        if self.closed_reason:
            return False
        if len(self._queue) >= self._frames_max or self._queued_bytes + len(body) > self._bytes_max:
            self.close(f"{SLOW_CONSUMER}: reply queue full")
            return False
        self._queue.append(body)
        self._queued_bytes += len(body)
        self._wakeup.set()
        return True

    def reply(self, req_id: int, payload: Any) -> bool:
        return self.push(pack([req_id, "ok", payload]))

    def error(self, req_id: int, message: str) -> bool:
        return self.push(pack([req_id, "error", message[:MESSAGE_CHARS_MAX]]))

    def push_block_receipts(self, frame: bytes) -> bool:
        """Queue an encode_block_receipts frame."""
        return self.push(frame)

    def push_receipt(self, bundle: Bundle | list[Any]) -> bool:
        raw = bundle.to_array() if isinstance(bundle, Bundle) else bundle
        return self.push(pack([PUSH, "receipt", raw]))

    def close(self, reason: str) -> None:
        """Disconnect now; what is queued is discarded."""
        if not self.closed_reason:
            self.closed_reason = reason
        self.scope.cancel()

    def close_soon(self, reason: str, message: str) -> None:
        """Tell the client `message` ([0, "error", message]) and disconnect: nothing else is
        sent from now on, and the connection ends within FLUSH_S whatever the client does."""
        if self.closed_reason:
            return
        self.error(PUSH, message)
        self.closed_reason = reason
        self._finishing = True
        self._wakeup.set()
        self.scope.deadline = min(self.scope.deadline, trio.current_time() + FLUSH_S)

    def finish(self) -> None:
        """Write what is queued, then stop (the client stopped sending)."""
        self._finishing = True
        self._wakeup.set()

    async def writer(self, stream: trio.abc.SendStream) -> None:
        while True:
            while not self._queue:
                if self._finishing:
                    return
                self._wakeup = trio.Event()
                await self._wakeup.wait()
            batch, size = take_batch(self._queue, COALESCE_BYTES_MAX)
            self._queued_bytes -= size
            await stream.send_all(encode_frames(batch))
            self.frames_sent += len(batch)


class ClientServer:
    """Serves the client port; see the module docstring."""

    def __init__(
        self,
        handler: ClientHandler,
        *,
        listen: tuple[str, int],
        frame_bytes_max: int,
        params: Params,
        connections_max: int = 1024,
        outbound_frames_max: int = 8192,
        outbound_bytes_max: int = OUTBOUND_BYTES_MAX,
        tls: TlsIdentity | None = None,
        tls_accepts: Callable[[bytes], str | None] | None = None,
        handshake_timeout_s: float = TLS_HANDSHAKE_TIMEOUT_S,
        handshakes_max: int = TLS_HANDSHAKES_MAX,
        log: logging.Logger | None = None,
    ) -> None:
        """`tls`: serve TLS only; `tls_accepts(key)` then names the client a certificate key
        belongs to, or None to refuse it."""
        if tls is not None and tls_accepts is None:
            raise ValueError("a TLS client port needs tls_accepts (which keys to admit)")
        self.handler = handler
        self._listen = listen
        self._frame_max = frame_bytes_max
        self.params = params
        self._connections_max = connections_max
        self._outbound_frames_max = outbound_frames_max
        self._outbound_bytes_max = outbound_bytes_max
        self.connections: dict[int, ClientConnection] = {}
        self._ids = itertools.count(1)
        self.listen_port = 0
        self.log = log or logging.getLogger("consortium.clients")
        self._ratelog = RateLimitedLog(self.log)
        self.counters: Counter[str] = Counter()
        self._tls = tls
        self._tls_accepts = tls_accepts
        self._handshake_timeout_s = handshake_timeout_s
        self._handshakes_max = handshakes_max
        self._handshakes = 0
        self.tls_mismatch = ""  # the last client refused for TLS on one side only

    def tls_status(self) -> dict[str, object]:
        doc: dict[str, object] = {"client": self._tls is not None}
        if self.tls_mismatch:
            doc["last_client_mismatch"] = self.tls_mismatch
        return doc

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve forever; started(listen_port) once the listener is bound."""
        host, port = self._listen
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.listen_port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._serve, listeners)
            task_status.started(self.listen_port)

    async def _serve(self, stream: trio.SocketStream) -> None:
        if len(self.connections) >= self._connections_max:
            self.counters["refused_too_many_connections"] += 1
            self._ratelog.warning(
                "too_many", f"refusing a client: {self._connections_max} connections open"
            )
            await trio.aclose_forcefully(stream)
            return
        try:
            host, port = stream.socket.getpeername()[:2]
            peer = f"{host}:{port}"
        except OSError:
            peer = "?"
        channel: trio.abc.Stream = stream
        tls_key: bytes | None = None
        if self._tls is not None:
            secured = await self._tls_accept(stream, peer)
            if secured is None:
                await trio.aclose_forcefully(stream)
                return
            channel, peer, tls_key = secured
        conn = ClientConnection(
            next(self._ids), peer, self._outbound_frames_max, self._outbound_bytes_max
        )
        conn.tls_key = tls_key
        self.connections[conn.id] = conn
        self.counters["connections"] += 1
        try:
            with conn.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write_replies, channel, conn)
                    await self._read_requests(channel, conn)
                    # Let the writer flush what is queued (the last replies, an error notice)
                    # for a bounded time.
                    conn.finish()
                    nursery.cancel_scope.deadline = trio.current_time() + FLUSH_S
        finally:
            del self.connections[conn.id]
            if conn.closed_reason.startswith(SLOW_CONSUMER):
                self.counters["disconnected_slow_consumer"] += 1
                self._ratelog.warning("slow", f"client {peer}: {conn.closed_reason}")
            elif conn.closed_reason:
                self.counters["disconnected_by_handler"] += 1
            else:
                conn.closed_reason = "closed"
            try:
                self.handler.disconnected(conn)
            finally:
                await trio.aclose_forcefully(stream)

    def _still_admitted(self, conn: ClientConnection) -> bool:
        """Whether `conn`'s TLS key is still one `tls_accepts` admits (True without TLS)."""
        if conn.tls_key is None or self._tls_accepts is None:
            return True
        return self._tls_accepts(conn.tls_key) is not None

    def _revoked(self, conn: ClientConnection) -> None:
        assert conn.tls_key is not None
        self.counters["tls_revoked_disconnected"] += 1
        self._ratelog.warning(
            "tls_revoked",
            f"client {conn.peer}: its TLS key {conn.tls_key.hex()[:16]}… is no longer an "
            "admitted client's: disconnected",
        )
        conn.close_soon(
            "revoked",
            f"closing the connection: your TLS key {conn.tls_key.hex()[:16]}… is no longer an "
            "admitted client of this network (revoked; see `consortium client list`)",
        )

    def recheck_tls_keys(self) -> int:
        """Close the connections whose TLS key is no longer admitted (a revocation took
        effect); how many. A lookup per open connection."""
        gone = [c for c in self.connections.values() if c.open and not self._still_admitted(c)]
        for conn in gone:
            self._revoked(conn)
        return len(gone)

    async def _tls_accept(
        self, stream: trio.SocketStream, peer: str
    ) -> tuple[trio.abc.Stream, str, bytes] | None:
        """The TLS handshake of a new client, bounded in time and number, and the pin: its
        certificate key must be one `tls_accepts` admits. None (logged, counted, the client
        told why when it can be) when it is not."""
        assert self._tls is not None and self._tls_accepts is not None
        if self._handshakes >= self._handshakes_max:
            self.counters["refused_too_many_handshakes"] += 1
            self._ratelog.warning(
                "tls_too_many", f"refusing a client: {self._handshakes_max} TLS handshakes open"
            )
            return None
        self._handshakes += 1
        first = b""
        try:
            with trio.move_on_after(self._handshake_timeout_s):
                first = await stream.receive_some(SNIFF_BYTES)
                if not first:
                    return None
                sniff = SniffStream(stream, first)
                if not is_tls_hello(first):
                    await self._tls_mismatch(
                        sniff,
                        "tls_required",
                        f"client {peer} connected without TLS, but [tls] client = true here",
                    )
                    return None
                conn = trio.SSLStream(sniff, self._tls.server_context, server_side=True)
                try:
                    await conn.do_handshake()
                    key = peer_key(conn)
                except trio.BrokenResourceError as exc:
                    self.counters["tls_failed"] += 1
                    self._ratelog.warning("tls_failed", explain_failure(exc, b"", f"client {peer}"))
                    return None
                except TlsRefused as exc:
                    self.counters["tls_bad_certificate"] += 1
                    self._ratelog.warning("tls_bad_certificate", f"client {peer} {exc}")
                    return None
                name = self._tls_accepts(key)
                if name is None:
                    self.counters["tls_unknown_client"] += 1
                    self._ratelog.warning(
                        "tls_unknown_client",
                        f"client {peer} presented TLS key {key.hex()[:16]}…, which is not an "
                        "admitted client's or a member's key: refused",
                    )
                    await _tell(
                        conn,
                        f"your TLS key {key.hex()[:16]}… is not an admitted client of this "
                        "network (nor a member's): `consortium client list` shows the admitted "
                        "clients; ask the operators to admit it (docs/clients-admission.md)",
                    )
                    return None
                return conn, f"{name}@{peer}", key
            # Timed out. Nothing at all: likely a plain client that has not sent a request yet.
            if not first:
                await self._tls_mismatch(
                    stream,
                    "tls_required",
                    f"client {peer} sent nothing within {self._handshake_timeout_s:g} s "
                    "(a client without TLS?); [tls] client = true here",
                )
            else:
                self.counters["tls_handshake_timeout"] += 1
                self._ratelog.warning(
                    "tls_timeout", f"client {peer}: TLS handshake did not finish in time"
                )
            return None
        finally:
            self._handshakes -= 1

    async def _tls_mismatch(self, stream: trio.abc.SendStream, counter: str, detail: str) -> None:
        self.counters[counter] += 1
        self.tls_mismatch = detail
        self._ratelog.warning(counter, detail)
        # Told in plain framing, which the client can read: it speaks plain, or keeps the
        # bytes its TLS handshake failed on and decodes them.
        fix = (
            "this member requires TLS on its client port ([tls] client = true in its "
            "node.toml): set tls = true in client.toml (ConsortiumClient tls_keys=)"
            if counter == "tls_required"
            else "this member does not use TLS on its client port ([tls] client = false in "
            "its node.toml): set tls = false in client.toml (no ConsortiumClient tls_keys=)"
        )
        await _tell(stream, fix)

    async def _write_replies(self, stream: trio.abc.Stream, conn: ClientConnection) -> None:
        try:
            await conn.writer(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            conn.scope.cancel()  # the client went away; the reader stops too

    def _closing(self, conn: ClientConnection, counter: str, why: str) -> None:
        self.counters[counter] += 1
        self._ratelog.warning(counter, f"client {conn.peer}: closing: {why}")
        conn.error(PUSH, f"closing the connection: {why}")

    async def _read_requests(self, stream: trio.abc.Stream, conn: ClientConnection) -> None:
        reader = FrameReader(stream, self._frame_max)
        while True:
            try:
                frame = await reader.read()
            except FrameError as exc:
                if self._tls is None and is_tls_hello(reader.peek(1)):
                    detail = f"client {conn.peer} connected with TLS, but [tls] client is off here"
                    self.counters["tls_unexpected"] += 1
                    self.tls_mismatch = detail
                    self._ratelog.warning("tls_unexpected", detail)
                    conn.error(
                        PUSH,
                        "this member does not use TLS on its client port ([tls] client = false "
                        "in its node.toml): set tls = false in client.toml (no ConsortiumClient "
                        "tls_keys=)",
                    )
                    return
                self._closing(conn, "bad_frame", str(exc))
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            if frame is None:
                return
            try:
                request = decode_request(frame, self._frame_max)
            except RequestError as exc:
                if exc.req_id is None:
                    self._closing(conn, "undecodable_request", str(exc))
                    return
                self.counters["bad_request"] += 1
                conn.error(exc.req_id, f"bad request: {exc}")
                continue
            self.counters[f"request_{type(request).__name__}"] += 1
            if not self._still_admitted(conn):  # revoked since the handshake
                conn.error(request.req_id, "refused: your TLS key is no longer admitted")
                self._revoked(conn)
                return
            try:
                await self.handler.handle(conn, request)
            except Exception:
                # A bug reached by client input must not take the member down: log it loudly
                # with its traceback, answer the request, keep serving.
                self.counters["internal_error"] += 1
                self.log.exception("internal error serving %s from %s", request, conn.peer)
                conn.error(request.req_id, "internal error (logged by the member)")


async def _tell(stream: trio.abc.SendStream, message: str) -> None:
    """Send [0, "error", message] before closing, best effort (the client may be gone)."""
    try:
        with trio.move_on_after(1):
            await stream.send_all(encode_frames([pack([PUSH, "error", message])]))
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
