"""The Prometheus exposition (node/metrics.py, through prometheus-client): HELP/TYPE per family,
label and help escaping, cumulative histograms, one registry per member with the standard
process_* metrics, and every name the docs and alert rules use present on a live member;
checked with a strict reader (exposition.py) and the library's own parser."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from consortium.cli.network import init_network
from consortium.crypto.codec import pack
from consortium.node.config import load_identity
from consortium.node.metrics import Families, Histogram, MemberMetrics, prometheus_text
from consortium.node.metrics import text as exposition
from consortium.node.runtime import Node, make_node
from consortium.pbft.epochs import PbftEpochs
from tests.node.exposition import parse
from tests.node.test_node_http import lone_member

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"


class _Collected:
    def __init__(self, families: Families) -> None:
        self.families = families

    def collect(self) -> list[prometheus_client.Metric]:
        return self.families.collect()


def test_label_values_and_help_text_are_escaped() -> None:
    out = Families({"mode": "pbft", "member": 'n"1'})
    out.labelled(
        "consortium_rejected_messages_total",
        "counter",
        "Dropped,\nby reason\\.",
        [({"reason": 'bad "sig"\\x\n'}, 3)],
    )
    body = exposition(_Collected(out))
    assert "# HELP consortium_rejected_messages_total Dropped,\\nby reason\\\\." in body
    assert 'reason="bad \\"sig\\"\\\\x\\n"' in body
    families = parse(body)
    family = families["consortium_rejected_messages_total"]
    assert family.type == "counter" and family.help == "Dropped,\\nby reason\\\\."
    [(_, labels, value)] = family.samples
    assert labels == {"mode": "pbft", "member": 'n"1', "reason": 'bad "sig"\\x\n'}
    assert value == 3
    # The library's own parser reads the same values back.
    [parsed] = text_string_to_metric_families(body)
    assert parsed.documentation == "Dropped,\nby reason\\."
    assert parsed.samples[0].labels["reason"] == 'bad "sig"\\x\n'


def test_histograms_are_cumulative_and_end_in_inf() -> None:
    hist = Histogram((0.001, 0.01, 0.1))
    for v in (0.0005, 0.001, 0.005, 0.05, 5.0):
        hist.observe(v)
    out = Families({"mode": "raft"})
    out.histogram("consortium_fsync_seconds", "fsync time.", [({}, hist)])
    family = parse(exposition(_Collected(out)))["consortium_fsync_seconds"]
    buckets = [(s[1]["le"], s[2]) for s in family.samples if s[0].endswith("_bucket")]
    # le is inclusive: 0.001 falls in the first bucket.
    assert buckets == [("0.001", 2), ("0.01", 3), ("0.1", 4), ("+Inf", 5)]
    count = next(s[2] for s in family.samples if s[0].endswith("_count"))
    total = next(s[2] for s in family.samples if s[0].endswith("_sum"))
    assert count == 5 and total == pytest.approx(5.0565)


def test_bucket_bounds_keep_the_le_labels_they_had_before_prometheus_client() -> None:
    """Integer bounds are written "1", not "1.0": Prometheus 2 does not normalise `le`, so a
    change would split every bucket series at the upgrade and stop `le="1"` selectors."""
    from consortium.node import metrics

    out = Families({})
    out.histogram("consortium_batch_txs", "Txs.", [({}, Histogram(metrics.BATCH_TXS_BUCKETS))])
    out.histogram(
        "consortium_commit_latency_seconds", "Lat.", [({}, Histogram(metrics.LATENCY_S_BUCKETS))]
    )
    out.histogram("consortium_fsync_seconds", "Fsync.", [({}, Histogram(metrics.FSYNC_S_BUCKETS))])
    body = exposition(_Collected(out))

    def les(name: str) -> list[str]:
        return re.findall(rf'^{name}_bucket{{le="([^"]*)"}} ', body, re.M)

    assert les("consortium_batch_txs") == [
        *("1", "2", "5", "10", "20", "50", "100", "200", "500", "1000", "2000", "5000"),
        "+Inf",
    ]
    assert les("consortium_commit_latency_seconds") == [
        *("0.001", "0.002", "0.005", "0.01", "0.02", "0.05", "0.1", "0.2", "0.5"),
        *("1", "2", "5", "10", "30", "+Inf"),
    ]
    assert les("consortium_fsync_seconds") == [
        *("0.0001", "0.0002", "0.0005", "0.001", "0.002", "0.005", "0.01", "0.02", "0.05"),
        *("0.1", "0.5", "1", "+Inf"),
    ]


def test_a_family_is_declared_once_and_counters_end_in_total() -> None:
    out = Families({})
    out.gauge("consortium_height", "Height.", 1)
    with pytest.raises(AssertionError):
        out.gauge("consortium_height", "Height.", 2)
    with pytest.raises(AssertionError):
        out.counter("consortium_blocks", "Blocks.", 1)
    with pytest.raises(AssertionError):
        out.labelled("consortium_frames", "counter", "Frames.", [])


def test_the_reader_has_teeth() -> None:
    with pytest.raises(AssertionError):
        parse("consortium_height 1\n")  # no HELP/TYPE
    with pytest.raises(AssertionError):
        parse('# HELP x X.\n# TYPE x gauge\nx{a="unterminated} 1\n')
    with pytest.raises(AssertionError):
        parse(
            "# HELP h H.\n# TYPE h histogram\n"
            'h_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n'
        )


def test_a_pbft_member_alone_in_a_view_change_shows_in_a_gauge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    init_network(tmp_path / "net", members=4, clients=1)
    identity = load_identity(tmp_path / "net" / "nodes" / "n2")
    node = make_node(identity.config, identity.genesis, identity.keys)
    try:

        def alone() -> int:
            family = parse(prometheus_text(node, node.status()))["consortium_view_change_alone"]
            [(_, _, value)] = family.samples
            return int(value)

        assert alone() == 0
        core = node.core
        assert isinstance(core, PbftEpochs)
        core._start_view_change(1, "no request executed within the timeout")
        assert alone() == 0  # in a view change, not (yet) known to be alone
        others = {"members": [0, 2, 3], "view": 0, "needed_to_move_others": 2}
        monkeypatch.setattr(core, "_alone", lambda: others)
        assert alone() == 1
    finally:
        node.store.close()


# --- major: a Byzantine member's message kinds --------------------------------------------


def _member(tmp_path: Path, mode: str = "pbft") -> Node:
    init_network(tmp_path / "net", members=4 if mode == "pbft" else 3, clients=1, mode=mode)  # type: ignore[arg-type]
    identity = load_identity(tmp_path / "net" / "nodes" / "n1")
    return make_node(identity.config, identity.genesis, identity.keys)


# (Review 2 of issue 6: a failing test that showed what the review found.)
def test_peer_message_kinds_counted_are_bounded(tmp_path: Path) -> None:
    """runtime.count_received: the kind is read from the raw frame (up to 31 arbitrary
    characters) BEFORE it is decoded, and each new kind is a new Counter entry in two
    counters, kept forever and exposed as a Prometheus label value and in every /status and
    /readyz document. One Byzantine member (pbft tolerates f of them) sending [random, ...]
    frames grows the others' memory and the scrape without bound."""
    node = _member(tmp_path)
    for i in range(2000):
        node.count_received(pack([f"junk{i:027d}", 1]))
    kinds = len(node.metrics.received_by_kind)
    text = prometheus_text(node, node.status())
    node.store.close()
    assert kinds <= 64, f"{kinds} message kinds kept from one member's junk"
    assert text.count("consortium_messages_received_total{") <= 64


