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

Clocks (ClockChecker, in the clock mixes where one member's clock is wrong): block time stays
within the bounds the clock rules promise, measured against the simulator's real time, so no
honest transaction is judged expired or too far in the future; and no member refuses an honest
submission as expired while the network would still execute it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Protocol

import msgpack

from consortium.crypto.signing import Verifier
from consortium.ledger.block import Block
from consortium.ledger.genesis import Params
from consortium.ledger.tx import Transaction


class SafetyViolation(AssertionError):
    pass


class LivenessViolation(AssertionError):
    pass


class ClockViolation(SafetyViolation):
    """Block time off real time beyond what the clock rules allow, or an honest transaction
    refused as expired by a member while the network would still execute it."""


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


class ClockChecker:
    """Block time against real time (the simulator's: EPOCH_MS + now_ms, which every member's
    clock reads except the one a clock mix sets wrong). At the real time T when an honest
    member first executes a block with transactions:

        T - skew - lag  <=  block time  <=  T + skew + slack

    Upper: block time is a proposed time a quorum accepted (or an earlier block's), within the
    skew of an honest clock that read it no later than T: pbft, f+1 honest backups prepared it;
    raft, the leader's clock agreed with the median of a majority's, which the leader estimates
    up to a network delay late (`slack`). Lower: within the skew of an honest clock reading
    taken at most `lag` before T (a batch's time from its proposal to its first execution:
    commit rounds, a view change or an election between). Every expiry is judged against block
    time, so it follows for any transaction of an honest client, whatever its expiry E: never
    `expired` while E >= T + skew + slack, never `expiry_too_far` while E - ttl <= T - skew -
    lag. The receipts are checked against exactly that too (the workload's transactions expire
    5 minutes after the epoch: `expired` within the first 5 minutes less a skew of real time,
    or `expiry_too_far` at all, is a violation). And a member refusing a submission as expired
    while E >= T + skew + slack refuses what the network would execute.
    """

    def __init__(
        self,
        params: Params,
        honest: Iterable[int],
        clients: Collection[bytes],
        *,
        lag_ms: int,
        slack_ms: int = 200,
    ) -> None:
        self.skew_ms = params.timestamp_skew_ms
        self.ttl_ms = params.tx_ttl_max_ms
        self.honest = frozenset(honest)
        self.clients = frozenset(clients)
        self.lag_ms = lag_ms
        self.slack_ms = slack_ms
        self._checked = 0  # highest height checked (each at its first honest execution)
        self.blocks_checked = 0
        self.refusals = 0  # honest submissions refused as expired (legitimately)

    def executed(self, node: int, real_ms: int, block: Block) -> None:
        height = block.header.height
        if node not in self.honest or height <= self._checked:
            return
        self._checked = height
        if not block.txs:
            return  # an empty block (a null request) keeps its predecessor's time
        self.blocks_checked += 1
        time_ms = block.header.timestamp_ms
        late_ms, early_ms = real_ms - time_ms, time_ms - real_ms
        if early_ms > self.skew_ms + self.slack_ms or late_ms > self.skew_ms + self.lag_ms:
            raise ClockViolation(
                f"clock: block {height} first executed (by n{node + 1}) at real time {real_ms} "
                f"has time {time_ms}, {abs(early_ms) / 1000:.3f} s "
                f"{'ahead of' if early_ms > 0 else 'behind'} real time (allowed: "
                f"{(self.skew_ms + self.slack_ms) / 1000:.3f} s ahead, "
                f"{(self.skew_ms + self.lag_ms) / 1000:.3f} s behind)"
            )
        for tx, receipt in zip(block.txs, block.receipts, strict=True):
            if tx.client_key not in self.clients:
                continue
            if (
                receipt.reason == "expired"
                and tx.expiry_ms >= real_ms + self.skew_ms + self.slack_ms
            ):
                raise ClockViolation(
                    f"clock: honest transaction {tx.id.hex()[:12]} executed as expired in block "
                    f"{height} at real time {real_ms}, {(tx.expiry_ms - real_ms) / 1000:.1f} s "
                    "before its expiry"
                )
            if (
                receipt.reason == "expiry_too_far"
                and tx.expiry_ms - self.ttl_ms <= real_ms - self.skew_ms - self.lag_ms
            ):
                raise ClockViolation(
                    f"clock: honest transaction {tx.id.hex()[:12]} executed as expiry_too_far in "
                    f"block {height} at real time {real_ms} (expiry {tx.expiry_ms}, block time "
                    f"{time_ms})"
                )

    def refused(self, node: int, real_ms: int, tx: Transaction) -> None:
        """Member `node` refused `tx` at submit as expired."""
        if node not in self.honest or tx.client_key not in self.clients:
            return
        if tx.expiry_ms >= real_ms + self.skew_ms + self.slack_ms:
            raise ClockViolation(
                f"clock: n{node + 1} refused honest transaction {tx.id.hex()[:12]} as expired at "
                f"real time {real_ms}, {(tx.expiry_ms - real_ms) / 1000:.1f} s before its expiry"
            )
        self.refusals += 1
