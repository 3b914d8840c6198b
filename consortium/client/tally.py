"""How the client decides a transaction from what members told it: the f+1 tally, pure (no
I/O, no clock), so it can be checked without sockets.

n = 3f+1 members in pbft, up to f of them may lie:
- "committed" once `needed` (f+1) DISTINCT members sent verified receipt bundles that agree on
  the receipt bytes and the block hash: at least one of them is honest;
- "rejected" once `needed` members reported the same FINAL rejection at submit, one every
  honest member decides alike from the transaction's bytes (`is_final_rejection`);
- "pending" otherwise, saying how far it got: it may still commit.
In raft (crash faults only) `needed` is 1. The caller verifies each bundle before it counts
(protocol/verify.py verify_bundle) and keeps one per member: a member is one voice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from consortium.client.outcome import OutcomeStatus
from consortium.protocol.verify import Bundle

FINAL_REJECTIONS = frozenset({"bad_signature", "wrong_chain"})
# Not final, but worth telling the user when a transaction stays pending: the reason's first
# word (before ":"), as members reported it at submit.
REPORTED_REJECTIONS = frozenset({"unknown_client"})


def is_final_rejection(reason: str) -> bool:
    """Whether every honest member decides this rejection alike from the transaction's bytes."""
    return reason in FINAL_REJECTIONS or reason.startswith("malformed")


class Vouch(NamedTuple):
    """One member's verified bundle for a transaction, with what agreement is judged on."""

    receipt: bytes  # the receipt's canonical bytes
    block_hash: bytes
    bundle: Bundle


@dataclass(frozen=True, slots=True)
class Tally:
    """A decision: `confirmations` members vouch for it. Committed: `bundles` are the agreeing
    members' bundles (in the order they came) and `block_hash` their block; rejected: `reason`
    is the agreed rejection; pending: `reason` says "k of needed confirmations"."""

    status: OutcomeStatus
    confirmations: int
    reason: str = ""
    bundles: tuple[Bundle, ...] = ()
    block_hash: bytes | None = None


def confirmations(vouched: Mapping[int, Vouch], receipt: bytes, block_hash: bytes) -> int:
    """How many members vouch for this receipt in this block."""
    return sum(1 for v in vouched.values() if v.receipt == receipt and v.block_hash == block_hash)


def tally(vouched: Mapping[int, Vouch], rejected: Mapping[int, str], needed: int) -> Tally:
    """The decision on one transaction from `vouched` (member -> its verified bundle) and
    `rejected` (member -> the final rejection it reported), with `needed` agreeing members
    (f+1 in pbft, 1 in raft). A receipt that enough members prove wins over any rejection."""
    groups: dict[tuple[bytes, bytes], list[Bundle]] = {}
    for receipt, block_hash, bundle in vouched.values():
        groups.setdefault((receipt, block_hash), []).append(bundle)
    best_key, best = max(groups.items(), key=lambda kv: len(kv[1]), default=(None, []))
    if best_key is not None and len(best) >= needed:
        return Tally(
            "committed", len(best), best[0].receipt.reason, tuple(best), block_hash=best_key[1]
        )
    for reason, count in sorted(Counter(rejected.values()).items()):
        if count >= needed:
            return Tally("rejected", count, reason)
    return Tally("pending", len(best), f"{len(best)} of {needed} confirmations")
