"""The Ready executor (consortium/node/executor.py): the order of a step's effects, which both
the node runtime and the simulator carry out, for pbft (a stand-in core handing it scripted
Readies) and raft (a real one-member RaftNode)."""

from __future__ import annotations

import pytest

from consortium.crashft.node import LEADER, RaftConfig, RaftNode, RecoveredState
from consortium.crypto.keys import KeyPair
from consortium.crypto.signing import Ed25519Signer
from consortium.ledger.block import genesis_block, genesis_state_root
from consortium.ledger.genesis import Genesis
from consortium.ledger.state import KeyValueState
from consortium.ledger.store import RECOVERY_MARK_KEY
from consortium.ledger.tx import Put, Transaction
from consortium.node.executor import (
    Durable,
    Effect,
    Executed,
    Executor,
    Send,
    Serve,
    Write,
)
from consortium.pbft.effects import CommittedBatch, Outbound, Ready
from consortium.pbft.effects import Serve as PbftServe
from consortium.sim.cluster import CLIENT_SEED, member_keys, sim_genesis, workload
from consortium.sim.shell import EPOCH_MS, BrokenExecutor


class _Certificate:
    def encode(self) -> bytes:
        return b"certificate"


class _Checkpoint:
    """Stands in for a CheckpointCertificate: the executor reads only its seq."""

    def __init__(self, seq: int) -> None:
        self.seq = seq


class ScriptedCore:
    """A stand-in pbft core: hands out the Readies a test queued, records what it is told."""

    pending_count = 0

    def __init__(self) -> None:
        self.readies: list[Ready] = []
        self.executed_heights: list[int] = []

    def take_ready(self) -> Ready:
        return self.readies.pop(0) if self.readies else Ready([], [], [], [], [], [])

    def executed(self, height: int, block_hash: bytes) -> None:
        self.executed_heights.append(height)


def pbft_executor(kind: type[Executor] = Executor) -> tuple[Executor, ScriptedCore, Genesis]:
    genesis = sim_genesis(4)
    core = ScriptedCore()
    app = KeyValueState(
        genesis.chain_id,
        genesis.params,
        genesis.client_keys(),
        genesis_state_root(genesis.chain_id),
    )
    head = genesis_block(genesis).header
    signer = Ed25519Signer(member_keys(4)[0])
    return kind(core, app, head, signer, genesis.chain_id, 0), core, genesis  # type: ignore[arg-type]


def batch(genesis: Genesis, seq: int, *txs: Transaction) -> CommittedBatch:
    proposed = EPOCH_MS + seq
    return CommittedBatch(seq, 0, b"d" * 32, proposed, txs, _Certificate())  # type: ignore[arg-type]


def kinds(effects: list[Effect]) -> list[str]:
    return [type(e).__name__ for e in effects]


MSG = Outbound(None, b"a vote")


def test_a_step_with_records_executes_then_writes_then_sends_once_durable() -> None:
    """Votes (records) and blocks go in one write; the messages, the fetch answers and what
    needs the blocks stored wait for write_done."""
    executor, core, genesis = pbft_executor()
    txs = workload(genesis.chain_id, 2)
    serve = PbftServe(peer=2, from_seq=1, bytes_max=1000)
    core.readies.append(
        Ready([(b"vote", b"1")], [], [MSG], [batch(genesis, 1, txs[0])], [], [serve])
    )
    # What executing block 1 produced (a CHECKPOINT vote): joins this step's write.
    core.readies.append(Ready([(b"checkpoint vote", b"1")], [], [MSG], [], [], []))
    effects = executor.step()
    assert kinds(effects) == ["Executed", "Write"]
    write = effects[1]
    assert isinstance(write, Write) and write.holds
    assert write.records == [(b"vote", b"1"), (b"checkpoint vote", b"1")]
    assert [b.height for b, _, _ in write.blocks] == [1] and len(write.signatures) == 1
    assert core.executed_heights == [1]  # reported before the write
    assert executor.head.height == 1  # the next block executes on top of it
    after = executor.write_done(write.n)
    assert kinds(after) == ["Send", "Serve", "Durable"]
    assert isinstance(after[0], Send) and list(after[0].messages) == [MSG, MSG]
    assert isinstance(after[1], Serve) and after[1].request == serve
    durable = after[2]
    assert isinstance(durable, Durable) and [b.height for b, _ in durable.blocks] == [1]
    assert executor.step() == []


