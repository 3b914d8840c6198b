"""Snapshot install, the shell's half: serving a FETCH from the block store and checking a
transferred block before it is stored (the node's half, deciding what to fetch from whom, is
in crashft/node.py).

The ledger is the application state's history, so a snapshot never copies state: a follower
that lacks compacted entries fetches the blocks it is missing, in bounded chunks, and
re-executes each one. A block is accepted only if re-executing its transactions on top of our
head, with its (term, index, proposed_ms) metadata, reproduces exactly the header the leader
sent (previous hash, state root, receipts root: so the hash chain and the state are ours), and
its certificate is the one for that (term, index, batch digest).
"""

from __future__ import annotations

from collections.abc import Callable

from consortium.crashft.messages import BLOCKS_PER_REPLY_MAX, Blocks, TransferredBlock, encode
from consortium.crypto.codec import WireFormatError
from consortium.ledger.block import Block, BlockHeader, batch_digest
from consortium.ledger.certificates import RaftEntryCertificate
from consortium.ledger.state import Application, Execution, build_block

REPLY_OVERHEAD_BYTES = 64 * 1024  # headers, certificates and framing of one reply, at most


def blocks_reply(
    term: int,
    from_height: int,
    to_height: int,
    count: int,
    bytes_max: int,
    block_at: Callable[[int], TransferredBlock | None],
) -> bytes:
    """The BLOCKS frame for heights from_height..to_height: at least one block when there is
    one, then as many as fit `bytes_max` of encoded transactions and `count` blocks."""
    blocks: list[TransferredBlock] = []
    size = 0
    height = from_height
    budget = max(1, bytes_max - REPLY_OVERHEAD_BYTES)
    while height <= to_height and len(blocks) < min(count, BLOCKS_PER_REPLY_MAX):
        block = block_at(height)
        if block is None:
            break
        block_size = 16 + sum(t.size + 8 for t in block.txs)
        if blocks and size + block_size > budget:
            break
        blocks.append(block)
        size += block_size
        height += 1
    return encode(Blocks(term, tuple(blocks)))


def replay_block(
    head: BlockHeader, transferred: TransferredBlock, app: Application
) -> tuple[Block, Execution, tuple[int, int]] | str:
    """Re-execute a transferred block on top of `head`: (block, execution, (term, index)), or
    what is wrong with it. Pure with respect to `app` (the caller applies the execution)."""
    header = transferred.header
    cons = header.consensus
    if (
        len(cons) != 4
        or cons[0] != "raft"
        or not all(isinstance(x, int) and not isinstance(x, bool) for x in cons[1:])
    ):
        return f"block {header.height}: consensus metadata {list(cons)!r} is not raft's"
    term, index, proposed_ms = int(cons[1]), int(cons[2]), int(cons[3])
    if header.height != head.height + 1:
        return f"block {header.height} does not follow our head at {head.height}"
    try:
        cert = RaftEntryCertificate.decode(transferred.certificate)
    except WireFormatError as exc:
        return f"block {header.height}: certificate does not decode ({exc})"
    digest = batch_digest(proposed_ms, [t.id for t in transferred.txs])
    if (cert.term, cert.index, cert.digest) != (term, index, digest):
        return f"block {header.height}: certificate is not for (term {term}, index {index})"
    block, execution = build_block(
        head, ("raft", term, index, proposed_ms), proposed_ms, transferred.txs, app
    )
    if block.hash != header.hash:
        return (
            f"block {header.height}: re-executing it gives block hash {block.hash.hex()[:12]}, "
            f"the leader sent {header.hash.hex()[:12]}"
        )
    return block, execution, (term, index)
