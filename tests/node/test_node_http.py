"""One real member in-process (its peers never started) with its HTTP listener on 127.0.0.1:
GET /healthz, /readyz, /status, /metrics answer from the running node, and its JSON log lines
carry node, view and sequence."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from consortium.cli.network import init_network
from consortium.crashft import reasons as raft_reasons
from consortium.ledger.store import LOST_STATE
from consortium.node.config import load_identity
from consortium.node.logs import setup_logging
from consortium.node.runtime import MISBEHAVIOUR_BY_MODE, Node, make_node
from consortium.pbft import reasons as pbft_reasons
from tests.node.exposition import parse

HOST = "127.0.0.1"


@asynccontextmanager
async def lone_member(tmp_path: Path, mode: str = "pbft") -> AsyncIterator[Node]:
    directory = tmp_path / "net"
    if not directory.exists():  # (a second start reuses the network)
        init_network(directory, members=4 if mode == "pbft" else 3, clients=1, mode=mode)  # type: ignore[arg-type]
    identity = load_identity(directory / "nodes" / "n1")
    assert identity.config.http_listen is not None  # init writes one
    node = make_node(
        identity.config,
        identity.genesis,
        identity.keys,
        peer_listen=(HOST, 0),
        client_listen=(HOST, 0),
        http_listen=(HOST, 0),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        yield node
        nursery.cancel_scope.cancel()


async def get(port: int, path: str) -> tuple[int, bytes]:
    stream = await trio.open_tcp_stream(HOST, port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        got = bytearray()
        while data := await stream.receive_some(65536):
            got += data
    head, _, body = bytes(got).partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


@pytest.mark.parametrize("mode", ["pbft", "raft"])
async def test_endpoints_of_a_member_cut_off_from_its_peers(tmp_path: Path, mode: str) -> None:
    with trio.fail_after(20):
        async with lone_member(tmp_path, mode) as node:
            await trio.sleep(0.2)  # a few core ticks
            code, body = await get(node.http_port, "/healthz")
            assert code == 200 and body.startswith(b"ok: core loop ticked")
            code, body = await get(node.http_port, "/readyz")
            assert code == 503
            others = "n2, n3 and n4" if mode == "pbft" else "n2 and n3"
            assert f"no quorum: {others} unreachable".encode() in body
            budget = "n=4 f=1: 1 of 4 up" if mode == "pbft" else "n=3 f=1: 1 of 3 up"
            assert budget.encode() in body
            code, body = await get(node.http_port, "/status")
            doc = json.loads(body)
            assert code == 200 and doc["member"] == "n1" and doc["ready"] is False
            assert {row["state"] for row in doc["peer_state"].values()} == {"unreachable"}
            code, body = await get(node.http_port, "/metrics")
            assert code == 200
            families = parse(body.decode())
            expected = {
                "consortium_height": "gauge",
                "consortium_view": "gauge",
                "consortium_ready": "gauge",
                "consortium_blocks_committed_total": "counter",
                "consortium_batch_txs": "histogram",
                "consortium_commit_latency_seconds": "histogram",
                "consortium_messages_sent_total": "counter",
                "consortium_messages_received_total": "counter",
                "consortium_message_bytes_sent_total": "counter",
                "consortium_rejected_messages_total": "counter",
                "consortium_signature_verify_seconds": "histogram",
                "consortium_fsync_seconds": "histogram",
                "consortium_peer_connected": "gauge",
            }
            for name, kind in expected.items():
                assert families[name].type == kind, name
            for family in families.values():
                for _, labels, _ in family.samples:
                    assert labels["mode"] == mode and labels["member"] == "n1"
            ready = families["consortium_ready"].samples
            assert [v for _, _, v in ready] == [0]
            connected = {
                (labels["peer"], labels["direction"]): v
                for _, labels, v in families["consortium_peer_connected"].samples
            }
            assert len(connected) == 2 * (node.genesis.n - 1)
            assert set(connected.values()) == {0}
            code, _ = await get(node.http_port, "/nope")
            assert code == 404


async def test_json_log_lines_carry_node_view_and_sequence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = setup_logging("n1", "info", "json")
    try:
        with trio.fail_after(20):
            async with lone_member(tmp_path) as node:
                node.log.warning("view change to %d: %s", 1, "a test line")
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    finally:
        root = logging.getLogger("consortium")
        root.handlers.clear()
        root.propagate = True
        root.setLevel(logging.NOTSET)
    assert lines, "the member logged nothing"
    assert log is node.log
    ours = next(doc for doc in lines if doc["msg"] == "view change to 1: a test line")
    assert ours["level"] == "warning" and ours["node"] == "n1"
    assert ours["mode"] == "pbft" and ours["view"] == 0 and ours["seq"] == 0
    assert ours["height"] == 0
    started = next(doc for doc in lines if "up: mode pbft" in doc["msg"])
    assert {"node", "view", "seq", "height"} <= set(started)


async def test_dropped_peer_messages_are_summarised_at_most_once_per_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(20):
        async with lone_member(tmp_path) as node:
            caplog.set_level(logging.DEBUG, logger="consortium")
            now = trio.current_time() + 60  # past any summary already due
            node.core.rejected["bad_signature"] += 3
            node.core.rejected["duplicate"] += 5
            node._watch_progress(now)
            node.core.rejected["bad_signature"] += 1
            node._watch_progress(now + 1)  # within the interval: nothing more
    lines = [
        (r.levelname, r.getMessage()) for r in caplog.records if "dropped as" in r.getMessage()
    ]
    assert lines == [
        ("WARNING", "peer messages dropped as invalid in the last 10 s: bad_signature 3"),
        ("DEBUG", "peer messages dropped as redundant in the last 10 s: duplicate 5"),
    ]


@pytest.mark.parametrize(
    ("mode", "counts", "invalid", "redundant"),
    [
        (
            "pbft",
            {"not_primary": 1, "prepare_from_primary": 2, "not_reissued": 3},
            "not_primary 1, prepare_from_primary 2",
            "not_reissued 3",
        ),
        (
            "raft",
            {"append_mismatch": 4, "unknown_sender": 5},
            "unknown_sender 5",
            "append_mismatch 4",
        ),
    ],
)
async def test_the_summary_classes_each_drop_by_the_table_of_its_mode(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    mode: str,
    counts: dict[str, int],
    invalid: str,
    redundant: str,
) -> None:
    """Matching names against marks ("bad", "mismatch", ...) missed misbehaviour (a PREPARE
    from the primary, a PRE-PREPARE from a member not primary) and warned of raft's log repair
    (append_mismatch). The class now comes from the core's table (pbft/reasons.py,
    crashft/reasons.py)."""
    with trio.fail_after(20):
        async with lone_member(tmp_path, mode) as node:
            caplog.set_level(logging.DEBUG, logger="consortium")
            now = trio.current_time() + 60  # past any summary already due
            node.core.rejected.update(counts)
            node._watch_progress(now)
    lines = [
        (r.levelname, r.getMessage()) for r in caplog.records if "dropped as" in r.getMessage()
    ]
    assert lines == [
        ("WARNING", f"peer messages dropped as invalid in the last 10 s: {invalid}"),
        ("DEBUG", f"peer messages dropped as redundant in the last 10 s: {redundant}"),
    ]


def test_every_reason_of_a_table_is_classed_by_it_and_an_unknown_one_warns() -> None:
    for mode, table in (("pbft", pbft_reasons), ("raft", raft_reasons)):
        misbehaviour = MISBEHAVIOUR_BY_MODE[mode]
        for reason, (kind, _) in table.TABLE.items():
            assert misbehaviour(reason) == (kind == table.MISBEHAVIOUR), (mode, reason)
        assert misbehaviour("no_such_reason")  # better a warning than silence


async def test_healthz_fails_with_the_age_when_the_core_loop_stops_ticking(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with lone_member(tmp_path) as node:
            await trio.sleep(0.05)
            assert node.status_view.healthz().status == 200
            # As if the core loop had been stuck for 12 s (no await in between: it cannot
            # tick and reset the clock before the check).
            node.last_tick_s = trio.current_time() - 12
            stuck = node.status_view.healthz()
            assert stuck.status == 503
            assert stuck.body.startswith(b"not healthy: the core loop last ticked 12.0 s ago")


@pytest.mark.parametrize("mode", ["pbft", "raft"])
async def test_a_first_start_after_init_is_not_held_up_but_a_lost_data_directory_is(
    tmp_path: Path, mode: str
) -> None:
    with trio.fail_after(20):
        async with lone_member(tmp_path, mode) as node:
            assert node.recovering_from is None and not node.core.recovering
            await trio.sleep(0.1)
            assert not [r for r in node.status()["not_progressing_because"] if "recover" in r]
            code, body = await get(node.http_port, "/metrics")
            assert [v for _, _, v in parse(body.decode())["consortium_recovering"].samples] == [0]
        # The member loses its data directory: started again on an empty one, it recovers.
        data = tmp_path / "net" / "nodes" / "n1" / "data"
        shutil.rmtree(data)
        data.mkdir()
        async with lone_member(tmp_path, mode) as node:
            assert node.recovering_from == LOST_STATE and node.core.recovering
            await trio.sleep(0.1)
            code, body = await get(node.http_port, "/readyz")
            what = "view" if mode == "pbft" else "term"
            needed = 2  # pbft: n - f - 1 of the others; raft: a majority of the others
            assert code == 503
            assert (
                f"recovering from {LOST_STATE}: 0 of {needed} members answered with their {what}"
            ).encode() in body
            assert node.store.recovery_mark() == LOST_STATE
            code, body = await get(node.http_port, "/metrics")
            assert [v for _, _, v in parse(body.decode())["consortium_recovering"].samples] == [1]
            node.core._recovery = None  # as if it had passed the gate
            await trio.sleep(0.1)
            assert node.recovering_from is None and node.store.recovery_mark() is None
