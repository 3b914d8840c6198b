"""A hand-wired group of Raft cores for unit tests: the test decides what is delivered and when
time passes; nothing is random except each core's seeded election timeout.

What the harness does is what the node runtime (and the simulator, sim.raft_cluster) does
with each Ready, in the same order: check every log entry it persists (log matching), write its
records to the member's durable dict (one "fsync") and report them persisted, queue its
messages, apply its committed entries into the member's ledger with build_block (state machine
safety), re-execute and store transferred blocks with replay_block, answer block fetches with
blocks_reply, collect released and failed reads; then check the core's invariants
(RaftNode.check_invariants, and that every drop reason it counted is in crashft/reasons.py),
election safety and leader completeness. The checker is the simulator's RaftChecker, so a test
that drives a broken core into a violation gets the SafetyViolation the simulator would raise.

Members sign entries with the simulator's HMAC stand-in; client transactions are real,
pre-signed once (sim.cluster.workload).

Time is one clock, `now`, that only the members a test ticks observe: `timeout(i)` moves the
clock to member i's election deadline and ticks i alone, so exactly one member campaigns. A
member's wall clock is EPOCH_MS + now, plus `wall_offset_ms[i]` for one a test sets wrong.
Crashed members keep their records and their ledger (a block store is durable); `restart(i)`
rebuilds the core from them exactly as the simulator does.

Membership (`spares=k`): k more members, ids n..n+k-1, whose keys genesis lacks; they run from
the start with the genesis configuration, which does not name them (joiners: they only take a
leader's messages). A member change is a client transaction whose one op puts the v2 change
body under MEMBERS_KEY (`change_tx`; the ledger's v2 `config` op is part A's: `change_of` is
the core's injectable predicate, told here to read this stand-in). Applying an entry that
holds one runs ledger.membership.apply_ops on the member's configuration, as the executor will
(configuration on apply), and calls reconfigure(config, index) right after entry_applied (or
installed, for a transferred block).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from consortium.crashft import messages as m
from consortium.crashft import reasons
from consortium.crashft.messages import Entry, TransferredBlock
from consortium.crashft.node import (
    LEADER,
    RaftConfig,
    RaftNode,
    ReadState,
    Ready,
    RecoveredState,
)
from consortium.crashft.transfer import blocks_reply, replay_block
from consortium.crypto.keys import KeyPair
from consortium.ledger.block import BlockHeader, genesis_block, genesis_state_root
from consortium.ledger.genesis import Params
from consortium.ledger.membership import (
    MEMBERS,
    AddMember,
    ChangeOp,
    ChangeV2,
    Configuration,
    apply_ops,
    genesis_configuration,
)
from consortium.ledger.state import KeyValueState, build_block
from consortium.ledger.tx import Put, Transaction
from consortium.sim.cluster import (
    CLIENT_SEED,
    EPOCH_MS,
    HmacSigner,
    member_keys,
    sim_genesis,
    workload,
)
from consortium.sim.raft_cluster import RaftChecker

PARAMS = Params(
    batch_txs_max=4,
    batch_delay_ms=4,
    checkpoint_interval=4,
    window=16,
    request_timeout_ms=1_000,  # E = 1000 ms: timeouts in [1000, 2000), heartbeats every 100 ms
)
E = PARAMS.request_timeout_ms
HEARTBEAT = E // 10

Factory = Callable[..., RaftNode]  # like RaftNode(config, signer, tx_ok=, recovered=, executed=)
MEMBERS_KEY = b"__members__"  # the stand-in for a v2 members change (module docstring)


def harness_change_of(tx: Transaction) -> ChangeV2 | None:
    """The member change a harness transaction carries (`change_tx`), never raising."""
    if len(tx.ops) != 1:
        return None
    op = tx.ops[0]
    if not isinstance(op, Put) or op.key != MEMBERS_KEY:
        return None
    try:
        change = ChangeV2.decode(op.value)
    except Exception:  # (a test may put junk there)
        return None
    return change if change.kind == MEMBERS else None


@dataclass(frozen=True, slots=True)
class Msg:
    src: int
    dst: int
    frame: bytes
    msg: m.Message

    @property
    def kind(self) -> type:
        return type(self.msg)


@dataclass
class Member:
    """One member's durable state (records, ledger) and its core, None while crashed."""

    index: int
    raft: RaftNode | None
    app: KeyValueState
    head: BlockHeader
    block_hashes: list[bytes]
    blocks: list[TransferredBlock] = field(default_factory=list)  # index = height - 1
    records: dict[bytes, bytes] = field(default_factory=dict)
    committed_ids: set[bytes] = field(default_factory=set)
    applied: list[Entry] = field(default_factory=list)  # entries this incarnation applied
    reads: list[ReadState] = field(default_factory=list)
    read_failures: list[tuple[int, str]] = field(default_factory=list)
    readys: list[Ready] = field(default_factory=list)  # every non-empty Ready, in order
    incarnation: int = 0
    config: Configuration | None = None  # the configuration its ledger applied (membership)
    highest_id: int = 0
    used_names: set[str] = field(default_factory=set)
    used_keys: set[bytes] = field(default_factory=set)
    activations: list[tuple[int, int]] = field(default_factory=list)  # (epoch, index)


