"""Build real ledgers for tests: 4 members, one client, real Ed25519 everywhere.

`ChainBuilder` executes batches with build_block on top of genesis_block, exactly as a replica
does, and gives each pbft block a commit certificate signed by a quorum of members (COMMITs over
commit_body in Domain.PBFT). Raft geneses get ("raft", term, index, proposed_ms) metadata and the
leader's (member 0's) entry certificate over (chain id, term, index, batch digest).
`block_signatures` and `checkpoint` sign what replicas store beside blocks.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from consortium.crypto.keys import KeyPair
from consortium.crypto.signing import Domain, Ed25519Signer
from consortium.ledger.audit import stored_replay
from consortium.ledger.block import Block, batch_digest, genesis_block, genesis_state_root
from consortium.ledger.certificates import (
    CheckpointCertificate,
    CommitCertificate,
    RaftEntryCertificate,
    SignedVote,
    block_signature_body,
    checkpoint_body,
    commit_body,
    raft_entry_body,
)
from consortium.ledger.genesis import Client, Genesis, Member, Mode, Params
from consortium.ledger.state import Execution, KeyValueState, build_block
from consortium.ledger.store import BlockStore
from consortium.ledger.tx import Op, Put, Transaction

MEMBERS = [KeyPair.from_seed(hashlib.sha256(b"member %d" % i).digest()) for i in range(4)]
CLIENT = KeyPair.from_seed(hashlib.sha256(b"client").digest())
CREATED_MS = 1_700_000_000_000
QUORUM = (0, 1, 2)


def make_genesis(params: Params | None = None, mode: Mode = "pbft") -> Genesis:
    return Genesis(
        chain_name="test",
        mode=mode,
        created_ms=CREATED_MS,
        members=tuple(
            Member(i, f"n{i + 1}", k.public, f"127.0.0.1:{9100 + i}", f"127.0.0.1:{9200 + i}")
            for i, k in enumerate(MEMBERS)
        ),
        clients=(Client("c1", CLIENT.public),),
        params=params or Params(),
    )


def vote(genesis: Genesis, domain: Domain, body: bytes, signer: int) -> SignedVote:
    return SignedVote(body, Ed25519Signer(MEMBERS[signer]).sign(domain, genesis.chain_id, body))


def certificate(
    genesis: Genesis, seq: int, digest: bytes, signers: tuple[int, ...] = QUORUM, view: int = 0
) -> CommitCertificate:
    votes = tuple(
        vote(genesis, Domain.PBFT, commit_body(0, view, seq, digest, s), s) for s in signers
    )
    return CommitCertificate(view, seq, digest, votes)


def checkpoint(
    genesis: Genesis, seq: int, block_hash: bytes, signers: tuple[int, ...] = QUORUM
) -> CheckpointCertificate:
    votes = tuple(
        vote(genesis, Domain.PBFT, checkpoint_body(0, seq, block_hash, s), s) for s in signers
    )
    return CheckpointCertificate(seq, block_hash, votes)


def block_signatures(
    genesis: Genesis, block: Block, signers: tuple[int, ...] = (0, 1)
) -> list[SignedVote]:
    return [
        vote(genesis, Domain.BLOCK, block_signature_body(block.height, block.hash, s), s)
        for s in signers
    ]


@dataclass
class ChainBuilder:
    genesis: Genesis = field(default_factory=make_genesis)
    blocks: list[tuple[Block, Execution, bytes | None]] = field(default_factory=list)
    nonce: int = 0

    def __post_init__(self) -> None:
        self.head = genesis_block(self.genesis).header
        self.app = KeyValueState.for_genesis(
            self.genesis, genesis_state_root(self.genesis.chain_id)
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
        """Execute `txs` as the next block, apply it, and keep (block, execution, cert)."""
        seq = self.head.height + 1
        ts = proposed_ms if proposed_ms is not None else CREATED_MS + seq
        consensus: tuple[str | int, ...]
        if self.genesis.mode == "raft":
            consensus = ("raft", 1, seq + 1, ts)  # entry 1 is the leader's no-op
        else:
            consensus = ("pbft", seq, ts)
        block, execution = build_block(self.head, consensus, ts, tuple(txs), self.app)
        self.app.apply(execution)
        cert: bytes | None = None
        digest = batch_digest(ts, [t.id for t in txs])
        if self.genesis.mode == "pbft":
            cert = certificate(self.genesis, seq, digest).encode()
        else:
            body = raft_entry_body(1, seq + 1, digest, 0)
            signature = Ed25519Signer(MEMBERS[0]).sign(
                Domain.RAFT_ENTRY, self.genesis.chain_id, body
            )
            cert = RaftEntryCertificate(1, seq + 1, digest, 0, signature).encode()
        self.blocks.append((block, execution, cert))
        self.head = block.header
        return block

    def add_puts(self, count: int) -> Block:
        return self.add([self.tx(Put(b"k%d" % i, b"value %d" % i)) for i in range(count)])


def build_chain(
    blocks: int, *, salt: bytes = b"", txs_per_block: int = 3, genesis: Genesis | None = None
) -> ChainBuilder:
    """A chain of `blocks` blocks of `txs_per_block` puts each; another `salt` makes another
    chain from the same genesis (a fork)."""
    builder = ChainBuilder(genesis=genesis or make_genesis())
    for h in range(blocks):
        builder.add(
            [builder.tx(Put(b"k%d-%d%s" % (h, i, salt), b"v")) for i in range(txs_per_block)]
        )
    return builder


def stored_state(store: BlockStore) -> tuple[dict[bytes, bytes], dict[bytes, int]]:
    """What `store` holds as its state (its kv table, its unexpired replay set): the tables its
    app reads through."""
    db = store._db
    kv = {bytes(k): bytes(v) for k, v in db.execute("SELECT key, value FROM kv")}
    return kv, stored_replay(db, store.head.timestamp_ms)


def same_state(store: BlockStore, app: KeyValueState) -> bool:
    """The store's app answers exactly as `app` (in-memory) for every key and id `app` holds, and
    the store's tables hold exactly `app`'s state."""
    assert isinstance(app.kv, dict) and isinstance(app.replay, dict)
    kv, replay = stored_state(store)
    return (
        kv == app.kv
        and replay == app.replay
        and all(store.app.kv.get(k) == v for k, v in app.kv.items())
        and all(store.app.replay.get(t) == e for t, e in app.replay.items())
    )
