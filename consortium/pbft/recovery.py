"""A replica that lost state: started from a restored backup, or from an empty data directory
although it has run before (pbft/replica.py calls this the recovery gate).

Theory of operation
-------------------
A replica's records are what keep it from contradicting itself after a restart (records.py).
A backup holds them only as they were when it was taken: what the member signed after that is
forgotten, so the restored member could sign a second PRE-PREPARE, PREPARE or COMMIT for a
(view, seq) it already voted on, or a second NEW-VIEW for a view it already started. The shell
knows when this is so (`node backup` marks its copy; `init` and `keygen` mark a new data
directory, so an empty one without the mark has lost its state) and starts the core with a
fresh random nonce. The core then sends no vote until it has learned a view above any it can
have used (Castro & Liskov, TOCS'02 §4.3 recover a replica the same way: it estimates, from
fresh answers of the others, a point below which it must not speak).

The bound. Any view w > 0 in which this member took part (PRE-PREPARE, PREPARE, COMMIT, or
NEW-VIEW as its primary) had a NEW-VIEW, so Q - 1 other members had sent VIEW-CHANGE(w) before
this member could act in w, and had moved to w or beyond for good (views only grow, durably).
Any n - f - 1 other members share at least Q - 1 + (n - f - 1) - (n - 1) = Q - f - 1 >= f of
them, and while this member counts as one of the f faulty members at most f - 1 of those lie:
one honest member among any n - f - 1 others reports a view >= w. So, with reports (all made
after our state was lost: each one signs our fresh nonce) from k >= n - f - 1 others, the
(n - f - 1)-th smallest reported view plus one is a `floor` above every view we can have
used (view 0 included: floor >= 1). Taking the (n - f - 1)-th smallest rather than the largest
of all answers keeps up to f inflated answers from holding us out forever.

What the gate holds back, for views below the floor: PRE-PREPARE (as primary), PREPARE,
COMMIT, NEW-VIEW, and VIEW-CHANGE. PREPARE and COMMIT are the votes; PRE-PREPARE and NEW-VIEW
are the primary's. VIEW-CHANGE is not a vote on an order, but it lets others build a NEW-VIEW
for a view we cannot act in, and a second one for a view we may have asked for before could
name other proofs: so we send one only for views >= floor (the others do not need it: they
are n - 1 >= Q). Exact copies of what our records hold are re-sent as before (retransmission
says nothing new). Allowed throughout: CHECKPOINT (it signs the hash of the state after
executing a committed sequence number; execution is deterministic and only committed batches
execute, so it cannot differ from one we signed before), state transfer (FETCH, BLOCKS),
BATCH-REQ and BATCH (checked by digest by whoever receives them), forwarding client
transactions, relaying the NEW-VIEW we hold, and answering VIEW-QUERY. The member still
receives, records prepared certificates and commits batches from Q COMMITs of others.

Leaving recovery. The member takes part normally once it is active in a view >= floor (it got
there by a view change of the others, which it may join: its VIEW-CHANGE for that view is
allowed) and has executed up to the NEW-VIEW that started it (max_s: everything prepared before
is re-issued there), its stable checkpoint, and the (f+1)-th highest height the answers
reported (one honest member executed that far). Until then it counts as one of the f faulty
members: status says so. If it is primary of the view the others are in, it proposes nothing,
so their timers replace it and it joins the next view; a restored backup waits for the next
view change (any failure brings one, and it may take part in it). The shell clears its mark
durably only then, so a crash during recovery restarts in recovery with a new nonce.

Queries go to the peers that have not answered, once per retransmission interval; answers are
signed, bounded (one per peer is kept, the highest), refused unless they carry our nonce, and
a peer's queries are answered at most once per half interval.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from consortium.pbft.messages import NONCE_BYTES

__all__ = ["NONCE_BYTES", "ViewRecovery"]


@dataclass(slots=True)
class ViewRecovery:
    """What a recovering replica has learned so far (bounded: one report per member)."""

    nonce: bytes
    ids: tuple[int, ...]  # the voters' member ids
    f: int
    me: int
    reports: dict[int, tuple[int, int]] = field(default_factory=dict)  # peer -> (view, executed)
    asked_ms: int | None = None  # when we last sent VIEW-QUERYs
    withheld: int = 0  # messages the gate held back (status)

    def __post_init__(self) -> None:
        assert len(self.nonce) == NONCE_BYTES

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def needed(self) -> int:
        """Reports from other members before the floor is known: n - f - 1."""
        return self.n - self.f - 1

    def add(self, peer: int, view: int, executed: int) -> None:
        assert peer in self.ids and peer != self.me
        old_view, old_executed = self.reports.get(peer, (0, 0))
        self.reports[peer] = (max(view, old_view), max(executed, old_executed))

    @property
    def floor(self) -> int | None:
        """The lowest view in which we may vote, or None until n - f - 1 others answered."""
        views = sorted(view for view, _ in self.reports.values())
        if len(views) < self.needed:
            return None
        return views[self.needed - 1] + 1

    def allows(self, view: int) -> bool:
        floor = self.floor
        return floor is not None and view >= floor

    @property
    def target(self) -> int:
        """The (f+1)-th highest height reported: one honest member executed that far."""
        executed = sorted((e for _, e in self.reports.values()), reverse=True)
        return executed[self.f] if len(executed) > self.f else 0

    def unanswered(self) -> list[int]:
        return [p for p in self.ids if p != self.me and p not in self.reports]

    def status(self, view: int, active: bool, executed: int, caught_up_to: int) -> dict[str, Any]:
        floor = self.floor
        return {
            "reports": len(self.reports),
            "needed": self.needed,
            "floor": floor,
            "others_view": max((v for v, _ in self.reports.values()), default=None),
            "view": view,
            "view_active": active,
            "executed": executed,
            "target": caught_up_to,
            "withheld": self.withheld,
        }
