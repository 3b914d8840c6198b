"""What the client reports about one transaction (`TxOutcome`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from consortium.client.errors import ClientError
from consortium.ledger.block import Receipt
from consortium.ledger.genesis import Genesis
from consortium.protocol.receipts import ReceiptProof

OutcomeStatus = Literal["committed", "rejected", "pending", "unknown", "unreachable"]


@dataclass(frozen=True, slots=True)
class TxOutcome:
    """What the client knows about one transaction.

    committed: f+1 members proved its receipt (`receipt`, `height`, `block_hash` set);
    rejected:  f+1 members agreed on a final rejection (`reason`);
    pending:   neither yet (`reason` says how far it got); it may still commit;
    unknown:   (`lookup` only) every member answered that it holds no receipt for this id;
    unreachable: no member could be reached: the transaction was handed to none of them, so
               it commits only if it is submitted again (`reason` says why each failed).
    `confirmations` is how many distinct members vouched for the reported result;
    `latency_s` the time from its first submission by this client to the confirmation that
    decided it (committed only).
    """

    tx_id: bytes
    status: OutcomeStatus
    receipt: Receipt | None = None
    height: int | None = None
    block_hash: bytes | None = None
    reason: str = ""
    confirmations: int = 0
    latency_s: float | None = None
    decided_at: float | None = None  # trio clock, when the confirmation that decided it came
    proof: ReceiptProof | None = None  # committed: the receipt with f+1 members' signatures

    def receipt_document(self, genesis: Genesis) -> str:
        """The receipt document (JSON, protocol/receipts.py) that `consortium tx
        verify-receipt` checks offline; ClientError unless committed."""
        if self.proof is None:
            raise ClientError(f"transaction {self.tx_id.hex()} is {self.status}: no receipt yet")
        return self.proof.dumps(genesis)
