"""Following committed blocks as a stream (ConsortiumClient.follow).

The client asks members to "follow" from a height (protocol/messages.py, "Follow") and yields
each block once, in height order, when it can vouch for it:

- pbft (up to f members may lie): it follows EVERY connected member and yields the block at
  height h only when f+1 distinct members sent that block with the same header hash, each with
  its own valid block signature over it; so at least one honest member executed exactly this
  block. The receipts and transaction ids of the one copy kept are checked against the header's
  Merkle roots (any other member's copy then only needs its signature over the same hash).
- raft (crash faults only): it follows ONE member (another when that one fails) and yields
  each block that member signed and whose roots check: the members are trusted not to lie, the
  signature makes the block attributable.
- both: each block's prev_hash must be the hash of the block yielded before it, or the
  iterator raises ClientError (more faults than the network tolerates). The first block yielded
  is not linked to anything before it: pass its height's predecessor yourself when it matters.

Bounds: each member stream has at most `credit` blocks granted (limits.FOLLOW_CREDIT_MAX), and
more is granted only while that member is at most `credit` blocks ahead of the next height to
yield, so the client holds at most about 2 x credit blocks per member whatever the members
send; a member sending beyond its credit or out of order is dropped from this follow. A member
that disconnects or ends its stream is asked again from the next height to yield, at most every
RESTART_S, and everything it sent before is forgotten first (its votes, and the candidates only
it vouched for): it sends those heights again, and a lying member that restarts with another
fork each time cannot add to what is held. With fewer than f+1 members answering, the
iterator waits (wrap it in a timeout).

A follow reaches the members through a `FollowLink`, which the client provides: its
connections, its request ids, and the routing of each stream's frames to the stream. The
follow knows nothing else of the client.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import trio

from consortium.client.errors import ClientError
from consortium.crypto.merkle import MerkleTree
from consortium.crypto.signing import Verifier
from consortium.ledger.block import BlockHeader, Receipt
from consortium.ledger.certificates import SignedVote
from consortium.ledger.genesis import Genesis
from consortium.protocol.limits import FOLLOW_CREDIT_MAX
from consortium.protocol.receipts import ReceiptProof
from consortium.protocol.verify import FollowedBlock, verify_block_signature
from consortium.protocol.verify import verify_followed as verify_followed_block

RESTART_S = 0.5
CREDIT_DEFAULT = 64


@dataclass(frozen=True, slots=True)
class CommittedBlock:
    """A block the follower vouches for (see the module docstring): its header and hash, its
    receipts (one per transaction, in order; receipt.tx_id is the transaction id), and the
    block signatures of the members that sent it (`signers`, member indices)."""

    header: BlockHeader
    block_hash: bytes
    receipts: tuple[Receipt, ...]
    signatures: tuple[SignedVote, ...]
    signers: tuple[int, ...]

    @property
    def height(self) -> int:
        return self.header.height

    @property
    def tx_ids(self) -> list[bytes]:
        return [r.tx_id for r in self.receipts]

    def receipt_proof(self, index: int) -> ReceiptProof:
        """The receipt document of the transaction at `index` (protocol/receipts.py), signed by
        the members that vouched for this block."""
        tree = MerkleTree([r.encode() for r in self.receipts])
        return ReceiptProof(
            self.receipts[index], tuple(tree.proof(index)), tree.size, self.header, self.signatures
        )


@dataclass(eq=False)
class FollowStream:
    """One member's stream of one follow, fed by the client's frame dispatch."""

    member: int
    follow_id: int
    next_height: int  # the height this member must send next
    granted: int  # blocks it may still send
    connection: int  # the member's connection count when started (a reconnect ends it)
    wake: Callable[[], None]
    blocks: deque[FollowedBlock] = field(default_factory=deque)
    ended: str = ""

    def receive(self, block: FollowedBlock) -> None:
        if self.ended:
            return
        if self.granted <= 0:
            self.ended = "sent blocks beyond its credit"
        else:
            self.granted -= 1
            self.blocks.append(block)
        self.wake()

    def end(self, why: str) -> None:
        self.ended = self.ended or why
        self.wake()


class FollowLink(Protocol):
    """What a follow needs of the client (ConsortiumClient provides one)."""

    @property
    def genesis(self) -> Genesis: ...

    @property
    def verifier(self) -> Verifier: ...

    @property
    def confirmations_needed(self) -> int:
        """Members that must send the same block: f+1 in pbft, 1 in raft."""
        ...

    @property
    def counters(self) -> Counter[str]: ...

    def members(self) -> Sequence[int]:
        """Every member the client has an address for, in index order."""
        ...

    def connection(self, member: int) -> int | None:
        """Which connection to `member` is up (a count that a reconnect changes), or None
        while it is down."""
        ...

    def send(self, member: int, message: list[object]) -> bool:
        """Queue a request for `member`; False when it cannot take it now."""
        ...

    def next_req_id(self) -> int: ...

    def route(self, stream: FollowStream) -> None:
        """From now on, hand `stream.member`'s frames for `stream.follow_id` to `stream`."""
        ...

    def unroute(self, follow_id: int) -> None: ...


@dataclass
class _Candidate:
    block: FollowedBlock  # the copy whose roots were checked
    votes: dict[int, SignedVote]


