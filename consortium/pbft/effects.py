"""What a PBFT replica asks its shell to do (DESIGN "Sans-IO consensus cores"): take_ready()
drains a Ready, which node/executor.py carries out (the order is stated there, once, for both
cores). Re-exported by pbft/replica.py, which is where the shell imports them from."""

from __future__ import annotations

from dataclasses import dataclass

from consortium.ledger.certificates import CheckpointCertificate, CommitCertificate
from consortium.ledger.tx import Transaction


@dataclass(frozen=True, slots=True)
class Outbound:
    dest: int | None  # None: broadcast to every other member
    frame: bytes  # messages.encode(...)


@dataclass(frozen=True, slots=True)
class CommittedBatch:
    seq: int
    view: int
    digest: bytes
    proposed_ms: int
    txs: tuple[Transaction, ...]
    certificate: CommitCertificate  # Q signed COMMITs from distinct members


@dataclass(frozen=True, slots=True)
class Serve:
    """A peer asked for blocks from `from_seq` (state transfer): the shell answers from its
    store with pbft/transfer.py, after this Ready's records are durable, in at most `bytes_max`
    (what is left of the peer's budget; an answer always carries one block), then reports the
    frame's size with PbftReplica.served() so the unused part goes back to the budget."""

    peer: int
    from_seq: int
    bytes_max: int
    # Epochs (pbft/epochs.py): the answer's epoch, the last block it may carry (an epoch's
    # end E: an answer never spans two configurations) and the certificate it carries instead
    # of the shell's latest stable one (the E certificate at a boundary); defaults at epoch 0.
    epoch: int = 0
    last_seq: int | None = None
    stable: CheckpointCertificate | None = None


@dataclass(frozen=True, slots=True)
class Ready:
    records: list[tuple[bytes, bytes | None]]  # to write durably (None deletes the key)
    # May leave before `records` are durable (raft's leader appends): none in pbft, where
    # every message a replica sends is logged first (Castro & Liskov 4.2).
    early: list[Outbound]
    messages: list[Outbound]  # only once `records` are durable
    committed: list[CommittedBatch]  # execute, in order, and report executed()
    stable_checkpoints: list[CheckpointCertificate]
    serve: list[Serve]  # answer these FETCH requests from the store, once `records` are durable

    def __bool__(self) -> bool:
        return bool(
            self.records
            or self.early
            or self.messages
            or self.committed
            or self.stable_checkpoints
            or self.serve
        )
