"""What an operator sees of a member: `consortium status` and GET /status (status()), /healthz,
/readyz, /metrics, and the counters `consortium bench` reads (metrics_doc()). Reads the member
through a narrow protocol (StatusSource), so the shell (runtime.Node) stays the shell."""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Callable
from typing import Any, Protocol

import trio

from consortium import version
from consortium.ledger.genesis import Genesis, Member
from consortium.ledger.store import BlockStore
from consortium.node.executor import ConsensusCore
from consortium.node.explain import (
    PeerLink,
    blockers,
    fault_budget,
    name_members,
    peer_rows,
    peer_warnings,
)
from consortium.node.http import Response, json_response, text
from consortium.node.metrics import MemberMetrics, content_type
from consortium.node.transport import PeerNetwork
from consortium.node.verification import CountingSigner, CountingVerifier, TxSignatureCache

_VERSION = version()  # read once: the code running does not change under the process

HEALTH_TICK_AGE_S = 5.0  # /healthz fails when the core loop has not ticked for this long


class ModeStatus(Protocol):
    def mode_status(self, core: dict[str, Any]) -> dict[str, Any]: ...


class StatusSource(Protocol):
    """What the status reads of a member (runtime.Node)."""

    genesis: Genesis
    member: Member
    me: int
    chain_id: bytes
    store: BlockStore
    peers: PeerNetwork
    metrics: Any  # runtime.NodeMetrics
    tx_cache: TxSignatureCache
    verifier: CountingVerifier
    signer: CountingSigner
    core: ConsensusCore
    recovering_from: str | None
    client_tls_status: Callable[[], dict[str, object]]
    client_port_events: Callable[[], dict[str, int]]
    gateway_status: Callable[[], dict[str, Any] | None]  # None: no gateway
    last_tick_s: float | None  # the core loop's last tick (trio clock, seconds)
    moved_s: float | None  # when the height last moved, or work last came to an idle member
    loop_thread: int | None  # the event loop's thread (its CPU: loop_cpu_s)

    @property
    def mode(self) -> ModeStatus: ...

    def wall_ms(self) -> int: ...