# (Review 2 of issue 6: a failing test that showed what the review found.)
def test_raft_exposes_its_elections_as_view_changes(tmp_path: Path) -> None:
    """metrics.py consortium_view_changes_total says 'elections started (raft)', but reads
    status['view_changes'], which raft's mode_status never sets: always 0 in raft."""
    node = _member(tmp_path, "raft")
    node.core.elections = 3
    text = prometheus_text(node, node.status())
    node.store.close()
    line = next(x for x in text.splitlines() if x.startswith("consortium_view_changes_total{"))
    assert float(line.rpartition(" ")[2]) == 3, line


# --- one registry per member, the standard collectors, and the names the docs use -----------


def test_each_member_has_its_own_registry_with_the_process_metrics(tmp_path: Path) -> None:
    """Two members in one process (as in tests) each expose themselves only, the library's
    global registry stays free of them, and the standard process_* families are there, with
    the member's labels like every other sample."""
    init_network(tmp_path / "net", members=4, clients=1)
    nodes = [
        make_node(i.config, i.genesis, i.keys)
        for i in (load_identity(tmp_path / "net" / "nodes" / name) for name in ("n1", "n2"))
    ]
    try:
        for node in nodes:
            metrics = MemberMetrics(node, node.status)
            assert metrics.registry is not prometheus_client.REGISTRY
            assert metrics.registry is metrics.registry  # made once
            body = metrics.text()
            families = {f.name: f for f in text_string_to_metric_families(body)}
            for name in (
                "process_cpu_seconds",
                "process_resident_memory_bytes",
                "process_open_fds",
                "process_start_time_seconds",
            ):
                assert name in families, name
            assert families["process_cpu_seconds"].type == "counter"
            assert "python_gc_collections" in families and "python_info" in families
            members = {s.labels.get("member") for f in families.values() for s in f.samples}
            assert members == {node.member.name}
            assert {s.labels.get("mode") for f in families.values() for s in f.samples} == {"pbft"}
            # The strict reader agrees (HELP and TYPE before samples, counters end in _total).
            assert parse(body)["consortium_height"].type == "gauge"
        globally = prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
        assert "consortium_" not in globally
    finally:
        for node in nodes:
            node.store.close()


