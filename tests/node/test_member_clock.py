"""A member's clock in the shell (node/runtime.py, node/service.py): submissions are judged
against the earlier of its wall clock and the network's agreed time, so a clock far ahead
refuses no honest transaction as expired; a clock the core finds off the network's time shows
in status, /readyz, /metrics and the log; and the hidden test option that sets a member's
clock wrong is re-read while it runs."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
import trio

from consortium.cli.network import init_network, load_client_setup
from consortium.crypto.codec import unpack
from consortium.ledger.tx import Put, Transaction
from consortium.node.client_port import ClientConnection
from consortium.node.config import load_identity
from consortium.node.metrics import prometheus_text
from consortium.node.runtime import Node, make_node
from consortium.node.service import ClientService
from consortium.protocol.messages import SubmitRequest
from consortium.testing.faults import OffsetClock
from tests.node.exposition import parse

AHEAD_MS = 600_000


def _member(tmp_path: Path, mode: str = "pbft", clock_file: Path | None = None) -> Node:
    """Member n1; with `clock_file`, its wall clock offset as the test entry point sets it
    (consortium.testing.faults.OffsetClock)."""
    init_network(tmp_path / "net", members=4 if mode == "pbft" else 3, clients=1, mode=mode)  # type: ignore[arg-type]
    identity = load_identity(tmp_path / "net" / "nodes" / "n1")
    node = make_node(identity.config, identity.genesis, identity.keys)
    if clock_file is not None:
        node.wall_clock = OffsetClock(clock_file, node.log.warning)
    return node


def _tx(tmp_path: Path, node: Node, expiry_ms: int) -> Transaction:
    client = load_client_setup(tmp_path / "net").keys()[0]
    return Transaction.create(client, node.chain_id, os.urandom(16), expiry_ms, [Put(b"k", b"v")])


async def _submit(node: Node, tx: Transaction) -> list[object]:
    conn = ClientConnection(1, "client", frames_max=1000)
    await ClientService(node).handle(conn, SubmitRequest(1, [tx.to_array()]))
    reply = unpack(conn._queue[-1])  # [req_id, "ok", verdicts]
    assert reply[1] == "ok", reply
    (verdict,) = reply[2]
    return list(verdict)


@pytest.mark.parametrize("mode", ["pbft", "raft"])
async def test_a_member_whose_clock_is_far_ahead_refuses_no_honest_transaction_as_expired(
    tmp_path: Path, mode: str
) -> None:
    clock_file = tmp_path / "clock"
    clock_file.write_text(str(AHEAD_MS))
    node = _member(tmp_path, mode, clock_file)
    try:
        assert abs(node.wall_ms() - AHEAD_MS - int(time.time() * 1000)) < 5_000
        # Expires in a minute (real time): ten minutes ago by this member's clock.
        honest = _tx(tmp_path, node, int(time.time() * 1000) + 60_000)
        assert (await _submit(node, honest))[1] == "accepted"
        # Expired by every clock: still refused.
        stale = _tx(tmp_path, node, int(time.time() * 1000) - 60_000)
        assert (await _submit(node, stale))[1:] == ["rejected", "expired"]
    finally:
        node.store.close()


async def test_the_test_clock_offset_is_re_read_so_a_test_can_make_the_clock_jump(
    tmp_path: Path,
) -> None:
    with trio.fail_after(10):
        clock_file = tmp_path / "clock"
        node = _member(tmp_path, clock_file=clock_file)  # no file yet: the true clock
        try:
            assert abs(node.wall_ms() - int(time.time() * 1000)) < 5_000
            clock = node.wall_clock
            assert isinstance(clock, OffsetClock)
            clock_file.write_text("-3600000\n")
            await clock.read()
            assert abs(node.wall_ms() + 3_600_000 - int(time.time() * 1000)) < 5_000
            assert node._now()[1] - node.wall_ms() < 5_000  # what the core is ticked with
            clock_file.unlink()
            await clock.read()
            assert abs(node.wall_ms() - int(time.time() * 1000)) < 5_000
        finally:
            node.store.close()


@pytest.mark.parametrize("mode", ["pbft", "raft"])
async def test_a_member_whose_clock_is_off_says_so_in_status_metrics_and_log(
    tmp_path: Path, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    node = _member(tmp_path, mode)
    try:
        status = node.status()
        assert status["clock"]["offset_ms"] is None and not status["clock"]["disagrees"]
        families = parse(prometheus_text(node, status))
        assert families["consortium_clock_disagrees"].samples[0][2] == 0
        # What the core measures against committed batches (pbft) or its leader's fresh
        # entries (raft): ten minutes ahead of the network's time.
        for _ in range(8):
            node.core.clock.add(AHEAD_MS)
        caplog.set_level(logging.WARNING, logger="consortium")
        node._watch_progress(trio.current_time())
        node._watch_progress(trio.current_time())  # logged once, not per loop
        status = node.status()
        clock = status["clock"]
        assert clock["disagrees"] and clock["offset_ms"] == AHEAD_MS
        basis = "the batches a quorum committed" if mode == "pbft" else "the entries its leader"
        assert any(
            r.startswith(f"clock: this member's clock is 600.0 s ahead of {basis}")
            for r in status["not_progressing_because"]
        )
        assert not status["ready"]
        families = parse(prometheus_text(node, status))
        assert families["consortium_clock_offset_seconds"].samples[0][2] == AHEAD_MS / 1000
        assert families["consortium_clock_disagrees"].samples[0][2] == 1
        lines = [r.getMessage() for r in caplog.records if "clock" in r.getMessage()]
        assert lines == [
            "this member's clock is +600.0 s off the time of the batches a quorum accepted "
            "(more than 60.0 s): fix its time source (NTP)"
        ]
    finally:
        node.store.close()
