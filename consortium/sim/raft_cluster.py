"""A simulated Raft cluster: n unmodified RaftNode cores over the seeded SimNetwork (delay,
loss, duplication, reordering, partitions), on a simulated clock, with crashes that drop writes
not yet fsynced and restarts from what was persisted. The same loop as the PBFT simulator
(cluster.py): take the earliest event, deliver or tick, carry out the node's Ready with the
node runtime's own executor (node/executor.py; shell.SimShell: a leader's appends, committed
entries into its ledger with build_block, transferred blocks re-executed and checked with
replay_block, one write to its simulated disk, then what waited for it), then run the
checkers.

Checkers, after every step (RaftChecker):
    election safety     at most one leader per term;
    log matching        an (index, term) pair always names the same entry with the same
                        predecessor term, checked on every entry any node persists (by
                        induction: two logs that share an (index, term) are identical up to it);
    leader completeness a node that becomes leader holds every entry committed anywhere;
    state machine       committed entries agree by index, and applied ledgers (block hashes by
                        height) are prefixes of each other; every transaction carries a valid
                        client signature (real Ed25519, once per transaction);
    reads               a ReadIndex read is never staler than what was applied anywhere when
                        it was issued (linearizable reads);
    one vote per term   no member votes for two candidates in one term, its own candidacy
                        included (checkers.EquivocationChecker, over what members send): the
                        cause of a split election, seen before a second leader appears.
Liveness, at the end: after healing, every submitted transaction is in every ledger and the
ledgers are identical.

Clients send each transaction to one random node (followers forward to the leader) and, until
it is in some ledger, send it again to another random node every client_retry_ms. With
client_rotates=True they do what the real client does (client/client.py): send to a member that
is up (a client's connection to a crashed one is refused), and each retransmission to the next
member after the last one tried that is up, so a member that takes transactions and answers
nothing (a mute one) holds one for at most client_retry_ms per such member in a row.

Restore from a backup, as in the PBFT simulator: backup(i) copies node i's records and ledger,
restore(i, copy) restarts node i from it marked as a restored backup (its core starts in
recovery), restore(i, copy, recovery=False) without the mark (today's start).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace

from consortium.crashft import messages as rm
from consortium.crashft.messages import Entry, TransferredBlock
from consortium.crashft.node import (
    LEADER,
    RaftConfig,
    RaftNode,
    ReadState,
    RecoveredState,
    Serve,
)
from consortium.crashft.transfer import blocks_reply, replay_block
from consortium.crypto.codec import WireFormatError, pack, unpack
from consortium.crypto.signing import Ed25519Verifier
from consortium.ledger.block import BlockHeader, genesis_block, genesis_state_root
from consortium.ledger.genesis import Params
from consortium.ledger.state import KeyValueState
from consortium.ledger.store import RECOVERY_MARK_KEY, RESTORED_BACKUP
from consortium.ledger.tx import Transaction
from consortium.node.executor import ConsensusCore, Executed, Executor, Write
from consortium.sim.checkers import (
    EquivocationChecker,
    LivenessViolation,
    SafetyChecker,
    SafetyViolation,
)
from consortium.sim.cluster import HmacSigner, member_keys, sim_genesis
from consortium.sim.network import NetworkFaults, SimNetwork
from consortium.sim.shell import BrokenExecutor, SimShell

RAFT_SIM_PARAMS = Params(
    batch_txs_max=16,
    batch_delay_ms=4,
    checkpoint_interval=4,
    window=16,
    request_timeout_ms=300,  # E: election timeouts in [300, 600) ms, heartbeats every 30 ms
)


def raft_sim_config(config: RaftConfig) -> RaftConfig:
    """Small limits so compaction, snapshots and flow control happen in every run."""
    return replace(
        config,
        log_keep=8,
        inflight_max=4,
        uncommitted_max=8,
        append_entries_max=8,
        blocks_per_fetch=4,
    )


def describe(frame: bytes, params: Params) -> str:
    try:
        msg = rm.decode(frame, params)
    except WireFormatError as exc:
        return f"malformed ({str(exc)[:40]})"
    parts = [type(msg).__name__.upper()]
    for name in ("term", "prev_index", "index", "commit", "ctx", "from_height", "read_id"):
        v = getattr(msg, name, None)
        if v is not None:
            parts.append(f"{name}={v}")
    if isinstance(msg, rm.Append | rm.Forward):
        parts.append(f"{len(getattr(msg, 'entries', getattr(msg, 'txs', ())))} items")
    if isinstance(msg, rm.Vote):
        parts.append("prevote" if msg.prevote else "vote")
    if isinstance(msg, rm.VoteReply | rm.AppendReply):
        ok = msg.granted if isinstance(msg, rm.VoteReply) else msg.success
        parts.append("yes" if ok else "no")
    return " ".join(parts)


def _content(entry: Entry) -> bytes:
    return hashlib.sha256(entry.encode()).digest()


class RaftChecker:
    """Raft's safety properties (paper Figure 3), checked incrementally as events happen."""

    def __init__(self, n: int, clients: Collection[bytes]) -> None:
        self.ledger = SafetyChecker(range(n), clients, Ed25519Verifier())
        self._leaders: dict[int, int] = {}  # term -> leader
        self._entries: dict[tuple[int, int], tuple[bytes, int | None]] = {}
        self._committed: dict[int, tuple[int, bytes, int]] = {}  # index -> (term, content, node)
        self.max_committed = 0
        self.reads_checked = 0

    def leader(self, node: int, term: int) -> None:
        first = self._leaders.setdefault(term, node)
        if first != node:
            raise SafetyViolation(f"election safety: n{first + 1} and n{node + 1} lead term {term}")

    def persisted(self, node: int, entry: Entry, prev_term: int | None) -> None:
        key = (entry.index, entry.term)
        seen = self._entries.setdefault(key, (_content(entry), prev_term))
        if seen[0] != _content(entry):
            raise SafetyViolation(
                f"log matching: n{node + 1} holds a different entry at index {entry.index} term "
                f"{entry.term}"
            )
        if prev_term is not None and seen[1] is not None and seen[1] != prev_term:
            raise SafetyViolation(
                f"log matching: n{node + 1}'s entry {entry.index} (term {entry.term}) follows "
                f"term {prev_term}, another log has it after term {seen[1]}"
            )

    def committed(self, node: int, entry: Entry) -> None:
        content = _content(entry)
        first = self._committed.setdefault(entry.index, (entry.term, content, node))
        if first[:2] != (entry.term, content):
            raise SafetyViolation(
                f"state machine safety: index {entry.index} applied as term {entry.term} by "
                f"n{node + 1} and as term {first[0]} by n{first[2] + 1}"
            )
        self.max_committed = max(self.max_committed, entry.index)

    def became_leader(self, node: int, raft: RaftNode) -> None:
        """Leader completeness: every committed entry is in the new leader's log."""
        log = raft.log
        for index, (term, _, _) in self._committed.items():
            if index <= log.snap_index:
                continue  # compacted: applied by this node, so it is in its ledger
            if log.term_at(index) != term:
                raise SafetyViolation(
                    f"leader completeness: n{node + 1} leads term {raft.term} without committed "
                    f"entry {index} (term {term})"
                )

    def read(self, node: int, required: int, state: ReadState) -> None:
        self.reads_checked += 1
        if state.index < required:
            raise SafetyViolation(
                f"linearizable read: n{node + 1} released read {state.read_id} at index "
                f"{state.index}, but index {required} was applied before it was issued"
            )


