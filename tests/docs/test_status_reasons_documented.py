"""Every reason `status` and /readyz can give is in the operator guide's troubleshooting table,
word for word: the reasons are produced here by the real explain.py from core status documents
shaped like the cores' (the same inputs tests/pbft and tests/raft drive through real cores), and
each sentence must appear in docs/operations.md. Rewording a reason without the guide fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from consortium.node.explain import PeerLink, blockers, fault_budget, peer_warnings

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
PBFT = ["n1", "n2", "n3", "n4"]
RAFT = ["n1", "n2", "n3"]


def _links(names: list[str], me: int, down: tuple[str, ...] = ()) -> list[PeerLink]:
    return [
        PeerLink(i, name, name not in down, name not in down)
        for i, name in enumerate(names)
        if i != me
    ]


def _pbft(core: dict[str, Any], *, me: int = 0, down: tuple[str, ...] = (), **kw: Any) -> list[str]:
    return blockers(
        "pbft", core, names=PBFT, me=me, quorum=3, links=_links(PBFT, me, down),
        behind_blocks_max=64, **kw,
    )  # fmt: skip


def _raft(core: dict[str, Any], *, me: int = 0) -> list[str]:
    return blockers(
        "raft", core, names=RAFT, me=me, quorum=2, links=_links(RAFT, me), behind_blocks_max=64
    )


def _vc(have: int, new_view_from: int, **more: Any) -> dict[str, Any]:
    return {
        "view_change": {
            "view": 5,
            "view_changes": have,
            "members_at_or_above": have,
            "needed": 3,
            "new_view_from": new_view_from,
            **more,
        }
    }


def _recovering(*, floor: int | None, view: int) -> dict[str, Any]:
    """pbft status of a member restored from a backup (pbft/recovery.py ViewRecovery.status)."""
    return {
        "recovering": {
            "from": "a restored backup",
            "reports": 1 if floor is None else 3,
            "needed": 2,
            "floor": floor,
            "view": view,
            "view_active": True,
            "executed": 1100,
            "target": 1200,
        }
    }


def _raft_recovering(*, floor: int | None, term: int) -> dict[str, Any]:
    return {
        "role": "follower",
        "term": term,
        "leader": 0,
        "recovering": {
            "from": "a restored backup",
            "reports": 1 if floor is None else 2,
            "needed": 2,
            "floor": floor,
            "term": term,
        },
    }


def _peer_links(**kw: Any) -> list[PeerLink]:
    """n2, n3, n4 as seen by n1; `kw` overrides fields of n3's link."""
    return [
        PeerLink(i, name, True, True, **(kw if name == "n3" else {}))
        for i, name in enumerate(PBFT)
        if i
    ]


def _pbft_links(links: list[PeerLink]) -> list[str]:
    return blockers(
        "pbft", {}, names=PBFT, me=0, quorum=3, links=links, behind_blocks_max=64
    )  # fmt: skip


