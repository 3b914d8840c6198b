"""Serving state transfer: the shell's half of FETCH / BLOCKS (the core's half, choosing whom
to ask and checking every block by its commit certificate, is in pbft/replica.py).

A replica asks one peer at a time for the blocks from a sequence number; the peer answers with
as many consecutive committed batches, each with its commit certificate, as fit one message
(the encoded frame within messages.frame_bytes_limit, the size the asker decodes; at most
params.window blocks, always at least one, which fits: a full batch with its framing and a
certificate is what that limit is made of), plus its latest stable checkpoint certificate,
which lets the asker move its window, and its ledger height, which says how far it claims to
be. Nothing in an answer is trusted for being in it: the asker checks each block's certificate
and digest, and an answer with fewer blocks than fit while its sender claims more is slow: the
asker's next FETCH goes to another member.

What a peer may make us send is budgeted in bytes (pbft/replica.py, SERVED_FRAMES_PER_INTERVAL):
the core grants each FETCH at most `bytes_max` (Serve.bytes_max) and the answer stops there,
still carrying at least one block; the shell reports the frame's size back (served()).
"""

from __future__ import annotations

from collections.abc import Callable

from consortium.crypto.codec import pack
from consortium.crypto.signing import Signer
from consortium.ledger.certificates import CheckpointCertificate
from consortium.ledger.genesis import Params
from consortium.pbft.messages import Blocks, TransferredBlock, encode, frame_bytes_limit


def blocks_reply(
    signer: Signer,
    chain_id: bytes,
    me: int,
    params: Params,
    from_seq: int,
    height: int,
    stable: CheckpointCertificate | None,
    block_at: Callable[[int], TransferredBlock | None],
    bytes_max: int | None = None,
    *,
    epoch: int = 0,
    last_seq: int | None = None,
) -> bytes:
    """The BLOCKS frame answering FETCH(from_seq), read through block_at(seq): within
    `bytes_max` (the peer's budget; None: one frame) except that it always carries one block.
    `epoch`: the sender's; `last_seq`: the last block it may carry (an epoch boundary E: an
    answer never spans two configurations, pbft/epochs.py)."""
    blocks: list[TransferredBlock] = []
    # What the answer costs without blocks, plus the blocks list's own header (array32 at most).
    size = (
        len(encode(Blocks.create(signer, chain_id, from_seq, height, stable, (), me, epoch=epoch)))
        + 5
    )
    limit = frame_bytes_limit(params)
    if bytes_max is not None:
        limit = min(limit, bytes_max)
    seq = from_seq
    last = height if last_seq is None else min(height, last_seq)
    while seq <= last and len(blocks) < params.window:
        block = block_at(seq)
        if block is None:
            break
        # The exact encoded size: transactions, their framing and the commit certificate.
        block_size = len(pack(block.to_array()))
        if blocks and size + block_size > limit:
            break
        blocks.append(block)
        size += block_size
        seq += 1
    return encode(
        Blocks.create(signer, chain_id, from_seq, height, stable, tuple(blocks), me, epoch=epoch)
    )
