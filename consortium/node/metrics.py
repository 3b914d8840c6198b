"""Prometheus metrics, exposed through prometheus-client (text format, CONTENT_TYPE_LATEST).

One set of names for both modes; every sample carries `mode` ("pbft" or "raft") and `member`
labels, so one dashboard serves both kinds of network. Each member has its own
CollectorRegistry (MemberMetrics), never the library's global one: tests run several members
in one process, and each must expose only itself. On it sit one custom collector that reads
the member's counters at scrape time (status.MemberStatus.metrics_doc, the same figures
`consortium bench` reports), its histograms (NodeMetrics) and its status, and the library's
standard process_*, python_gc_* and python_info collectors (given the member's labels too).
Nothing here is updated on the hot path except `Histogram.observe`, which is a bisect and two
additions: the member's existing counters stay the source, read when Prometheus asks.

prometheus_client takes about 0.1 s to import, so it is imported inside the functions that
need it, never when this module is (runtime and verification import it for Histogram).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from consortium.ledger.genesis import Genesis, Member

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector, CollectorRegistry

# Bucket upper bounds (the +Inf bucket is implicit).
BATCH_TXS_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
LATENCY_S_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)
FSYNC_S_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1)
VERIFY_S_BUCKETS = (0.00001, 0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.01)


def content_type() -> str:
    """What GET /metrics answers with: the library's CONTENT_TYPE_LATEST, the text format that
    generate_latest writes."""
    from prometheus_client import CONTENT_TYPE_LATEST

    return str(CONTENT_TYPE_LATEST)


@dataclass(slots=True)
class Histogram:
    """Fixed buckets; `counts[i]` is the number of observations in (bounds[i-1], bounds[i]],
    the last entry those above every bound (made cumulative only when exposed)."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        assert list(self.bounds) == sorted(self.bounds), "bucket bounds ascend"
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, observations at or below it) for each bound, then "+Inf": the buckets
        prometheus_client's HistogramMetricFamily takes."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            out.append((_le(bound), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out


def _le(bound: float) -> str:
    """A bucket's `le` label value as the member wrote it before it used prometheus-client:
    integers without ".0" ("1", "30"), others as Python writes them ("0.001"). Prometheus 2
    does not normalise `le`, so "1.0" would be a new series: dashboards and `le="1"` selectors
    would lose the buckets' history at the upgrade."""
    return str(bound) if isinstance(bound, int) else repr(float(bound))


class Families:
    """The member's metric families for one scrape, in the order added, each sample with the
    member's common labels first. Refuses a family declared twice and a counter whose name
    does not end in `_total` (names are part of the dashboards and alert rules)."""

    def __init__(self, common: Mapping[str, str]) -> None:
        self._common = dict(common)
        self._families: list[Metric] = []
        self._names: set[str] = set()

    def _family(self, name: str, kind: str, help_text: str) -> Metric:
        from prometheus_client.metrics_core import Metric

        assert name not in self._names, f"metric family {name} exposed twice"
        assert kind != "counter" or name.endswith("_total"), name
        self._names.add(name)
        # The library names a counter family without its `_total` and adds it back on the
        # samples and in the text format's HELP and TYPE lines.
        family = Metric(name.removesuffix("_total") if kind == "counter" else name, help_text, kind)
        self._families.append(family)
        return family

    def _sample(self, family: Metric, name: str, labels: Mapping[str, str], value: float) -> None:
        family.add_sample(name, {**self._common, **labels}, float(value))

    def gauge(self, name: str, help_text: str, value: float) -> None:
        self._sample(self._family(name, "gauge", help_text), name, {}, value)

    def counter(self, name: str, help_text: str, value: float) -> None:
        self._sample(self._family(name, "counter", help_text), name, {}, value)

    def labelled(
        self,
        name: str,
        kind: str,
        help_text: str,
        samples: Iterable[tuple[Mapping[str, str], float]],
    ) -> None:
        """One family with one sample per label set (a family with no samples yet is still
        declared, so dashboards find every name from the first scrape)."""
        assert kind in ("gauge", "counter"), kind
        family = self._family(name, kind, help_text)
        for labels, value in samples:
            self._sample(family, name, labels, value)

    def histogram(
        self,
        name: str,
        help_text: str,
        hists: Sequence[tuple[Mapping[str, str], Histogram]],
    ) -> None:
        family = self._family(name, "histogram", help_text)
        for labels, hist in hists:
            for le, n in hist.cumulative():
                self._sample(family, f"{name}_bucket", {**labels, "le": le}, n)
            self._sample(family, f"{name}_count", labels, hist.count)
            self._sample(family, f"{name}_sum", labels, hist.total)

    def collect(self) -> list[Metric]:
        return list(self._families)