CASES = {
    "no quorum": _pbft({}, down=("n3", "n4")),
    "no quorum, silent": _pbft_links(
        [
            PeerLink(1, "n2", False, False),
            PeerLink(2, "n3", True, False, silent_s=5.0),
            PeerLink(3, "n4", True, True),
        ]
    ),
    "two processes claim": peer_warnings(
        _peer_links(duplicate="two processes claim n3 (from 10.0.0.3:51200 and 10.0.0.9:40112)")
    ),
    "view change, gathering": _pbft(_vc(2, 1)),
    "view change, we are next": _pbft(_vc(3, 1), me=1),
    "view change, waiting": _pbft(_vc(3, 1)),
    "view change, timer for later views": _pbft(_vc(2, 1, members_at_or_above=3)),
    "view change, alone": _pbft(
        _vc(1, 1, waited_ms=41_000, alone={"members": [1, 2, 3], "view": 4})
    ),
    "state transfer": _pbft({"catching_up": {"behind": 1200, "target": 1300, "from": 1}}),
    "diverged": _pbft(
        {
            "diverged": {
                "seq": 1200,
                "ours": "9f2c41d07ab3" + "00" * 26,
                "certified": "4be81c9a2f60" + "00" * 26,
                "withheld": 3,
            }
        }
    ),
    "behind": _pbft({"peers_executed": [100, 200, 200, 200], "last_executed": 100}),
    "stalled": _pbft(
        {"waiting_for": "prepares for seq 17: 1 of 2", "pending_txs": 12}, stalled_s=4.2
    ),
    "raft pre-vote": _raft(
        {
            "role": "pre_candidate",
            "term": 6,
            "leader": None,
            "election": {
                "pre_vote": True,
                "term": 7,
                "votes": 1,
                "needed": 2,
                "reason": "no message from leader 0 for an election timeout",
            },
        }
    ),
    "raft election": _raft(
        {
            "role": "candidate",
            "term": 7,
            "leader": None,
            "election": {"pre_vote": False, "term": 7, "votes": 1, "needed": 2, "reason": ""},
        }
    ),
    "raft no leader": _raft({"role": "follower", "term": 7, "leader": None}),
    "raft snapshot": _raft(
        {
            "role": "follower",
            "term": 7,
            "leader": 0,
            "installing_snapshot": {"index": 900, "height": 1200, "behind": 1200},
        },
        me=2,
    ),
    "raft leader alone": _raft({"role": "leader", "term": 7, "leader": 0, "unresponsive": [1, 2]}),
    "recovering, asking": _pbft(_recovering(floor=None, view=2)),
    "recovering, below the floor": _pbft(_recovering(floor=3, view=2)),
    "recovering, catching up": _pbft(_recovering(floor=3, view=3)),
    "raft recovering, asking": _raft(_raft_recovering(floor=None, term=7)),
    "raft recovering, below the floor": _raft(_raft_recovering(floor=8, term=7)),
    "raft recovering, catching up": _raft(_raft_recovering(floor=8, term=8)),
    "pbft clock": _pbft(
        {"clock": {"offset_ms": 600_000, "limit_ms": 60_000, "disagrees": True, "samples": 16}}
    ),
    "raft leader clock": _raft(
        {
            "role": "leader",
            "term": 7,
            "leader": 0,
            "clock": {
                "offset_ms": 3_600_000,
                "limit_ms": 30_000,
                "disagrees": True,
                "samples": 3,
                "handing_to": 1,
            },
        }
    ),
    "raft leader clock, no one to hand to": _raft(
        {
            "role": "leader",
            "term": 7,
            "leader": 0,
            "clock": {
                "offset_ms": -3_600_000,
                "limit_ms": 30_000,
                "disagrees": True,
                "samples": 2,
                "handing_to": None,
            },
        }
    ),
    "raft follower clock": _raft(
        {
            "role": "follower",
            "term": 7,
            "leader": 1,
            "clock": {"offset_ms": 600_000, "limit_ms": 60_000, "disagrees": True, "samples": 16},
        }
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_reason_is_in_the_troubleshooting_table(case: str) -> None:
    reasons = CASES[case]
    assert len(reasons) == 1, f"{case}: expected one reason, got {reasons}"
    guide = GUIDE.read_text()
    assert f"`{reasons[0]}`" in guide, (
        f"docs/operations.md does not explain the status reason {reasons[0]!r} ({case}); "
        "add it to the troubleshooting table"
    )


@pytest.mark.parametrize("up", [4, 3, 2])
def test_every_fault_budget_form_is_in_the_guide(up: int) -> None:
    assert f"`{fault_budget(4, 1, 3, up)}`" in GUIDE.read_text()


def test_a_healthy_member_has_no_reason() -> None:
    assert _pbft({"peers_executed": [10, 10, 10, 10], "last_executed": 10}) == []
    assert _raft({"role": "follower", "term": 7, "leader": 0}) == []