def test_a_write_of_blocks_alone_holds_nothing() -> None:
    """No message depends on a block on disk: they follow the Write at once, and the write may
    run in the background; write_done then brings only what needs the blocks stored."""
    executor, core, genesis = pbft_executor()
    txs = workload(genesis.chain_id, 2)
    core.readies.append(Ready([], [], [MSG], [batch(genesis, 1, txs[0])], [], []))
    effects = executor.step()
    assert kinds(effects) == ["Executed", "Write", "Send"]
    write = effects[1]
    assert isinstance(write, Write) and not write.holds and write.records == []
    # The next step executes on top of the block still being written.
    core.readies.append(Ready([], [], [], [batch(genesis, 2, txs[1])], [], []))
    second = executor.step()
    assert kinds(second) == ["Executed", "Write"]
    assert executor.writes_pending == 2
    with pytest.raises(AssertionError, match="in order"):
        executor.write_done(2)
    assert kinds(executor.write_done(1)) == ["Durable"]
    assert kinds(executor.write_done(2)) == ["Durable"]


def test_a_step_without_a_write_sends_at_once() -> None:
    executor, core, _ = pbft_executor()
    core.readies.append(Ready([], [], [MSG], [], [], []))
    assert kinds(executor.step()) == ["Send"]


def test_the_recovery_mark_goes_in_the_write_of_the_first_step_past_the_gate() -> None:
    """A store marked as recovering (restored, or its data lost): the mark is deleted in the
    write of the step whose records took the core past its gate (a crash keeps both or
    neither), even a step with nothing else to write, and only once."""
    executor, core, _ = pbft_executor()
    executor.recovery_mark = True
    core.recovering = True  # type: ignore[attr-defined]
    core.readies.append(Ready([(b"view", b"2")], [], [Outbound(1, b"x")], [], [], []))
    (write, *_) = executor.step()
    assert isinstance(write, Write) and write.records == [(b"view", b"2")]  # still recovering
    executor.write_done(write.n)
    core.recovering = False  # type: ignore[attr-defined]
    core.readies.append(Ready([(b"view", b"3")], [], [], [], [], []))
    (write,) = executor.step()
    assert isinstance(write, Write) and write.holds
    assert write.records == [(b"view", b"3"), (RECOVERY_MARK_KEY, None)]
    executor.write_done(write.n)
    assert executor.step() == []  # only once
    # Past the gate in a step that wrote nothing else: a write of the deletion alone.
    executor.recovery_mark = True
    (write,) = executor.step()
    assert isinstance(write, Write) and write.records == [(RECOVERY_MARK_KEY, None)]


def test_a_stable_checkpoint_above_the_ledger_waits_for_its_block() -> None:
    """pbft: the ledger never certifies a block it does not hold."""
    executor, core, genesis = pbft_executor()
    txs = workload(genesis.chain_id, 2)
    cp2 = _Checkpoint(2)
    core.readies.append(Ready([(b"r", b"1")], [], [], [], [cp2], []))  # type: ignore[list-item]
    first = executor.step()
    assert isinstance(first[0], Write) and first[0].checkpoints == []
    executor.write_done(first[0].n)
    core.readies.append(
        Ready([], [], [], [batch(genesis, 1, txs[0]), batch(genesis, 2, txs[1])], [], [])
    )
    second = executor.step()
    write = next(e for e in second if isinstance(e, Write))
    assert write.checkpoints == [cp2] and write.holds  # with block 2, in the same write


