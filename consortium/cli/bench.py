"""`consortium bench` and `consortium bench compare`: the cost of Byzantine tolerance, measured
on real member processes over loopback.

One run: write a fresh network in one mode, start its members, pre-sign the workload (signing
is never on the clock), then C concurrent clients each keep `window` transactions in flight.
Figures come from the members' own counters (status "metrics", read before and after the
measured window) and from the clients' per-transaction confirmation times. At the end every
ledger must be identical and pass `ledger verify`.

The ceiling is measured in the same run: this machine's Ed25519 verification rate (libsodium,
one thread) times its cores, divided by the verifications per transaction the protocol needs
at minimum (n in pbft: every replica checks every client signature; 1 in raft: the leader).
"""

from __future__ import annotations

import itertools
import math
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from consortium.cli.demo import wait_same_height, wait_until_up
from consortium.cli.network import LocalNetwork, init_network, load_client_setup
from consortium.cli.progress import live_bar
from consortium.client import ConsortiumClient
from consortium.crypto.keys import KeyPair
from consortium.crypto.signing import Domain, Ed25519Verifier
from consortium.ledger.audit import audit_ledger
from consortium.ledger.genesis import Genesis, Mode, Params
from consortium.ledger.tx import Put, Transaction


class BenchError(Exception):
    """A run that could not produce trustworthy figures, with the reason."""


@dataclass(frozen=True, slots=True)
class BenchConfig:
    mode: Mode = "pbft"
    members: int = 4
    clients: int = 4
    txs: int = 10_000
    duration_s: float | None = None  # stop submitting after this long (txs is then a cap)
    window: int = 200  # transactions in flight per client
    batch_txs: int = 512
    payload_bytes: int = 200  # encoded size of each transaction
    timeout_ms: int = 1_000  # view-change / election timeout
    kill_at_s: float | None = None  # kill -9 the primary/leader this far into the run
    byzantine: str | None = None  # pbft: a test-only Byzantine primary (member n1)
    silent: str | None = None  # a member never started: silent from the start
    lying: str | None = None  # a member that lies to clients in every receipt (test-only)
    tls: bool = False  # TLS on every peer and client port
    progress: bool = True


@dataclass
class BenchRun:
    config: BenchConfig
    figures: dict[str, Any] = field(default_factory=dict)


def measure_verify_rate(seconds: float = 0.3) -> float:
    """Ed25519 verifications per second on one thread of this machine (libsodium)."""
    keys = KeyPair.from_seed(b"\x01" * 32)
    body = b"x" * 180
    chain = b"\x00" * 32
    sig = keys.private.sign(Domain.TX.value + chain + body)
    verifier = Ed25519Verifier()
    count = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(100):
            verifier.verify(keys.public, Domain.TX, chain, body, sig)
        count += 100
    return count / (time.perf_counter() - started)


def predicted(mode: Mode, n: int, params: Params) -> dict[str, Any]:
    """What the protocol needs per batch and per transaction, as functions of n."""
    f = (n - 1) // 3 if mode == "pbft" else (n - 1) // 2
    if mode == "pbft":
        k = params.checkpoint_interval
        return {
            "quorum": (n + f + 2) // 2,
            "messages_per_batch": (n - 1) + (n - 1) ** 2 + n * (n - 1) + n * (n - 1) / k,
            "message_formula": "pre-prepare n-1 + prepare (n-1)^2 + commit n(n-1) "
            "+ checkpoint n(n-1)/K",
            "verifications_per_tx": n,
        }
    return {
        "quorum": n // 2 + 1,
        "messages_per_batch": 2 * (n - 1),
        "message_formula": "append n-1 + acknowledgement n-1 (commit piggybacked under load)",
        "verifications_per_tx": 1,
    }


BENCH_TTL_MS = 4 * 3600 * 1000  # pre-signed transactions must outlive a long run (1M of them)


