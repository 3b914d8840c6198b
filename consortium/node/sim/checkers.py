"""Safety and liveness checkers for simulated clusters (the TigerBeetle VOPR split).

Safety, checked after every step, over the replicas the test calls honest:
    agreement  no two of them commit different batch digests at one sequence number;
    prefix     their ledgers (block hashes by height) are prefixes of each other;
    signed     every transaction they commit carries a valid signature (checked with real
               Ed25519, once per transaction) of a key admitted in genesis, or, where the
               cluster says what its ledger state admits (`known`), of a key ever admitted in
               the state the member executes the block on, or a member's client change: the
               rule a pbft backup prepares by, so a batch spamming the ledger with receipts of
               keys never admitted never commits.
Both are checked incrementally as blocks appear: each new (seq, digest) and (height, hash) is
compared with the first one any honest replica produced, which is equivalent to comparing
every pair of ledgers after every step, at a cost independent of the ledger length.

No equivocation (EquivocationChecker, over what honest members send): a member never signs two
different votes for one slot: pbft PRE-PREPARE, PREPARE or COMMIT for one (view, seq), or
NEW-VIEW for one view; raft a vote (its own candidacy included) for two candidates in one term.
The ledger checks catch an equivocation only once it splits a commit; this one catches it when
it is sent (a member restored from a backup that forgot what it signed, a shell that sends
before its fsync).

Liveness, checked at the end (after healing, with at most f faulty): every submitted
transaction committed at every honest replica, and all honest ledgers are identical.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Protocol

import msgpack

from consortium.crypto.signing import Verifier
from consortium.ledger.tx import Transaction


class SafetyViolation(AssertionError):
    pass


class LivenessViolation(AssertionError):
    pass


class SafetyChecker:
    def __init__(
        self,
        honest: Iterable[int],
        clients: Collection[bytes] = (),
        verifier: Verifier | None = None,
    ) -> None:
        self.honest = frozenset(honest)
        self.clients = frozenset(clients)
        self.verifier = verifier
        self._signed: set[bytes] = set()  # id + signature of transactions already checked
        self._digests: dict[int, tuple[int, bytes]] = {}  # seq -> (first node, digest)
        self._hashes: list[tuple[int, bytes]] = []  # height-1 -> (first node, block hash)

    def committed(self, node: int, seq: int, digest: bytes) -> None:
        if node not in self.honest:
            return
        first = self._digests.setdefault(seq, (node, digest))
        if first[1] != digest:
            raise SafetyViolation(
                f"agreement: seq {seq} committed as {first[1].hex()[:12]} by n{first[0] + 1} "
                f"and as {digest.hex()[:12]} by n{node + 1}"
            )

    def signed(
        self,
        node: int,
        seq: int,
        txs: Iterable[Transaction],
        known: Callable[[Transaction], bool] | None = None,
    ) -> None:
        if node not in self.honest or self.verifier is None:
            return
        for tx in txs:
            admitted = tx.client_key in self.clients if known is None else known(tx)
            if not admitted:
                raise SafetyViolation(
                    f"signed: n{node + 1} committed transaction {tx.id.hex()[:12]} at seq {seq} "
                    "without a valid signature of an admitted client (a key never admitted)"
                )
            key = tx.id + tx.signature
            if key in self._signed:
                continue
            if not tx.verify_signature(self.verifier):
                raise SafetyViolation(
                    f"signed: n{node + 1} committed transaction {tx.id.hex()[:12]} at seq {seq} "
                    "without a valid signature of an admitted client"
                )
            self._signed.add(key)

    def appended(self, node: int, height: int, block_hash: bytes) -> None:
        if node not in self.honest:
            return
        if height > len(self._hashes):
            if height != len(self._hashes) + 1:
                raise SafetyViolation(f"prefix: n{node + 1} appended height {height} out of order")
            self._hashes.append((node, block_hash))
            return
        first = self._hashes[height - 1]
        if first[1] != block_hash:
            raise SafetyViolation(
                f"prefix: block {height} of n{node + 1} is {block_hash.hex()[:12]}, "
                f"but n{first[0] + 1} has {first[1].hex()[:12]}"
            )


class EquivocationChecker:
    """What each honest member signed for each slot: never two different values (bounded by
    the run: one entry per (member, kind, slot) it ever voted in). A slot is the msgpack
    encoding of its fields, one after the other (pbft: view and seq; raft: the term), as the
    messages carry them, so the clusters need not decode what they send."""

    def __init__(self, honest: Iterable[int]) -> None:
        self.honest = frozenset(honest)
        self._signed: dict[tuple[int, str, bytes], bytes] = {}

    def signed(self, node: int, what: str, slot: bytes, value: bytes) -> None:
        if node not in self.honest:
            return
        first = self._signed.setdefault((node, what, slot), value)
        if first != value:
            unpacker = msgpack.Unpacker()
            unpacker.feed(slot)
            where = ", ".join(str(field) for field in unpacker)
            raise SafetyViolation(
                f"equivocation: n{node + 1} signed two different {what}s for ({where}): "
                f"{_shown(first)} and {_shown(value)}"
            )


def _shown(value: bytes) -> str:
    """A member name as it is (raft: the candidate voted for), a digest by its first bytes."""
    return value.decode() if value.isascii() and value.isalnum() else value.hex()[:12]


class Observed(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def block_hashes(self) -> list[bytes]: ...

    @property
    def committed_ids(self) -> set[bytes]: ...

    def explain(self) -> str: ...


def check_converged(nodes: Sequence[Observed], submitted: Collection[bytes]) -> None:
    """Liveness at the end: everything submitted committed everywhere, identical ledgers."""
    for node in nodes:
        missing = len(set(submitted) - node.committed_ids)
        if missing:
            raise LivenessViolation(
                f"{node.name}: {missing} of {len(submitted)} transactions never committed "
                f"({node.explain()})"
            )
    ledgers = {tuple(node.block_hashes) for node in nodes}
    if len(ledgers) != 1:
        raise LivenessViolation(
            "honest ledgers differ at the end: "
            + ", ".join(f"{n.name} height {len(n.block_hashes) - 1} ({n.explain()})" for n in nodes)
        )