def text(collector: Collector) -> str:
    """The text exposition of one collector (or registry), as GET /metrics answers it."""
    from prometheus_client import generate_latest

    return generate_latest(collector).decode()


def _by(label: str, counts: Mapping[str, int]) -> list[tuple[Mapping[str, str], float]]:
    return [({label: k}, v) for k, v in sorted(counts.items())]


class Observed(Protocol):
    """What the exposition reads of a member (runtime.Node): its status document and counters."""

    genesis: Genesis
    member: Member
    metrics: Any  # runtime.NodeMetrics
    verifier: Any  # its protocol verifier (verification.CountingVerifier)
    tx_cache: Any  # its client signature cache (verification.TxSignatureCache)


def common_labels(node: Observed) -> dict[str, str]:
    return {"mode": node.genesis.mode, "member": node.member.name}


def member_families(node: Observed, status: dict[str, Any]) -> list[Metric]:
    """The member's own families (consortium_*), from its counters and its status document
    (status.MemberStatus.status)."""
    doc = status["metrics"]
    m = node.metrics
    out = Families(common_labels(node))
    out.gauge("consortium_up", "1 while the member process serves (always 1 when scraped).", 1)
    out.gauge(
        "consortium_ready",
        "1 when the member can make progress (what GET /readyz answers 200 for), else 0.",
        1 if status["ready"] else 0,
    )
    out.gauge(
        "consortium_recovering",
        "1 while the member recovers from a restored backup or lost state: it votes in no view "
        "or term it may have used, and counts as faulty (pbft) or unavailable (raft).",
        1 if status["core"].get("recovering") else 0,
    )
    out.gauge("consortium_height", "Height of the last block in the ledger.", status["height"])
    out.gauge(
        "consortium_view",
        "Current view (pbft) or term (raft); the mode label says which.",
        int(status.get("term" if node.genesis.mode == "raft" else "view") or 0),
    )
    out.gauge(
        "consortium_is_primary",
        "1 when this member is the pbft primary or the raft leader.",
        1
        if status.get("leader" if node.genesis.mode == "raft" else "primary") == node.member.name
        else 0,
    )
    out.gauge(
        "consortium_stable_checkpoint",
        "Last stable checkpoint (pbft sequence number) or snapshot index (raft).",
        int(status.get("stable_checkpoint") or 0),
    )
    out.counter(
        "consortium_view_changes_total",
        "View changes started (pbft) or elections started (raft).",
        int(status.get("view_changes") or 0),
    )
    view_change = status["core"].get("view_change") or {}
    out.gauge(
        "consortium_view_change_alone",
        "1 while this pbft member waits alone in a view change the others do not join (it "
        "counts as one of the f faulty until their view change reaches its view), else 0.",
        1 if view_change.get("alone") else 0,
    )
    out.gauge(
        "consortium_pending_txs",
        "Client transactions accepted and not yet committed.",
        int(status["core"].get("pending_txs") or 0),
    )
    out.gauge(
        "consortium_members_up",
        "Members linked to this one both ways, itself included (compare with consortium_quorum).",
        int(status["up"]),
    )
    out.gauge("consortium_quorum", "Members needed to make progress.", node.genesis.quorum)
    out.counter("consortium_blocks_committed_total", "Blocks committed here.", doc["blocks"])
    out.counter(
        "consortium_txs_committed_total", "Transactions committed here.", doc["txs_committed"]
    )
    out.histogram("consortium_batch_txs", "Transactions per committed block.", [({}, m.batch_txs)])
    out.histogram(
        "consortium_commit_latency_seconds",
        "From a batch's proposed timestamp (the primary's or leader's clock) to its block "
        "being durable here.",
        [({}, m.commit_latency_s)],
    )
    out.counter("consortium_core_steps_total", "Core steps carried out.", m.steps)
    out.labelled(
        "consortium_messages_sent_total",
        "counter",
        "Peer messages sent, by kind (a broadcast counts once per recipient).",
        _by("kind", doc["messages_sent_by_kind"]),
    )
    out.labelled(
        "consortium_message_bytes_sent_total",
        "counter",
        "Bytes of peer messages sent, by kind.",
        _by("kind", doc["bytes_sent_by_kind"]),
    )
    out.labelled(
        "consortium_messages_received_total",
        "counter",
        "Peer messages received, by kind (before validation).",
        _by("kind", doc["messages_received_by_kind"]),
    )
    out.labelled(
        "consortium_message_bytes_received_total",
        "counter",
        "Bytes of peer messages received, by kind.",
        _by("kind", doc["bytes_received_by_kind"]),
    )
    out.labelled(
        "consortium_rejected_messages_total",
        "counter",
        "Peer messages the consensus core dropped, by reason.",
        _by("reason", status["rejected"]),
    )
    out.labelled(
        "consortium_transport_events_total",
        "counter",
        "Peer transport events: failed handshakes, bad frames, frames dropped, by event.",
        _by("event", status["transport"]),
    )
    out.labelled(
        "consortium_client_port_events_total",
        "counter",
        "Client port events: connections, requests by kind, refusals, closes, by event.",
        _by("event", status["client_port"]),
    )
    gateway = status.get("gateway") or {}
    out.labelled(
        "consortium_gateway_events_total",
        "counter",
        "HTTP/JSON gateway events: connections, requests by endpoint, errors by code, SSE "
        "streams, refusals (none without a gateway).",
        _by("event", gateway.get("events", {})),
    )
    out.counter(
        "consortium_submissions_total", "Transactions submitted by clients.", doc["submitted"]
    )
    out.labelled(
        "consortium_submissions_rejected_total",
        "counter",
        "Client submissions refused before ordering, by reason.",
        _by("reason", doc["rejected_at_submit"]),
    )
    out.labelled(
        "consortium_signature_verifications_total",
        "counter",
        "Signature checks: client (transactions, cache misses) and protocol (peer messages, "
        "handshakes).",
        [
            ({"kind": "client"}, doc["signatures_verified"]),
            ({"kind": "protocol"}, doc["protocol_verifications"]),
        ],
    )
    out.counter(
        "consortium_signature_cache_hits_total",
        "Client signatures found already checked.",
        doc["signature_cache_hits"],
    )
    out.histogram(
        "consortium_signature_verify_seconds",
        "Time of one signature check, by kind.",
        [
            ({"kind": "client"}, node.tx_cache.verify_s),
            ({"kind": "protocol"}, node.verifier.verify_s),
        ],
    )
    out.counter("consortium_fsyncs_total", "Durable writes (one fsync each).", doc["fsyncs"])
    out.histogram(
        "consortium_fsync_seconds",
        "Time of one durable write's commit (SQLite WAL COMMIT with synchronous=FULL: the fsync).",
        [({}, m.fsync_s)],
    )
    peers = status["peers"]
    out.labelled(
        "consortium_peer_connected",
        "gauge",
        "1 while an authenticated connection to (outbound) or from (inbound) the peer is up.",
        [
            ({"peer": str(p["name"]), "direction": d}, 1 if p[f"{d}_connected"] else 0)
            for p in peers
            for d in ("outbound", "inbound")
        ],
    )
    out.labelled(
        "consortium_peer_lag_blocks",
        "gauge",
        "How far behind this member the peer is, where known (pbft: blocks it showed it "
        "executed; raft, on the leader: log entries not yet replicated).",
        [
            ({"peer": name}, row["lag"])
            for name, row in status["peer_state"].items()
            if row.get("lag") is not None
        ],
    )
    out.labelled(
        "consortium_peer_frames_dropped_total",
        "counter",
        "Frames for the peer dropped (not connected, queue full, lost on disconnect).",
        [({"peer": str(p["name"])}, int(str(p["frames_dropped"]))) for p in peers],
    )
    clock = status.get("clock") or {}
    offset_ms = clock.get("offset_ms")
    out.gauge(
        "consortium_clock_offset_seconds",
        "This member's wall clock minus the network's time (pbft, raft follower: the proposed "
        "times of batches a quorum accepted, median of the last 16; raft leader: the median "
        "clock of a majority); NaN until measured.",
        math.nan if offset_ms is None else int(offset_ms) / 1000,
    )
    out.gauge(
        "consortium_clock_disagrees",
        "1 while this member's clock is off the network's time by more than the limit "
        "(pbft, raft follower: 2 x timestamp_skew_ms; raft leader: timestamp_skew_ms).",
        1 if clock.get("disagrees") else 0,
    )
    out.counter(
        "consortium_clock_handoffs_total",
        "raft: leadership handed away because this member's clock was off the majority's.",
        int(status["core"].get("clock_handoff_count") or 0),
    )
    out.counter("consortium_process_cpu_seconds_total", "User and system CPU time.", doc["cpu_s"])
    out.gauge("consortium_uptime_seconds", "Seconds since the member started.", doc["uptime_s"])
    return out.collect()


