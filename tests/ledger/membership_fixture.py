"""Ledgers whose members change, for tests: real Ed25519 everywhere, as chain_fixture.py.

`MemberChain` is a ChainBuilder whose certificates are signed by the configuration that orders
each height (config(h), KeyValueState.config_at): the first quorum of its voters by id. Votes
of epoch 0 have today's bodies (or tagged ones: `legacy`); from epoch 1 on they carry the epoch
as their second field (docs/design/membership.md 3.1). Raft blocks are led by the first voter
of config(h).
`v2_change`, `v2_tx` build v2 changes approved and proven as execution wants them, with knobs
to break each part.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from consortium.crypto.codec import pack
from consortium.crypto.keys import KeyPair
from consortium.crypto.signing import Domain, Ed25519Signer
from consortium.ledger.admission import Approval
from consortium.ledger.block import Block, batch_digest, genesis_state_root
from consortium.ledger.certificates import (
    CheckpointCertificate,
    CommitCertificate,
    RaftEntryCertificate,
    SignedVote,
    block_signature_body,
    legacy_checkpoint_body,
    legacy_commit_body,
    raft_entry_body,
)
from consortium.ledger.genesis import Mode, Params
from consortium.ledger.membership import (
    AddMember,
    ChangeOp,
    ChangeV2,
    Configuration,
    Kind,
    Possession,
)
from consortium.ledger.state import KeyValueState, build_block
from consortium.ledger.tx import ConfigChangeV2, Transaction
from tests.ledger.chain_fixture import CLIENT, CREATED_MS, MEMBERS, ChainBuilder, make_genesis

K = 4  # checkpoint interval
L = 8  # window
PARAMS = Params(checkpoint_interval=K, window=L)
SPARES = [KeyPair.from_seed(hashlib.sha256(b"spare member %d" % i).digest()) for i in range(8)]
KEYS: dict[bytes, KeyPair] = {k.public: k for k in [*MEMBERS, *SPARES, CLIENT]}
HOUR_MS = 3_600_000


def signer(key: bytes) -> Ed25519Signer:
    return Ed25519Signer(KEYS[key])


def commit_vote_body(
    config: Configuration, seq: int, digest: bytes, sender: int, *, legacy: bool = True
) -> bytes:
    """`legacy`: today's body at epoch 0 (else the epoch-tagged one there too)."""
    if config.epoch == 0 and legacy:
        return legacy_commit_body(0, seq, digest, sender)
    return pack(["commit", config.epoch, 0, seq, digest, sender])


def checkpoint_vote_body(
    config: Configuration, seq: int, block_hash: bytes, sender: int, *, legacy: bool = True
) -> bytes:
    if config.epoch == 0 and legacy:
        return legacy_checkpoint_body(seq, block_hash, sender)
    return pack(["checkpoint", config.epoch, seq, block_hash, sender])


def add_op(i: int, name: str | None = None, key: bytes | None = None) -> AddMember:
    return AddMember(
        name or f"s{i}",
        SPARES[i].public if key is None else key,
        f"127.0.0.1:{9300 + i}",
        f"127.0.0.1:{9400 + i}",
    )