class MemberStatus:
    """The status, health and metrics of one member."""

    def __init__(self, member: StatusSource) -> None:
        self.m = member
        self.exposition = MemberMetrics(member, self.status)  # its own Prometheus registry

    def status(self) -> dict[str, Any]:
        """What `consortium status` and GET /status show: the fields both modes share, then
        the mode's own (its mode_status), and why it cannot make progress, in words
        (explain.py)."""
        core = self.m.core.status()
        if core.get("recovering") is not None:
            core["recovering"]["from"] = self.m.recovering_from or "a restart"
        head = self.m.store.head
        genesis = self.m.genesis
        names = [m.name for m in genesis.members]
        peers = self.m.peers.peer_status()
        links = [
            PeerLink(
                int(str(p["index"])),
                str(p["name"]),
                bool(p["outbound_live"]),
                bool(p["inbound_live"]),
                None if p["silent_s"] is None else float(str(p["silent_s"])),
                str(p["duplicate"]),
            )
            for p in peers
        ]
        up = 1 + sum(1 for link in links if link.up)  # both directions (PeerLink.up)
        reasons = blockers(
            genesis.mode,
            core,
            names=names,
            me=self.m.me,
            quorum=genesis.quorum,
            links=links,
            behind_blocks_max=genesis.params.window,
            stalled_s=self.stalled_s(),
        )
        return {
            "member": self.m.member.name,
            "version": _VERSION,  # which release answers: differing members show in `status`
            "index": self.m.me,
            "mode": genesis.mode,
            "chain_id": self.m.chain_id.hex(),
            "n": genesis.n,
            "f": genesis.f,
            "quorum": genesis.quorum,
            **self.m.mode.mode_status(core),
            "height": head.height,
            "head_hash": head.hash.hex(),
            "ready": not reasons,
            "not_progressing_because": reasons,
            # Seen, and not stopping this member: no part of `ready` (explain.peer_warnings).
            "warnings": peer_warnings(links),
            "waiting_for": name_members(str(core.get("waiting_for") or ""), names),
            # Our clock against the network's time (ledger/clock.py); wall_ms what it reads.
            "clock": {**(core.get("clock") or {}), "wall_ms": self.m.wall_ms()},
            "up": up,
            "reachable": f"{up} of {genesis.n} reachable",
            "fault_budget": fault_budget(genesis.n, genesis.f, genesis.quorum, up),
            "peer_state": peer_rows(genesis.mode, core, links, head.height, names),
            "core": core,
            "peers": peers,
            "rejected": dict(sorted(self.m.core.rejected.items())),
            "transport": dict(sorted(self.m.peers.counters.items())),
            "client_port": dict(sorted(self.m.client_port_events().items())),
            # The HTTP/JSON gateway (node/gateway): its address and counters; None when off.
            "gateway": self.m.gateway_status(),
            "tls": self.tls_status(),
            "metrics": self.metrics_doc(),
        }

    def stalled_s(self) -> float | None:
        """How long transactions have waited with the height not moving, once that exceeds
        twice the request timeout (a view change or election should have happened by then);
        None otherwise."""
        if self.m.moved_s is None or self.m.last_tick_s is None:
            return None
        waited = self.m.last_tick_s - self.m.moved_s
        limit = 2 * self.m.genesis.params.request_timeout_ms / 1000
        return waited if waited > limit else None

    # --- HTTP: health, readiness, status, metrics -------------------------------------------

    def http_routes(self) -> dict[str, Callable[[], Response]]:
        return {
            "/healthz": self.healthz,
            "/readyz": self.readyz,
            "/status": lambda: json_response(200, self.status()),
            "/metrics": lambda: Response(200, self.exposition.text().encode(), content_type()),
        }

    def healthz(self) -> Response:
        """Alive: the process answers and the core loop has ticked recently."""
        if self.m.last_tick_s is None:
            return text(503, "not healthy: the core loop has not started")
        age_s = trio.current_time() - self.m.last_tick_s
        if age_s > HEALTH_TICK_AGE_S:
            return text(503, f"not healthy: the core loop last ticked {age_s:.1f} s ago")
        return text(200, f"ok: core loop ticked {age_s * 1000:.0f} ms ago")

    def readyz(self) -> Response:
        """Ready: the member can make progress now; else 503 with every reason, one a line."""
        doc = self.status()
        budget = doc["fault_budget"]
        if doc["ready"]:
            return text(200, f"ready: {self.m.member.name} at height {doc['height']}; {budget}")
        reasons = "\n".join(doc["not_progressing_because"])
        return text(503, f"not ready: {self.m.member.name}; {budget}\n{reasons}")

    def tls_status(self) -> dict[str, Any]:
        """Whether each port uses TLS, what we present, and the last one-sided connection."""
        return {**self.m.peers.tls_status(), **self.m.client_tls_status()}

    def metrics_doc(self) -> dict[str, Any]:
        """Counters for operators and `consortium bench` (cumulative since start)."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        peers = self.m.peers.peer_status()
        return {
            "blocks": self.m.metrics.blocks,
            "txs_committed": self.m.metrics.txs_committed,
            "fsyncs": self.m.store.fsync_count,
            "fsyncs_per_block": round(self.m.store.fsync_count / max(1, self.m.metrics.blocks), 3),
            "signatures_verified": self.m.tx_cache.verified,
            "signature_cache_hits": self.m.tx_cache.hits,
            "signatures_trusted": self.m.tx_cache.trusted,
            "protocol_verifications": self.m.verifier.count,
            "signatures": self.m.signer.count,
            "messages_sent": sum(self.m.metrics.sent_by_kind.values()),
            "messages_sent_by_kind": dict(sorted(self.m.metrics.sent_by_kind.items())),
            "bytes_sent_by_kind": dict(sorted(self.m.metrics.bytes_by_kind.items())),
            "messages_received_by_kind": dict(sorted(self.m.metrics.received_by_kind.items())),
            "bytes_received_by_kind": dict(sorted(self.m.metrics.received_bytes_by_kind.items())),
            "frames_sent": sum(int(str(p["frames_sent"])) for p in peers),
            "frames_received": sum(int(str(p["frames_received"])) for p in peers),
            "bytes_sent": sum(int(str(p["bytes_sent"])) for p in peers),
            "bytes_received": sum(int(str(p["bytes_received"])) for p in peers),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
            "loop_cpu_s": self._loop_cpu_s(),
            "verify_threads": self.m.tx_cache.threads,
            "peak_rss_kb": usage.ru_maxrss,
            "submitted": self.m.metrics.submitted,
            "rejected_at_submit": self.m.metrics.rejected_at_submit,
            "uptime_s": round(time.time() - self.m.metrics.started_ms / 1000, 1),
        }

    def _loop_cpu_s(self) -> float | None:
        """CPU time of the event loop's thread alone (the rest of cpu_s is worker threads:
        signature checks, block writes); None before the loop runs or where the OS cannot
        tell one thread's CPU."""
        if self.m.loop_thread is None:
            return None
        try:
            return round(time.clock_gettime(time.pthread_getcpuclockid(self.m.loop_thread)), 3)
        except (OSError, AttributeError):
            return None

    def status_json(self) -> str:
        return json.dumps(self.status(), default=str)
