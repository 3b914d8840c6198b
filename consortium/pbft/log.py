"""The message log of a PBFT replica: one slot per sequence number inside the window, a bounded
tail of recently garbage-collected slots, and a bounded buffer of messages that arrived early
(Castro & Liskov, OSDI 1999 §4.2 "the log", §4.3 "watermarks"; TOCS 2002 §2.3.4).

Theory of operation
-------------------
- The window is (h, h+L]: h is the low watermark (the stable checkpoint), L = params.window.
  A replica accepts PRE-PREPARE, PREPARE and COMMIT only for sequence numbers inside it, so the
  log holds at most L slots, each with at most one PRE-PREPARE and one PREPARE and one COMMIT
  per member (the first one received; a second one is a duplicate or a conflicting vote).
- PREPAREs and COMMITs may arrive before the PRE-PREPARE (the network reorders): they wait in
  their slot and are counted once the PRE-PREPARE arrives and fixes the digest.
- A slot keeps the exact frames of this replica's own votes, so retransmission re-sends the very
  same bytes (a replica never signs two different votes for one (view, seq)).
- When a checkpoint becomes stable, slots at or below the new h leave the window. Deviation
  from the paper, which discards them: the last L of them stay in a tail, read-only, so this
  replica can still re-send its own votes to a peer that lost messages and has not yet shown
  (by a CHECKPOINT) that it executed them. Without the tail such a peer would need state
  transfer (pbft/transfer.py); with it, a peer that lags by less than L sequence numbers
  catches up by retransmission alone. The tail is bounded by L like the window, and keeps no
  decoded batches (only the primary's own PRE-PREPARE frames carry one), so memory is bounded
  by about 2L batches for the primary and L for a backup.
- Messages for a sequence number above h+L, or for a higher view, are kept in a per-sender
  buffer bounded in count and bytes (a member can only fill its own quota) and re-fed when the
  window moves (the view-change issue will re-feed future views on entering them).

Invariants: every slot in the window has h < seq <= h+L; every tail slot has h-L < seq <= h;
committed_local implies prepared; prepared implies a PRE-PREPARE.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

from consortium.ledger.certificates import CommitCertificate
from consortium.pbft import rules
from consortium.pbft.messages import Commit, Prepare, PrePrepare

Buffered = PrePrepare | Prepare | Commit


@dataclass(slots=True)
class Slot:
    """Everything this replica knows about one sequence number in the current view."""

    seq: int
    view: int
    preprepare: PrePrepare | None = None
    prepares: dict[int, Prepare] = field(default_factory=dict)  # first PREPARE per backup
    commits: dict[int, Commit] = field(default_factory=dict)  # first COMMIT per member
    prepared: bool = False
    committed_local: bool = False
    prepare_withheld: bool = False  # the proposed timestamp was outside our skew
    # Our wall clock when we accepted a fresh PRE-PREPARE from another member before any other
    # member's vote for it, and our monotonic clock then: once the batch commits, our clock's
    # offset from a time a quorum accepted (ledger.clock.ClockOffset), if it prepared here
    # within an interval (pbft/replica.py, _sample_clock).
    accepted_wall_ms: int | None = None
    accepted_mono_ms: int = 0
    reissued: PrePrepare | None = None  # a NEW-VIEW's PRE-PREPARE, waiting for its batch
    redo: bool = False  # re-issued by a NEW-VIEW at or below what we already committed
    certificate: CommitCertificate | None = None
    own_preprepare: bytes | None = None  # frames of our own messages, re-sent verbatim
    own_prepare: bytes | None = None
    own_commit: bytes | None = None
    record_keys: list[bytes] = field(default_factory=list)  # what to delete when collected
    sent_ms: int = 0  # when we last sent an own message for this slot
    retransmit_at_ms: int | None = None
    retransmit_backoff: int = 1
    nudged_ms: dict[int, int] = field(default_factory=dict)  # peer -> gap-triggered resend

    def matching(self, votes: dict[int, Prepare] | dict[int, Commit]) -> list[int]:
        """Senders of the votes that match the accepted PRE-PREPARE, in member order."""
        pp = self.preprepare
        if pp is None:
            return []
        return rules.matching(pp, votes)

    def latest_own(self) -> bytes | None:
        """Our most advanced vote for this slot."""
        return self.own_commit or self.own_prepare or self.own_preprepare

    def frames_for(self, peer: int, primary: int) -> list[bytes]:
        """Our own frames a peer may still need, judged from the votes it sent us: a PREPARE
        shows it has the PRE-PREPARE, a COMMIT shows it prepared."""
        prepared = peer in self.commits
        has_preprepare = prepared or peer == primary or peer in self.prepares
        out: list[bytes] = []
        if self.own_preprepare is not None and not has_preprepare:
            out.append(self.own_preprepare)
        if self.own_prepare is not None and not prepared:
            out.append(self.own_prepare)
        if self.own_commit is not None:
            out.append(self.own_commit)
        return out


class MessageLog:
    def __init__(self, window: int) -> None:
        assert window > 0
        self.window = window
        self.low = 0
        self._slots: dict[int, Slot] = {}
        self._tail: dict[int, Slot] = {}

    @property
    def high(self) -> int:
        return self.low + self.window

    def in_window(self, seq: int) -> bool:
        return self.low < seq <= self.high

    def get(self, seq: int) -> Slot | None:
        return self._slots.get(seq)

    def slot(self, seq: int, view: int) -> Slot:
        assert self.in_window(seq), f"slot {seq} outside ({self.low}, {self.high}]"
        slot = self._slots.get(seq)
        if slot is None:
            slot = self._slots[seq] = Slot(seq, view)
        assert slot.view == view, "one view per slot until view change resets the log"
        return slot

    def advance(self, low: int) -> list[Slot]:
        """Move h to `low`: slots at or below it leave the window for the tail, and the tail
        keeps only the last L of them. Returns the slots that left the window."""
        assert low >= self.low
        self.low = low
        moved = [self._slots.pop(s) for s in sorted(s for s in self._slots if s <= low)]
        for slot in moved:
            # The tail only re-sends our own frames: the decoded batch is no longer needed.
            if slot.preprepare is not None:
                slot.preprepare = replace(slot.preprepare, txs=())
            self._tail[slot.seq] = slot
        for s in [s for s in self._tail if s <= low - self.window]:
            del self._tail[s]
        return moved

    def reset(self) -> list[Slot]:
        """A new view: every slot of the old one leaves (the window and the tail); returns the
        window's. Prepared certificates outlive this (pbft/replica.py keeps them)."""
        dropped = self.window_slots()
        self._slots.clear()
        self._tail.clear()
        return dropped

    def retained_slot(self, seq: int) -> Slot | None:
        if seq <= self.low:
            return self._tail.get(seq)
        return self._slots.get(seq)

    def retained(self) -> Iterator[Slot]:
        """Tail and window slots in sequence order (for retransmission)."""
        for seq in sorted(self._tail):
            if seq > self.low - self.window:
                yield self._tail[seq]
        for seq in sorted(self._slots):
            if seq <= self.high:
                yield self._slots[seq]

    def window_slots(self) -> list[Slot]:
        return [self._slots[s] for s in sorted(self._slots)]

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def tail_len(self) -> int:
        return len(self._tail)

    def check(self) -> None:
        assert len(self._slots) <= self.window
        assert len(self._tail) <= self.window
        for seq, slot in self._slots.items():
            assert slot.seq == seq
            assert self.low < seq <= self.high
            if slot.committed_local:
                assert slot.prepared
            if slot.prepared:
                assert slot.preprepare is not None
            if slot.preprepare is not None:
                assert slot.preprepare.seq == seq
        for seq in self._tail:
            assert self.low - self.window < seq <= self.low


