"""The receipt document a client assembles once it decided a transaction: the receipt and its
proof as the agreeing members sent them, with all their block signatures together (the
document itself, and its offline check, are protocol/receipts.py)."""

from __future__ import annotations

from collections.abc import Sequence

from consortium.protocol.receipts import ReceiptProof
from consortium.protocol.verify import Bundle


def from_bundles(bundles: Sequence[Bundle]) -> ReceiptProof:
    """A ReceiptProof from verified bundles that agree on the receipt and block hash, one per
    member: their signatures together."""
    first = bundles[0]
    # Cheap on purpose (the client builds one per decided transaction): no decoding here.
    return ReceiptProof(
        first.receipt,
        tuple(first.proof),
        first.tree_size,
        first.header,
        tuple(b.signature for b in bundles),
    )
