"""A hand-wired group of PbftEpochs cores (pbft/epochs.py) for membership tests: members by
id, spares whose keys are not in genesis, and configurations built by the test."""

from __future__ import annotations

from collections.abc import Iterable

from pbft_harness import PARAMS, WALL, block_hash

from consortium.crypto.signing import Signer
from consortium.ledger.block import genesis_block
from consortium.ledger.certificates import CheckpointCertificate
from consortium.ledger.membership import Configuration, MemberInfo, genesis_configuration
from consortium.ledger.tx import Transaction
from consortium.pbft import reasons
from consortium.pbft.epochs import EpochChange, PbftEpochs
from consortium.pbft.replica import PbftConfig, PbftReplica, RecoveredState
from consortium.sim.cluster import HmacSigner, HmacVerifier, member_keys, sim_genesis, workload


class EpochGroup:
    def __init__(self, n: int = 4, spares: int = 2) -> None:
        self.params = PARAMS
        self.genesis = sim_genesis(n, PARAMS)
        self.chain_id = self.genesis.chain_id
        self.keys = member_keys(n + spares)  # key index k: genesis member k, then spares
        self.signers = [HmacSigner(k.public, k.seed()) for k in self.keys]
        self.verifier = HmacVerifier({k.public: k.seed() for k in self.keys})
        self.txs: tuple[Transaction, ...] = workload(self.chain_id, 64)
        self.config0 = genesis_configuration(self.genesis)
        self.mono_ms = 1
        self.down: set[int] = set()
        self.records: dict[int, list[tuple[bytes, bytes | None]]] = {}  # every record written
        self.changes: dict[int, list[EpochChange]] = {}
        self.committed: dict[int, dict[int, tuple[int, bytes]]] = {}  # id -> seq -> (epoch, d)
        g = genesis_block(self.genesis)
        self.nodes: dict[int, PbftEpochs] = {
            i: self.make(self.config0, i, i, RecoveredState(0, g.hash, None, [])) for i in range(n)
        }
        self.tick_all(0)

    def make_replica(
        self, config: PbftConfig, signer: Signer, recovered: RecoveredState
    ) -> PbftReplica:
        replica = PbftReplica(
            config, signer, self.verifier, tx_ok=lambda tx: True, recovered=recovered
        )
        replica._probes_left = 0  # no shell serves blocks here
        return replica

    def make(
        self,
        config: Configuration,
        member_id: int,
        key: int,
        recovered: RecoveredState,
        *,
        start: int = 0,
        pending: tuple[int, Configuration] | None = None,
    ) -> PbftEpochs:
        return PbftEpochs(
            config,
            member_id,
            self.params,
            self.signers[key],
            make=self.make_replica,
            recovered=recovered,
            start=start,
            pending=pending,
        )

    def configuration(self, epoch: int, members: Iterable[tuple[int, int]]) -> Configuration:
        """Configuration `epoch` of (member id, key index) pairs."""
        return Configuration(
            self.chain_id,
            epoch,
            "pbft",
            tuple(
                MemberInfo(
                    i, f"m{i}", self.keys[k].public, f"127.0.0.1:{7000 + i}", "127.0.0.1:9000"
                )
                for i, k in sorted(members)
            ),
        )

    def tick_all(self, advance_ms: int) -> None:
        self.mono_ms += advance_ms
        for i, node in self.nodes.items():
            if i not in self.down:
                node.tick(self.mono_ms, WALL + self.mono_ms)

    def pump(self, rounds: int = 60) -> None:
        for _ in range(rounds):
            moved = False
            for i in sorted(self.nodes):
                if i in self.down:
                    continue
                node = self.nodes[i]
                unknown = set(node.rejected) - set(reasons.TABLE)
                assert not unknown, unknown
                ready = node.take_ready()
                self.changes.setdefault(i, []).extend(node.take_epoch_changes())
                if not ready:
                    continue
                moved = True
                self.records.setdefault(i, []).extend(ready.records)
                for batch in ready.committed:
                    epoch = node.epoch
                    seen = self.committed.setdefault(i, {})
                    assert batch.seq not in seen
                    seen[batch.seq] = (epoch, batch.digest)
                    node.executed(batch.seq, block_hash(batch.seq))
                for out in ready.messages:
                    for dst in sorted(self.nodes):
                        if dst != i and dst not in self.down and out.dest in (None, dst):
                            self.nodes[dst].receive(i, out.frame)
                self.changes.setdefault(i, []).extend(node.take_epoch_changes())
            if not moved:
                return

    def run(self, ms: int, step: int = 50) -> None:
        for _ in range(ms // step):
            self.tick_all(step)
            self.pump()

    def propose(self, txs: Iterable[Transaction]) -> None:
        txs = tuple(txs)
        for i, node in self.nodes.items():
            if i not in self.down:
                node.propose_all(txs)
        self.pump()

    def executed(self, i: int) -> int:
        node = self.nodes[i]
        return node.last_executed if node.replica is not None else node.removed_at or 0

    def certificate(self, i: int, epoch: int) -> CheckpointCertificate:
        return next(c.certificate for c in self.changes[i] if c.epoch == epoch)
