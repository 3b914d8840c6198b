"""Recovery from message loss by retransmission (Castro & Liskov, OSDI 1999 §4.2 leaves loss to
retransmission; Castro's implementation, TOCS 2002 §5.2, retransmits on timers and on what
peers' messages reveal about their state). Until view change and state transfer exist this is
the only recovery path, and it uses only the four protocol messages: a replica only ever
re-sends the exact frames it signed before.

Theory of operation
-------------------
What a peer lacks is judged from what it sent us, never asked for explicitly:
    a PREPARE from it for a slot   it has the PRE-PREPARE;
    a COMMIT from it               it is prepared;
    a CHECKPOINT(c) from it        it executed every slot <= c: it needs nothing there.
For a peer, `frames_for` (pbft/log.py) is our PRE-PREPARE (primary) unless it showed the
PRE-PREPARE, our PREPARE unless it showed it is prepared, and our COMMIT.

Four triggers, each bounded:
1. Slot timer. Every slot whose own frames were sent re-sends after retransmit_ms (default
   params.request_timeout_ms // 4), doubling per attempt up to 8x, reset whenever a new own
   frame is sent for the slot: to each peer without a CHECKPOINT covering the slot, what it
   may lack, except, once the slot is committed here, to peers that sent us their COMMIT
   (they are prepared; if they lack COMMITs, their own timer re-sends their vote and trigger
   3 answers it); while the slot is not committed here, also our latest vote to the others,
   as a request. The timer stops when nobody is left to send to. Our latest CHECKPOINT is
   re-broadcast on the same schedule until it is stable.
2. Gaps. A message from a peer for seq s' while it has sent no COMMIT for an older slot s
   (that we sent our frames for at least half an interval ago) means it lost something at
   s: re-send what it may lack there now (TCP's fast retransmit). Once per half interval per
   (slot, peer).
3. Repeats. A peer that sends a vote again is re-sending, so the slot is not committed there;
   if it is committed here, answer with what it may lack. A repeated CHECKPOINT(c) (the first
   copy of a stale one is merely late) means the peer is stuck at or after c: answer with our
   votes for c and for our h (so it can make them stable) and fill the gaps above c.
4. Behind. When execution is blocked at seq while later slots committed, or messages arrive
   above our window, our timers may have backed off during a partition: at most once per half
   interval, re-send our votes for the blocked slot and probe with our latest CHECKPOINT
   (before the first one, our lowest vote); the peers' triggers 2 and 3 do the rest.

Slots just below h stay in a read-only tail of L (pbft/log.py) so a peer that lags by less
than L still gets what it lacks; one that lags by more catches up by state transfer
(pbft/transfer.py).
Nothing here changes protocol state: it only chooses which own frames to send to whom.
"""

from __future__ import annotations

from consortium.pbft.checkpoint import CheckpointVotes
from consortium.pbft.effects import Outbound
from consortium.pbft.log import MessageLog, Slot
from consortium.pbft.messages import encode

BACKOFF_MAX = 8
_LONG_AGO = -(2**62)
_NEVER = 2**62