def test_a_broken_executor_sends_before_it_writes() -> None:
    """What the simulator's checker-teeth tests run: the checkers must catch it."""
    executor, core, genesis = pbft_executor(BrokenExecutor)
    txs = workload(genesis.chain_id, 1)
    core.readies.append(Ready([(b"vote", b"1")], [], [MSG], [batch(genesis, 1, txs[0])], [], []))
    effects = executor.step()
    assert kinds(effects) == ["Executed", "Send", "Write"]
    assert isinstance(effects[2], Write) and kinds(executor.write_done(effects[2].n)) == ["Durable"]


def test_after_a_failed_write_nothing_more_is_carried_out() -> None:
    executor, core, genesis = pbft_executor()
    core.readies.append(
        Ready([], [], [], [batch(genesis, 1, *workload(genesis.chain_id, 1))], [], [])
    )
    write = next(e for e in executor.step() if isinstance(e, Write))
    executor.write_failed(write.n)
    with pytest.raises(AssertionError):
        executor.step()


# --- raft: a real one-member RaftNode ---------------------------------------------------------


def raft_member() -> tuple[Executor, RaftNode, Genesis]:
    genesis = sim_genesis(1, mode="raft")
    keys: KeyPair = member_keys(1)[0]
    signer = Ed25519Signer(keys)
    g = genesis_block(genesis)
    raft = RaftNode(
        RaftConfig.from_genesis(genesis, 0, seed=b"executor test"),
        signer,
        tx_ok=lambda tx: True,
        recovered=RecoveredState(block_hash=g.hash),
    )
    app = KeyValueState(
        genesis.chain_id,
        genesis.params,
        genesis.client_keys(),
        genesis_state_root(genesis.chain_id),
    )
    return Executor(raft, app, g.header, signer, genesis.chain_id, 0), raft, genesis


def carry_out(executor: Executor, now: tuple[int, int]) -> list[str]:
    """Run steps until nothing is left, completing each write at once; every effect's kind."""
    seen: list[str] = []
    pending = [e for e in executor.step()]
    while pending:
        effect = pending.pop(0)
        seen.append(type(effect).__name__)
        if isinstance(effect, Write):
            pending[:0] = executor.write_done(effect.n, now)
        if not pending:
            pending = executor.step()
    return seen


def test_raft_a_member_counts_its_own_entry_only_once_its_write_is_durable() -> None:
    executor, raft, genesis = raft_member()
    now = (1_000, EPOCH_MS + 1_000)
    raft.tick(*now)
    raft.tick(now[0] + 10 * genesis.params.request_timeout_ms, now[1])  # elected alone
    assert raft.role == LEADER
    effects = executor.step()
    assert kinds(effects) == ["Write"]  # its no-op entry: not committed before it is durable
    assert raft.commit == 0
    write = effects[0]
    assert isinstance(write, Write) and write.holds
    executor.write_done(write.n, now)
    assert raft.commit == 1  # persisted() told the core
    assert kinds(executor.step())[0] == "NoOpApplied"
    client = KeyPair.from_seed(CLIENT_SEED)
    tx = Transaction.create(client, genesis.chain_id, b"1", EPOCH_MS + 60_000, [Put(b"k", b"v")])
    raft.propose_all([tx])
    seen = carry_out(executor, now)
    # The entry's write, then (durable: committed) its block executed, then the block's write.
    assert seen.index("Executed") > seen.index("Write")
    assert seen[-2:] == ["Write", "Durable"]
    assert executor.head.height == 1 and executor.applied_index == raft.applied


def test_raft_noop_applied_is_an_effect_the_simulator_sees() -> None:
    executor, raft, genesis = raft_member()
    now = (1_000, EPOCH_MS + 1_000)
    raft.tick(*now)
    raft.tick(now[0] + 10 * genesis.params.request_timeout_ms, now[1])
    seen = carry_out(executor, now)
    assert "NoOpApplied" in seen and "Executed" not in seen


def test_executed_names_what_the_block_was_built_from() -> None:
    executor, core, genesis = pbft_executor()
    b1 = batch(genesis, 1, *workload(genesis.chain_id, 1))
    core.readies.append(Ready([], [], [], [b1], [], []))
    executed = executor.step()[0]
    assert isinstance(executed, Executed) and executed.origin is b1
    assert executed.block.height == 1 and executed.vote.body  # our signature over it