def wire_bytes(msg: Buffered) -> int:
    size = len(msg.body) + len(msg.signature)
    if isinstance(msg, PrePrepare):
        size += msg.batch_bytes
    return size


class FutureBuffer:
    """Messages that arrived ahead of this replica (above the window, or for a higher view),
    bounded per sender in count and bytes. Order: sender, then arrival."""

    def __init__(self, ids: Iterable[int], messages_max: int, bytes_max: int) -> None:
        self.messages_max = messages_max
        self.bytes_max = bytes_max
        self._queues: dict[int, deque[Buffered]] = {i: deque() for i in ids}  # by member id
        self._bytes = dict.fromkeys(self._queues, 0)

    def add(self, sender: int, msg: Buffered) -> bool:
        size = wire_bytes(msg)
        queue = self._queues[sender]
        if len(queue) >= self.messages_max or self._bytes[sender] + size > self.bytes_max:
            return False
        queue.append(msg)
        self._bytes[sender] += size
        return True

    def drain(self, view: int) -> list[tuple[int, Buffered]]:
        """Remove and return the messages of `view`; those of older views are dropped."""
        out: list[tuple[int, Buffered]] = []
        for sender, queue in self._queues.items():
            keep: deque[Buffered] = deque()
            for msg in queue:
                if msg.view > view:
                    keep.append(msg)
                    continue
                self._bytes[sender] -= wire_bytes(msg)
                if msg.view == view:
                    out.append((sender, msg))
            self._queues[sender] = keep
        return out

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def check(self) -> None:
        for sender, queue in self._queues.items():
            size = self._bytes[sender]
            assert len(queue) <= self.messages_max
            assert size <= self.bytes_max
