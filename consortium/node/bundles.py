"""Receipt bundles of committed transactions, answered from a small cache of recent blocks.

A submit or watch of an id already in the ledger is answered with its first receipt, its
Merkle proof, its block's header and our block signature (a "bundle"). Building one from the
store costs a block's receipts decoded and its receipts tree built (milliseconds for a block
of hundreds), so:

- ids are looked up in the store in batches (one indexed query per 500 ids);
- each block is read once per lookup (header and receipts only, never its transactions), its
  tree built once, and kept in an LRU of BLOCKS_CACHED_MAX blocks: every receipt of a block a
  client asks about again is a proof from the tree already built;
- `first_bundles` yields to the event loop after every block it had to read, so the core loop,
  the peer pump and /healthz run between them;
- the caller bounds how many committed ids one request may look up (service.py).

A stored block never changes, so an entry never goes stale; our block signature is found in
the store or signed again (Ed25519 is deterministic: the same bytes either way).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from consortium.crypto.merkle import MerkleTree
from consortium.ledger.block import BlockHeader, Receipt
from consortium.ledger.certificates import SignedVote
from consortium.ledger.store import BlockStore, StoreError
from consortium.protocol.verify import receipt_bundle

BLOCKS_CACHED_MAX = 16  # recent blocks' receipts and trees kept (about 100 KB per 512-tx block)


@dataclass(frozen=True, slots=True)
class _BlockEntry:
    header: BlockHeader
    receipts: tuple[Receipt, ...]
    tree: MerkleTree
    vote: SignedVote

    def bundle(self, index: int) -> list[Any]:
        return receipt_bundle(self.header, self.receipts, index, self.vote, self.tree).to_array()


class _Member(Protocol):
    @property
    def store(self) -> BlockStore: ...

    def own_block_signature(self, height: int) -> SignedVote: ...


class ReceiptBundles:
    """First receipts with proofs, for ids in `member`'s store; see the module docstring."""

    def __init__(self, member: _Member, blocks_max: int = BLOCKS_CACHED_MAX) -> None:
        self._member = member
        self._blocks_max = blocks_max
        self._blocks: OrderedDict[int, _BlockEntry] = OrderedDict()

    async def first_bundles(self, tx_ids: Sequence[bytes]) -> dict[bytes, list[Any]]:
        """The bundle of each id of `tx_ids` that is in the ledger (absent: not committed)."""
        positions = self._member.store.receipt_positions(tx_ids)
        by_height: dict[int, list[tuple[bytes, int]]] = {}
        for tx_id, (height, index) in positions.items():
            by_height.setdefault(height, []).append((tx_id, index))
        out: dict[bytes, list[Any]] = {}
        for height in sorted(by_height):
            entry, read = self._entry(height)
            for tx_id, index in by_height[height]:
                if index >= len(entry.receipts) or entry.receipts[index].tx_id != tx_id:
                    raise StoreError(
                        f"block {height}: the transaction index points at a wrong receipt "
                        f"{index}; restore the data directory from a backup"
                    )
                out[tx_id] = entry.bundle(index)
            if read:
                await trio.lowlevel.checkpoint()
        return out

    def _entry(self, height: int) -> tuple[_BlockEntry, bool]:
        """The cached entry for `height` and whether it had to be read from the store."""
        entry = self._blocks.get(height)
        if entry is not None:
            self._blocks.move_to_end(height)
            return entry, False
        stored = self._member.store.block_receipts(height)
        assert stored is not None, "a receipt's block is stored with it"
        header, receipts = stored
        entry = _BlockEntry(
            header,
            receipts,
            MerkleTree([r.encode() for r in receipts]),
            self._member.own_block_signature(height),
        )
        self._blocks[height] = entry
        while len(self._blocks) > self._blocks_max:
            self._blocks.popitem(last=False)
        return entry, True