class Retransmitter:
    def __init__(
        self,
        ids: tuple[int, ...],
        me: int,
        retransmit_ms: int,
        log: MessageLog,
        checkpoints: CheckpointVotes,
    ) -> None:
        assert retransmit_ms > 0
        self.ids = ids  # the voters' member ids
        self.me = me
        self.retransmit_ms = retransmit_ms
        self._settle_ms = retransmit_ms // 2
        self._log = log
        self._checkpoints = checkpoints
        self.peer_executed = dict.fromkeys(ids, 0)  # highest seq each peer showed it executed
        self._replies: dict[int, int] = {}  # peer -> checkpoint seq it repeated
        self._replied_ms = dict.fromkeys(ids, _LONG_AGO)
        self._checkpoint_due_ms: int | None = None
        self._next_due_ms = _NEVER  # no slot's retransmit_at_ms is earlier
        self._checkpoint_backoff = 1
        self._behind_ms = _LONG_AGO
        self._blocked_seq = 0  # where execution was first seen blocked, and since when
        self._blocked_since_ms = 0
        # peer -> (origin, seq, slot): see fill_gaps
        self._cleared: dict[int, tuple[int, int, Slot]] = {}

    # --- bookkeeping from the replica -------------------------------------------------------

    def executed_by(self, peer: int, seq: int) -> None:
        self.peer_executed[peer] = max(self.peer_executed[peer], seq)

    def own_sent(self, slot: Slot, now_ms: int) -> None:
        slot.sent_ms = now_ms
        slot.retransmit_at_ms = now_ms + self.retransmit_ms
        slot.retransmit_backoff = 1
        self._next_due_ms = min(self._next_due_ms, slot.retransmit_at_ms)

    def resend_soon(self, slot: Slot) -> None:
        """Re-send the slot's own frames on the next tick (after a restart)."""
        slot.retransmit_at_ms = 0
        self._next_due_ms = 0

    def checkpoint_sent(self, now_ms: int) -> None:
        self._checkpoint_due_ms = now_ms + self.retransmit_ms
        self._checkpoint_backoff = 1

    # --- trigger 1: timers ------------------------------------------------------------------

    def on_tick(self, now_ms: int, primary: int) -> list[Outbound]:
        out: list[Outbound] = []
        if now_ms >= self._next_due_ms:
            # (_next_due_ms is a lower bound of every slot's retransmit_at_ms: the scan of
            # the whole log is skipped on the many ticks when nothing can be due)
            next_due = _NEVER
            for slot in self._log.retained():
                due = slot.retransmit_at_ms
                if due is not None and due <= now_ms:
                    sent = self._resend(slot, now_ms, primary, out)
                    if sent:
                        slot.retransmit_backoff = min(2 * slot.retransmit_backoff, BACKOFF_MAX)
                        due = now_ms + self.retransmit_ms * slot.retransmit_backoff
                    else:
                        due = None  # every peer showed it executed the slot
                    slot.retransmit_at_ms = due
                if due is not None:
                    next_due = min(next_due, due)
            self._next_due_ms = next_due
        own = self._checkpoints.latest_own()
        due = self._checkpoint_due_ms
        if own is not None and own.seq > self._log.low and due is not None and due <= now_ms:
            out.append(Outbound(None, encode(own)))
            self._checkpoint_backoff = min(2 * self._checkpoint_backoff, BACKOFF_MAX)
            self._checkpoint_due_ms = now_ms + self.retransmit_ms * self._checkpoint_backoff
        for peer in sorted(self._replies):
            self._replied_ms[peer] = now_ms
            for seq in sorted({self._replies[peer], self._log.low}):
                vote = self._checkpoints.own(seq)
                if vote is not None:
                    out.append(Outbound(peer, encode(vote)))
        self._replies.clear()
        return out

    def _resend(self, slot: Slot, now_ms: int, primary: int, out: list[Outbound]) -> bool:
        latest = slot.latest_own()
        before = len(out)
        for peer in self.ids:
            if peer == self.me:
                continue
            if slot.committed_local and peer in slot.commits:
                # It is prepared; if it lacks COMMITs its own timer re-sends its vote and
                # repeated_vote answers, so re-sending ours here would be noise.
                continue
            if self.peer_executed[peer] < slot.seq:
                frames = slot.frames_for(peer, primary)
            elif not slot.committed_local and latest is not None:
                frames = [latest]  # a request: the peer answers a repeated vote
            else:
                continue
            out.extend(Outbound(peer, frame) for frame in frames)
        slot.sent_ms = now_ms
        return len(out) > before

    # --- trigger 2: gaps --------------------------------------------------------------------

    def fill_gaps(self, peer: int, below: int, now_ms: int, primary: int) -> list[Outbound]:
        out: list[Outbound] = []
        window = self._log.window
        start = max(self.peer_executed[peer], self._log.low - window, below - window - 1)
        # Skip the prefix of slots the peer has already sent its COMMIT for (the loop below
        # passes over them anyway): remembered per peer with the slot object, so a view change,
        # which replaces every slot, invalidates it. Without this, every vote scanned up to a
        # window of slots (profiled: ~10% of a backup's CPU under load).
        # The mark is used only when the scan it came from started no later than this one,
        # so it never skips slots below its origin that were never checked (review).
        origin = start
        mark = self._cleared.get(peer)
        if mark is not None and mark[0] <= start < mark[1] < below:
            held = self._log.retained_slot(mark[1])
            if held is mark[2] and peer in held.commits:
                origin, start = mark[0], mark[1]  # (origin, mark] is known committed
        while start + 1 < below:
            slot = self._log.retained_slot(start + 1)
            if slot is None or peer not in slot.commits:
                break
            start += 1
            self._cleared[peer] = (
                origin if mark is None or mark[0] > origin else mark[0],
                start,
                slot,
            )
        for seq in range(start + 1, below):
            slot = self._log.retained_slot(seq)
            if slot is None or peer in slot.commits or slot.sent_ms + self._settle_ms > now_ms:
                continue
            self._nudge(slot, peer, now_ms, primary, out)
        return out

    def _nudge(self, slot: Slot, peer: int, now_ms: int, primary: int, out: list[Outbound]) -> None:
        if slot.nudged_ms.get(peer, _LONG_AGO) + self._settle_ms > now_ms:
            return
        frames = slot.frames_for(peer, primary)
        if frames:
            slot.nudged_ms[peer] = now_ms
            out.extend(Outbound(peer, frame) for frame in frames)

    # --- trigger 3: repeats -----------------------------------------------------------------

    def repeated_vote(self, peer: int, seq: int, now_ms: int, primary: int) -> list[Outbound]:
        out: list[Outbound] = []
        slot = self._log.retained_slot(seq)
        if slot is not None and slot.committed_local and self.peer_executed[peer] < seq:
            self._nudge(slot, peer, now_ms, primary, out)
        out.extend(self.fill_gaps(peer, seq, now_ms, primary))
        return out

    def repeated_checkpoint(self, peer: int, seq: int, now_ms: int, primary: int) -> list[Outbound]:
        # Answering every copy, or first copies, would make two up-to-date replicas answer
        # each other's answers forever: at most one answer per peer every two intervals.
        if now_ms >= self._replied_ms[peer] + 2 * self.retransmit_ms:
            self._replies[peer] = max(seq, self._replies.get(peer, 0))
        return self.fill_gaps(peer, seq + self._log.window + 1, now_ms, primary)

    # --- trigger 4: behind ------------------------------------------------------------------

    def behind(self, blocked_seq: int, now_ms: int, primary: int) -> list[Outbound]:
        out: list[Outbound] = []
        if blocked_seq != self._blocked_seq:
            # First evidence at this seq: commits also complete out of order in a healthy
            # pipeline, so act only if we are still blocked here half an interval later.
            self._blocked_seq, self._blocked_since_ms = blocked_seq, now_ms
            return out
        if now_ms < max(self._blocked_since_ms, self._behind_ms) + self._settle_ms:
            return out
        self._behind_ms = now_ms
        blocked = self._log.get(blocked_seq)
        voted = blocked is not None and blocked.latest_own() is not None
        if blocked is not None and voted:
            self._resend(blocked, now_ms, primary, out)
        own = self._checkpoints.latest_own()
        if own is not None:
            out.append(Outbound(None, encode(own)))
        elif not voted:
            for slot in self._log.window_slots():
                latest = slot.latest_own()
                if latest is not None:
                    out.append(Outbound(None, latest))
                    break
        return out
