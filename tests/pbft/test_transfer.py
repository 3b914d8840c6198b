"""Serving state transfer (pbft/transfer.py): every BLOCKS answer decodes at the asker, with
full blocks at the default parameters too (found in review: the answer was budgeted on
transaction bytes alone and outgrew the decode limit, so catch-up stalled for ever)."""

from __future__ import annotations

from pbft_harness import Group

from consortium.crypto.keys import KeyPair
from consortium.ledger.block import batch_digest
from consortium.ledger.certificates import CommitCertificate
from consortium.ledger.genesis import Params
from consortium.ledger.tx import Put, Transaction
from consortium.node.sim.cluster import EPOCH_MS, workload
from consortium.pbft.messages import (
    Blocks,
    Commit,
    TransferredBlock,
    decode,
    frame_bytes_limit,
)
from consortium.pbft.transfer import blocks_reply

DEFAULT = Params()


def block(group: Group, seq: int, txs: tuple[Transaction, ...]) -> TransferredBlock:
    digest = batch_digest(1, [t.id for t in txs])
    votes = tuple(
        Commit.create(group.signers[s], group.chain_id, 0, seq, digest, s).vote()
        for s in range(group.n)  # more than Q: as large as a certificate gets here
    )
    return TransferredBlock(
        proposed_ms=1, txs=txs, certificate=CommitCertificate(0, seq, digest, votes)
    )


def reply(group: Group, from_seq: int, height: int, blocks: dict[int, TransferredBlock]) -> Blocks:
    frame = blocks_reply(
        group.signers[0], group.chain_id, 0, DEFAULT, from_seq, height, None, blocks.get
    )
    assert len(frame) <= frame_bytes_limit(DEFAULT)
    msg = decode(frame, DEFAULT)  # raises WireFormatError if the asker would refuse it
    assert isinstance(msg, Blocks)
    return msg


def test_full_blocks_at_the_default_parameters_travel_in_answers_the_asker_decodes() -> None:
    group = Group(params=DEFAULT)
    txs = workload(group.chain_id, DEFAULT.batch_txs_max)  # 512 transactions per block
    height = DEFAULT.window
    blocks = {seq: block(group, seq, txs) for seq in range(1, height + 1)}
    seq, answers = 1, 0
    while seq <= height:
        msg = reply(group, seq, height, blocks)
        assert msg.blocks and msg.blocks[0].seq == seq
        seq += len(msg.blocks)
        answers += 1
    assert answers > 1  # they did not all fit one: the budget cut the answer


def test_a_worst_case_block_fits_one_answer_alone() -> None:
    """512 transactions whose sizes add up to batch_bytes_max exactly, under a certificate of
    every member's COMMIT, plus the next block: the first must still travel, alone."""
    group = Group(params=DEFAULT)
    client = KeyPair.from_seed(b"transfer-worst-case".ljust(32, b"\x00"))
    count = DEFAULT.batch_txs_max
    per_tx = DEFAULT.batch_bytes_max // count

    def tx(i: int, size: int) -> Transaction:
        probe = Transaction.create(
            client, group.chain_id, b"%d" % i, EPOCH_MS + 60_000, [Put(b"k", b"")]
        )
        value = b"v" * (size - probe.size - 1)  # (its bin header grows from 2 to 3 bytes)
        made = Transaction.create(
            client, group.chain_id, b"%d" % i, EPOCH_MS + 60_000, [Put(b"k", value)]
        )
        assert made.size == size, made.size
        return made

    txs = tuple(tx(i, per_tx) for i in range(count))
    assert sum(t.size for t in txs) == DEFAULT.batch_bytes_max
    blocks = {1: block(group, 1, txs), 2: block(group, 2, txs)}
    msg = reply(group, 1, 2, blocks)
    assert [b.seq for b in msg.blocks] == [1]
