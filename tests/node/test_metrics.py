"""The Prometheus text format (node/metrics.py): HELP/TYPE per family, label and help escaping,
cumulative histograms; checked with a strict reader (exposition.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from consortium.cli.network import init_network
from consortium.crypto.codec import pack
from consortium.node.config import load_identity
from consortium.node.metrics import (
    Exposition,
    Histogram,
    escape_help,
    escape_label,
    prometheus_text,
)
from consortium.node.runtime import Node, make_node
from consortium.pbft.replica import PbftReplica
from tests.node.exposition import parse


def test_label_values_and_help_text_are_escaped() -> None:
    assert escape_label('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    assert escape_help("line one\nback\\slash") == "line one\\nback\\\\slash"
    out = Exposition({"mode": "pbft", "member": 'n"1'})
    out.labelled(
        "consortium_rejected_messages_total",
        "counter",
        "Dropped,\nby reason.",
        [({"reason": 'bad "sig"\\x\n'}, 3)],
    )
    families = parse(out.text())
    family = families["consortium_rejected_messages_total"]
    assert family.type == "counter" and family.help == "Dropped,\\nby reason."
    [(_, labels, value)] = family.samples
    assert labels == {"mode": "pbft", "member": 'n"1', "reason": 'bad "sig"\\x\n'}
    assert value == 3


def test_histograms_are_cumulative_and_end_in_inf() -> None:
    hist = Histogram((0.001, 0.01, 0.1))
    for v in (0.0005, 0.001, 0.005, 0.05, 5.0):
        hist.observe(v)
    out = Exposition({"mode": "raft"})
    out.histogram("consortium_fsync_seconds", "fsync time.", [({}, hist)])
    family = parse(out.text())["consortium_fsync_seconds"]
    buckets = [(s[1]["le"], s[2]) for s in family.samples if s[0].endswith("_bucket")]
    # le is inclusive: 0.001 falls in the first bucket.
    assert buckets == [("0.001", 2), ("0.01", 3), ("0.1", 4), ("+Inf", 5)]
    count = next(s[2] for s in family.samples if s[0].endswith("_count"))
    total = next(s[2] for s in family.samples if s[0].endswith("_sum"))
    assert count == 5 and total == pytest.approx(5.0565)


def test_a_family_is_declared_once_and_counters_end_in_total() -> None:
    out = Exposition({})
    out.gauge("consortium_height", "Height.", 1)
    with pytest.raises(AssertionError):
        out.gauge("consortium_height", "Height.", 2)
    with pytest.raises(AssertionError):
        out.counter("consortium_blocks", "Blocks.", 1)


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
        assert isinstance(core, PbftReplica)
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
    assert line.endswith(" 3"), line
