"""The largest client frames, for genesis validation (node/genesis.py frame_size_problem):
params.frame_bytes_max must let every member and client get them through."""

from __future__ import annotations

from consortium.crypto.codec import array_header_bytes, pack
from consortium.ledger.block import BlockHeader, Receipt
from consortium.ledger.certificates import (
    CommitCertificate,
    SignedVote,
    block_signature_body,
    commit_body,
)
from consortium.ledger.genesis import Mode, Params, full_batch_frame_fix
from consortium.ledger.tx import batch_wire_bytes_max, tx_wire_bytes_max


def worst_case_frames(params: Params, n: int, mode: Mode) -> dict[str, int]:
    """The largest client frames that any member or client must get through
    params.frame_bytes_max (the client port's frame limit), from the real encodings with every
    integer at its largest: a submit of the largest transaction, and the reply to "block" for
    a block of a full batch (its header, transactions, a receipt per transaction with the
    longest reason a receipt decodes with, the certificate, n block signatures; signers at the
    largest member id, 65,535). Receipts of reads (`get` results) are left out: a read's value
    is bounded per operation (value_bytes_max), not per frame."""
    top, digest = 2**63 - 1, bytes(32)
    batch = batch_wire_bytes_max(params)
    consensus: tuple[str | int, ...] = (
        ("pbft", top, top) if mode == "pbft" else ("raft", top, top, top)
    )
    header = BlockHeader(digest, top, digest, top, digest, digest, digest, consensus)
    receipt = len(Receipt(digest, "rejected", "r" * 64, (), top, top).encode())
    if mode == "pbft":
        commit = SignedVote(commit_body(top, top, top, digest, 65535), bytes(64))
        certificate = CommitCertificate(top, top, digest, (commit,) * n).encode()
    else:
        certificate = bytes(256)
    signature = SignedVote(block_signature_body(top, digest, 65535), bytes(64)).to_array()
    block = pack([top, "ok", [header.to_array(), [], [], certificate, [signature] * n]])
    count = params.batch_txs_max
    receipts = array_header_bytes(count) + count * receipt
    return {
        "submit": len(pack(["submit", top, []])) + tx_wire_bytes_max(params),
        "block": len(block) - 2 + batch + receipts,  # (its two empty arrays, filled)
    }


def frame_size_problem(params: Params, n: int, mode: Mode) -> str | None:
    """Why a client could not exchange its largest frames with n members of `mode` with these
    parameters (worst_case_frames against params.frame_bytes_max), if it could not; None when
    it can. node/genesis.py asks it of every genesis, after the consensus frames."""
    frame_max = params.frame_bytes_max
    client = worst_case_frames(params, n, mode)
    if client["submit"] > frame_max:
        return (
            f"a client's submit of the largest transaction can take {client['submit']:,} bytes, "
            f"more than params.frame_bytes_max ({frame_max:,}): raise params.frame_bytes_max "
            "or lower params.tx_bytes_max"
        )
    if client["block"] > frame_max:
        return (
            f"a block of a full batch sent to a client can take {client['block']:,} bytes, more "
            f"than params.frame_bytes_max ({frame_max:,}): " + full_batch_frame_fix(client["block"])
        )
    return None
