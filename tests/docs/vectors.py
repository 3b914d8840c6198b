"""Worked test vectors for docs/protocol.md and docs/ledger-format.md.

Everything here is built from fixed inputs (literal key seeds, nonces, timestamps), so the
values are the same on every run and in every language: Ed25519 signatures are deterministic.
The docs print these values in ```vectors blocks, one `name  hex` per line (long values wrap
onto indented continuation lines); tests/docs/test_*_vectors.py read them back out of the
docs and compare, so a doc cannot drift from the code, nor the code from the doc.

Run `python tests/docs/vectors.py` to print every vector in the docs' format, or with
`--write` to rewrite the values in the docs' existing ```vectors blocks (after a deliberate
format change; the blocks keep their names and order, and the diff shows what moved).
"""

from __future__ import annotations

import re
from pathlib import Path

from consortium.crashft import messages as raft_messages
from consortium.crypto.codec import pack
from consortium.crypto.keys import KeyPair
from consortium.crypto.merkle import inclusion_proof, leaf_hash, merkle_root
from consortium.crypto.signing import Domain, Ed25519Signer, signed_message
from consortium.ledger.admission import ClientChange
from consortium.ledger.block import Block, batch_digest, genesis_block
from consortium.ledger.certificates import (
    SignedVote,
    block_signature_body,
    checkpoint_body,
    commit_body,
    raft_entry_body,
)
from consortium.ledger.genesis import Client, Genesis, Member, Params
from consortium.ledger.membership import genesis_configuration
from consortium.ledger.state import Execution, KeyValueState, build_block
from consortium.ledger.tx import Op, Put, Transaction
from consortium.node.transport import handshake_transcript
from consortium.pbft.messages import ViewQuery, ViewReport
from consortium.pbft.messages import encode as pbft_encode
from consortium.protocol.framing import encode_frame
from consortium.protocol.messages import transfer_body
from consortium.protocol.verify import read_body, receipt_bundle

DOCS = Path(__file__).resolve().parents[2] / "docs"

# --- fixed inputs (printed in the docs) -----------------------------------------------------

MEMBER_SEEDS = {f"n{i}": bytes([0x11 * i]) * 32 for i in range(1, 5)}  # 1111.., 2222.., ...
CLIENT_SEED = bytes([0xC1]) * 32
CREATED_MS = 1_700_000_000_000
PROPOSED_MS = 1_700_000_001_000  # block 1's proposed timestamp
EXPIRY_MS = 1_700_000_060_000
TX_NONCES = (bytes([0x01]) * 16, bytes([0x02]) * 16, bytes([0x03]) * 16)
TX_OPS: tuple[list[Op], ...] = (
    [Put(b"greeting", b"hello")],
    [Put(b"colour", b"blue")],
    [Put(b"greeting", b"hi")],
)
HANDSHAKE_NONCE = bytes([0xAA]) * 32
RECOVERY_NONCE = bytes([0x5E]) * 16  # a recovering member's VIEW-QUERY / TERM-QUERY nonce
TRANSFER_NONCE = bytes([0x3C]) * 16  # the nonce a client drew for a leadership transfer request
FOLLOWER_WALL_MS = 1_700_000_002_000  # a raft follower's clock in its replies
# The leaves of Certificate Transparency's RFC 6962 Merkle tree tests.
CT_LEAVES = [
    bytes.fromhex(x)
    for x in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]


def member_keys() -> list[KeyPair]:
    return [KeyPair.from_seed(seed) for seed in MEMBER_SEEDS.values()]


def client_key() -> KeyPair:
    return KeyPair.from_seed(CLIENT_SEED)


def vector_genesis() -> Genesis:
    return Genesis(
        chain_name="vectors",
        mode="pbft",
        created_ms=CREATED_MS,
        members=tuple(
            Member(i, name, k.public, f"127.0.0.1:{7101 + i}", f"127.0.0.1:{7201 + i}")
            for i, (name, k) in enumerate(zip(MEMBER_SEEDS, member_keys(), strict=True))
        ),
        clients=(Client("c1", client_key().public),),
        params=Params(),
    )


def vector_txs(genesis: Genesis) -> list[Transaction]:
    return [
        Transaction.create(client_key(), genesis.chain_id, nonce, EXPIRY_MS, ops)
        for nonce, ops in zip(TX_NONCES, TX_OPS, strict=True)
    ]