@dataclass(frozen=True, slots=True)
class RaftSimBackup:
    """A copy of one member's durable state at one moment: what `node backup` copies."""

    index: int
    records: tuple[tuple[bytes, bytes], ...]
    blocks: tuple[TransferredBlock, ...]  # its ledger: blocks 1..height

    @property
    def height(self) -> int:
        return len(self.blocks)


@dataclass
class RaftSimNode:
    index: int
    raft: RaftNode
    executor: Executor
    app: KeyValueState
    head: BlockHeader  # the last block executed
    block_hashes: list[bytes]
    blocks: list[TransferredBlock] = field(default_factory=list)  # index = height - 1
    committed_ids: set[bytes] = field(default_factory=set)
    records: dict[bytes, bytes] = field(default_factory=dict)  # durable (fsynced)
    durable_height: int = 0
    unsynced: list[Write] = field(default_factory=list)  # written, not yet durable
    crash_mid_write: bool = False
    crash_after_step: bool = False  # a crash armed for a background write: at the end of a step
    up: bool = True
    was_leader_term: int = -1

    @property
    def applied_index(self) -> int:
        """The raft index of the last applied entry (for reads)."""
        return self.executor.applied_index

    @property
    def name(self) -> str:
        return f"n{self.index + 1}"

    def explain(self) -> str:
        s = self.raft.status()
        return (
            f"{s['role']} term {s['term']} height {self.head.height} commit "
            f"{s['commit_index']}: {s['waiting_for'] or 'nothing'}"
        )


