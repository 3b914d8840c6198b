"""Build real ledgers for tests: 4 members, one client, blocks with real commit certificates."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from consortium.crypto.keys import KeyPair
from consortium.crypto.signing import Domain, Ed25519Signer
from consortium.ledger.block import Block, batch_digest, genesis_block, genesis_state_root
from consortium.ledger.certificates import CommitCertificate, SignedVote, commit_body
from consortium.ledger.genesis import Client, Genesis, Member, Params
from consortium.ledger.state import Execution, KeyValueState, build_block
from consortium.ledger.tx import Op, Put, Transaction

MEMBERS = [KeyPair.from_seed(hashlib.sha256(b"member %d" % i).digest()) for i in range(4)]
CLIENT = KeyPair.from_seed(hashlib.sha256(b"client").digest())
CREATED_MS = 1_700_000_000_000


def make_genesis(params: Params | None = None) -> Genesis:
    return Genesis(
        chain_name="test",
        mode="pbft",
        created_ms=CREATED_MS,
        members=tuple(
            Member(i, f"n{i + 1}", k.public, f"127.0.0.1:{9100 + i}", f"127.0.0.1:{9200 + i}")
            for i, k in enumerate(MEMBERS)
        ),
        clients=(Client("c1", CLIENT.public),),
        params=params or Params(),
    )


def certificate(
    genesis: Genesis, seq: int, digest: bytes, signers: tuple[int, ...] = (0, 1, 2)
) -> CommitCertificate:
    votes = []
    for s in signers:
        body = commit_body(0, seq, digest, s)
        votes.append(
            SignedVote(body, Ed25519Signer(MEMBERS[s]).sign(Domain.PBFT, genesis.chain_id, body))
        )
    return CommitCertificate(0, seq, digest, tuple(votes))


@dataclass
class ChainBuilder:
    genesis: Genesis = field(default_factory=make_genesis)
    blocks: list[tuple[Block, Execution, bytes | None]] = field(default_factory=list)
    nonce: int = 0

    def __post_init__(self) -> None:
        self.head = genesis_block(self.genesis).header
        self.app = KeyValueState(
            self.genesis.chain_id,
            self.genesis.params,
            self.genesis.client_keys(),
            genesis_state_root(self.genesis.chain_id),
        )

    def tx(self, *ops: Op, expiry_ms: int | None = None, signer: KeyPair = CLIENT) -> Transaction:
        self.nonce += 1
        return Transaction.create(
            signer,
            self.genesis.chain_id,
            b"%d" % self.nonce,
            expiry_ms if expiry_ms is not None else CREATED_MS + 60_000,
            list(ops),
        )

    def add(self, txs: list[Transaction], proposed_ms: int | None = None) -> Block:
        seq = self.head.height + 1
        ts = proposed_ms if proposed_ms is not None else CREATED_MS + seq
        block, execution = build_block(self.head, ("pbft", seq, ts), ts, tuple(txs), self.app)
        self.app.apply(execution)
        cert = certificate(self.genesis, seq, batch_digest(ts, [t.id for t in txs]))
        self.blocks.append((block, execution, cert.encode()))
        self.head = block.header
        return block

    def add_puts(self, count: int) -> Block:
        return self.add([self.tx(Put(b"k%d" % i, b"value %d" % i)) for i in range(count)])
