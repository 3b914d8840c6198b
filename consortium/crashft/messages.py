"""Raft messages and log entries, and their wire form (Ongaro & Ousterhout 2014, §5 and §6;
Ongaro's thesis §3.10, §6.4, §9.6 for leadership transfer, ReadIndex and PreVote).

Theory of operation
-------------------
Raft mode trusts its members not to lie (docs/raft.md, "Trust model"): peer messages are not signed.
The sender of a message is the member at the other end of the authenticated peer connection,
which the shell passes to the core; no message names its own sender. Every frame is one
canonical msgpack array naming its kind first:

    VOTE          ["vote", term, last_index, last_term, prevote, transfer, epoch]
                  epoch: the candidate's applied configuration epoch (a voter at a later
                  epoch refuses it: crashft/node.py, "Membership")
    VOTE-REPLY    ["vote_reply", term, granted, prevote]
    APPEND        ["append", term, prev_index, prev_term, commit, [entry, ...]]
    APPEND-REPLY  ["append_reply", term, success, index, hint, wall_ms, epoch]
                  success: index is the follower's match; else index is the rejected
                  prev_index and hint the follower's last index (to skip back quickly);
                  wall_ms the sender's wall clock as it sent the reply; epoch the sender's
                  applied configuration epoch (the leader proposes a member change only once
                  a majority of its voters reported its own)
    HEARTBEAT     ["heartbeat", term, commit, ctx]     commit = min(follower's match, commit)
    HEARTBEAT-R   ["heartbeat_reply", term, ctx, wall_ms, recovering, epoch]   ctx confirms
                  leadership for ReadIndex; wall_ms as in APPEND-REPLY (the leader proposes
                  only while its own clock agrees with a majority's: crashft/node.py);
                  recovering: the sender is behind its recovery gate and cannot campaign, so
                  the leader hands leadership to it neither on request nor for its clock;
                  epoch as in APPEND-REPLY
    SNAPSHOT      ["snapshot", term, index, term_at_index, height, block_hash]
                  "entries up to index are compacted: fetch blocks up to height"
    FETCH         ["fetch", term, from_height, to_height]
    BLOCKS        ["blocks", term, [[header, [tx, ...], certificate], ...]]
    TIMEOUT-NOW   ["timeout_now", term, index]         leadership transfer: campaign now, if
                  your log ends at (index, term) and you received that entry moments ago
    FORWARD       ["forward", [tx, ...]]               a follower's client transactions
    READ          ["read", read_id]                    a follower asks the leader for a read index
    READ-REPLY    ["read_reply", read_id, index, ok]
    TERM-QUERY    ["term_query", nonce]                a recovering member asks a peer's term
    TERM-REPORT   ["term_report", nonce, current_term, recovering]   the answer, echoing the
                  asker's fresh nonce (crashft/node.py "Recovery"; `current_term`, not `term`:
                  it moves no one's term); recovering: the answering member is itself behind
                  its recovery gate, its term that of its restored copy, so it does not count

An entry is [term, index, proposed_ms, leader, signature, [tx, ...]] for a batch, or
[term, index] for a no-op (a new leader's first entry, a leadership transfer's marker). A
batch entry carries its leader's signature over (chain id, term, index, batch digest)
(ledger.certificates.raft_entry_body), so every node stores the same certificate beside the
block it becomes.

`decode` checks shape only and raises only WireFormatError; the core decides the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from consortium.crypto.codec import (
    WireFormatError,
    as_bool,
    as_bytes,
    as_int,
    as_list,
    pack,
    unpack_canonical,
)
from consortium.ledger.block import BlockHeader, batch_digest
from consortium.ledger.certificates import RaftEntryCertificate
from consortium.ledger.genesis import Params, full_batch_frame_fix
from consortium.ledger.tx import Transaction, batch_wire_bytes_max, tx_wire_bytes_max

MEMBER_MAX = 1 << 16
NONCE_BYTES = 16  # TERM-QUERY / TERM-REPORT: fresh per recovering start


@dataclass(frozen=True, slots=True)
class Entry:
    term: int
    index: int
    proposed_ms: int = 0
    leader: int = -1  # -1: the no-op of a new leader's term (makes no block)
    signature: bytes = b""
    txs: tuple[Transaction, ...] = ()

    @property
    def is_noop(self) -> bool:
        return self.leader < 0

    @property
    def digest(self) -> bytes:
        return batch_digest(self.proposed_ms, [t.id for t in self.txs])

    @property
    def certificate(self) -> RaftEntryCertificate:
        assert not self.is_noop
        return RaftEntryCertificate(self.term, self.index, self.digest, self.leader, self.signature)

    def to_array(self) -> list[Any]:
        if self.is_noop:
            return [self.term, self.index]
        return [
            self.term,
            self.index,
            self.proposed_ms,
            self.leader,
            self.signature,
            [t.to_array() for t in self.txs],
        ]

    def encode(self) -> bytes:
        return pack(self.to_array())

    @property
    def size(self) -> int:
        return 48 + sum(t.size for t in self.txs)

    @classmethod
    def from_array(cls, v: Any, params: Params) -> Entry:
        a = as_list(v, what="entry")
        if len(a) == 2:
            return cls(as_int(a[0], "entry term"), as_int(a[1], "entry index", lo=1))
        if len(a) != 6:
            raise WireFormatError("entry: expected 2 or 6 fields")
        txs = as_list(a[5], what="entry transactions")
        if len(txs) > params.batch_txs_max:
            raise WireFormatError(f"entry: {len(txs)} transactions exceed batch_txs_max")
        return cls(
            as_int(a[0], "entry term"),
            as_int(a[1], "entry index", lo=1),
            as_int(a[2], "proposed_ms"),
            as_int(a[3], "entry leader", hi=MEMBER_MAX),
            as_bytes(a[4], "entry signature", size=64),
            tuple(Transaction.from_array(t, params) for t in txs),
        )

    @classmethod
    def decode(cls, data: bytes, params: Params) -> Entry:
        return cls.from_array(unpack_canonical(data), params)


@dataclass(frozen=True, slots=True)
class Vote:
    term: int
    last_index: int
    last_term: int
    prevote: bool
    transfer: bool  # a leadership transfer: voters ignore their leader lease
    epoch: int = 0  # the candidate's applied configuration epoch


@dataclass(frozen=True, slots=True)
class VoteReply:
    term: int
    granted: bool
    prevote: bool


@dataclass(frozen=True, slots=True)
class Append:
    term: int
    prev_index: int
    prev_term: int
    commit: int
    entries: tuple[Entry, ...]


@dataclass(frozen=True, slots=True)
class AppendReply:
    term: int
    success: bool
    index: int
    hint: int
    wall_ms: int  # the follower's wall clock when it answered
    epoch: int = 0  # the follower's applied configuration epoch


@dataclass(frozen=True, slots=True)
class Heartbeat:
    term: int
    commit: int
    ctx: int


@dataclass(frozen=True, slots=True)
class HeartbeatReply:
    term: int
    ctx: int
    wall_ms: int  # the follower's wall clock when it answered
    recovering: bool  # behind its recovery gate: it cannot campaign (no transfer to it)
    epoch: int = 0  # the follower's applied configuration epoch


@dataclass(frozen=True, slots=True)
class Snapshot:
    term: int
    index: int
    index_term: int
    height: int
    block_hash: bytes


@dataclass(frozen=True, slots=True)
class Fetch:
    term: int
    from_height: int
    to_height: int


@dataclass(frozen=True, slots=True)
class TransferredBlock:
    header: BlockHeader
    txs: tuple[Transaction, ...]
    certificate: bytes  # RaftEntryCertificate.encode()

    def to_array(self) -> list[Any]:
        return [self.header.to_array(), [t.to_array() for t in self.txs], self.certificate]


@dataclass(frozen=True, slots=True)
class Blocks:
    term: int
    blocks: tuple[TransferredBlock, ...]


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    term: int
    index: int  # the leader's last entry, which the target must hold as its own last


@dataclass(frozen=True, slots=True)
class Forward:
    txs: tuple[Transaction, ...]


@dataclass(frozen=True, slots=True)
class Read:
    read_id: int


@dataclass(frozen=True, slots=True)
class ReadReply:
    read_id: int
    index: int
    ok: bool


@dataclass(frozen=True, slots=True)
class TermQuery:
    nonce: bytes


@dataclass(frozen=True, slots=True)
class TermReport:
    nonce: bytes
    current_term: int
    recovering: bool  # the answering member is recovering too: its term does not count


Message = (
    Vote
    | VoteReply
    | Append
    | AppendReply
    | Heartbeat
    | HeartbeatReply
    | Snapshot
    | Fetch
    | Blocks
    | TimeoutNow
    | Forward
    | Read
    | ReadReply
    | TermQuery
    | TermReport
)

# Messages from a node that thinks it leads `term` (they make the receiver a follower of it).
FROM_LEADER = (Append, Heartbeat, Snapshot, Blocks, TimeoutNow)


def encode(msg: Message) -> bytes:
    match msg:
        case Vote():
            return pack(
                [
                    "vote",
                    msg.term,
                    msg.last_index,
                    msg.last_term,
                    msg.prevote,
                    msg.transfer,
                    msg.epoch,
                ]
            )
        case VoteReply():
            return pack(["vote_reply", msg.term, msg.granted, msg.prevote])
        case Append():
            return pack(
                [
                    "append",
                    msg.term,
                    msg.prev_index,
                    msg.prev_term,
                    msg.commit,
                    [e.to_array() for e in msg.entries],
                ]
            )
        case AppendReply():
            return pack(
                [
                    "append_reply",
                    msg.term,
                    msg.success,
                    msg.index,
                    msg.hint,
                    msg.wall_ms,
                    msg.epoch,
                ]
            )
        case Heartbeat():
            return pack(["heartbeat", msg.term, msg.commit, msg.ctx])
        case HeartbeatReply():
            return pack(
                ["heartbeat_reply", msg.term, msg.ctx, msg.wall_ms, msg.recovering, msg.epoch]
            )
        case Snapshot():
            return pack(
                ["snapshot", msg.term, msg.index, msg.index_term, msg.height, msg.block_hash]
            )
        case Fetch():
            return pack(["fetch", msg.term, msg.from_height, msg.to_height])
        case Blocks():
            return pack(["blocks", msg.term, [b.to_array() for b in msg.blocks]])
        case TimeoutNow():
            return pack(["timeout_now", msg.term, msg.index])
        case Forward():
            return pack(["forward", [t.to_array() for t in msg.txs]])
        case Read():
            return pack(["read", msg.read_id])
        case ReadReply():
            return pack(["read_reply", msg.read_id, msg.index, msg.ok])
        case TermQuery():
            return pack(["term_query", msg.nonce])
        case TermReport():
            return pack(["term_report", msg.nonce, msg.current_term, msg.recovering])
    raise AssertionError(f"not a raft message: {msg!r}")


_SHAPES = {
    "vote": 7,
    "vote_reply": 4,
    "append": 6,
    "append_reply": 7,
    "heartbeat": 4,
    "heartbeat_reply": 6,
    "snapshot": 6,
    "fetch": 4,
    "blocks": 3,
    "timeout_now": 3,
    "forward": 2,
    "read": 2,
    "read_reply": 4,
    "term_query": 2,
    "term_report": 4,
}

ENTRIES_PER_APPEND_MAX = 4096
BLOCKS_PER_REPLY_MAX = 1024


def decode(frame: bytes, params: Params) -> Message:
    """One frame into a message; shape only. Raises only WireFormatError."""
    if len(frame) > params.frame_bytes_max:
        raise WireFormatError(f"frame of {len(frame)} bytes exceeds frame_bytes_max")
    a = as_list(unpack_canonical(frame), what="raft message")
    if not a or not isinstance(a[0], str) or a[0] not in _SHAPES:
        raise WireFormatError(f"unknown raft message kind {str(a[0] if a else None)[:24]!r}")
    kind = a[0]
    if len(a) != _SHAPES[kind]:
        raise WireFormatError(f"{kind}: expected {_SHAPES[kind]} fields, got {len(a)}")
    match kind:
        case "vote":
            return Vote(
                as_int(a[1], "term"),
                as_int(a[2], "last_index"),
                as_int(a[3], "last_term"),
                as_bool(a[4], "prevote"),
                as_bool(a[5], "transfer"),
                as_int(a[6], "epoch"),
            )
        case "vote_reply":
            return VoteReply(
                as_int(a[1], "term"), as_bool(a[2], "granted"), as_bool(a[3], "prevote")
            )
        case "append":
            raw = as_list(a[5], what="entries")
            if len(raw) > ENTRIES_PER_APPEND_MAX:
                raise WireFormatError(f"append: {len(raw)} entries exceed {ENTRIES_PER_APPEND_MAX}")
            entries = tuple(Entry.from_array(e, params) for e in raw)
            prev = as_int(a[2], "prev_index")
            for k, e in enumerate(entries):
                if e.index != prev + 1 + k:
                    raise WireFormatError("append: entry indexes are not consecutive")
            return Append(
                as_int(a[1], "term"),
                prev,
                as_int(a[3], "prev_term"),
                as_int(a[4], "commit"),
                entries,
            )
        case "append_reply":
            return AppendReply(
                as_int(a[1], "term"),
                as_bool(a[2], "success"),
                as_int(a[3], "index"),
                as_int(a[4], "hint"),
                as_int(a[5], "wall_ms"),
                as_int(a[6], "epoch"),
            )
        case "heartbeat":
            return Heartbeat(as_int(a[1], "term"), as_int(a[2], "commit"), as_int(a[3], "ctx"))
        case "heartbeat_reply":
            return HeartbeatReply(
                as_int(a[1], "term"),
                as_int(a[2], "ctx"),
                as_int(a[3], "wall_ms"),
                as_bool(a[4], "recovering"),
                as_int(a[5], "epoch"),
            )
        case "snapshot":
            return Snapshot(
                as_int(a[1], "term"),
                as_int(a[2], "index"),
                as_int(a[3], "index_term"),
                as_int(a[4], "height"),
                as_bytes(a[5], "block_hash", size=32),
            )
        case "fetch":
            return Fetch(
                as_int(a[1], "term"), as_int(a[2], "from_height", lo=1), as_int(a[3], "to_height")
            )
        case "blocks":
            raw = as_list(a[2], what="blocks")
            if len(raw) > BLOCKS_PER_REPLY_MAX:
                raise WireFormatError(f"blocks: {len(raw)} blocks exceed {BLOCKS_PER_REPLY_MAX}")
            blocks = []
            for b in raw:
                item = as_list(b, 3, "transferred block")
                txs = as_list(item[1], what="block transactions")
                if len(txs) > params.batch_txs_max:
                    raise WireFormatError("transferred block: too many transactions")
                blocks.append(
                    TransferredBlock(
                        BlockHeader.from_array(item[0]),
                        tuple(Transaction.from_array(t, params) for t in txs),
                        as_bytes(item[2], "certificate", max_len=256),
                    )
                )
            return Blocks(as_int(a[1], "term"), tuple(blocks))
        case "timeout_now":
            return TimeoutNow(as_int(a[1], "term"), as_int(a[2], "index"))
        case "forward":
            raw = as_list(a[1], what="forwarded transactions")
            if len(raw) > ENTRIES_PER_APPEND_MAX:
                raise WireFormatError("forward: too many transactions")
            return Forward(tuple(Transaction.from_array(t, params) for t in raw))
        case "read":
            return Read(as_int(a[1], "read_id"))
        case "read_reply":
            return ReadReply(as_int(a[1], "read_id"), as_int(a[2], "index"), as_bool(a[3], "ok"))
        case "term_query":
            return TermQuery(as_bytes(a[1], "nonce", size=NONCE_BYTES))
        case "term_report":
            return TermReport(
                as_bytes(a[1], "nonce", size=NONCE_BYTES),
                as_int(a[2], "term"),
                as_bool(a[3], "recovering"),
            )
    raise AssertionError(kind)


def worst_case_frames(params: Params) -> dict[str, int]:
    """The largest frame of each kind a raft member may have to send, whatever the others
    do, computed from the real encodings with every integer at its largest: an APPEND carrying
    one entry of a full batch (a leader sends at least one entry), a BLOCKS answer carrying one
    full block (at least one), a FORWARD of the largest transaction. decode() refuses any
    frame above params.frame_bytes_max, and so does the transport."""
    top, digest = 2**63 - 1, bytes(32)
    batch = batch_wire_bytes_max(params)
    entry = Entry(top, top, top, MEMBER_MAX, bytes(64), ())
    header = BlockHeader(digest, top, digest, top, digest, digest, digest, ("raft", top, top, top))
    block = TransferredBlock(header, (), bytes(256))  # a certificate decodes at 256 bytes at most
    return {
        # (each with its empty transaction array, one byte, made full)
        "APPEND": len(encode(Append(top, top, top, top, (entry,)))) - 1 + batch,
        "BLOCKS": len(encode(Blocks(top, (block,)))) - 1 + batch,
        "FORWARD": len(encode(Forward(()))) + tx_wire_bytes_max(params),
    }


def frame_size_problem(params: Params) -> str | None:
    """Why raft members with these parameters could not exchange every message they must, if
    they could not (the worst-case frames above against params.frame_bytes_max); None when they
    can. Found in review: a frame limit below one legal batch halted the cluster for good.
    node/genesis.py asks it of every raft genesis."""
    frame_max = params.frame_bytes_max
    sizes = worst_case_frames(params)
    for kind, what in (("APPEND", "an entry of a full batch"), ("BLOCKS", "a full block")):
        size = sizes[kind]
        if size > frame_max:
            return (
                f"a raft {kind} carrying {what} can take {size:,} bytes, more than "
                f"params.frame_bytes_max ({frame_max:,}), which halts the cluster for "
                "good: " + full_batch_frame_fix(size)
            )
    if sizes["FORWARD"] > frame_max:
        return (
            f"a raft FORWARD of the largest transaction can take {sizes['FORWARD']:,} "
            f"bytes, more than params.frame_bytes_max ({frame_max:,}): raise "
            "params.frame_bytes_max or lower params.tx_bytes_max"
        )
    return None
