"""A simulated PBFT cluster: n unmodified PbftReplica cores, each with an in-memory ledger,
driven from one seed on a simulated clock over a SimNetwork.

Signatures: real Ed25519 is correct but slow for hundreds of seeds, so by default members sign
with HMAC-SHA512 under a per-member secret that only the cluster holds (a stand-in the DESIGN
allows: a replica still cannot produce another replica's signature). Client transactions are
real Ed25519-signed transactions, verified once when the workload is made.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

from consortium.crypto.keys import KeyPair
from consortium.crypto.signing import Domain, Ed25519Signer, Ed25519Verifier, Signer, Verifier
from consortium.ledger.block import BlockHeader, genesis_block, genesis_state_root
from consortium.ledger.genesis import Client, Genesis, Member, Params
from consortium.ledger.state import KeyValueState, build_block
from consortium.ledger.tx import Put, Transaction
from consortium.node.sim.checkers import check_all_committed, check_safety
from consortium.node.sim.network import NetworkFaults, SimNetwork
from consortium.pbft.replica import PbftConfig, PbftReplica, RecoveredState

CLIENT_SEED = b"consortium-sim-client".ljust(32, b"\x00")


class HmacSigner:
    def __init__(self, public_key: bytes, secret: bytes) -> None:
        self._public = public_key
        self._secret = secret

    @property
    def public_key(self) -> bytes:
        return self._public

    def sign(self, domain: Domain, chain_id: bytes, body: bytes) -> bytes:
        return hmac.new(self._secret, domain.value + chain_id + body, hashlib.sha512).digest()


class HmacVerifier:
    def __init__(self, secrets: dict[bytes, bytes]) -> None:
        self._secrets = secrets

    def verify(
        self, public_key: bytes, domain: Domain, chain_id: bytes, body: bytes, signature: bytes
    ) -> bool:
        secret = self._secrets.get(public_key)
        if secret is None:
            return False
        expected = hmac.new(secret, domain.value + chain_id + body, hashlib.sha512).digest()
        return hmac.compare_digest(expected, signature)


def member_keys(n: int) -> list[KeyPair]:
    return [KeyPair.from_seed(hashlib.sha256(b"sim-member-%d" % i).digest()) for i in range(n)]


def sim_genesis(n: int, params: Params | None = None) -> Genesis:
    keys = member_keys(n)
    client = KeyPair.from_seed(CLIENT_SEED)
    return Genesis(
        chain_name="sim",
        mode="pbft",
        created_ms=1_000,
        members=tuple(
            Member(i, f"n{i + 1}", k.public, f"127.0.0.1:{7000 + i}", f"127.0.0.1:{8000 + i}")
            for i, k in enumerate(keys)
        ),
        clients=(Client("c1", client.public),),
        params=params or Params(batch_txs_max=16, checkpoint_interval=4, window=8),
    )


@cache
def workload(chain_id: bytes, count: int) -> tuple[Transaction, ...]:
    """`count` real client-signed transactions (signed once per chain id and count)."""
    client = KeyPair.from_seed(CLIENT_SEED)
    return tuple(
        Transaction.create(client, chain_id, b"%d" % i, 10**12, [Put(b"k%d" % (i % 7), b"v%d" % i)])
        for i in range(count)
    )


@dataclass
class SimNode:
    name: str
    index: int
    replica: PbftReplica
    app: KeyValueState
    head: BlockHeader
    block_hashes: list[bytes] = field(default_factory=list)
    digests: dict[int, bytes] = field(default_factory=dict)
    committed_ids: set[bytes] = field(default_factory=set)
    records: dict[bytes, bytes] = field(default_factory=dict)


ReplicaFactory = Callable[
    [PbftConfig, Signer, Verifier, Callable[[Transaction], bool], RecoveredState], PbftReplica
]


def default_factory(
    config: PbftConfig,
    signer: Signer,
    verifier: Verifier,
    tx_ok: Callable[[Transaction], bool],
    recovered: RecoveredState,
) -> PbftReplica:
    return PbftReplica(config, signer, verifier, tx_ok=tx_ok, recovered=recovered)


class SimCluster:
    def __init__(
        self,
        seed: int,
        n: int = 4,
        *,
        faults: NetworkFaults | None = None,
        params: Params | None = None,
        real_signatures: bool = False,
        factories: dict[int, ReplicaFactory] | None = None,
        tick_ms: int = 5,
    ) -> None:
        self.rng = random.Random(seed)
        self.genesis = sim_genesis(n, params)
        self.chain_id = self.genesis.chain_id
        self.net = SimNetwork(self.rng, faults or NetworkFaults())
        self.now_ms = 0
        self.tick_ms = tick_ms
        self.n = n
        self.wall_offset_ms = 1_000_000
        keys = member_keys(n)
        secrets = {k.public: k.seed() for k in keys}
        verifier: Verifier = Ed25519Verifier() if real_signatures else HmacVerifier(secrets)
        valid = {t.id + t.signature for t in workload(self.chain_id, 0)}
        self._valid_txs = valid
        self.nodes: list[SimNode] = []
        g = genesis_block(self.genesis)
        for i, k in enumerate(keys):
            signer: Signer = Ed25519Signer(k) if real_signatures else HmacSigner(k.public, k.seed())
            factory = (factories or {}).get(i, default_factory)
            replica = factory(
                PbftConfig.from_genesis(self.genesis, i),
                signer,
                verifier,
                self._tx_ok,
                RecoveredState(0, g.hash, None, []),
            )
            app = KeyValueState(
                self.chain_id,
                self.genesis.params,
                self.genesis.client_keys(),
                genesis_state_root(self.chain_id),
            )
            self.nodes.append(SimNode(f"n{i + 1}", i, replica, app, g.header, [g.hash]))
        self.submitted: set[bytes] = set()
        self.byzantine: set[int] = set()

    def _tx_ok(self, tx: Transaction) -> bool:
        return (tx.id + tx.signature) in self._valid_txs

    def honest(self) -> list[SimNode]:
        return [node for i, node in enumerate(self.nodes) if i not in self.byzantine]

    def submit(self, txs: tuple[Transaction, ...], to: list[int] | None = None) -> None:
        for tx in txs:
            self._valid_txs.add(tx.id + tx.signature)
            self.submitted.add(tx.id)
            for i in to if to is not None else range(self.n):
                self.nodes[i].replica.propose(tx)
                self._drain(self.nodes[i])

    def _drain(self, node: SimNode) -> None:
        replica = node.replica
        while True:
            ready = replica.take_ready()
            if not ready:
                return
            for key, value in ready.records:
                if value is None:
                    node.records.pop(key, None)
                else:
                    node.records[key] = value
            for out in ready.messages:
                dests = range(self.n) if out.dest is None else [out.dest]
                for d in dests:
                    if d != node.index:
                        self.net.send(self.now_ms, node.index, d, out.frame)
            for batch in ready.committed:
                block, execution = build_block(
                    node.head,
                    ("pbft", batch.seq, batch.proposed_ms),
                    batch.proposed_ms,
                    batch.txs,
                    node.app,
                )
                node.app.apply(execution)
                node.head = block.header
                node.block_hashes.append(block.hash)
                node.digests[batch.seq] = batch.digest
                node.committed_ids.update(t.id for t in batch.txs)
                replica.executed(batch.seq, block.hash)

    def step(self) -> None:
        """Advance to the next event or tick, deliver, tick, drain, check safety."""
        nxt = self.net.next_time()
        next_tick = (self.now_ms // self.tick_ms + 1) * self.tick_ms
        self.now_ms = next_tick if nxt is None else min(nxt, next_tick)
        for src, dst, frame in self.net.pop_due(self.now_ms):
            node = self.nodes[dst]
            node.replica.receive(src, frame)
            self._drain(node)
        if self.now_ms % self.tick_ms == 0:
            for node in self.nodes:
                node.replica.tick(self.now_ms, self.now_ms + self.wall_offset_ms)
                self._drain(node)
        check_safety(self.honest())

    def run_until(self, end_ms: int) -> None:
        while self.now_ms < end_ms:
            self.step()

    def run_until_committed(self, deadline_ms: int) -> bool:
        while self.now_ms < deadline_ms:
            self.step()
            if all(self.submitted <= node.committed_ids for node in self.honest()):
                return True
        return False

    def check_liveness(self) -> None:
        honest = self.honest()
        check_all_committed(honest, [n.committed_ids for n in honest], self.submitted)