def _workload(
    genesis: Genesis, keys: list[KeyPair], count: int, payload: int
) -> list[list[Transaction]]:
    """Pre-signed transactions of about `payload` encoded bytes, split over the clients."""
    per: list[list[Transaction]] = [[] for _ in keys]
    # Expiring within the network's tx_ttl_max_ms (BENCH_TTL_MS), and after the whole run.
    expiry = int(time.time() * 1000) + BENCH_TTL_MS - 60_000
    probe = Transaction.create(keys[0], genesis.chain_id, b"0" * 16, expiry, [Put(b"k" * 12, b"")])
    value = b"v" * max(0, payload - probe.size)
    for i in range(count):
        c = i % len(keys)
        nonce = b"%016d" % i
        per[c].append(
            Transaction.create(
                keys[c], genesis.chain_id, nonce, expiry, [Put(b"k%011d" % i, value)]
            )
        )
    return per


async def _statuses(
    genesis: Genesis, members: list[int], options: dict[str, Any] | None = None
) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    async with ConsortiumClient(genesis, connect_timeout_s=0.5, **(options or {})) as client:
        for i in members:
            try:
                out[i] = await client.status(i, 2.0)
            except Exception:  # a killed member does not answer
                continue
    return out


async def _leader(genesis: Genesis, options: dict[str, Any] | None = None) -> int:
    with trio.fail_after(30):
        while True:
            found = await _statuses(genesis, list(range(genesis.n)), options)
            if genesis.mode == "pbft":
                views = [s for s in found.values() if s.get("view_active", True)]
                if views:
                    primary = views[0]["primary"]
                    return next(m.index for m in genesis.members if m.name == primary)
            else:
                leaders = [i for i, s in found.items() if s.get("role") == "leader"]
                if len(leaders) == 1:
                    return leaders[0]
            await trio.sleep(0.05)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def run_bench(config: BenchConfig, directory: Path | None = None) -> BenchRun:
    cfg = config
    if cfg.byzantine is not None and cfg.mode != "pbft":
        raise BenchError("--byzantine-primary is a pbft test mode")
    run = BenchRun(cfg)
    if cfg.silent is not None and cfg.silent == cfg.lying:
        raise BenchError("--silent and --lying-receipts name the same member")
    own_dir = directory is None
    directory = directory or Path(tempfile.mkdtemp(prefix=f"bench-{cfg.mode}-"))
    params = Params(
        batch_txs_max=cfg.batch_txs,
        request_timeout_ms=cfg.timeout_ms,
        window=max(64, Params().window),
        tx_ttl_max_ms=BENCH_TTL_MS,
    )
    genesis = init_network(
        directory,
        members=cfg.members,
        clients=cfg.clients,
        mode=cfg.mode,
        params=params,
        force=True,
        tls=cfg.tls,
    )
    names = [m.name for m in genesis.members]
    for role, name in (("--silent", cfg.silent), ("--lying-receipts", cfg.lying)):
        if name is not None and name not in names:
            raise BenchError(f"{role} {name}: not a member (they are {', '.join(names)})")
    setup = load_client_setup(directory)
    keys = setup.keys()
    options = setup.client_options()
    net = LocalNetwork(directory, log_level="warning")
    started_homes = [home for home in net.homes if home.name != cfg.silent]
    try:
        for home in started_homes:
            faults: tuple[str, ...] = ()
            if cfg.byzantine and home.name == genesis.members[0].name:
                faults = ("--byzantine", cfg.byzantine)
            if home.name == cfg.lying:
                faults += ("--lying-receipts",)
            net.start(home.name, faults=faults)
        up = [m.index for m in genesis.members if m.name != cfg.silent]
        trio.run(wait_until_up, genesis, 30.0, options, up)
        trio.run(_leader, genesis, options)
        started = time.perf_counter()
        per_client = _workload(genesis, keys, cfg.txs, cfg.payload_bytes)
        run.figures["signing_s"] = round(time.perf_counter() - started, 2)
        run.figures["tx_bytes"] = per_client[0][0].size if per_client[0] else 0
        before = trio.run(_statuses, genesis, list(range(genesis.n)), options)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu_before = usage.ru_utime + usage.ru_stime
        results, elapsed, killed, failover, stability = trio.run(
            _drive, cfg, genesis, keys, per_client, net
        )
        usage = resource.getrusage(resource.RUSAGE_SELF)
        run.figures["client_cpu_s"] = round(usage.ru_utime + usage.ru_stime - cpu_before, 2)
        if cfg.silent is not None:
            killed.append(cfg.silent)
        alive = [i for i in range(genesis.n) if genesis.members[i].name not in killed]
        trio.run(wait_same_height, genesis, alive, 60.0, options)
        after = trio.run(_statuses, genesis, alive, options)
    finally:
        net.stop()
    _figures(run, genesis, results, elapsed, before, after, killed, failover)
    run.figures["stability"] = stability
    heads: set[tuple[int, bytes]] = set()
    problems: list[str] = []
    # One audit per member's ledger, on every core (each re-verifies every signature).
    with ProcessPoolExecutor(max_workers=min(len(net.homes), os.cpu_count() or 1)) as pool:
        reports = list(
            pool.map(
                audit_ledger,
                [home / "data" / "ledger.sqlite" for home in started_homes],
                [genesis] * len(started_homes),
            )
        )
    for home, report in zip(started_homes, reports, strict=True):
        if not report.ok:
            assert report.problem is not None
            problems.append(f"{home.name}: height {report.problem.height}: {report.problem.reason}")
        if home.name not in killed:
            heads.add((report.height, report.head_hash))
    run.figures["ledgers_verified"] = not problems
    run.figures["ledgers_identical"] = len(heads) == 1
    run.figures["ledger_problems"] = problems
    if own_dir:
        shutil.rmtree(directory, ignore_errors=True)
    return run