class Follower:
    """One follow, step by step: `tend` starts and feeds the member streams, `decided` hands
    out the next block once enough members vouch for it, `close` ends the streams."""

    def __init__(self, link: FollowLink, from_height: int, credit: int) -> None:
        if not 1 <= credit <= FOLLOW_CREDIT_MAX:
            raise ValueError(f"credit must be 1..{FOLLOW_CREDIT_MAX}")
        self.link = link
        self.credit = credit
        self.next_height = from_height
        self.prev_hash: bytes | None = None
        self.needed = link.confirmations_needed
        self.streams: dict[int, FollowStream] = {}  # member -> its current stream
        self.retry_at: dict[int, float] = {}
        self.pending: dict[int, dict[bytes, _Candidate]] = {}
        self.problems: dict[int, str] = {}  # member -> why its last stream ended
        self.event = trio.Event()

    def _wake(self) -> None:
        self.event.set()

    def _drop(self, stream: FollowStream, why: str) -> None:
        link = self.link
        self._forget_votes(stream.member)
        link.unroute(stream.follow_id)
        if self.streams.get(stream.member) is stream:
            del self.streams[stream.member]
        self.problems[stream.member] = why
        if link.connection(stream.member) is not None:
            link.send(stream.member, ["unfollow", link.next_req_id(), stream.follow_id])

    def _forget_votes(self, member: int) -> None:
        """`member`'s votes on undecided heights, and candidates no one else vouched for."""
        for height in list(self.pending):
            candidates = self.pending[height]
            for block_hash in list(candidates):
                votes = candidates[block_hash].votes
                votes.pop(member, None)
                if not votes:
                    del candidates[block_hash]
            if not candidates:
                del self.pending[height]

    def tend(self) -> None:
        """Start, restart and top up member streams; take in what they sent."""
        link = self.link
        now = trio.current_time()
        pbft = link.genesis.mode == "pbft"
        for index in link.members():
            connection = link.connection(index)
            stream = self.streams.get(index)
            if stream is not None and (stream.ended or connection != stream.connection):
                self._drop(stream, stream.ended or "disconnected")
                stream = None
            if stream is None:
                if connection is None or now < self.retry_at.get(index, 0.0):
                    continue
                if not pbft and self.streams:
                    continue  # raft: one member's stream is enough
                follow_id = link.next_req_id()
                self.retry_at[index] = now + RESTART_S
                if not link.send(index, ["follow", follow_id, self.next_height, self.credit]):
                    continue
                stream = FollowStream(
                    index, follow_id, self.next_height, self.credit, connection, self._wake
                )
                self.streams[index] = stream
                link.route(stream)
        # Take what the members sent BEFORE judging their credit: a block still queued has
        # been sent but has not moved the stream's next_height yet, so credit granted before
        # taking it was granted for it a second time (under load, blocks queue up between two
        # tends and a member ran past its bound).
        for stream in list(self.streams.values()):
            self._take(stream)
        for stream in list(self.streams.values()):
            if (
                stream.granted < self.credit // 2 + 1
                and stream.next_height < self.next_height + self.credit
            ):
                more = self.credit - stream.granted
                if more > 0 and link.send(
                    stream.member, ["credit", link.next_req_id(), stream.follow_id, more]
                ):
                    stream.granted += more

    def _take(self, stream: FollowStream) -> None:
        link = self.link
        while stream.blocks and not stream.ended:
            block = stream.blocks.popleft()
            height = block.header.height
            if height != stream.next_height:
                stream.ended = f"sent block {height} when {stream.next_height} was due"
                break
            stream.next_height += 1
            if height < self.next_height:
                continue  # yielded already
            block_hash = block.header.hash
            candidates = self.pending.setdefault(height, {})
            candidate = candidates.get(block_hash)
            if candidate is None:
                wrong = verify_followed_block(block, link.genesis, link.verifier, stream.member)
            else:
                wrong = verify_block_signature(
                    block.signature,
                    height,
                    block_hash,
                    link.genesis,
                    link.verifier,
                    stream.member,
                )
            if wrong is not None:
                link.counters["follow_invalid"] += 1
                stream.ended = wrong
                break
            if candidate is None:
                candidate = candidates[block_hash] = _Candidate(block, {})
            candidate.votes[stream.member] = block.signature
        if stream.ended:
            self._drop(stream, stream.ended)

    def decided(self) -> CommittedBlock | None:
        """The block at next_height once enough members vouch for it; None until then."""
        candidates = self.pending.get(self.next_height, {})
        for block_hash, candidate in candidates.items():
            if len(candidate.votes) < self.needed:
                continue
            header = candidate.block.header
            if self.prev_hash is not None and header.prev_hash != self.prev_hash:
                raise ClientError(
                    f"block {header.height} ({block_hash.hex()[:16]}…) does not link to block "
                    f"{header.height - 1} ({self.prev_hash.hex()[:16]}…), although "
                    f"{len(candidate.votes)} members signed it: more faults than tolerated"
                )
            del self.pending[self.next_height]
            self.next_height += 1
            self.prev_hash = block_hash
            signers = tuple(sorted(candidate.votes))
            return CommittedBlock(
                header,
                block_hash,
                candidate.block.receipts,
                tuple(candidate.votes[s] for s in signers),
                signers,
            )
        return None

    def close(self) -> None:
        for stream in list(self.streams.values()):
            self._drop(stream, "closed")


async def follow(
    link: FollowLink, from_height: int, credit: int = CREDIT_DEFAULT
) -> AsyncGenerator[CommittedBlock, None]:
    """The blocks of a follow from `from_height` on, forever (ConsortiumClient.follow)."""
    follower = Follower(link, from_height, credit)
    try:
        while True:
            follower.tend()
            block = follower.decided()
            if block is not None:
                yield block
                continue
            follower.event = trio.Event()
            with trio.move_on_after(RESTART_S):
                await follower.event.wait()
    finally:
        follower.close()