class RaftSimCluster(SimShell[RaftSimNode]):
    def __init__(
        self,
        seed: int,
        n: int = 3,
        *,
        faults: NetworkFaults | None = None,
        params: Params = RAFT_SIM_PARAMS,
        tick_ms: int = 5,
        broken_shell: bool = False,
        executor_class: type[Executor] = Executor,
        pre_vote: bool = True,
        check_quorum: bool = True,
        configure: Callable[[RaftConfig], RaftConfig] = raft_sim_config,
        client_delay_ms: tuple[int, int] = (0, 10),
        client_retry_ms: int = 1_000,
        client_rotates: bool = False,
        max_steps: int = 1_000_000,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.n = n
        self.genesis = sim_genesis(n, params, mode="raft")
        self.chain_id = self.genesis.chain_id
        self.params = params
        self.net = SimNetwork(self.rng, faults or NetworkFaults())
        self.now_ms = 0
        self.tick_ms = tick_ms
        self.broken_shell = broken_shell
        self.executor_class = executor_class  # (checker-teeth tests run broken ones)
        self.lost_writes = 0
        self.trace: Callable[[str], None] | None = None
        self.check = RaftChecker(n, self.genesis.client_keys())
        self.votes = EquivocationChecker(range(n))
        self.submitted: list[bytes] = []
        self.steps = 0
        self._touched: set[int] = set()  # members given input since the last full check
        self.max_steps = max_steps
        self.client_delay_ms = client_delay_ms
        self.client_retry_ms = client_retry_ms
        self.client_rotates = client_rotates
        self._tried: dict[bytes, int] = {}  # client_rotates: tx id -> member last sent to
        self._init_clocks()  # a member's clock: shell.SimShell.set_clock
        keys = member_keys(n)
        self.signers = [HmacSigner(k.public, k.seed()) for k in keys]
        self._configure: Callable[[RaftConfig], RaftConfig] = lambda c: configure(
            replace(c, pre_vote=pre_vote, check_quorum=check_quorum)
        )
        self._valid_txs: set[bytes] = set()
        self._client_queue: list[tuple[int, int, int, Transaction]] = []
        self._client_seq = 0
        self._awaiting: dict[bytes, tuple[Transaction, int]] = {}
        self._next_retry_ms = client_retry_ms
        self._scheduled: list[tuple[int, int, Callable[[], None]]] = []
        self._scheduled_seq = 0
        self._restart_after_armed_ms = {}
        self._read_seq = 0
        self._reads_waiting: dict[tuple[int, int], int] = {}  # (node, read id) -> required index
        self.reads_released = 0
        self.reads_failed: list[str] = []
        # (node, read id) -> "" once released (and checked), or why it failed or was abandoned
        self.read_outcomes: dict[tuple[int, int], str] = {}
        self.transfers = 0  # leadership transfers asked for (transfer())
        self.elections_won = 0
        self.installs = 0
        genesis = genesis_block(self.genesis)
        self.nodes: list[RaftSimNode] = []
        for i in range(n):
            app = KeyValueState(
                self.chain_id, params, self.genesis.client_keys(), genesis_state_root(self.chain_id)
            )
            raft = self._new_raft(i, RecoveredState(block_hash=genesis.hash))
            node = RaftSimNode(
                i,
                raft,
                self._new_executor(i, raft, app, genesis.header),
                app,
                genesis.header,
                [genesis.hash],
            )
            self.nodes.append(node)

    def _new_executor(
        self, i: int, raft: RaftNode, app: KeyValueState, head: BlockHeader
    ) -> Executor:
        """The node runtime's executor (a broken one for the checker-teeth tests), told of the
        store's recovery mark as the runtime tells it."""
        kind = BrokenExecutor if self.broken_shell else self.executor_class
        mark = i < len(self.nodes) and RECOVERY_MARK_KEY in self.nodes[i].records
        return kind(
            raft,
            app,
            head,
            self.signers[i],
            self.chain_id,
            i,
            applied_index=raft.applied,
            recovery_mark=mark,
        )

    def _new_raft(self, i: int, recovered: RecoveredState) -> RaftNode:
        config = self._configure(
            RaftConfig.from_genesis(self.genesis, i, seed=b"%d/%d/%d" % (self.seed, i, self.now_ms))
        )
        # Marked as a restored backup (the store's record, as the runtime reads it).
        recovering = RECOVERY_MARK_KEY in self.nodes[i].records if i < len(self.nodes) else False
        return RaftNode(
            config,
            self.signers[i],
            tx_ok=self._tx_ok,
            recovered=recovered,
            executed=lambda tx_ids: {t for t in tx_ids if t in self.nodes[i].committed_ids},
            recovering=recovering,
        )

    def _tx_ok(self, tx: Transaction) -> bool:
        return tx.id + tx.signature in self._valid_txs

    def leaders(self) -> list[RaftSimNode]:
        return [x for x in self.nodes if x.up and x.raft.role == LEADER]

    # --- inputs ------------------------------------------------------------------------------

    def submit(self, txs: tuple[Transaction, ...], to: int | None = None) -> None:
        for tx in txs:
            self._valid_txs.add(tx.id + tx.signature)
            self.submitted.append(tx.id)
            self._awaiting[tx.id] = (tx, self.now_ms)
            self._send_to(tx, self._client_target(tx.id) if to is None else to)

    def _client_target(self, tx_id: bytes) -> int:
        """The member a client sends `tx_id` to now: a random one; with client_rotates, one
        that is up (at random the first time, then the next after the last one tried)."""
        if not self.client_rotates:
            return self.rng.randrange(self.n)
        up = [i for i in range(self.n) if self.nodes[i].up] or list(range(self.n))
        last = self._tried.get(tx_id)
        if last is None:
            target = self.rng.choice(up)
        else:
            target = min(up, key=lambda i: (i - last - 1) % self.n)
        self._tried[tx_id] = target
        return target

    def _client_retries(self) -> None:
        self._next_retry_ms = self.now_ms + self.client_retry_ms // 4
        for tx_id, (tx, sent_ms) in list(self._awaiting.items()):
            if self.now_ms - sent_ms >= self.client_retry_ms:
                self._awaiting[tx_id] = (tx, self.now_ms)
                self._send_to(tx, self._client_target(tx.id))

    def read(self, i: int) -> int:
        """Issue a linearizable read at node i; the checker verifies it when released."""
        self._read_seq += 1
        required = max(x.applied_index for x in self.nodes)
        self._reads_waiting[(i, self._read_seq)] = required
        node = self.nodes[i]
        if node.up:
            node.raft.read(self._read_seq)
            self._carry_out(node)
        return self._read_seq

    def abandon_read(self, i: int, read_id: int) -> None:
        """Give up on a read, as the runtime does after READ_TIMEOUT_MS (raft_mode.read_value):
        the core forgets it if it forwarded it. Released late all the same (the leader had
        it), it is still checked against what was committed when it was issued."""
        if (i, read_id) not in self._reads_waiting:
            return  # answered already
        self.read_outcomes[(i, read_id)] = "abandoned"
        node = self.nodes[i]
        if node.up:
            node.raft.read_abandoned(read_id)
            self._carry_out(node)

    def restart(self, i: int) -> None:
        node = self.nodes[i]
        assert not node.up, f"{node.name} is running: a restart follows a crash"
        self._log(f"n{i + 1} RESTART at height {node.head.height}")
        cons = node.head.consensus
        point = (int(cons[1]), int(cons[2])) if cons[0] == "raft" else None
        recovered = RecoveredState.from_records(
            sorted(node.records.items()),
            self.params,
            height=node.head.height,
            block_hash=node.head.hash,
            last_block_point=point,
        )
        node.raft = self._new_raft(i, recovered)
        node.executor = self._new_executor(i, node.raft, node.app, node.head)
        node.up = True
        self._agreed[i] = (node.head.timestamp_ms, self.now_ms)  # a new process: its ledger
        self._carry_out(node)

    def backup(self, i: int) -> RaftSimBackup:
        """A copy of node i's durable state now (`node backup`: records and ledger)."""
        node = self.nodes[i]
        self._log(f"n{i + 1} BACKUP at height {node.head.height}")
        return RaftSimBackup(
            i, tuple(sorted(node.records.items())), tuple(node.blocks[: node.durable_height])
        )

    def restore(self, i: int, copy: RaftSimBackup, *, recovery: bool = True) -> None:
        """Stop node i and start it from `copy`, marked as a restored backup unless
        recovery=False (today's start, for the checkers' teeth)."""
        assert copy.index == i, "a member is restored only from its own backup"
        node = self.nodes[i]
        self._log(f"n{i + 1} RESTORE from a backup at height {copy.height}")
        self._last_check(i)
        node.up = False
        node.unsynced.clear()
        self.disarm(i)
        self._load_ledger(node, list(copy.blocks))
        node.records = dict(copy.records)
        if recovery:
            node.records[RECOVERY_MARK_KEY] = RESTORED_BACKUP.encode()
        node.was_leader_term = -1
        self.restart(i)

    def _load_ledger(self, node: RaftSimNode, blocks: list[TransferredBlock]) -> None:
        """Node's ledger and state as `blocks`, re-executed from genesis."""
        g = genesis_block(self.genesis)
        root = genesis_state_root(self.chain_id)
        app = KeyValueState(self.chain_id, self.params, self.genesis.client_keys(), root)
        head, hashes = g.header, [g.hash]
        for tb in blocks:
            result = replay_block(head, tb, app)
            assert not isinstance(result, str), result
            block, execution, _ = result
            app.apply(execution)
            head = block.header
            hashes.append(block.hash)
        node.app, node.head, node.block_hashes = app, head, hashes
        node.blocks = blocks
        node.committed_ids = {tx.id for tb in blocks for tx in tb.txs}
        node.durable_height = head.height

    def _roll_back(self, node: RaftSimNode) -> None:
        height = node.durable_height
        self._log(f"{node.name} LOSES blocks {height + 1}-{node.head.height} (not durable)")
        self._load_ledger(node, node.blocks[:height])

    def _observe(self, node: RaftSimNode, dest: int | None, frame: bytes) -> None:
        """Votes for the equivocation checker: a granted VOTE-REPLY (not a PreVote) is a vote
        for its destination; a VOTE (not a PreVote) is the sender's vote for itself. Only
        frames naming these kinds are decoded (every message of every run passes here)."""
        if frame[2:6] != b"vote":
            return
        msg = unpack(frame)
        if msg[0] == "vote" and not msg[4]:
            self.votes.signed(node.index, "vote", pack(msg[1]), node.name.encode())
        elif msg[0] == "vote_reply" and msg[2] and not msg[3] and dest is not None:
            self.votes.signed(node.index, "vote", pack(msg[1]), f"n{dest + 1}".encode())

    def transfer(self, i: int, target: int) -> str | None:
        node = self.nodes[i]
        self.transfers += 1
        why = node.raft.transfer_leadership(target)
        self._carry_out(node)
        return why

    # --- the loop ----------------------------------------------------------------------------

    def _core(self, node: RaftSimNode) -> ConsensusCore:
        return node.raft

    def _takes(self, tx: Transaction) -> bool:
        return tx.id in self._awaiting  # (a client sends to one member, until a ledger has it)

    def _count_step(self) -> None:
        if self.steps > self.max_steps:
            raise LivenessViolation(
                f"seed {self.seed}: {self.steps:,} steps by {self.now_ms} ms simulated: a message "
                "storm (every run stops by itself)"
            )

    def _describe(self, frame: bytes) -> str:
        return describe(frame, self.params)

    def _full_check(self, i: int) -> None:
        self.nodes[i].raft.check_invariants()

    def _carried_out(self, node: RaftSimNode) -> None:
        raft = node.raft
        self._touched.add(node.index)  # fuller invariants: at the end of the step
        if raft.role == LEADER:
            self.check.leader(node.index, raft.term)
            if node.was_leader_term != raft.term:
                node.was_leader_term = raft.term
                self.elections_won += 1
                self._log(f"n{node.index + 1} LEADER of term {raft.term}")
                self.check.became_leader(node.index, raft)

    def _persisting(self, node: RaftSimNode, write: Write) -> None:
        self._check_persisted(node, write.records)

    def _reads(
        self, node: RaftSimNode, released: Sequence[object], failed: list[tuple[int, str]]
    ) -> None:
        for state in released:
            assert isinstance(state, ReadState)
            self.reads_released += 1
            required = self._reads_waiting.pop((node.index, state.read_id), None)
            if required is not None:
                self.check.read(node.index, required, state)
                self.read_outcomes[(node.index, state.read_id)] = ""
        for read_id, why in failed:
            if self._reads_waiting.pop((node.index, read_id), None) is not None:
                self.read_outcomes[(node.index, read_id)] = why
            self.reads_failed.append(why)

    def _check_persisted(
        self, node: RaftSimNode, records: list[tuple[bytes, bytes | None]]
    ) -> None:
        raft = node.raft
        for key, value in records:
            if value is None or not key.startswith(b"raft/log/"):
                continue
            entry = Entry.decode(value, self.params)
            assert entry.index == int.from_bytes(key[len(b"raft/log/") :], "big")
            self.check.persisted(node.index, entry, raft.log.term_at(entry.index - 1))

    def _noop_applied(self, node: RaftSimNode, entry: object) -> None:
        assert isinstance(entry, Entry)
        self.check.committed(node.index, entry)

    def _executed(self, node: RaftSimNode, effect: Executed) -> None:
        block, origin = effect.block, effect.origin
        if isinstance(origin, Entry):
            self.check.committed(node.index, origin)
            self.check.ledger.signed(node.index, origin.index, origin.txs)
            certificate = origin.certificate.encode()
            self._log(f"n{node.index + 1} APPLY index {origin.index} -> block {block.height}")
        else:
            assert isinstance(origin, TransferredBlock)
            cons = block.header.consensus
            self.check.ledger.signed(node.index, int(cons[2]), block.txs)
            certificate = origin.certificate
            self.installs += 1
            self._log(f"n{node.index + 1} INSTALL block {block.height} (index {cons[2]})")
        node.head = block.header
        node.block_hashes.append(block.hash)
        node.committed_ids.update(tx.id for tx in block.txs)
        node.blocks.append(TransferredBlock(block.header, block.txs, certificate))
        for tx in block.txs:
            self._awaiting.pop(tx.id, None)  # (the client saw its receipt)
        self.check.ledger.appended(node.index, block.height, block.hash)
        self._block_executed(node.index, block)  # (the checker looks at first executions only)

    def _serve(self, node: RaftSimNode, serve: object) -> None:
        assert isinstance(serve, Serve)
        durable = node.durable_height

        def block_at(height: int) -> TransferredBlock | None:
            return node.blocks[height - 1] if 0 < height <= durable else None

        frame = blocks_reply(
            serve.term,
            serve.from_height,
            serve.to_height,
            serve.count,
            self.params.frame_bytes_max,
            block_at,
        )
        self.net.send(self.now_ms, node.index, serve.peer, frame)
