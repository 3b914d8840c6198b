"""A hand-wired group of PBFT replicas for unit tests: the test decides what is delivered.

Members sign with the simulator's HMAC stand-in (a replica cannot forge another member's
signature); the client transactions are real, pre-signed once (sim.cluster.workload).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from consortium.crypto.hashing import sha256
from consortium.ledger.block import genesis_block
from consortium.ledger.certificates import CheckpointCertificate
from consortium.ledger.genesis import Params
from consortium.ledger.tx import Transaction
from consortium.pbft import reasons
from consortium.pbft.messages import (
    Checkpoint,
    Commit,
    Message,
    NewView,
    Prepare,
    PreparedProof,
    PrePrepare,
    ViewChange,
    encode,
)
from consortium.pbft.replica import Outbound, PbftConfig, PbftReplica, Ready, RecoveredState
from consortium.sim.cluster import (
    EPOCH_MS,
    HmacSigner,
    HmacVerifier,
    member_keys,
    sim_genesis,
    workload,
)

PARAMS = Params(
    batch_txs_max=4,
    batch_delay_ms=10,
    checkpoint_interval=2,
    window=4,
    timestamp_skew_ms=1_000,
    request_timeout_ms=400,  # retransmit after 100 ms
)
WALL = EPOCH_MS + 10_000
RETRANSMIT_MS = PARAMS.request_timeout_ms // 4


def block_hash(seq: int) -> bytes:
    """What every honest replica's shell would compute for block `seq` in these tests."""
    return sha256(b"block %d" % seq)


class Group:
    def __init__(self, n: int = 4, params: Params = PARAMS, *, tick: bool = True) -> None:
        self.n = n
        self.params = params
        self.genesis = sim_genesis(n, params)
        self.chain_id = self.genesis.chain_id
        keys = member_keys(n)
        self.signers = [HmacSigner(k.public, k.seed()) for k in keys]
        self.verifier = HmacVerifier({k.public: k.seed() for k in keys})
        self.bad_txs: set[bytes] = set()
        self.asked: list[bytes] = []  # every tx id tx_ok was asked about, in order
        self.txs: tuple[Transaction, ...] = workload(self.chain_id, 64)
        self.mono_ms = 1
        self.replicas = [self.make(i) for i in range(n)]
        if tick:
            self.tick_all(0)

    def tx_ok(self, tx: Transaction) -> bool:
        self.asked.append(tx.id)
        return tx.id not in self.bad_txs

    def make(
        self,
        i: int,
        recovered: RecoveredState | None = None,
        *,
        pending_txs_max: int = 1000,
        recovery_nonce: bytes | None = None,
    ) -> PbftReplica:
        if recovered is None:
            g = genesis_block(self.genesis)
            recovered = RecoveredState(0, g.hash, None, [])
        replica = PbftReplica(
            PbftConfig.from_genesis(self.genesis, i),
            self.signers[i],
            self.verifier,
            tx_ok=self.tx_ok,
            recovered=recovered,
            pending_txs_max=pending_txs_max,
            recovery_nonce=recovery_nonce,
        )
        # No start-up FETCH probes here: these groups have no shell to serve blocks, and the
        # tests read exact message lists (probing is tested in the simulator).
        replica._probes_left = 0
        return replica

    # --- time and traffic -------------------------------------------------------------------

    def tick_all(self, advance_ms: int, wall_ms: int | None = None) -> None:
        self.mono_ms += advance_ms
        for r in self.replicas:
            r.tick(self.mono_ms, wall_ms if wall_ms is not None else WALL + self.mono_ms)

    def take(self, i: int) -> Ready:
        replica = self.replicas[i]
        unknown = set(replica.rejected) - set(reasons.TABLE)
        assert not unknown, f"member {i} counted reasons its table lacks: {unknown}"
        return replica.take_ready()

    def deliver(self, src: int, outs: Iterable[Outbound], to: Iterable[int] | None = None) -> None:
        targets = set(range(self.n) if to is None else to)
        for out in outs:
            for dst in sorted(targets):
                if dst != src and (out.dest is None or out.dest == dst):
                    self.replicas[dst].receive(src, out.frame)

    def pump(self, rounds: int = 20, to: Iterable[int] | None = None) -> list[list[Ready]]:
        """Deliver everything until quiet, executing what commits; returns each one's Readys."""
        seen: list[list[Ready]] = [[] for _ in range(self.n)]
        alive = set(range(self.n) if to is None else to)
        for _ in range(rounds):
            moved = False
            for i in sorted(alive):
                ready = self.take(i)
                if not ready:
                    continue
                moved = True
                seen[i].append(ready)
                self.deliver(i, ready.messages, alive)
                for batch in ready.committed:
                    self.replicas[i].executed(batch.seq, block_hash(batch.seq))
            if not moved:
                break
        return seen

    # --- messages signed by a member --------------------------------------------------------

    def preprepare(
        self,
        seq: int,
        txs: tuple[Transaction, ...],
        *,
        view: int = 0,
        sender: int = 0,
        proposed_ms: int | None = None,
        digest: bytes | None = None,
    ) -> PrePrepare:
        return PrePrepare.create(
            self.signers[sender],
            self.chain_id,
            view,
            seq,
            WALL + self.mono_ms if proposed_ms is None else proposed_ms,
            sender,
            txs,
            digest=digest,
        )

    def prepare(self, pp: PrePrepare, sender: int) -> Prepare:
        return Prepare.create(
            self.signers[sender], self.chain_id, pp.view, pp.seq, pp.digest, sender
        )

    def commit(self, pp: PrePrepare, sender: int) -> Commit:
        return Commit.create(
            self.signers[sender], self.chain_id, pp.view, pp.seq, pp.digest, sender
        )

    def checkpoint(self, seq: int, sender: int, block: bytes | None = None) -> Checkpoint:
        return Checkpoint.create(
            self.signers[sender], self.chain_id, seq, block or block_hash(seq), sender
        )