class RaftGroup:
    def __init__(
        self,
        n: int = 3,
        *,
        params: Params = PARAMS,
        factory: Factory = RaftNode,
        factories: dict[int, Factory] | None = None,
        start: bool = True,
        spares: int = 0,
        **overrides: object,
    ) -> None:
        self.genesis = sim_genesis(n, params, mode="raft")
        self.genesis_n = n
        n += spares
        self.n = n
        self.params = params
        self.chain_id = self.genesis.chain_id
        self.signers = [HmacSigner(k.public, k.seed()) for k in member_keys(n)]
        self.txs: tuple[Transaction, ...] = workload(self.chain_id, 64)
        self._valid = {tx.id for tx in self.txs}
        self.membership = spares > 0
        self.check = RaftChecker(n, self.genesis.client_keys())
        self._change_nonce = 0
        # Commit notices go at once unless a test asks for them deferred (commit_notice_ms),
        # so settle() alone spreads a commit; the simulator runs the deferred default.
        self.overrides = {"commit_notice_ms": 0, **overrides}
        self.factories = {i: (factories or {}).get(i, factory) for i in range(n)}
        self.now = 0
        self.wall_offset_ms: dict[int, int] = {}  # member -> how far its wall clock is off
        self.queue: list[Msg] = []
        self.delivered: list[Msg] = []  # every message delivered, in order
        self.led: dict[int, set[int]] = {i: set() for i in range(n)}  # member -> terms it led
        g = genesis_block(self.genesis)
        self.members: list[Member] = []
        for i in range(n):
            app = KeyValueState(
                self.chain_id, params, self.genesis.client_keys(), genesis_state_root(self.chain_id)
            )
            member = Member(i, None, app, g.header, [g.hash])
            genesis_config = genesis_configuration(self.genesis)
            member.config = genesis_config
            member.highest_id = genesis_config.members[-1].id
            member.used_names = {mi.name for mi in genesis_config.members}
            member.used_keys = {mi.public_key for mi in genesis_config.members}
            self.members.append(member)
            member.raft = self._make(i, RecoveredState(block_hash=g.hash))
        if start:
            for i in range(n):
                self.tick(i)

    # --- members ------------------------------------------------------------------------------

    def config(self, i: int) -> RaftConfig:
        seed = b"harness/%d/%d" % (i, self.members[i].incarnation if i < len(self.members) else 0)
        config = RaftConfig.from_genesis(self.genesis, i, seed, **self.overrides)
        applied = self.members[i].config if i < len(self.members) else None
        return config if applied is None else replace(config, members=applied)

    def _make(self, i: int, recovered: RecoveredState, recovering: bool = False) -> RaftNode:
        extra: dict[str, object] = {"recovering": True} if recovering else {}
        if self.membership:
            extra["change_of"] = harness_change_of
        return self.factories[i](
            self.config(i),
            self.signers[i],
            tx_ok=self.tx_ok,
            recovered=recovered,
            executed=lambda tx_ids: {t for t in tx_ids if t in self.members[i].committed_ids},
            **extra,
        )

    def change_tx(self, ops: list[ChangeOp], *, at: int = 0) -> Transaction:
        """A client transaction carrying the v2 members change `ops`, approved under the
        configuration member `at` applied (approvals are the ledger's: not checked here)."""
        config = self.members[at].config
        assert config is not None
        self._change_nonce += 1
        change = ChangeV2.create(
            config,
            MEMBERS,
            ops,
            b"change %d" % self._change_nonce,
            EPOCH_MS + 10 * 60 * 1000,
            created_ms=EPOCH_MS,
        )
        client = KeyPair.from_seed(CLIENT_SEED)
        tx = Transaction.create(
            client,
            self.chain_id,
            b"members %d" % self._change_nonce,
            EPOCH_MS + 5 * 60 * 1000,
            [Put(MEMBERS_KEY, change.encode())],
        )
        self._valid.add(tx.id)
        return tx

    def add_op(self, member: int) -> AddMember:
        """The op adding spare `member` (its key from member_keys). It gets id `member` when
        the spares are added in id order (ids are next_id's: 1 + the highest ever given)."""
        key = self.signers[member].public_key
        return AddMember(
            f"n{member + 1}", key, f"127.0.0.1:{7100 + member}", f"127.0.0.1:{7200 + member}"
        )

    def _activate(
        self, member: Member, raft: RaftNode, txs: tuple[Transaction, ...], index: int
    ) -> None:
        """Configuration on apply: a member change in the block just applied activates."""
        if not self.membership:
            return
        for tx in txs:
            change = harness_change_of(tx)
            config = member.config
            assert config is not None
            if change is None or change.epoch != config.epoch:
                continue  # (config_superseded)
            result = apply_ops(
                config,
                change,
                highest_id=member.highest_id,
                used_keys=member.used_keys,
                used_names=member.used_names,
            )
            if not isinstance(result, Configuration):
                continue
            member.config = result
            member.highest_id = max(member.highest_id, result.members[-1].id)
            member.used_names |= {mi.name for mi in result.members}
            member.used_keys |= {mi.public_key for mi in result.members}
            member.activations.append((result.epoch, index))
            raft.reconfigure(result, index)
            return  # (one change per block in raft: config_change_pending)

    def tx_ok(self, tx: Transaction) -> bool:
        return tx.id in self._valid

    def node(self, i: int) -> RaftNode:
        raft = self.members[i].raft
        assert raft is not None, f"n{i + 1} is down"
        return raft

    def up(self, i: int) -> bool:
        return self.members[i].raft is not None

    def alive(self) -> list[int]:
        return [i for i in range(self.n) if self.up(i)]

    def leaders(self) -> list[int]:
        return [i for i in self.alive() if self.node(i).role == LEADER]

    def crash(self, i: int) -> None:
        """Member i stops; its records and ledger survive, messages to it are lost."""
        self.members[i].raft = None
        self.queue = [q for q in self.queue if q.dst != i]

    def restart(self, i: int, *, recovering: bool = False) -> RaftNode:
        """Rebuild member i's core from its records and its ledger's head, and start it
        (`recovering`: as the shell does for a restored backup or lost state)."""
        member = self.members[i]
        assert member.raft is None
        cons = member.head.consensus
        point = (int(cons[1]), int(cons[2])) if cons[0] == "raft" else None
        recovered = RecoveredState.from_records(
            sorted(member.records.items()),
            self.params,
            height=member.head.height,
            block_hash=member.head.hash,
            last_block_point=point,
        )
        member.incarnation += 1
        member.applied = []  # (a restarted core applies no-ops after its last block again)
        member.raft = self._make(i, recovered, recovering)
        self.tick(i)
        return member.raft

    # --- inputs (each followed by carrying out the Ready) -------------------------------------

    def tick(self, i: int) -> None:
        self.node(i).tick(self.now, EPOCH_MS + self.now + self.wall_offset_ms.get(i, 0))
        self.flush(i)

    def tick_all(self, nodes: Iterable[int] | None = None) -> None:
        for i in self.alive() if nodes is None else nodes:
            if self.up(i):
                self.tick(i)

    def advance(self, ms: int, nodes: Iterable[int] | None = None) -> None:
        """Move the clock and tick `nodes` (default: every live member) once."""
        self.now += ms
        self.tick_all(nodes)

    def timeout(self, i: int) -> None:
        """Move the clock to member i's election deadline and tick i alone: it campaigns."""
        self.now = max(self.now, self.node(i)._election_deadline)
        self.tick(i)

    def propose(self, i: int, *txs: Transaction) -> list[bool]:
        taken = self.node(i).propose_all(txs)
        self.flush(i)
        return taken

    def read(self, i: int, read_id: int) -> None:
        self.node(i).read(read_id)
        self.flush(i)

    def receive(self, i: int, sender: int, msg: m.Message | bytes) -> Ready:
        """Hand member i one message as if from `sender`; returns (and carries out) its Ready."""
        self.node(i).receive(sender, msg)
        return self.flush(i)

    def transfer(self, i: int, target: int) -> str | None:
        why = self.node(i).transfer_leadership(target)
        self.flush(i)
        return why

    # --- carrying out a Ready ----------------------------------------------------------------

    def flush(self, i: int) -> Ready:
        """Carry out member i's Readys until it has nothing more; returns them merged."""
        member = self.members[i]
        raft = self.node(i)
        merged = Ready([], [], [], [], [], [], [], [])
        while ready := raft.take_ready():
            member.readys.append(ready)
            for key, value in ready.records:
                if value is not None and key.startswith(b"raft/log/"):
                    entry = Entry.decode(value, self.params)
                    self.check.persisted(i, entry, raft.log.term_at(entry.index - 1))
            for key, value in ready.records:
                if value is None:
                    member.records.pop(key, None)
                else:
                    member.records[key] = value
            if ready.log_end is not None:
                raft.persisted(*ready.log_end)  # the "fsync" is done
            for out in ready.early + ready.messages:
                for dst in range(self.n) if out.dest is None else (out.dest,):
                    if dst != i:
                        self.queue.append(Msg(i, dst, out.frame, m.decode(out.frame, self.params)))
            for entry in ready.committed:
                self._apply(member, raft, entry)
            for tb in ready.install:
                self._install(member, raft, tb)
            for serve in ready.serve:
                frame = blocks_reply(
                    serve.term,
                    serve.from_height,
                    serve.to_height,
                    serve.count,
                    self.params.frame_bytes_max,
                    lambda h: member.blocks[h - 1] if 0 < h <= len(member.blocks) else None,
                )
                self.queue.append(Msg(i, serve.peer, frame, m.decode(frame, self.params)))
            member.reads.extend(ready.reads)
            member.read_failures.extend(ready.read_failures)
            for name in ("records", "early", "messages", "committed", "install", "serve", "reads"):
                getattr(merged, name).extend(getattr(ready, name))
            merged.read_failures.extend(ready.read_failures)
        raft.check_invariants()
        unknown = set(raft.rejected) - set(reasons.TABLE)
        assert not unknown, f"n{i + 1} counted reasons its table lacks: {unknown}"
        if raft.role == LEADER:
            self.check.leader(i, raft.term)
            if raft.term not in self.led[i]:
                self.led[i].add(raft.term)
                self.check.became_leader(i, raft)
        return merged

    def _apply(self, member: Member, raft: RaftNode, entry: Entry) -> None:
        self.check.committed(member.index, entry)
        member.applied.append(entry)
        if entry.is_noop:
            raft.entry_applied(entry.index, member.head.height, member.head.hash)
            return
        self.check.ledger.signed(member.index, entry.index, entry.txs)
        block, execution = build_block(
            member.head,
            ("raft", entry.term, entry.index, entry.proposed_ms),
            entry.proposed_ms,
            entry.txs,
            member.app,
        )
        self._append_block(member, block.header, block.hash, execution, block.txs)
        member.blocks.append(TransferredBlock(block.header, block.txs, entry.certificate.encode()))
        raft.entry_applied(entry.index, block.height, block.hash)
        self._activate(member, raft, block.txs, entry.index)

    def _install(self, member: Member, raft: RaftNode, tb: TransferredBlock) -> None:
        result = replay_block(member.head, tb, member.app)
        if isinstance(result, str):
            raft.install_failed(result)
            return
        block, execution, (term, index) = result
        self.check.ledger.signed(member.index, index, block.txs)
        self._append_block(member, block.header, block.hash, execution, block.txs)
        member.blocks.append(TransferredBlock(block.header, block.txs, tb.certificate))
        raft.installed(block.height, block.hash, term, index)
        self._activate(member, raft, block.txs, index)

    def _append_block(
        self,
        member: Member,
        header: BlockHeader,
        block_hash: bytes,
        execution: object,
        txs: tuple[Transaction, ...],
    ) -> None:
        member.app.apply(execution)  # type: ignore[arg-type]
        member.head = header
        member.block_hashes.append(block_hash)
        member.committed_ids.update(tx.id for tx in txs)
        self.check.ledger.appended(member.index, header.height, block_hash)

    # --- delivery ----------------------------------------------------------------------------

    def deliver(
        self,
        pred: Callable[[Msg], bool] | None = None,
        *,
        keep: bool = False,
        rounds: int = 1_000,
    ) -> list[Msg]:
        """Deliver queued messages `pred` accepts (all by default), and what they cause, until
        nothing is left; the others are dropped, or kept in the queue with keep=True. Messages
        to a crashed member are lost. Returns what was delivered, in order."""
        held: list[Msg] = []
        done: list[Msg] = []
        for _ in range(rounds):
            if not self.queue:
                break
            batch, self.queue = self.queue, []
            for q in batch:
                if not self.up(q.dst):
                    continue
                if pred is not None and not pred(q):
                    if keep:
                        held.append(q)
                    continue
                done.append(q)
                self.delivered.append(q)
                self.receive(q.dst, q.src, q.frame)
        else:
            raise AssertionError(f"deliver: still not quiet after {rounds} rounds")
        self.queue = held + self.queue
        return done

    def among(self, *nodes: int) -> Callable[[Msg], bool]:
        """A filter: only messages between members of `nodes`."""
        group = set(nodes)
        return lambda q: q.src in group and q.dst in group

    def drop(self) -> None:
        self.queue.clear()

    def pending(self, kind: type | None = None, src: int | None = None) -> list[Msg]:
        return [
            q
            for q in self.queue
            if (kind is None or isinstance(q.msg, kind)) and (src is None or q.src == src)
        ]

    def run(
        self,
        ms: int,
        *,
        step: int = HEARTBEAT,
        pred: Callable[[Msg], bool] | None = None,
        nodes: Iterable[int] | None = None,
    ) -> None:
        """A little deterministic loop: `ms` of time in steps, ticking `nodes` (default every
        live member) and delivering what `pred` accepts after each step."""
        chosen = None if nodes is None else list(nodes)
        end = self.now + ms
        while self.now < end:
            self.advance(min(step, end - self.now), chosen)
            self.deliver(pred)

    # --- scripted elections -------------------------------------------------------------------

    def elect(self, i: int, voters: Iterable[int] | None = None, attempts: int = 4) -> RaftNode:
        """Member i times out and campaigns, its (pre)vote traffic reaching only `voters`
        (default: every live member), once per attempt until it leads. Vote traffic outside
        the group is dropped; everything else (the new leader's first appends) stays queued
        for the test to deliver. Raises if it never wins."""
        group = set(self.alive() if voters is None else voters) | {i}

        def votes(q: Msg) -> bool:
            return isinstance(q.msg, m.Vote | m.VoteReply)

        for _ in range(attempts):
            self.timeout(i)
            self.deliver(lambda q: votes(q) and q.src in group and q.dst in group, keep=True)
            self.queue = [q for q in self.queue if not votes(q)]
            if self.node(i).role == LEADER:
                return self.node(i)
        raise AssertionError(f"n{i + 1} was not elected: {self.node(i).status()['waiting_for']}")

    def heartbeat(self, i: int, nodes: Iterable[int] | None = None) -> None:
        """Move the clock to leader i's next heartbeat, tick it alone, and settle among
        `nodes` (followers learn the commit index from heartbeats)."""
        self.now = max(self.now, self.node(i)._heartbeat_due)
        self.tick(i)
        self.settle(nodes)

    def settle(self, nodes: Iterable[int] | None = None) -> None:
        """Deliver everything among `nodes` (default every live member) until quiet."""
        group = set(self.alive() if nodes is None else nodes)
        self.deliver(lambda q: q.src in group and q.dst in group)


