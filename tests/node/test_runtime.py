"""The node runtime carries out the executor's effects in their order (runtime.Node._carry_out):
with a recording store and recording sends, every effect kind lands where node/executor.py
says, on both paths of a write (waited for, and in the background under load)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio

from consortium.cli.network import init_network, load_client_setup
from consortium.crashft import node as raft
from consortium.ledger.store import RECOVERY_MARK_KEY
from consortium.ledger.tx import Put, Transaction
from consortium.node.config import load_identity
from consortium.node.events import Propose, ReadRequest
from consortium.node.runtime import Node, make_node
from consortium.pbft.effects import CommittedBatch, Outbound, Ready
from consortium.pbft.effects import Serve as PbftServe


class _Certificate:
    def encode(self) -> bytes:
        return b"certificate"


class _Core:
    """A stand-in core handing out scripted Readies (pbft or raft shaped)."""

    def __init__(self, pending: int = 0) -> None:
        self.readies: list[Any] = []
        self.pending_count = pending
        self.recovering = False

    def take_ready(self) -> Any:
        return self.readies.pop(0) if self.readies else Ready([], [], [], [], [], [])

    def executed(self, height: int, block_hash: bytes) -> None:
        pass

    def served(self, serve: PbftServe, frame_bytes: int) -> None:
        pass


def member(tmp_path: Path, mode: str = "pbft", pending: int = 0) -> tuple[Node, _Core, list[str]]:
    """Member n1 with a stand-in core, its store and sends recorded into `log`."""
    init_network(tmp_path / "net", members=4 if mode == "pbft" else 3, clients=1, mode=mode)  # type: ignore[arg-type]
    identity = load_identity(tmp_path / "net" / "nodes" / "n1")
    node = make_node(identity.config, identity.genesis, identity.keys)
    core = _Core(pending)
    node.core = node.executor.core = core  # type: ignore[assignment]
    log: list[str] = []
    store = node.store
    stage, commit = store.stage, store.commit_staged

    def staged(**kwargs: Any) -> bool:
        log.append("stage")
        return stage(**kwargs)

    def committed() -> None:
        commit()
        log.append("fsync")

    store.stage = staged  # type: ignore[method-assign]
    store.commit_staged = committed  # type: ignore[method-assign]
    node.outbound = lambda dest, frame: log.append(f"send {frame.decode()}")
    service = node.service  # the block listener: receipts pushed, then answered once durable
    executed, durable = service.executed, service.durable
    service.executed = lambda block, vote: log.append("receipts") or executed(block, vote)  # type: ignore[method-assign, func-returns-value]
    service.durable = lambda block, vote: log.append("durable") or durable(block, vote)  # type: ignore[method-assign, func-returns-value]
    node.mode.serve = lambda request: log.append("serve")  # type: ignore[method-assign, func-returns-value]
    node.mode.reads = lambda released, failed: log.append("reads")  # type: ignore[method-assign]
    return node, core, log


def committed_batch(node: Node, tmp_path: Path) -> CommittedBatch:
    client = load_client_setup(tmp_path / "net").keys()[0]
    now = int(time.time() * 1000)
    tx = Transaction.create(client, node.chain_id, os.urandom(16), now + 60_000, [Put(b"k", b"v")])
    seq = node.executor.head.height + 1
    return CommittedBatch(seq, 0, b"d" * 32, now, (tx,), _Certificate())  # type: ignore[arg-type]


async def test_a_step_with_records_writes_before_it_sends_and_serves(tmp_path: Path) -> None:
    node, core, log = member(tmp_path)
    serve = PbftServe(peer=2, from_seq=1, bytes_max=1000)
    core.readies.append(
        Ready(
            [(b"vote", b"1")],
            [],
            [Outbound(1, b"prepare")],
            [committed_batch(node, tmp_path)],
            [],
            [serve],
        )
    )
    await node._carry_out(node.executor.step())
    assert log == ["receipts", "stage", "fsync", "send prepare", "serve", "durable"]
    assert node.store.height == 1


async def test_a_write_of_blocks_alone_runs_in_the_background_under_load(tmp_path: Path) -> None:
    """Its messages leave before the fsync; what needs the block stored comes after it."""
    with trio.fail_after(10):
        node, core, log = member(tmp_path, pending=1)
        core.readies.append(
            Ready([], [], [Outbound(1, b"commit")], [committed_batch(node, tmp_path)], [], [])
        )
        async with trio.open_nursery() as nursery:
            node._nursery = nursery
            await node._carry_out(node.executor.step())
            assert log == ["receipts", "stage", "send commit"]
            assert node._writing is not None
        assert log == ["receipts", "stage", "send commit", "fsync", "durable"]


async def test_a_write_of_blocks_alone_runs_here_when_idle(tmp_path: Path) -> None:
    node, core, log = member(tmp_path, pending=0)
    core.readies.append(
        Ready([], [], [Outbound(1, b"commit")], [committed_batch(node, tmp_path)], [], [])
    )
    async with trio.open_nursery() as nursery:
        node._nursery = nursery
        await node._carry_out(node.executor.step())
    # (done at once: what needed the block stored runs as the write completes)
    assert log == ["receipts", "stage", "fsync", "durable", "send commit"]


async def test_raft_early_messages_leave_before_the_write_and_reads_after(
    tmp_path: Path,
) -> None:
    node, core, log = member(tmp_path, mode="raft")
    core.readies.append(
        raft.Ready(
            records=[(b"raft/hard", b"term")],
            early=[raft.Outbound(None, b"append")],
            messages=[raft.Outbound(1, b"ack")],
            committed=[],
            install=[],
            serve=[],
            reads=[raft.ReadState(1, 0)],
            read_failures=[],
        )
    )
    await node._carry_out(node.executor.step())
    assert log == ["send append", "stage", "fsync", "send ack", "reads"]


async def test_under_load_a_write_with_records_still_holds_its_messages(tmp_path: Path) -> None:
    """Busy (transactions pending), the fsync of a write with records runs on a worker thread
    (the receipts queued ahead leave meanwhile), but the vote it holds leaves only after it:
    never the background path of a write of blocks alone."""
    node, core, log = member(tmp_path, pending=1)
    core.readies.append(
        Ready(
            [(b"vote", b"1")],
            [],
            [Outbound(1, b"prepare")],
            [committed_batch(node, tmp_path)],
            [],
            [],
        )
    )
    with trio.fail_after(10):  # (a worker thread fsyncs)
        async with trio.open_nursery() as nursery:
            node._nursery = nursery
            await node._carry_out(node.executor.step())
            assert node._writing is None  # not left in the background
    assert log == ["receipts", "stage", "fsync", "send prepare", "durable"]


async def test_raft_under_load_an_acknowledgement_leaves_after_its_write(tmp_path: Path) -> None:
    node, core, log = member(tmp_path, mode="raft", pending=1)
    core.readies.append(
        raft.Ready(
            records=[(b"raft/log/x", b"entry")],
            early=[],
            messages=[raft.Outbound(0, b"ack")],
            committed=[],
            install=[],
            serve=[],
            reads=[],
            read_failures=[],
        )
    )
    with trio.fail_after(10):  # (a worker thread fsyncs)
        async with trio.open_nursery() as nursery:
            node._nursery = nursery
            await node._carry_out(node.executor.step())
            assert node._writing is None
    assert log == ["stage", "fsync", "send ack"]


def test_a_drain_of_events_is_handed_to_the_core_as_one_input(tmp_path: Path) -> None:
    """runtime.Node._handle_all: the events of one drain, in order, inside one mode.inputs()
    (raft: RaftNode.inputs, one batch, one forward and one heartbeat round for all of them)."""
    node, _, _ = member(tmp_path, mode="raft")
    seen: list[object] = []

    @contextlib.contextmanager
    def inputs() -> Iterator[None]:
        seen.append("drain")
        yield
        seen.append("end")

    node.mode.inputs = inputs  # type: ignore[method-assign]
    node.mode.propose = lambda txs: seen.append(len(txs))  # type: ignore[method-assign, func-returns-value]
    node.mode.read = lambda read_id: seen.append(f"read {read_id}")  # type: ignore[method-assign, func-returns-value]
    node._handle_all([Propose([]), ReadRequest(7), Propose([])])
    assert seen == ["drain", 0, "read 7", 0, "end"]


async def test_the_recovery_mark_is_deleted_durably_when_the_core_passes_its_gate(
    tmp_path: Path,
) -> None:
    """A member started from a marked store (restored, or its data lost): once its core is
    past the recovery gate, the executor's next write deletes the mark from the store, and
    only then does the shell say it has recovered."""
    node, core, log = member(tmp_path)
    store = node.store
    assert store.stage(blocks=[], records=[(RECOVERY_MARK_KEY, b"restored")], block_signatures=[])
    store.commit_staged()
    store.finish_staged()
    log.clear()
    node.recovering_from = "a restored backup"
    node.executor.recovery_mark = True
    core.recovering = True
    await node._carry_out_ready()
    assert log == [] and store.recovery_mark() == "restored"
    core.recovering = False  # past the gate
    await node._carry_out_ready()
    assert log == ["stage", "fsync"] and store.recovery_mark() is None
    node._recovered()
    assert node.recovering_from is None
