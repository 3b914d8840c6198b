"""The explorer's receipt documents with f+1 signatures, gathered by the client's own code (as
`consortium tx receipt` does: ConsortiumClient.lookup, then TxOutcome.receipt_document). The
node may not import the client (tests/test_layers.py), so `consortium node start` gives the
member this (node/explorer, `gather`). Each call dials every member's client port, which is why
the explorer makes one call at a time and remembers both answers and failures (node/explorer's
module docstring)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import trio

    from consortium.ledger.genesis import Genesis
    from consortium.node.explorer import ReceiptGatherer
    from consortium.node.runtime import Node

LOOKUP_TIMEOUT_S = 3.0


def receipt_gatherer(genesis: Genesis) -> ReceiptGatherer:
    async def gather(tx_id: bytes) -> tuple[str | None, str]:
        from consortium.client import ConsortiumClient
        from consortium.client.errors import ClientError

        try:
            async with ConsortiumClient(genesis, connect_timeout_s=1.0) as client:
                outcome = await client.lookup(tx_id, timeout_s=LOOKUP_TIMEOUT_S)
        except (ClientError, OSError) as exc:
            return None, f"could not ask the members: {exc}"
        if outcome.proof is None:
            return None, f"the members' answer: {outcome.status} {outcome.reason}".strip()
        return outcome.receipt_document(genesis), ""

    return gather


def attach(node: Node, nursery: trio.Nursery) -> None:
    """A process.Compose: give the member the gatherer before it runs (`node start` passes it
    only for a member whose explorer is on and whose client port is plain TCP)."""
    node.receipt_gatherer = receipt_gatherer(node.genesis)