def carries_term(q: Msg, term: int) -> bool:
    """An APPEND carrying at least one entry of `term`."""
    return isinstance(q.msg, m.Append) and any(e.term == term for e in q.msg.entries)


def log_terms(raft: RaftNode) -> list[tuple[int, int]]:
    """(index, term) of every entry in the log, for assertions."""
    log = raft.log
    return [(i, log.term_at(i) or 0) for i in range(log.first_index, log.last_index + 1)]


def started(n: int = 3, **overrides: object) -> RaftGroup:
    """n1 leads term 1; its no-op is committed and known committed everywhere."""
    g = RaftGroup(n, **overrides)  # type: ignore[arg-type]
    g.elect(0)
    g.settle()
    g.heartbeat(0)
    assert [g.node(i).commit for i in range(n)] == [1] * n
    return g


def clocked(n: int = 3, **overrides: object) -> RaftGroup:
    """As started(), with every member's wall clock read at the election (the harness ticks
    only the members a test names: a follower's wall clock is the one it read last)."""
    g = RaftGroup(n, **overrides)  # type: ignore[arg-type]
    g.elect(0)
    g.tick_all()
    g.settle()
    g.heartbeat(0)
    assert [g.node(i).commit for i in range(n)] == [1] * n
    return g


def without(*nodes: int) -> Callable[[Msg], bool]:
    """A filter: nothing to or from `nodes`."""
    return lambda q: q.src not in nodes and q.dst not in nodes


def ids(entry: Entry) -> set[bytes]:
    return {tx.id for tx in entry.txs}


def entries_holding(raft: RaftNode, tx_id: bytes) -> list[int]:
    """The indexes of the entries in `raft`'s log that order `tx_id`."""
    log = raft.log
    return [i for i in range(log.first_index, log.last_index + 1) if tx_id in ids(log.entry(i))]
