"""Checkpoint votes and stable checkpoints (Castro & Liskov, OSDI 1999 §4.3; TOCS 2002 §2.3.4).

Theory of operation
-------------------
- After executing a sequence number that is a multiple of K (params.checkpoint_interval), a
  replica signs CHECKPOINT(seq, block hash) and multicasts it. Block hashes are what honest
  replicas compute identically (the view never enters a block), so matching votes mean
  matching ledgers up to seq.
- Q matching CHECKPOINTs from distinct members make the checkpoint stable: at least f+1 of them
  are honest, so the state is certified. They form the CheckpointCertificate, stored beside the
  blocks and checkable offline (ledger.certificates).
- A replica adopts a stable checkpoint at once, moving h and collecting its log, whether or not
  it has executed up to it (pbft/replica.py _stabilize). A quorum certifying a sequence number
  it has not executed means it fell behind: it fetches the blocks up to h by state transfer,
  each checked by its own commit certificate, and compares the block hash when it executes the
  checkpoint's sequence number. A certificate (from Q CHECKPOINTs, a peer's BLOCKS or a
  NEW-VIEW) for a hash other than the one this replica signed or executed at that sequence
  number is never adopted: its execution diverged (counted as checkpoint_mismatch).
- One vote per member per sequence number counts (the first); a second with the same hash is a
  duplicate, with another hash a conflicting vote. Since each member counts once and n < 2Q,
  at most one block hash can reach a quorum for a sequence number.
- Votes are kept only for sequence numbers in the window (h, h+L], so at most n*L/K of them.
  This replica's own votes are also kept for the last L sequence numbers below h, to answer a
  peer that still votes for a checkpoint that is stable here (it lost the other votes).
"""

from __future__ import annotations

from consortium.ledger.certificates import CheckpointCertificate
from consortium.pbft import reasons as drop
from consortium.pbft.messages import Checkpoint


class CheckpointVotes:
    def __init__(self, me: int) -> None:
        self.me = me
        self._votes: dict[int, dict[int, Checkpoint]] = {}  # seq -> member -> first vote
        self._own: dict[int, Checkpoint] = {}

    def add(self, vote: Checkpoint) -> drop.Reason | None:
        """Count a verified vote; returns the reason it does not count, if it does not."""
        votes = self._votes.setdefault(vote.seq, {})
        earlier = votes.get(vote.sender)
        if earlier is not None:
            same = earlier.block_hash == vote.block_hash
            return drop.DUPLICATE if same else drop.CONFLICTING_VOTE
        votes[vote.sender] = vote
        if vote.sender == self.me:
            self._own[vote.seq] = vote
        return None

    def own(self, seq: int) -> Checkpoint | None:
        return self._own.get(seq)

    def latest_own(self) -> Checkpoint | None:
        return self._own[max(self._own)] if self._own else None

    def count(self, seq: int, block_hash: bytes) -> int:
        return sum(1 for v in self._votes.get(seq, {}).values() if v.block_hash == block_hash)

    def quorum_hash(self, seq: int, quorum: int) -> bytes | None:
        """The block hash Q distinct members signed for seq, if any."""
        tally: dict[bytes, int] = {}
        for vote in self._votes.get(seq, {}).values():
            tally[vote.block_hash] = tally.get(vote.block_hash, 0) + 1
        winners = sorted(h for h, k in tally.items() if k >= quorum)
        return winners[0] if winners else None

    def certificate(self, seq: int, block_hash: bytes, quorum: int) -> CheckpointCertificate:
        votes = self._votes[seq]
        senders = sorted(s for s, v in votes.items() if v.block_hash == block_hash)
        assert len(senders) >= quorum
        return CheckpointCertificate(
            seq, block_hash, tuple(votes[s].vote() for s in senders[:quorum])
        )

    def collect(self, low: int, window: int) -> list[int]:
        """Forget votes at or below the new low watermark, keeping our own for the last L
        sequence numbers; returns the sequence numbers of own votes no longer needed on disk
        (those below h: the stable certificate at h covers them)."""
        for seq in [s for s in self._votes if s <= low]:
            del self._votes[seq]
        for seq in [s for s in self._own if s <= low - window]:
            del self._own[seq]
        return sorted(s for s in self._own if s < low)

    def check(self, low: int, high: int, window: int) -> None:
        for seq, votes in self._votes.items():
            assert low < seq <= high
            for sender, vote in votes.items():
                assert vote.sender == sender
                assert vote.seq == seq
        for seq in self._own:
            assert low - window < seq