def frames(ready: Ready) -> list[bytes]:
    return [out.frame for out in ready.messages]


def sent(ready: Ready, msg: Message) -> bool:
    return encode(msg) in frames(ready)


def forge(msg: PrePrepare | Prepare | Commit | Checkpoint) -> Message:
    """The same message with a signature its sender never made."""
    bad = bytes(b ^ 0xFF for b in msg.signature)
    return replace(msg, signature=bad)


def stable_votes(group: Group, seq: int, senders: Iterable[int]) -> CheckpointCertificate:
    votes = tuple(group.checkpoint(seq, s).vote() for s in sorted(senders))
    return CheckpointCertificate(seq, block_hash(seq), votes)


def drive(group: Group, i: int, pp: PrePrepare, *, execute: bool = True) -> Ready:
    """Feed replica i everything the others would send for `pp`, so it commits it."""
    r = group.replicas[i]
    if i != pp.sender:
        r.receive(pp.sender, pp)
    for s in range(group.n):
        if s not in (i, pp.sender):
            r.receive(s, group.prepare(pp, s))
    for s in range(group.n):
        if s != i:
            r.receive(s, group.commit(pp, s))
    ready = r.take_ready()
    if execute:
        for batch in ready.committed:
            r.executed(batch.seq, block_hash(batch.seq))
    return ready


def new_view_reissuing(group: Group, pp: PrePrepare, view: int = 1) -> NewView:
    """The NEW-VIEW of `view` (from its primary) built on VIEW-CHANGEs of the other three
    members but member 3, each holding the prepared certificate of `pp` (view 0)."""
    primary = view % group.n
    backups = [s for s in range(group.n) if s != pp.sender][:2]
    proof = PreparedProof(
        preprepare=replace(pp, txs=()), prepares=tuple(group.prepare(pp, s) for s in backups)
    )
    vcs = tuple(
        encode(ViewChange.create(group.signers[s], group.chain_id, view, None, (proof,), s))
        for s in range(group.n)
        if s != 3
    )
    again = PrePrepare.create(
        group.signers[primary],
        group.chain_id,
        view,
        pp.seq,
        pp.proposed_ms,
        primary,
        (),
        digest=pp.digest,
    )
    return NewView.create(group.signers[primary], group.chain_id, view, vcs, (again,), primary)