@dataclass
class MemberChain(ChainBuilder):
    """A ChainBuilder whose certificates follow the configuration of each height."""

    signers: tuple[int, ...] | None = None  # voters (ids) who sign; None: the first quorum
    certificates: dict[int, bytes] = field(default_factory=dict)
    # Epoch 0's votes with today's bodies (as stored before the upgrade); False: epoch-tagged,
    # as every member signs them after it.
    legacy: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        # Member changes are gated off in this release (KeyValueState.member_changes); these
        # chains exercise them.
        self.app = KeyValueState.for_genesis(
            self.genesis, genesis_state_root(self.genesis.chain_id), member_changes=True
        )

    def config_at(self, height: int) -> Configuration:
        return self.app.config_at(height)

    def quorum_ids(self, config: Configuration) -> tuple[int, ...]:
        if self.signers is not None:
            return self.signers
        return tuple(m.id for m in config.voters[: config.quorum])

    def add(self, txs: list[Transaction], proposed_ms: int | None = None) -> Block:
        seq = self.head.height + 1
        config = self.config_at(seq)
        ts = proposed_ms if proposed_ms is not None else CREATED_MS + seq
        leader = config.voters[0]
        consensus: tuple[str | int, ...]
        if self.genesis.mode == "raft":
            consensus = ("raft", 1, seq + 1, ts)
        else:
            consensus = ("pbft", seq, ts)
        block, execution = build_block(self.head, consensus, ts, tuple(txs), self.app)
        self.app.apply(execution)
        digest = batch_digest(ts, [t.id for t in txs])
        chain_id = self.genesis.chain_id
        if self.genesis.mode == "pbft":
            votes = []
            for i in self.quorum_ids(config):
                body = commit_vote_body(config, seq, digest, i, legacy=self.legacy)
                key = config.key_of(i)
                assert key is not None
                votes.append(SignedVote(body, signer(key).sign(Domain.PBFT, chain_id, body)))
            cert = CommitCertificate(0, seq, digest, tuple(votes)).encode()
        else:
            body = raft_entry_body(1, seq + 1, digest, leader.id)
            sig = signer(leader.public_key).sign(Domain.RAFT_ENTRY, chain_id, body)
            cert = RaftEntryCertificate(1, seq + 1, digest, leader.id, sig).encode()
        self.blocks.append((block, execution, cert))
        self.head = block.header
        return block

    def run_to(self, height: int) -> None:
        """Empty blocks until the head is at `height`."""
        while self.head.height < height:
            self.add([])

    def block_signatures(self, block: Block, count: int = 2) -> list[SignedVote]:
        config = self.config_at(block.height)
        out = []
        for m in config.members[:count]:
            body = block_signature_body(block.height, block.hash, m.id)
            sig = signer(m.public_key).sign(Domain.BLOCK, self.genesis.chain_id, body)
            out.append(SignedVote(body, sig))
        return out

    def checkpoint(self, seq: int) -> CheckpointCertificate:
        config = self.config_at(seq)
        block_hash = self.blocks[seq - 1][0].hash
        votes = []
        for i in self.quorum_ids(config):
            body = checkpoint_vote_body(config, seq, block_hash, i, legacy=self.legacy)
            key = config.key_of(i)
            assert key is not None
            sig = signer(key).sign(Domain.PBFT, self.genesis.chain_id, body)
            votes.append(SignedVote(body, sig))
        return CheckpointCertificate(seq, block_hash, tuple(votes))


def member_chain(mode: Mode = "pbft") -> MemberChain:
    return MemberChain(make_genesis(PARAMS, mode=mode))


def v2_change(
    chain: ChainBuilder,
    *ops: ChangeOp,
    kind: Kind = "members",
    nonce: bytes = b"n",
    config: Configuration | None = None,
    expiry_ms: int | None = None,
    created_ms: int | None = None,
) -> ChangeV2:
    """A change approved under the configuration in force (or `config`)."""
    config = config or chain.app.config
    assert config is not None
    created = chain.head.timestamp_ms if created_ms is None else created_ms
    return ChangeV2.create(
        config,
        kind,
        ops,
        nonce,
        created + HOUR_MS if expiry_ms is None else expiry_ms,
        created_ms=created,
    )


def approvals(
    chain: ChainBuilder,
    change: ChangeV2,
    keys: Sequence[bytes] | None = None,
    *,
    domain: Domain = Domain.CONFIG,
) -> tuple[Approval, ...]:
    """Approvals by `keys` (by default the first quorum of voters of the configuration in
    force)."""
    if keys is None:
        config = chain.app.config
        assert config is not None
        keys = [m.public_key for m in config.voters[: config.quorum]]
    body = change.encode()
    return tuple((k, signer(k).sign(domain, change.chain_id, body)) for k in keys)


def possessions(change: ChangeV2, keys: Sequence[bytes] | None = None) -> tuple[Possession, ...]:
    return tuple(
        change.prove_possession(signer(k)) for k in (change.new_keys if keys is None else keys)
    )


def v2_tx(
    chain: ChainBuilder,
    change: ChangeV2,
    *,
    approved: tuple[Approval, ...] | None = None,
    proven: tuple[Possession, ...] | None = None,
    by: KeyPair = CLIENT,
) -> Transaction:
    op = ConfigChangeV2(
        change,
        approvals(chain, change) if approved is None else approved,
        possessions(change) if proven is None else proven,
    )
    return chain.tx(op, signer=by)


def accepted(block: Block) -> None:
    """The block's last receipt is ok."""
    r = block.receipts[-1]
    assert (r.status, r.reason) == ("ok", ""), r


def refused(block: Block) -> str:
    r = block.receipts[-1]
    assert r.status == "rejected", r
    return r.reason
