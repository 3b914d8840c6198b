"""A simulated PBFT cluster: n unmodified PbftReplica cores, each with an in-memory ledger,
driven by one seeded random.Random over a simulated millisecond clock.

The loop (a plain loop, not Trio, whose scheduler is randomised): take the earliest of the next
network delivery, the next client submission and the next tick; deliver or tick; then carry out
the replica's Ready with the node runtime's own executor (node/executor.py; shell.SimShell:
committed batches executed into its ledger, one write to its simulated disk, then the messages
that waited for it); then run the safety checker; at the end of each step, the full invariant
check of every replica given input in it (and of one going down, as it goes). Same seed, same
trace. Clients
send every transaction to every replica and retransmit it every client_retry_ms until f+1
honest replicas committed it (DESIGN: clients retransmit on timeout), so a transaction only
a crashed primary had is proposed again.

Signatures: real Ed25519 is correct but slow for hundreds of seeds, so by default members sign
with HMAC-SHA512 under a per-member secret only the cluster holds: a replica still cannot
produce another member's signature, which is all the protocol relies on. `real_signatures=True`
uses Ed25519 for smaller runs. Client transactions are real Ed25519-signed transactions, signed
once per chain (`workload`), and tx_ok trusts the set the cluster made; any other transaction
(a Byzantine member's) has its signature checked as a node's shell would. Each replica learns
which keys were ever admitted from its own ledger state (KeyValueState.may_submit), and the
safety checker holds every honest ledger to the same rule.

Crashes and durability (shell.SimShell): crash(i) between events loses nothing durable, and
rolls back blocks executed whose write was still in flight; crash_mid_write(i) arms a crash
inside node i's next write, after the write and before the fsync, so the write is lost (as a
power cut would lose it; kill -9 on a real machine keeps the page cache and cannot show this).
With `broken_shell=True` the member runs shell.BrokenExecutor, which sends before it writes,
on a disk that fsyncs only every BROKEN_FSYNC_MS, so any crash loses the writes since: a
replica that forgets votes it sent. The test that the safety checker catches this gives the
durability tests their teeth. restart(i) rebuilds the replica from its durable records, its
durable ledger head and its last stable checkpoint, exactly what the node runtime hands a
restarting replica.
Restore from a backup: backup(i) copies node i's durable state (records, stable checkpoint,
ledger) as `node backup` does; restore(i, copy) later stops node i and restarts it from that
copy, marked as a restored backup (the store's RECOVERY_MARK_KEY record), so its core starts in
recovery, as the runtime starts it; the mark goes once the core left recovery, and a restart
before that recovers again. restore(i, copy, recovery=False) is today's start without the mark:
the member may sign again what it signed after the copy was taken, which the equivocation
checker (checkers.EquivocationChecker, over everything honest members send) reports.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from functools import cache

from consortium.crashft import messages as raft_messages
from consortium.crypto.codec import WireFormatError, pack, unpack
from consortium.crypto.keys import KeyPair
from consortium.crypto.signing import (
    Domain,
    Ed25519Signer,
    Ed25519Verifier,
    Signer,
    Verifier,
    signed_message,
)
from consortium.ledger.block import BlockHeader, genesis_block, genesis_state_root
from consortium.ledger.certificates import CheckpointCertificate
from consortium.ledger.genesis import Client, Genesis, GenesisError, Member, Mode, Params
from consortium.ledger.membership import genesis_configuration
from consortium.ledger.state import KeyValueState, build_block
from consortium.ledger.store import RECOVERY_MARK_KEY, RESTORED_BACKUP
from consortium.ledger.tx import ConfigChange, Put, Transaction
from consortium.node.executor import ConsensusCore, Executed, Executor, Write
from consortium.pbft import messages as pbft_messages
from consortium.pbft.epochs import PbftEpochs
from consortium.pbft.messages import TransferredBlock, decode
from consortium.pbft.replica import CommittedBatch, PbftConfig, PbftReplica, RecoveredState, Serve
from consortium.pbft.transfer import blocks_reply
from consortium.sim.checkers import EquivocationChecker, SafetyChecker
from consortium.sim.network import NetworkFaults, SimNetwork
from consortium.sim.shell import EPOCH_MS, BrokenExecutor, SimShell

CLIENT_SEED = b"consortium-sim-client".ljust(32, b"\x00")
SIM_PARAMS = Params(
    batch_txs_max=16,
    batch_delay_ms=4,
    checkpoint_interval=4,
    window=16,
    request_timeout_ms=400,  # retransmission after 100 ms
)


def _member_change(app: KeyValueState, tx: Transaction) -> bool:
    """A client change a member submits (KeyValueState.may_submit's second case)."""
    return bool(tx.ops) and isinstance(tx.ops[0], ConfigChange) and tx.client_key in app.member_keys


def describe(frame: bytes, params: Params) -> str:
    """One message in a few words, for traces."""
    try:
        msg = decode(frame, params)
    except WireFormatError as exc:
        return f"malformed ({str(exc)[:40]})"
    kind = type(msg).__name__.upper()
    view = getattr(msg, "view", None)
    seq = getattr(msg, "seq", getattr(msg, "from_seq", None))
    digest = getattr(msg, "digest", None)
    parts = [kind]
    if view is not None:
        parts.append(f"v{view}")
    if seq is not None:
        parts.append(f"s{seq}")
    if isinstance(digest, bytes):
        parts.append(digest.hex()[:8])
    return " ".join(parts)


class HmacSigner:
    """Stand-in signer: HMAC-SHA512 (64 bytes, like Ed25519) under the member's secret."""

    def __init__(self, public_key: bytes, secret: bytes) -> None:
        self._public = public_key
        self._secret = secret

    @property
    def public_key(self) -> bytes:
        return self._public

    def sign(self, domain: Domain, chain_id: bytes, body: bytes) -> bytes:
        message = signed_message(domain, chain_id, body)
        return hmac.new(self._secret, message, hashlib.sha512).digest()


class HmacVerifier:
    """Checks a stand-in signature with the secret of the member whose key is named."""

    def __init__(self, secrets: dict[bytes, bytes]) -> None:
        self._secrets = secrets

    def verify(
        self, public_key: bytes, domain: Domain, chain_id: bytes, body: bytes, signature: bytes
    ) -> bool:
        secret = self._secrets.get(public_key)
        if secret is None:
            return False
        message = signed_message(domain, chain_id, body)
        return hmac.compare_digest(hmac.new(secret, message, hashlib.sha512).digest(), signature)


@cache
def member_keys(n: int) -> tuple[KeyPair, ...]:
    return tuple(KeyPair.from_seed(hashlib.sha256(b"sim-member-%d" % i).digest()) for i in range(n))


def sim_genesis(n: int, params: Params = SIM_PARAMS, mode: Mode = "pbft") -> Genesis:
    client = KeyPair.from_seed(CLIENT_SEED)
    genesis = Genesis(
        chain_name="sim",
        mode=mode,
        created_ms=EPOCH_MS,
        members=tuple(
            Member(i, f"n{i + 1}", k.public, f"127.0.0.1:{7000 + i}", f"127.0.0.1:{8000 + i}")
            for i, k in enumerate(member_keys(n))
        ),
        clients=(Client("c1", client.public),),
        params=params,
    )
    genesis.validate("sim genesis")
    problem = consensus_frame_problem(params, mode, n)
    if problem is not None:
        raise GenesisError(f"sim genesis: {problem}")
    return genesis


@cache
def consensus_frame_problem(params: Params, mode: Mode, n: int) -> str | None:
    """The frame check of the mode's own messages (node/genesis.py adds the client's frames,
    which the simulator has no port for). Cached: a cluster is built for every seed."""
    if mode == "pbft":
        return pbft_messages.frame_size_problem(params, n)
    return raft_messages.frame_size_problem(params)


@cache
def workload(chain_id: bytes, count: int) -> tuple[Transaction, ...]:
    """`count` real client-signed transactions for this chain, signed once and reused."""
    client = KeyPair.from_seed(CLIENT_SEED)
    expiry_ms = EPOCH_MS + 5 * 60 * 1000
    return tuple(
        Transaction.create(
            client, chain_id, b"%d" % i, expiry_ms, [Put(b"k%d" % (i % 13), b"v%d" % i)]
        )
        for i in range(count)
    )


TxCheck = Callable[[Transaction], bool]
# (config, signer, verifier, tx_ok, recovered, ever_admitted) -> the replica
# The votes the equivocation checker reads (SimCluster._observe), by the kind naming the body.
_SIGNED_KINDS = {b"prepare": "PREPARE", b"commit": "COMMIT", b"newview": "NEW-VIEW"}

ReplicaFactory = Callable[
    [PbftConfig, Signer, Verifier, TxCheck, RecoveredState, TxCheck], PbftReplica
]
CHECKED_TXS_MAX = 65_536  # signatures of transactions the cluster did not make, remembered


def replica_factory(cls: type[PbftReplica]) -> ReplicaFactory:
    """The factory that makes a member's replica of class `cls` (a Byzantine behaviour, a
    deliberately broken rule, or the honest one)."""

    def make(
        config: PbftConfig,
        signer: Signer,
        verifier: Verifier,
        tx_ok: TxCheck,
        recovered: RecoveredState,
        ever_admitted: TxCheck,
    ) -> PbftReplica:
        return cls(
            config, signer, verifier, tx_ok=tx_ok, recovered=recovered, ever_admitted=ever_admitted
        )

    return make


honest_replica = replica_factory(PbftReplica)


@dataclass(frozen=True, slots=True)
class SimBackup:
    """A copy of one member's durable state at one moment: what `node backup` copies."""

    index: int
    records: tuple[tuple[bytes, bytes], ...]
    stable: CheckpointCertificate | None
    blocks: tuple[TransferredBlock, ...]  # its ledger: blocks 1..height
    committed_ms: tuple[int, ...]

    @property
    def height(self) -> int:
        return len(self.blocks)


@dataclass
class SimNode:
    """One member: its replica and the executor carrying out its Readies, its in-memory ledger
    (executed; durable up to durable_height) and its durable records."""

    index: int
    replica: PbftEpochs  # one replica per configuration (pbft/epochs.py)
    executor: Executor
    app: KeyValueState
    head: BlockHeader  # the last block executed
    block_hashes: list[bytes]  # index = height; [0] is genesis
    blocks: list[TransferredBlock] = field(default_factory=list)  # index = height - 1
    committed_ids: set[bytes] = field(default_factory=set)
    committed_ms: list[int] = field(default_factory=list)  # when each block was executed
    # Keys ever admitted as of its last executed block checked (SimCluster._executed): the state
    # a block executes on, which the safety checker judges its transactions against.
    ever_admitted: set[bytes] = field(default_factory=set)
    records: dict[bytes, bytes] = field(default_factory=dict)  # durable (fsynced)
    durable_height: int = 0
    crash_mid_write: bool = False  # armed by SimCluster.crash_mid_write
    crash_after_step: bool = False  # a crash armed for a background write: at the end of a step
    unsynced: list[Write] = field(default_factory=list)  # written, not yet durable
    stable: CheckpointCertificate | None = None  # the last one durable
    up: bool = True

    @property
    def name(self) -> str:
        return f"n{self.index + 1}"

    def explain(self) -> str:
        status = self.replica.status()
        return f"height {self.head.height}, waiting for: {status['waiting_for'] or 'nothing'}"


class SimCluster(SimShell[SimNode]):
    def __init__(
        self,
        seed: int,
        n: int = 4,
        *,
        faults: NetworkFaults | None = None,
        params: Params = SIM_PARAMS,
        real_signatures: bool = False,
        factories: dict[int, ReplicaFactory] | None = None,
        byzantine: Collection[int] = (),
        wall_skew_ms: dict[int, int] | None = None,
        tick_ms: int = 5,
        broken_shell: bool = False,
        executor_class: type[Executor] = Executor,
        client_delay_ms: tuple[int, int] = (0, 10),
        client_retry_ms: int = 1_000,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.n = n
        self.genesis = sim_genesis(n, params)
        self.chain_id = self.genesis.chain_id
        self.params = params
        self.net = SimNetwork(self.rng, faults or NetworkFaults())
        self.now_ms = 0
        self.tick_ms = tick_ms
        self.broken_shell = broken_shell
        self.executor_class = executor_class  # (checker-teeth tests run broken ones)
        self.lost_writes = 0  # Readies whose records a crash mid-write dropped
        self.trace: Callable[[str], None] | None = None  # one readable line per event
        self._traced_view: dict[int, tuple[int, bool]] = {}
        self.client_delay_ms = client_delay_ms
        self.client_retry_ms = client_retry_ms
        self._init_clocks(wall_skew_ms)  # a member's clock: shell.SimShell.set_clock
        self.byzantine = frozenset(byzantine)
        self.safety = SafetyChecker(
            (i for i in range(n) if i not in self.byzantine),
            self.genesis.client_keys(),
            Ed25519Verifier(),
        )
        self.votes = EquivocationChecker(i for i in range(n) if i not in self.byzantine)
        self.submitted: list[bytes] = []
        self.steps = 0
        self._touched: set[int] = set()  # members given input since the last full check
        keys = member_keys(n)
        if real_signatures:
            self.signers: list[Signer] = [Ed25519Signer(k) for k in keys]
            self.verifier: Verifier = Ed25519Verifier()
        else:
            self.signers = [HmacSigner(k.public, k.seed()) for k in keys]
            self.verifier = HmacVerifier({k.public: k.seed() for k in keys})
        self._factories = dict(factories or {})
        self._valid_txs: set[bytes] = set()
        self._checked_txs: dict[bytes, bool] = {}  # id + signature -> valid (others' txs)
        self._ed25519 = Ed25519Verifier()
        self._client_queue: list[tuple[int, int, int, Transaction]] = []
        self._client_seq = 0
        # Clients retransmit to every replica until f+1 honest replicas committed (the reply
        # quorum): tx id -> (tx, last sent), in submission order; and commit counts.
        self._awaiting: dict[bytes, tuple[Transaction, int]] = {}
        self._commits: dict[bytes, set[int]] = {}
        self._next_retry_ms = client_retry_ms
        self._scheduled: list[tuple[int, int, Callable[[], None]]] = []  # fault injections
        self._scheduled_seq = 0
        self._restart_after_armed_ms = {}
        genesis = genesis_block(self.genesis)
        self.nodes: list[SimNode] = []
        for i in range(n):
            app = KeyValueState(
                self.chain_id,
                params,
                self.genesis.client_keys(),
                genesis_state_root(self.chain_id),
            )
            replica = self._new_replica(i, app, genesis.header, None, {})
            node = SimNode(
                i,
                replica,
                self._new_executor(i, replica, app, genesis.header),
                app,
                genesis.header,
                [genesis.hash],
                ever_admitted=set(app.admitted),
            )
            self.nodes.append(node)

    # --- construction -----------------------------------------------------------------------

    def _new_replica(
        self,
        i: int,
        app: KeyValueState,
        head: BlockHeader,
        stable: CheckpointCertificate | None,
        stored: dict[bytes, bytes],
    ) -> PbftEpochs:
        factory = self._factories.get(i, honest_replica)
        # The recovery mark is the shell's record, not the core's (node/runtime.py).
        records = sorted((k, v) for k, v in stored.items() if k != RECOVERY_MARK_KEY)
        recovered = RecoveredState(head.height, head.hash, stable, records)
        # The core's randomness, from the run's seed (another draw after each restart).
        seed = b"%d/%d/%d" % (self.seed, i, self.now_ms)
        restore = RECOVERY_MARK_KEY in stored
        first = [True]

        def make(config: PbftConfig, signer: Signer, recovered: RecoveredState) -> PbftReplica:
            if restore and first[0]:
                first[0] = False
                assert factory is honest_replica, "only honest members are restored from backups"
                return PbftReplica(
                    config,
                    signer,
                    self.verifier,
                    tx_ok=self._tx_ok,
                    recovered=recovered,
                    ever_admitted=app.may_submit,
                    recovery_nonce=self.rng.randbytes(16),  # fresh per start, as the runtime's
                )
            return factory(config, signer, self.verifier, self._tx_ok, recovered, app.may_submit)

        # One step code for the simulator and the node: the genesis configuration's epochs.
        return PbftEpochs(
            genesis_configuration(self.genesis),
            i,
            self.params,
            self.signers[i],
            make=make,
            recovered=recovered,
            seed=seed,
        )

    def _new_executor(
        self, i: int, replica: PbftEpochs, app: KeyValueState, head: BlockHeader
    ) -> Executor:
        """The node runtime's executor (a broken one for the checker-teeth tests), told of the
        store's recovery mark as the runtime tells it."""
        kind = BrokenExecutor if self.broken_shell else self.executor_class
        mark = i < len(self.nodes) and RECOVERY_MARK_KEY in self.nodes[i].records
        return kind(replica, app, head, self.signers[i], self.chain_id, i, recovery_mark=mark)

    def _start(self, node: SimNode) -> None:
        """A new process for `node`, from what it has durably (records, ledger, checkpoint)."""
        i = node.index
        node.replica = self._new_replica(i, node.app, node.head, node.stable, node.records)
        node.executor = self._new_executor(i, node.replica, node.app, node.head)
        node.up = True
        self._agreed[i] = (node.head.timestamp_ms, self.now_ms)  # a new process: its ledger
        self._carry_out(node)

    def _tx_ok(self, tx: Transaction) -> bool:
        key = tx.id + tx.signature
        if key in self._valid_txs:
            return True
        ok = self._checked_txs.get(key)
        if ok is None:
            ok = self._checked_txs[key] = tx.verify_signature(self._ed25519)
            if len(self._checked_txs) > CHECKED_TXS_MAX:
                del self._checked_txs[next(iter(self._checked_txs))]
        return ok

    def honest(self) -> list[SimNode]:
        return [node for node in self.nodes if node.index not in self.byzantine]

    # --- inputs from the test ---------------------------------------------------------------

    def submit(self, txs: tuple[Transaction, ...], to: Collection[int] | None = None) -> None:
        """Clients send each transaction to every replica, each copy delayed, and retransmit
        it until it commits. With `to`, one copy to each of those only, never retransmitted
        (for tests that place transactions by hand)."""
        for tx in txs:
            self._valid_txs.add(tx.id + tx.signature)
            if to is None:
                self.submitted.append(tx.id)
                self._awaiting[tx.id] = (tx, self.now_ms)
            self._send_to_replicas(tx, range(self.n) if to is None else sorted(to))

    def _send_to_replicas(self, tx: Transaction, replicas: Iterable[int]) -> None:
        for i in replicas:
            self._send_to(tx, i)

    def _client_retries(self) -> None:
        self._next_retry_ms = self.now_ms + self.client_retry_ms // 4
        for tx_id, (tx, sent_ms) in list(self._awaiting.items()):
            if self.now_ms - sent_ms >= self.client_retry_ms:
                self._awaiting[tx_id] = (tx, self.now_ms)
                self._send_to_replicas(tx, range(self.n))

    def restart(self, i: int) -> None:
        """Rebuild replica i from what it persisted (records, ledger, stable checkpoint)."""
        node = self.nodes[i]
        assert not node.up, f"{node.name} is running: a restart follows a crash"
        self._log(f"n{i + 1} RESTART at height {node.head.height}")
        self._start(node)

    def backup(self, i: int) -> SimBackup:
        """A copy of node i's durable state now (`node backup`: records, checkpoint, ledger)."""
        node = self.nodes[i]
        self._log(f"n{i + 1} BACKUP at height {node.head.height}")
        return SimBackup(
            i,
            tuple(sorted(node.records.items())),
            node.stable,
            tuple(node.blocks[: node.durable_height]),
            tuple(node.committed_ms[: node.durable_height]),
        )

    def restore(self, i: int, copy: SimBackup, *, recovery: bool = True) -> None:
        """Stop node i and start it from `copy` (its data directory replaced by the backup),
        marked as a restored backup unless recovery=False (today's start, for the checkers'
        teeth)."""
        assert copy.index == i, "a member is restored only from its own backup"
        node = self.nodes[i]
        self._log(f"n{i + 1} RESTORE from a backup at height {copy.height}")
        self._last_check(i)
        node.up = False
        node.unsynced.clear()
        self.disarm(i)
        self._load_ledger(node, list(copy.blocks), list(copy.committed_ms))
        node.stable = copy.stable
        node.records = dict(copy.records)
        if recovery:
            node.records[RECOVERY_MARK_KEY] = RESTORED_BACKUP.encode()
        self._start(node)

    def _load_ledger(
        self, node: SimNode, blocks: list[TransferredBlock], committed_ms: list[int]
    ) -> None:
        """Node's ledger and state as `blocks`: executed again from genesis (a ledger is its
        blocks), which gives the same blocks, hashes and state."""
        g = genesis_block(self.genesis)
        root = genesis_state_root(self.chain_id)
        app = KeyValueState(self.chain_id, self.params, self.genesis.client_keys(), root)
        head, hashes = g.header, [g.hash]
        for tb in blocks:
            seq = tb.certificate.seq
            block, execution = build_block(
                head, ("pbft", seq, tb.proposed_ms), tb.proposed_ms, tb.txs, app
            )
            app.apply(execution)
            head = block.header
            hashes.append(block.hash)
        node.app, node.head, node.block_hashes = app, head, hashes
        node.blocks = blocks
        node.committed_ids = {tx.id for tb in blocks for tx in tb.txs}
        node.committed_ms = committed_ms
        node.durable_height = head.height
        node.ever_admitted = set(app.admitted) | set(app.changed_ms)

    def _roll_back(self, node: SimNode) -> None:
        height = node.durable_height
        self._log(f"{node.name} LOSES blocks {height + 1}-{node.head.height} (not durable)")
        self._load_ledger(node, node.blocks[:height], node.committed_ms[:height])

    def _observe(self, node: SimNode, dest: int | None, frame: bytes) -> None:
        """The equivocation checker sees every vote an honest member signs. Read off the body
        bytes (pbft/messages.py; a frame is [bin8 body, signature, ...]) without decoding, since
        every message of every run passes here: a body is [fixstr kind, *slot, ...]; PREPARE,
        COMMIT and NEW-VIEW end with [digest (bin8 32), sender (fixint)], the slot (epoch, view,
        seq; NEW-VIEW: epoch, view) lying between; PRE-PREPARE is [kind, epoch, view, seq,
        digest, ...]."""
        if node.index in self.byzantine or len(frame) < 3 or frame[1] != 0xC4:
            return  # (a Byzantine member's frames may be anything: the checker skips them)
        body = frame[3 : 3 + frame[2]]
        if len(body) < 38:
            return
        end = 2 + (body[1] & 0x1F)
        what = _SIGNED_KINDS.get(body[2:end])
        if what is not None and body[-1] < 0x80:
            self.votes.signed(node.index, what, body[end:-35], body[-33:-1])
        elif body[2:end] == b"preprepare":
            fields = unpack(body)
            self.votes.signed(
                node.index,
                "PRE-PREPARE",
                pack(fields[1]) + pack(fields[2]) + pack(fields[3]),
                fields[4],
            )

    # --- the loop ---------------------------------------------------------------------------

    def _core(self, node: SimNode) -> ConsensusCore:
        return node.replica

    def _describe(self, frame: bytes) -> str:
        return describe(frame, self.params)

    def _full_check(self, i: int) -> None:
        self.nodes[i].replica.check_invariants()

    def _executed(self, node: SimNode, effect: Executed) -> None:
        batch, block = effect.origin, effect.block
        assert isinstance(batch, CommittedBatch)
        self._log(
            f"n{node.index + 1} COMMIT seq {batch.seq} {batch.digest.hex()[:8]} "
            f"({len(batch.txs)} txs)"
        )
        self.safety.committed(node.index, batch.seq, batch.digest)
        # Against the state the block executed on (keys ever admitted before it; the executor
        # applied it already), as KeyValueState.may_submit judges there.
        app, known = node.app, node.ever_admitted
        self.safety.signed(
            node.index,
            batch.seq,
            batch.txs,
            lambda tx: tx.client_key in known or _member_change(app, tx),
        )
        known.update(k for k, t in app.changed_ms.items() if t <= block.header.timestamp_ms)
        node.head = block.header
        node.block_hashes.append(block.hash)
        node.committed_ids.update(tx.id for tx in batch.txs)
        node.committed_ms.append(self.now_ms)
        node.blocks.append(
            TransferredBlock(
                proposed_ms=batch.proposed_ms, txs=batch.txs, certificate=batch.certificate
            )
        )
        if node.index not in self.byzantine:
            self._replied(node.index, batch.txs)
        self.safety.appended(node.index, block.height, block.hash)
        self._block_executed(node.index, block)

    def _make_durable(self, node: SimNode, write: Write) -> None:
        super()._make_durable(node, write)
        if write.checkpoints:
            node.stable = write.checkpoints[-1]

    def _carried_out(self, node: SimNode) -> None:
        replica = node.replica
        self._touched.add(node.index)  # fuller invariants: at the end of the step
        if self.trace is not None and (replica.view, replica.active) != self._traced_view.get(
            node.index, (0, True)
        ):
            self._traced_view[node.index] = (replica.view, replica.active)
            state = "entered" if replica.active else "changing to"
            self._log(
                f"n{node.index + 1} VIEW {state} {replica.view}: "
                f"{replica.last_view_change_reason or 'NEW-VIEW'}"
            )

    def _serve(self, node: SimNode, serve: object) -> None:
        """Answer a FETCH from the node's durable ledger (the runtime reads its block store);
        the answer's size goes to the replica, which charges it to the peer's budget."""
        assert isinstance(serve, Serve)
        durable = node.durable_height

        def block_at(seq: int) -> TransferredBlock | None:
            return node.blocks[seq - 1] if 0 < seq <= durable else None

        frame = blocks_reply(
            self.signers[node.index],
            self.chain_id,
            node.index,
            self.params,
            serve.from_seq,
            durable,
            serve.stable or node.stable,
            block_at,
            serve.bytes_max,
            epoch=serve.epoch,
            last_seq=serve.last_seq,
        )
        self.net.send(self.now_ms, node.index, serve.peer, frame)
        node.replica.served(serve, len(frame))

    def _replied(self, i: int, txs: tuple[Transaction, ...]) -> None:
        """Member i executed `txs` and pushed their receipts: a client stops retransmitting a
        transaction once f+1 distinct members did (a member that re-executes blocks a crash
        rolled back counts once)."""
        reply_quorum = self.genesis.f + 1
        for tx in txs:
            members = self._commits.setdefault(tx.id, set())
            members.add(i)
            if len(members) >= reply_quorum:
                self._awaiting.pop(tx.id, None)