class MemberCollector:
    """A prometheus_client collector that reads the member when scraped: `status()` (the
    member's status document) is taken once per scrape and every family made from it."""

    def __init__(self, node: Observed, status: Callable[[], dict[str, Any]]) -> None:
        self.node = node
        self.status = status

    def collect(self) -> Iterator[Metric]:
        yield from member_families(self.node, self.status())


class Labelled:
    """Another collector's families with the member's labels added to every sample, so the
    library's process_* and python_* metrics carry `mode` and `member` like the rest."""

    def __init__(self, inner: Collector, labels: Mapping[str, str]) -> None:
        self.inner = inner
        self.labels = dict(labels)

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.metrics_core import Metric

        for family in self.inner.collect():
            out = Metric(family.name, family.documentation, family.type, family.unit)
            for s in family.samples:
                out.add_sample(s.name, {**self.labels, **s.labels}, s.value, s.timestamp)
            yield out


def member_registry(node: Observed, status: Callable[[], dict[str, Any]]) -> CollectorRegistry:
    """A registry of the member's own (never the library's global REGISTRY, which would mix
    every member a process runs): its families, and the standard process, garbage collector
    and platform collectors (each cheap: a read of /proc/self, gc.get_stats(), constants)."""
    from prometheus_client import (
        CollectorRegistry,
        GCCollector,
        PlatformCollector,
        ProcessCollector,
    )

    registry = CollectorRegistry(auto_describe=False)
    registry.register(MemberCollector(node, status))
    labels = common_labels(node)
    for standard in (
        ProcessCollector(registry=None),
        PlatformCollector(registry=None),
        # GCCollector always registers itself somewhere: a scratch registry, not the global.
        GCCollector(registry=CollectorRegistry()),
    ):
        registry.register(Labelled(standard, labels))
    return registry


class MemberMetrics:
    """GET /metrics of one member: its registry, made by `prepare` when the member starts its
    HTTP listener (runtime.Node.run), so the first scrape does not import prometheus_client
    (about 0.1 s) on the event loop; a member without one never imports it."""

    def __init__(self, node: Observed, status: Callable[[], dict[str, Any]]) -> None:
        self.node = node
        self.status = status
        self._registry: CollectorRegistry | None = None

    def prepare(self) -> None:
        if self._registry is None:
            self._registry = member_registry(self.node, self.status)

    @property
    def registry(self) -> CollectorRegistry:
        self.prepare()
        assert self._registry is not None
        return self._registry

    def text(self) -> str:
        return text(self.registry)


def prometheus_text(node: Observed, status: dict[str, Any]) -> str:
    """The scrape body for a member and a status document already taken (tests, tools)."""
    return MemberMetrics(node, lambda: status).text()