def protocol_vectors() -> dict[str, bytes]:
    g = vector_genesis()
    chain_id = g.chain_id
    txs = vector_txs(g)
    tx = txs[0]
    n1 = Ed25519Signer(member_keys()[0])
    block, _ = _block1(g, txs)
    sig_body = block_signature_body(1, block.hash, 0)
    tree_leaves = [r.encode() for r in block.receipts]
    change = ClientChange.create(
        chain_id,
        "admit",
        bytes.fromhex(_NEW_CLIENT),
        "acme-app",
        bytes([0x05]) * 16,
        EXPIRY_MS,
        created_ms=EXPIRY_MS - 3_600_000,
    )
    read = read_body(b"greeting", b"hi", 1, block.hash, 0)
    transfer = transfer_body(1, 3, member_keys()[0].public, 0, TRANSFER_NONCE)
    transcript = handshake_transcript(HANDSHAKE_NONCE, 0, 1, "listener")
    return {
        "client.public_key": client_key().public,
        "chain_id": chain_id,
        "tx.body": tx.body,
        "tx.id": tx.id,
        "tx.signed_bytes": signed_message(Domain.TX, chain_id, tx.body),
        "tx.signature": tx.signature,
        "tx.wire": tx.encode(),
        "tx2.id": txs[1].id,
        "tx3.id": txs[2].id,
        "submit.frame": encode_frame(pack(["submit", 1, [tx.to_array()]])),
        "receipt1.encoding": tree_leaves[0],
        "receipt1.leaf_hash": leaf_hash(tree_leaves[0]),
        "receipt1.proof.0": inclusion_proof(tree_leaves, 0)[0],
        "receipt1.proof.1": inclusion_proof(tree_leaves, 0)[1],
        "block1.hash": block.hash,
        "block1.receipts_root": block.header.receipts_root,
        "block_signature.body": sig_body,
        "block_signature.signature": n1.sign(Domain.BLOCK, chain_id, sig_body),
        "bundle1": receipt_bundle(
            block.header,
            block.receipts,
            0,
            SignedVote(sig_body, n1.sign(Domain.BLOCK, chain_id, sig_body)),
        ).encode(),
        "read.body": read,
        "read.signature": n1.sign(Domain.READ, chain_id, read),
        "change.body": change.body,
        "change.id": change.id,
        "change.approval_by_n1": change.approve(n1)[1],
        "handshake.transcript": transcript,
        "handshake.signature_by_n2": Ed25519Signer(member_keys()[1]).sign(
            Domain.HANDSHAKE, chain_id, transcript
        ),
        "transfer.body": transfer,
        "transfer.signature_by_n1": n1.sign(Domain.MAINTENANCE, chain_id, transfer),
        "raft.timeout_now": raft_messages.encode(raft_messages.TimeoutNow(3, 7)),
        # n1 recovers from a restored backup: it asks n2 for its view, n2 (in view 2, having
        # executed block 1) answers; raft: the same question and answer for the term.
        "viewquery.frame": pbft_encode(ViewQuery.create(n1, chain_id, RECOVERY_NONCE, 0)),
        "viewreport.frame": pbft_encode(
            ViewReport.create(Ed25519Signer(member_keys()[1]), chain_id, RECOVERY_NONCE, 2, 1, 1)
        ),
        "term_query.frame": raft_messages.encode(raft_messages.TermQuery(RECOVERY_NONCE)),
        "term_report.frame": raft_messages.encode(
            raft_messages.TermReport(RECOVERY_NONCE, 7, False)
        ),
        "raft.append_reply": raft_messages.encode(
            raft_messages.AppendReply(3, True, 7, 0, FOLLOWER_WALL_MS, 2)
        ),
        "raft.heartbeat_reply": raft_messages.encode(
            raft_messages.HeartbeatReply(3, 5, FOLLOWER_WALL_MS, False, 2)
        ),
        # a candidate of term 4 whose log ends at (index 7, term 3), at applied epoch 2
        "raft.vote": raft_messages.encode(raft_messages.Vote(4, 7, 3, False, False, 2)),
    }


_NEW_CLIENT = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"  # RFC 8032 key 1


def _block1(g: Genesis, txs: list[Transaction]) -> tuple[Block, Execution]:
    prev = genesis_block(g).header
    app = KeyValueState.for_genesis(g, prev.state_root)
    return build_block(prev, ("pbft", 1, PROPOSED_MS), PROPOSED_MS, tuple(txs), app)


