"""The shape of a core's table of drop reasons (pbft/reasons.py, crashft/reasons.py): every
name a core counts in its `rejected`, classed BENIGN or MISBEHAVIOUR and explained in one line.
Each core keeps its own table and says what the classes mean for its fault model."""

from __future__ import annotations

from typing import Final, Literal, NewType

Kind = Literal["benign", "misbehaviour"]
BENIGN: Final = "benign"
MISBEHAVIOUR: Final = "misbehaviour"

Reason = NewType("Reason", str)
"""A name from a table (the core's helpers that return a reason are typed with it)."""


class ReasonTable(dict[Reason, tuple[Kind, str]]):
    """reason -> (class, what it means, in one line)"""

    def add(self, name: str, kind: Kind, meaning: str) -> Reason:
        assert name not in self, name
        self[Reason(name)] = (kind, meaning)
        return Reason(name)

    def is_misbehaviour(self, reason: str) -> bool:
        """Whether a reason is classed MISBEHAVIOUR (an unknown one counts as misbehaviour:
        better a warning than silence)."""
        entry = self.get(Reason(reason))
        return entry is None or entry[0] == MISBEHAVIOUR