@dataclass
class _Result:
    latency_s: float | None
    committed_at: float | None  # trio clock


async def _drive(
    cfg: BenchConfig,
    genesis: Genesis,
    keys: list[KeyPair],
    per_client: list[list[Transaction]],
    net: LocalNetwork,
) -> tuple[
    list[_Result], float, list[str], tuple[float | None, float | None, float | None], dict[str, Any]
]:
    results: list[_Result] = []
    memory: dict[str, list[tuple[float, int]]] = {}
    total = sum(len(x) for x in per_client)
    killed: list[str] = []
    kill_time: list[float] = []
    start = trio.current_time()
    deadline = None if cfg.duration_s is None else start + cfg.duration_s
    # On a terminal, a live bar with the rate; piped, a plain line every 5 s.
    bar = live_bar(total, "decided", "tx", enabled=cfg.progress)
    last_shown = [0.0]

    def show(final: bool = False) -> None:
        if not cfg.progress:
            return
        now = trio.current_time()
        if not final and now - last_shown[0] < (0.2 if bar is not None else 5.0):
            return
        last_shown[0] = now
        done = len(results)
        committed = sum(1 for r in results if r.committed_at)
        if bar is not None:
            bar.update(done, rated=committed)
            return
        rate = committed / max(1e-6, now - start)
        progress_bar = "#" * int(30 * done / max(1, total))
        line = f"  [{progress_bar:<30}] {done}/{total} decided  {rate:,.0f} tx/s"
        print(line, file=sys.stderr, flush=True)

    async def client_loop(key: KeyPair, txs: list[Transaction]) -> None:
        chunk = max(1, cfg.window // 2)
        async with ConsortiumClient(
            genesis, key, retransmit_s=2.0, tls_keys=key if cfg.tls else None
        ) as client:

            async def lane(lane_txs: list[Transaction]) -> None:
                for i in range(0, len(lane_txs), chunk):
                    if deadline is not None and trio.current_time() >= deadline:
                        return
                    part = lane_txs[i : i + chunk]
                    outcomes = await client.submit_and_wait(part, timeout_s=60.0)
                    for o in outcomes:
                        ok = o.status == "committed" and o.latency_s is not None
                        results.append(
                            _Result(o.latency_s if ok else None, o.decided_at if ok else None)
                        )
                    show()

            # Two lanes of window/2 keep the window full while one waits; a window of 1 is
            # one transaction at a time (the latency figure of an idle network).
            lanes_n = 1 if cfg.window <= 1 else 2
            async with trio.open_nursery() as lanes:
                for k in range(lanes_n):
                    lanes.start_soon(lane, txs[k::lanes_n])

    async def killer() -> None:
        assert cfg.kill_at_s is not None
        await trio.sleep(cfg.kill_at_s)
        victim = await _leader(genesis, {"tls_keys": keys[0]} if cfg.tls else None)
        name = genesis.members[victim].name
        net.kill(name, signal.SIGKILL)
        killed.append(name)
        kill_time.append(trio.current_time())

    async def sampler() -> None:
        # Members' resident memory over the run (a bounded log shows as a flat line).
        while True:
            at = round(trio.current_time() - start, 1)
            for name, proc in net.procs.items():
                kb = _rss_kb(proc.pid) if proc.poll() is None else None
                if kb is not None:
                    memory.setdefault(name, []).append((at, kb))
            await trio.sleep(SAMPLE_S)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sampler)
            if cfg.kill_at_s is not None:
                nursery.start_soon(killer)
            async with trio.open_nursery() as clients:
                for key, txs in zip(keys, per_client, strict=True):
                    clients.start_soon(client_loop, key, txs)
            nursery.cancel_scope.cancel()
        show(final=True)
    finally:
        if bar is not None:
            bar.close()  # the terminal's cursor back, whatever happened
    times = [r.committed_at for r in results if r.committed_at is not None]
    elapsed = (max(times) - start) if times else trio.current_time() - start
    failover: tuple[float | None, float | None, float | None] = (None, None, None)
    if kill_time:
        # Last commit before the kill, first after it: the gap clients saw. In pbft batches
        # the backups already hold commit right after the kill and the view change comes
        # later, so also the longest gap between commits from the kill on: the stall.
        before = [t for t in times if t <= kill_time[0]]
        after_ = sorted(t for t in times if t > kill_time[0])
        marks = [kill_time[0], *after_]
        failover = (
            (min(after_) - max(before)) if before and after_ else None,
            (min(after_) - kill_time[0]) if after_ else None,
            max(b - a for a, b in itertools.pairwise(marks)) if after_ else None,
        )
    stability = _stability(times, start, memory)
    return results, elapsed, killed, failover, stability