def ledger_vectors() -> dict[str, bytes]:
    g = vector_genesis()
    chain_id = g.chain_id
    txs = vector_txs(g)
    g0 = genesis_block(g).header
    block, execution = _block1(g, txs)
    h = block.header
    digest = batch_digest(PROPOSED_MS, [t.id for t in txs])
    state_preimage = pack(
        [
            "state",
            g0.state_root,
            [[k, execution.writes[k]] for k in sorted(execution.writes)],
            [tid for tid, _ in execution.consumed],
        ]
    )
    config = genesis_configuration(g)
    return {
        "genesis.canonical": pack(g.as_array()),
        "chain_id": chain_id,
        "genesis.state_root": g0.state_root,
        "genesis.header": g0.encode(),
        "genesis.hash": g0.hash,
        "config.genesis": config.encode(),
        "config.genesis_digest": config.digest,
        "block1.tx_root": h.tx_root,
        "block1.state_preimage": state_preimage,
        "block1.state_root": h.state_root,
        "block1.receipts_root": h.receipts_root,
        "block1.header": h.encode(),
        "block1.hash": h.hash,
        "batch.digest": digest,
        "commit.body": commit_body(0, 0, 1, digest, 0),
        "checkpoint.body": checkpoint_body(0, 1, h.hash, 0),
        "raft_entry.body": raft_entry_body(3, 7, digest, 0),
        "ct.root8": merkle_root(CT_LEAVES),
        "ct.root5": merkle_root(CT_LEAVES[:5]),
        "ct.leaf_hash0": leaf_hash(CT_LEAVES[0]),
        **{f"ct.proof8_5.{i}": p for i, p in enumerate(inclusion_proof(CT_LEAVES, 5))},
    }


# --- reading the docs -----------------------------------------------------------------------

_FENCE = re.compile(r"^```vectors\s*$\n(.*?)^```\s*$", re.M | re.S)
_LINE = re.compile(r"^([a-z0-9_.]+)\s+([0-9a-f]+)\s*$")
_MORE = re.compile(r"^\s+([0-9a-f]+)\s*$")


def doc_vectors(text: str) -> dict[str, bytes]:
    """Every `name  hex` in the ```vectors blocks of a doc; raises ValueError on a line that is
    neither a vector nor a continuation, or on a name given twice."""
    found: dict[str, str] = {}
    for block in _FENCE.findall(text):
        name = ""
        for line in block.splitlines():
            if not line.strip():
                continue
            if m := _LINE.match(line):
                name = m.group(1)
                if name in found:
                    raise ValueError(f"vector {name!r} appears twice")
                found[name] = m.group(2)
            elif (m := _MORE.match(line)) and name:
                found[name] += m.group(1)
            else:
                raise ValueError(f"not a vector line: {line!r}")
    return {k: bytes.fromhex(v) for k, v in found.items()}


def format_vectors(values: dict[str, bytes], width: int = 64) -> str:
    """The docs' format: the name, then the hex wrapped at `width` digits."""
    pad = max(len(k) for k in values) + 2
    lines = []
    for name, value in values.items():
        hexed = value.hex()
        chunks = [hexed[i : i + width] for i in range(0, len(hexed), width)] or [""]
        lines.append(f"{name:<{pad}}{chunks[0]}")
        lines.extend(" " * pad + c for c in chunks[1:])
    return "\n".join(lines)


def rewrite_doc(text: str, values: dict[str, bytes]) -> str:
    """`text` with every ```vectors block's values replaced by `values` (same names, same
    order, the block's own alignment)."""

    def one(match: re.Match[str]) -> str:
        names = [m.group(1) for line in match.group(1).splitlines() if (m := _LINE.match(line))]
        return "```vectors\n" + format_vectors({n: values[n] for n in names}) + "\n```\n"

    return _FENCE.sub(one, text)


if __name__ == "__main__":
    import sys

    docs = {"protocol.md": protocol_vectors(), "ledger-format.md": ledger_vectors()}
    for doc_name, doc_values in docs.items():
        if "--write" in sys.argv:
            path = DOCS / doc_name
            path.write_text(rewrite_doc(path.read_text(), doc_values))
        else:
            print(f"# {doc_name}\n{format_vectors(doc_values)}\n")