def _names(text: str) -> set[str]:
    """The metric family names a text mentions (histogram series named by their family)."""
    found = set(re.findall(r"\b((?:consortium|process|python)_[a-z_]+[a-z])\b", text))
    return {re.sub(r"_(bucket|count|sum)$", "", n) for n in found}


def _section(path: Path, heading: str) -> str:
    doc = path.read_text()
    start = doc.index(heading)
    level = heading.split(" ", maxsplit=1)[0]
    rest = doc[start + len(heading) :]
    ends = [m.start() for m in re.finditer(rf"^#{{1,{len(level)}}} ", rest, re.M)]
    return rest[: ends[0]] if ends else rest


def documented_names() -> dict[str, set[str]]:
    """Every metric name in the metrics reference, in the alert rules of the operator guide,
    and in any Prometheus rules file under deploy/."""
    out = {
        "docs/operations-metrics.md": _names(
            _section(ROOT / "docs/operations-metrics.md", "## Metrics")
        ),
        "docs/operations.md": _names(_section(ROOT / "docs/operations.md", "### What to alert on")),
    }
    for rules in sorted((ROOT / "deploy").rglob("*.y*ml")):
        if "groups:" in rules.read_text():
            out[str(rules.relative_to(ROOT))] = _names(rules.read_text())
    return out


def test_the_name_reader_finds_the_names() -> None:
    assert _names("`consortium_up` and rate(consortium_fsync_seconds_bucket[5m]), consortium_") == {
        "consortium_up",
        "consortium_fsync_seconds",
    }
    names = documented_names()
    assert "consortium_quorum" in names["docs/operations.md"]
    assert "consortium_clock_handoffs_total" in names["docs/operations-metrics.md"]
    assert len(names["docs/operations-metrics.md"]) >= 39


async def test_the_registry_is_made_as_the_http_listener_starts_not_by_the_first_scrape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Making it imports prometheus_client (about 0.1 s): done while the member starts, before
    its core loop runs, not inside the first GET /metrics on the event loop; a member made
    but not serving HTTP never makes it."""
    from consortium.node import metrics

    made: list[metrics.Observed] = []
    real = metrics.member_registry

    def counting(
        node: metrics.Observed, status: Callable[[], dict[str, Any]]
    ) -> prometheus_client.CollectorRegistry:
        made.append(node)
        return real(node, status)

    monkeypatch.setattr(metrics, "member_registry", counting)
    with trio.fail_after(20):
        async with lone_member(tmp_path, "pbft") as node:
            assert made == [node]  # as it started, before any scrape
            assert b"consortium_height" in node.status_view.http_routes()["/metrics"]().body
            assert made == [node]
    made.clear()
    other = _member(tmp_path / "other")
    other.store.close()
    assert made == []


async def scrape(port: int) -> tuple[bytes, bytes]:
    """GET /metrics over a plain socket: (response head, body)."""
    stream = await trio.open_tcp_stream(HOST, port)
    async with stream:
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        got = bytearray()
        while data := await stream.receive_some(65536):
            got += data
            assert len(got) < 4 << 20
    head, _, body = bytes(got).partition(b"\r\n\r\n")
    return head, body


@pytest.mark.parametrize("mode", ["pbft", "raft"])
async def test_a_live_member_exposes_every_name_the_docs_and_alerts_use(
    tmp_path: Path, mode: str
) -> None:
    with trio.fail_after(20):
        async with lone_member(tmp_path, mode) as node:
            await trio.sleep(0.2)  # a few core ticks
            head, body = await scrape(node.http_port)
    assert head.startswith(b"HTTP/1.1 200"), head
    content_type = next(
        line.partition(b":")[2].strip()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-type:")
    )
    assert content_type.decode() == prometheus_client.CONTENT_TYPE_LATEST
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    # The parser names a counter family without `_total`; the text has the full name.
    exposed = set(families) | {f"{n}_total" for n, f in families.items() if f.type == "counter"}
    for where, names in documented_names().items():
        missing = sorted(names - exposed)
        assert not missing, f"{where} names metrics a {mode} member does not expose: {missing}"
    assert families["process_cpu_seconds"].samples[0].value >= 0
    assert not math.isnan(families["consortium_quorum"].samples[0].value)