SAMPLE_S = 1.0  # how often the bench reads the members' resident memory
TENTHS = 10


def _rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _stability(
    times: list[float], start: float, memory: dict[str, list[tuple[float, int]]]
) -> dict[str, Any]:
    """Throughput in each tenth of the run and memory over it: whether a long run holds its
    pace (start against end) and whether members' memory stays bounded."""
    out: dict[str, Any] = {}
    if times:
        span = max(times) - start
        counts = [0] * TENTHS
        for t in times:
            counts[min(TENTHS - 1, int(TENTHS * (t - start) / span) if span > 0 else 0)] += 1
        rates = [round(c / (span / TENTHS), 1) if span > 0 else 0.0 for c in counts]
        out["span_s"] = round(span, 3)
        out["tx_per_s_by_tenth"] = rates
        # The first tenth includes connecting and the last one the drain (clients running
        # out of work): compare the second tenth with the ninth.
        if rates[1] > 0:
            out["end_to_start"] = round(rates[-2] / rates[1], 3)
    rss: dict[str, dict[str, float]] = {}
    for name, samples in memory.items():
        if len(samples) < 2:
            continue
        tenth = samples[max(0, len(samples) // 10)][1]
        half = samples[len(samples) // 2][1]
        last = samples[-1][1]
        rss[name] = {
            "at_tenth_mb": round(tenth / 1024, 1),
            "at_half_mb": round(half / 1024, 1),
            "at_end_mb": round(last / 1024, 1),
            "end_over_half": round(last / half, 3) if half else 0.0,
            "samples": len(samples),
        }
    out["rss"] = rss
    return out


def _delta(after: dict[str, Any], before: dict[str, Any], key: str) -> float:
    return float(after.get(key, 0)) - float(before.get(key, 0))


def _figures(
    run: BenchRun,
    genesis: Genesis,
    results: list[_Result],
    elapsed: float,
    before: dict[int, dict[str, Any]],
    after: dict[int, dict[str, Any]],
    killed: list[str],
    failover: tuple[float | None, float | None, float | None],
) -> None:
    cfg = run.config
    fig = run.figures
    committed = [r for r in results if r.latency_s is not None]
    n_ok = len(committed)
    lat = [r.latency_s for r in committed if r.latency_s is not None]
    fig.update(
        {
            "mode": cfg.mode,
            "members": genesis.n,
            "f": genesis.f,
            "clients": cfg.clients,
            "submitted": len(results),
            "committed": n_ok,
            "elapsed_s": round(elapsed, 3),
            "tx_per_s": round(n_ok / elapsed, 1) if elapsed > 0 else 0.0,
            "latency_ms": {
                "p50": round(_percentile(lat, 0.50) * 1000, 2),
                "p95": round(_percentile(lat, 0.95) * 1000, 2),
                "p99": round(_percentile(lat, 0.99) * 1000, 2),
            },
        }
    )
    per_member: dict[str, dict[str, Any]] = {}
    totals = {
        "messages": 0.0,
        "bytes": 0.0,
        "verifications": 0.0,
        "signatures": 0.0,
        "fsyncs": 0.0,
        "frames_sent": 0.0,
        "frames_received": 0.0,
    }
    by_kind: dict[str, float] = {}
    for i, a in after.items():
        b = before.get(i, {}).get("metrics", {})
        am = a.get("metrics", {})
        verifications = _delta(am, b, "signatures_verified") + _delta(
            am, b, "protocol_verifications"
        )
        row: dict[str, Any] = {
            "messages": _delta(am, b, "messages_sent"),
            "bytes": _delta(am, b, "bytes_sent"),
            "verifications": verifications,
            # client signatures (on worker threads) and protocol messages' (on the event loop)
            "client_verifications": _delta(am, b, "signatures_verified"),
            "protocol_verifications": _delta(am, b, "protocol_verifications"),
            "verify_threads": am.get("verify_threads"),
            "signatures": _delta(am, b, "signatures"),
            "fsyncs": _delta(am, b, "fsyncs"),
            "frames_sent": _delta(am, b, "frames_sent"),
            "frames_received": _delta(am, b, "frames_received"),
            "cpu_s": round(_delta(am, b, "cpu_s"), 3),
            # (None from a member that cannot tell its event loop's thread's CPU)
            "loop_cpu_s": (
                round(_delta(am, b, "loop_cpu_s"), 3)
                if am.get("loop_cpu_s") is not None and b.get("loop_cpu_s") is not None
                else None
            ),
            "peak_rss_mb": round(float(am.get("peak_rss_kb", 0)) / 1024, 1),
        }
        for kind, count in am.get("messages_sent_by_kind", {}).items():
            by_kind[kind] = (
                by_kind.get(kind, 0) + count - b.get("messages_sent_by_kind", {}).get(kind, 0)
            )
        for key in totals:
            totals[key] += float(row[key])
        per_member[genesis.members[i].name] = row
    fig["per_member"] = per_member
    fig["messages_by_kind"] = {k: int(v) for k, v in sorted(by_kind.items())}
    per_tx = max(1, n_ok)
    fig["per_tx"] = {
        "messages": round(totals["messages"] / per_tx, 3),
        "bytes": round(totals["bytes"] / per_tx, 1),
        "verifications": round(totals["verifications"] / per_tx, 3),
        "signatures": round(totals["signatures"] / per_tx, 4),
        "fsyncs": round(totals["fsyncs"] / per_tx, 4),
        "cpu_ms_per_member": round(
            1000 * sum(r["cpu_s"] for r in per_member.values()) / max(1, len(per_member)) / per_tx,
            4,
        ),
    }
    fig["frames_sent"] = int(totals["frames_sent"])
    fig["frames_received"] = int(totals["frames_received"])
    fig["messages_counted"] = int(totals["messages"])
    blocks = max(
        (
            _delta(a.get("metrics", {}), before.get(i, {}).get("metrics", {}), "blocks")
            for i, a in after.items()
        ),
        default=0,
    )
    fig["blocks"] = int(blocks)
    fig["txs_per_block"] = round(n_ok / blocks, 1) if blocks else 0.0
    fig["messages_per_batch"] = round(totals["messages"] / blocks, 2) if blocks else 0.0
    pred = predicted(cfg.mode, genesis.n, genesis.params)
    fig["predicted"] = pred
    vps = measure_verify_rate()
    cores = os.cpu_count() or 1
    ceiling = cores * vps / pred["verifications_per_tx"]
    fig["ceiling"] = {
        "verify_per_s_one_thread": round(vps),
        "cores": cores,
        "tx_per_s": round(ceiling),
        "achieved_fraction": round(fig["tx_per_s"] / ceiling, 3) if ceiling else 0.0,
    }
    fig["cpu_split"] = _cpu_split(per_member, vps, per_tx)
    fig["killed"] = killed
    fig["failover_s"] = None if failover[0] is None else round(failover[0], 3)
    fig["kill_to_first_commit_s"] = None if failover[1] is None else round(failover[1], 3)
    fig["stall_after_kill_s"] = None if failover[2] is None else round(failover[2], 3)


def _cpu_split(per_member: dict[str, dict[str, Any]], vps: float, txs: int) -> dict[str, Any]:
    """CPU per transaction per member, in three parts that add up to it: signature checks
    (ESTIMATED: their count at the one-thread rate measured in this run), the event loop's
    thread without the protocol-message checks it makes (its own CPU clock, measured), and the
    rest (worker threads without the client-signature checks: block writes, fsync). And a
    PROJECTION of what the network could order with one member per machine of C cores: the
    lowest over members of min(C / CPU per tx, 1 / event-loop CPU per tx, verification
    threads / client-signature CPU per tx), with the member and the bound that set it.
    Empty when a member could not tell its loop's CPU. An estimate never exceeds the thread
    that makes those checks (client checks: the worker threads' CPU; protocol checks: the
    loop's), so no part is negative when this run's measured rate reads slow."""
    rows = list(per_member.items())
    if not rows or vps <= 0 or txs <= 0:
        return {}
    if any(r["loop_cpu_s"] is None or not r["verify_threads"] for _, r in rows):
        return {}  # (a member that does not report them: no split rather than a guess)
    parts: dict[str, dict[str, float]] = {}
    for name, r in rows:
        total = 1000 * r["cpu_s"] / txs
        loop = 1000 * r["loop_cpu_s"] / txs
        client_sig = min(1000 * r["client_verifications"] / vps / txs, max(0.0, total - loop))
        protocol_sig = min(1000 * r["protocol_verifications"] / vps / txs, loop)
        parts[name] = {
            "cpu_ms_per_tx": total,
            "loop_ms_per_tx": loop,
            "signature_checks_ms_per_tx": client_sig + protocol_sig,
            "client_checks_ms_per_tx": client_sig,
            "loop_other_ms_per_tx": loop - protocol_sig,
            "rest_ms_per_tx": total - loop - client_sig,
            "verify_threads": float(r["verify_threads"]),
        }
    projection: dict[str, dict[str, Any]] = {}
    for cores in (2, 4, 8):
        best: tuple[float, str, str] | None = None
        for name, p in parts.items():
            bounds = [(cores / p["cpu_ms_per_tx"], "cores")] if p["cpu_ms_per_tx"] > 0 else []
            if p["loop_ms_per_tx"] > 0:
                bounds.append((1 / p["loop_ms_per_tx"], "event loop"))
            if p["client_checks_ms_per_tx"] > 0:
                threads = min(p["verify_threads"], cores)
                bounds.append((threads / p["client_checks_ms_per_tx"], "signature threads"))
            for rate, why in bounds:
                if best is None or rate < best[0]:
                    best = (rate, name, why)
        if best is not None:
            projection[str(cores)] = {
                "tx_per_s": round(1000 * best[0]),
                "member": best[1],
                "bound": best[2],
            }
    mean = {
        key: round(sum(p[key] for p in parts.values()) / len(parts), 4)
        for key in (
            "cpu_ms_per_tx",
            "signature_checks_ms_per_tx",
            "loop_other_ms_per_tx",
            "rest_ms_per_tx",
        )
    }
    return {
        **mean,
        "per_member": {n: {k: round(v, 4) for k, v in p.items()} for n, p in parts.items()},
        "projection_by_cores": projection,
    }


# --- printing ---------------------------------------------------------------------------------

ROWS: list[tuple[str, str]] = [
    ("committed tx/s", "tx_per_s"),
    ("latency p50 ms", "latency_ms.p50"),
    ("latency p95 ms", "latency_ms.p95"),
    ("latency p99 ms", "latency_ms.p99"),
    ("committed", "committed"),
    ("tx per block", "txs_per_block"),
    ("messages per tx", "per_tx.messages"),
    ("messages per batch", "messages_per_batch"),
    ("  predicted", "predicted.messages_per_batch"),
    ("bytes on wire per tx", "per_tx.bytes"),
    ("verifications per tx", "per_tx.verifications"),
    ("  protocol minimum", "predicted.verifications_per_tx"),
    ("signatures per tx", "per_tx.signatures"),
    ("fsyncs per tx", "per_tx.fsyncs"),
    ("CPU ms per tx per member", "per_tx.cpu_ms_per_member"),
    ("  signature checks (est.)", "cpu_split.signature_checks_ms_per_tx"),
    ("  event loop, other work", "cpu_split.loop_other_ms_per_tx"),
    ("  the rest (worker threads)", "cpu_split.rest_ms_per_tx"),
    ("client CPU s (all clients)", "client_cpu_s"),
    ("quorum", "predicted.quorum"),
    ("ceiling tx/s", "ceiling.tx_per_s"),
    ("achieved of ceiling", "ceiling.achieved_fraction"),
    ("projection tx/s, 4 cores each", "cpu_split.projection_by_cores.4.tx_per_s"),
    ("  bound by", "cpu_split.projection_by_cores.4.bound"),
    ("projection tx/s, 8 cores each", "cpu_split.projection_by_cores.8.tx_per_s"),
    ("  bound by", "cpu_split.projection_by_cores.8.bound"),
    ("failover s", "failover_s"),
    ("longest stall after the kill s", "stall_after_kill_s"),
    ("tx/s 9th / 2nd tenth", "stability.end_to_start"),
]


def lookup(figures: dict[str, Any], path: str) -> Any:
    value: Any = figures
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.3f}".rstrip("0").rstrip(".") if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def table(runs: list[BenchRun], *, ratio: bool = False) -> list[str]:
    heads = [f"{r.config.mode} n={r.figures.get('members')}" for r in runs]
    width = max(len(label) for label, _ in ROWS) + 2
    lines = [
        f"{'':<{width}}" + "".join(f"{h:>16}" for h in heads) + (f"{'ratio':>10}" if ratio else "")
    ]
    for label, path in ROWS:
        values = [lookup(r.figures, path) for r in runs]
        if all(v is None for v in values):
            continue
        line = f"{label:<{width}}" + "".join(f"{_fmt(v):>16}" for v in values)
        if ratio and len(values) == 2:
            a, b = values
            if isinstance(a, int | float) and isinstance(b, int | float) and b:
                line += f"{a / b:>10.2f}"
        lines.append(line)
    return lines


def per_member_lines(run: BenchRun) -> list[str]:
    lines = [f"  {run.config.mode}: per member (during the run)"]
    for name, row in run.figures.get("per_member", {}).items():
        lines.append(
            f"    {name}: {row['messages']:,.0f} messages, {row['bytes'] / 1e6:,.1f} MB sent, "
            f"{row['verifications']:,.0f} verifications, {row['fsyncs']:,.0f} fsyncs, "
            f"{row['cpu_s']:.2f} CPU s, peak {row['peak_rss_mb']} MB"
        )
    stability = run.figures.get("stability", {})
    rates = stability.get("tx_per_s_by_tenth")
    if rates:
        lines.append("    tx/s by tenth of the run: " + ", ".join(f"{r:,.0f}" for r in rates))
    for name, rss in stability.get("rss", {}).items():
        lines.append(
            f"    {name} memory: {rss['at_tenth_mb']} MB at a tenth, {rss['at_half_mb']} MB "
            f"at half, {rss['at_end_mb']} MB at the end"
        )
    return lines


PANELS = (
    ("committed tx/s", "tx_per_s"),
    ("latency p99 (ms)", "latency_ms.p99"),
    ("messages per tx", "per_tx.messages"),
    ("verifications per tx", "per_tx.verifications"),
    ("bytes on wire per tx", "per_tx.bytes"),
    ("CPU ms per tx per member", "per_tx.cpu_ms_per_member"),
)
PLOT_MODES = (("pbft", "o-", "tab:blue"), ("raft", "s--", "tab:orange"))


def figure(runs: list[BenchRun]) -> Any:
    """The matplotlib Figure of `draw`: one panel per figure. Against n (one line per mode,
    ticks at the member counts run) when some mode was run at more than one size, as
    `bench compare --sweep` does; otherwise one bar per mode, since a line through one point
    shows nothing. Every axis starts at zero: these are costs and rates, and a cut axis
    makes a 5 % difference look like a factor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = {
        mode: sorted({r.figures["members"] for r in runs if r.config.mode == mode})
        for mode, _, _ in PLOT_MODES
    }
    sweep = any(len(ns) > 1 for ns in sizes.values())
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    colours = {mode: colour for mode, _, colour in PLOT_MODES}
    for ax, (title, key) in zip(list(axes.flat), PANELS, strict=True):
        if sweep:
            for mode, style, colour in PLOT_MODES:
                points = sorted(
                    (r.figures["members"], lookup(r.figures, key))
                    for r in runs
                    if r.config.mode == mode and lookup(r.figures, key) is not None
                )
                if points:
                    xs, ys = [n for n, _ in points], [v for _, v in points]
                    ax.plot(xs, ys, style, color=colour, label=mode)
            ax.set_xlabel("members (n)")
            ax.set_xticks(sorted({n for ns in sizes.values() for n in ns}))
            ax.legend()
        else:
            shown = _plotted(runs, key)
            for i, r in enumerate(shown):
                value = lookup(r.figures, key)
                ax.bar(i, value, width=0.6, color=colours[r.config.mode])
                ax.annotate(_fmt(value), (i, value), ha="center", va="bottom", fontsize=8)
            ax.set_xticks(
                range(len(shown)), [f"{r.config.mode}\nn={r.figures['members']}" for r in shown]
            )
            ax.set_xlim(-0.75, max(len(shown), 2) - 0.25)
        ax.set_ylim(bottom=0)
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="both" if sweep else "y")
    fig.suptitle("consortium bench compare: the cost of Byzantine tolerance")
    fig.tight_layout()
    return fig


def _plotted(runs: list[BenchRun], key: str) -> list[BenchRun]:
    """The runs a bar panel shows, in its order (pbft first, then raft, each by size)."""
    return [
        r
        for mode, _, _ in PLOT_MODES
        for r in sorted(
            (r for r in runs if r.config.mode == mode and lookup(r.figures, key) is not None),
            key=lambda r: r.figures["members"],
        )
    ]


def draw(runs: list[BenchRun], path: Path) -> None:
    """Throughput, latency and per-transaction costs (`figure`), written as PNG or SVG by the
    file's suffix. Needs matplotlib (the `plot` extra)."""
    import matplotlib.pyplot as plt

    fig = figure(runs)
    fig.savefig(path)
    plt.close(fig)
