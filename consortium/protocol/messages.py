"""The client protocol's messages: requests, replies, pushes, and their encodings.

Same framing as between members (4-byte length, one msgpack value: framing.py), on a separate
port that never carries peer messages. Every value is a canonical msgpack array (our codec has
no maps, so status travels as a JSON string). The member's side of the port (connections,
queues, TLS) is node/client_port.py; the proofs inside these messages (bundles, signed reads,
followed blocks) and their checks are verify.py; the shared limits are limits.py.

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
why] (both are the member's: node/client_port.py). A connection has at most
FOLLOWS_PER_CONNECTION_MAX follows. `verify_followed` checks a block as one member sent it
(verify.py); a client agrees on it with others (client/follow.py).

Frames must be canonical msgpack (one encoding per value); a request that is not gets an error
reply when its req_id can be read. Decoders raise only WireFormatError.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from consortium.crypto.codec import (
    WireFormatError,
    as_bytes,
    as_int,
    as_list,
    as_str,
    pack,
    unpack,
    unpack_canonical,
)
from consortium.crypto.merkle import MerkleTree
from consortium.ledger.admission import PendingChange
from consortium.ledger.block import BlockHeader, Receipt
from consortium.ledger.certificates import SignedVote
from consortium.protocol.limits import (
    FOLLOW_CREDIT_MAX,
    KEY_BYTES_MAX,
    MESSAGE_CHARS_MAX,
    METHOD_CHARS_MAX,
    PROOF_HASHES_MAX,
    TRANSFER_NONCE_BYTES,
    TX_IDS_PER_REQUEST_MAX,
    TXS_PER_REQUEST_MAX,
)
from consortium.protocol.verify import Bundle, FollowedBlock

PUSH = 0  # the req_id of server pushes


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
        unpack_canonical(frame)  # one encoding per value, as on every port (docs/protocol.md)
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


def encode_block_receipts(
    header: BlockHeader, signature: SignedVote, tree: MerkleTree, receipts: Sequence[Receipt]
) -> bytes:
    """The "receipts" push of `receipts` (all from the block `header` heads, whose receipts
    make `tree`)."""
    entries = [[r.to_array(), tree.proof(r.index)] for r in receipts]
    return pack([PUSH, "receipts", [header.to_array(), signature.to_array(), tree.size, entries]])


Response = OkReply | ErrorReply | ReceiptPush | BlockReceipts | FollowedBlock


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
