"""Safety and liveness checkers for simulated clusters.

Safety (after every step): no two honest replicas commit different batch digests at one sequence
number, and honest ledgers (block hash lists) are prefixes of each other.
Liveness (at the end, after healing with at most f faulty): every submitted transaction
committed, and honest replicas hold identical ledgers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class SafetyViolation(AssertionError):
    pass


class LivenessViolation(AssertionError):
    pass


class Observed(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def digests(self) -> dict[int, bytes]: ...
    @property
    def block_hashes(self) -> list[bytes]: ...


def check_safety(nodes: Sequence[Observed]) -> None:
    seen: dict[int, tuple[str, bytes]] = {}
    for node in nodes:
        for seq, digest in node.digests.items():
            first = seen.setdefault(seq, (node.name, digest))
            if first[1] != digest:
                raise SafetyViolation(
                    f"seq {seq}: {first[0]} committed {first[1].hex()[:12]}, "
                    f"{node.name} committed {digest.hex()[:12]}"
                )
    chains = sorted((list(n.block_hashes), n.name) for n in nodes)
    longest = max(chains, key=lambda c: len(c[0]))
    for chain, name in chains:
        if longest[0][: len(chain)] != chain:
            raise SafetyViolation(f"ledger of {name} is not a prefix of {longest[1]}'s")


def check_all_committed(
    nodes: Sequence[Observed], committed_ids: Sequence[set[bytes]], submitted: set[bytes]
) -> None:
    for node, ids in zip(nodes, committed_ids, strict=True):
        missing = submitted - ids
        if missing:
            raise LivenessViolation(
                f"{node.name}: {len(missing)} of {len(submitted)} transactions never committed"
            )
    hashes = {tuple(n.block_hashes) for n in nodes}
    if len(hashes) != 1:
        raise LivenessViolation(
            "honest ledgers differ at the end: "
            + ", ".join(f"{n.name}={len(n.block_hashes)}" for n in nodes)
        )
