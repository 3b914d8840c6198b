"""Where the CPU goes under `consortium bench`: py-spy on a member or on the clients, summarised
as self-time shares by category and the top functions, in ms of CPU per committed transaction
(docs/bench.md, "Where the CPU goes (profile)").

    PYTHONPATH=. python scripts/profile_bench.py --out /tmp/prof            # six bench runs
    PYTHONPATH=. python scripts/profile_bench.py --out /tmp/prof --summarise-only \
        --inclusive store.py:964 --inclusive "_on_preprepare&Ed25519Verifier.verify"

One bench run per profiled process (pbft: n1, the primary in view 0, n2 and the clients; raft:
the leader, a follower and the clients), since every py-spy takes CPU from the same two cores.
The bench is run unchanged (`python -m consortium bench --json`). Its members are its child
processes (`... node start --home DIR/nodes/nX`); the clients run in the bench process itself.
py-spy attaches when the first progress line appears (the clients are submitting) and is
stopped with SIGINT at the last one ("N/N decided"), so a profile covers the measured window
and not the start-up, the signing of the workload or the audit at the end.

Shares become ms per transaction through the bench's own CPU accounting: a member's CPU seconds
over the run (its getrusage, read through status before and after) and the clients' (the bench
process's getrusage over the drive), each over the committed transactions. Samples of idle
threads (trio's worker threads waiting for work, the event loop waiting in epoll) are left out,
and the main thread's and the worker threads' samples are weighted by the CPU each used over
the window (Profile says why).

Raw profiles are py-spy's "raw" format: one line per distinct stack, frames `function
(file:line)` from the outermost to the innermost, separated by `;`, then a space and a count.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

RATE_HZ = 250
CLIENT = "client"

CATEGORIES = (
    "Ed25519 verify",
    "Ed25519 sign",
    "codec/msgpack",
    "hashing/Merkle",
    "sqlite store",
    "trio/event loop",
    "consensus core",
    "ledger execution",
    "shell/executor",
    "client port/transport",
    "other",
)

# Innermost frames of a thread with nothing to do: trio's worker threads waiting for a job
# and the event loop blocked in epoll. py-spy without --idle drops most idle samples itself;
# these are the ones it cannot tell (the thread is waiting on a lock or in a syscall).
IDLE_LEAVES = (
    "WorkerThread._work (trio/_core/_thread_cache.py",
    "EpollIOManager.get_events (trio/_core/_io_epoll.py",
    "Condition.wait (threading.py",
    "Event.wait (threading.py",
    "Thread._wait_for_tstate_lock (threading.py",
    "_worker (concurrent/futures/thread.py",
)

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

# The member's shell: the runtime that carries out what the cores decide, and its parts.
_SHELL = (
    "consortium/node/executor.py",
    "consortium/node/runtime.py",
    "consortium/node/pbft_mode.py",
    "consortium/node/raft_mode.py",
    "consortium/node/parts.py",
    "consortium/node/events.py",
    "consortium/node/status.py",
    "consortium/node/metrics.py",
    "consortium/node/rationing.py",
    "consortium/node/sources.py",
    "consortium/node/verification.py",
    "consortium/node/bundles.py",
)
# Messages in and out: the client port, the peer transport, framing, receipts, and the client
# library and bench loop on the client side; trio's socket wrappers are where the send and
# receive syscalls happen, so they count here and not as event loop.
_TRANSPORT = (
    "consortium/node/client_port.py",
    "consortium/node/transport.py",
    "consortium/node/service.py",
    "consortium/node/watches.py",
    "consortium/protocol/",
    "consortium/client/",
    "consortium/cli/bench.py",
    "trio/_socket.py",
    "trio/_highlevel_socket.py",
    "trio/_ssl.py",
    "ssl.py",
    "socket.py",
)
_CODEC = (
    "msgpack",
    "consortium/crypto/codec.py",
    "consortium/protocol/messages.py",
    "consortium/pbft/messages.py",
    "consortium/crashft/messages.py",
    "consortium/ledger/tx.py",
)
_STORE = ("consortium/ledger/store.py", "consortium/ledger/digests.py", "sqlite3")
# Dataclasses' generated __init__ (file "<string>") serve every category: "other".
_LOOP = ("trio/", "outcome/", "sniffio/", "contextlib.py", "selectors.py")


def parse_frame(frame: str) -> tuple[str, str]:
    """(function, file) of one py-spy frame `function (file:line)`; the line is dropped so a
    function's samples add up over its lines."""
    m = _FRAME.match(frame.strip())
    if m is None:
        return frame.strip(), ""
    return m.group("func"), m.group("file")


def _signing(stack: list[str]) -> str:
    """Verify or sign, from the innermost frame naming either (helpers such as
    signed_message serve both, so their caller decides)."""
    for frame in reversed(stack):
        func, _ = parse_frame(frame)
        low = func.lower()
        if "verify" in low or "crypto_sign_open" in low:
            return "Ed25519 verify"
        if "sign" in low and "signed_message" not in low:
            return "Ed25519 sign"
    return "Ed25519 verify"


def category(stack: list[str]) -> str:
    """The category of a sample's self time, from its innermost frame (and, for signature
    code, the frames around it)."""
    func, file = parse_frame(stack[-1])
    if file.endswith("consortium/crypto/signing.py") or file.startswith("nacl/"):
        return _signing(stack)
    if any(x in file for x in _CODEC):
        return "codec/msgpack"
    if file.endswith(("consortium/crypto/hashing.py", "consortium/crypto/merkle.py")):
        return "hashing/Merkle"
    if file.startswith("hashlib") or func.startswith(("sha256", "blake2")):
        return "hashing/Merkle"
    if any(x in file for x in _STORE):
        return "sqlite store"
    if any(x in file for x in _TRANSPORT):
        return "client port/transport"
    if any(file.startswith(x) for x in _LOOP) or "attrs generated" in file:
        return "trio/event loop"
    if "consortium/pbft/" in file or "consortium/crashft/" in file:
        return "consensus core"
    if "consortium/ledger/" in file:
        return "ledger execution"
    if any(x in file for x in _SHELL):
        return "shell/executor"
    return "other"


def is_idle(stack: list[str]) -> bool:
    return stack[-1].startswith(IDLE_LEAVES)


@dataclass
class Samples:
    """Busy samples of one kind of thread: by category, by function (self), and the callers
    of the signature checks (who asks for each verification)."""

    busy: int = 0
    by_category: Counter[str] = field(default_factory=Counter)
    by_function: Counter[str] = field(default_factory=Counter)
    verify_callers: Counter[str] = field(default_factory=Counter)


@dataclass
class Profile:
    """One process's busy samples, the event loop's thread apart from the worker threads.

    A sample counts a thread that is runnable, not one that is on a core: on two busy cores a
    runnable thread often waits, so samples overstate CPU (three times over in a pbft member
    here) and overstate it most for the worker threads, many of which wake at once. So the two
    kinds are weighted by the CPU each really used over the window (`main_cpu_fraction`, from
    /proc), and samples only share out that CPU within a kind. Without it, raw samples."""

    main: Samples = field(default_factory=Samples)
    workers: Samples = field(default_factory=Samples)
    idle: int = 0
    main_cpu_fraction: float | None = None

    @property
    def busy(self) -> int:
        return self.main.busy + self.workers.busy

    def weights(self) -> tuple[float, float]:
        """The CPU share one sample stands for, on the main thread and on a worker."""
        if not self.busy:
            return 0.0, 0.0
        main = self.main_cpu_fraction
        if main is None or not self.main.busy or not self.workers.busy:
            return 1 / self.busy, 1 / self.busy
        return main / self.main.busy, (1 - main) / self.workers.busy

    def share(self, name: str) -> float:
        wm, ww = self.weights()
        return self.main.by_category[name] * wm + self.workers.by_category[name] * ww

    def functions(self) -> list[tuple[str, int, float]]:
        """(function, samples, CPU share), largest share first."""
        wm, ww = self.weights()
        names = set(self.main.by_function) | set(self.workers.by_function)
        rows = [
            (
                name,
                self.main.by_function[name] + self.workers.by_function[name],
                self.main.by_function[name] * wm + self.workers.by_function[name] * ww,
            )
            for name in names
        ]
        return sorted(rows, key=lambda row: (-row[2], row[0]))

    def callers(self) -> list[tuple[str, int, float]]:
        wm, ww = self.weights()
        names = set(self.main.verify_callers) | set(self.workers.verify_callers)
        rows = [
            (
                name,
                self.main.verify_callers[name] + self.workers.verify_callers[name],
                self.main.verify_callers[name] * wm + self.workers.verify_callers[name] * ww,
            )
            for name in names
        ]
        return sorted(rows, key=lambda row: (-row[2], row[0]))


class ProfileError(Exception):
    """A raw profile that cannot be read, with the reason."""


def is_worker(stack: list[str]) -> bool:
    """A thread other than the main one (trio's worker threads start in threading's
    bootstrap). Stacks py-spy read only partly (it does not stop the process) count as main."""
    return stack[0].startswith("Thread._bootstrap (threading.py")


def summarise(lines: list[str] | str, main_cpu_fraction: float | None = None) -> Profile:
    """A Profile from py-spy raw lines ("frame;frame;... COUNT")."""
    if isinstance(lines, str):
        lines = lines.splitlines()
    out = Profile(main_cpu_fraction=main_cpu_fraction)
    for number, line in enumerate(lines, 1):
        line = line.rstrip("\n")
        if not line.strip():
            continue
        stack_text, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            raise ProfileError(f"line {number}: not 'stack count': {line[:80]!r}")
        count = int(count_text)
        stack = stack_text.split(";")
        # No Python frame at all (a thread in native code py-spy cannot name): not counted.
        if not stack_text.strip() or is_idle(stack):
            out.idle += count
            continue
        kind = out.workers if is_worker(stack) else out.main
        kind.busy += count
        name = category(stack)
        kind.by_category[name] += count
        func, file = parse_frame(stack[-1])
        kind.by_function[f"{func} ({file})"] += count
        if name == "Ed25519 verify":
            kind.verify_callers[_caller(stack)] += count
    return out


def _caller(stack: list[str]) -> str:
    """The innermost frame outside the signature code: who asked for the check."""
    for frame in reversed(stack):
        func, file = parse_frame(frame)
        if not (file.endswith("consortium/crypto/signing.py") or file.startswith("nacl/")):
            return f"{func} ({file})"
    return "?"


# --- running the bench under py-spy ----------------------------------------------------------


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the ppid follows the last ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            out.append(int(entry.name))
    return out


def member_pids(bench_pid: int) -> dict[str, int]:
    """The bench's member processes by name, from their command lines (`node start --home
    DIR/nodes/nX`)."""
    found: dict[str, int] = {}
    for pid in _children(bench_pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if "--home" in argv and "start" in argv:
            found[Path(argv[argv.index("--home") + 1]).name] = pid
    return found


def _cpu_ticks(pid: int, path: str | None = None) -> int:
    """utime + stime of a process (all its threads, live or ended) or of the thread at path."""
    try:
        stat = Path(path or f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _thread_ticks(pid: int) -> int:
    """CPU ticks of the process's main thread (the event loop's)."""
    return _cpu_ticks(pid, f"/proc/{pid}/task/{pid}/stat")


def _resolve(target: str, members: dict[str, int]) -> str:
    """A member name for `target`: itself, or for `leader`/`follower` the busiest/idlest
    member over half a second of load (the raft leader does every client's signature check;
    which member wins the election is not known in advance)."""
    if target not in ("leader", "follower"):
        return target
    before = {name: _cpu_ticks(pid) for name, pid in members.items()}
    time.sleep(0.5)
    busy = sorted(members, key=lambda name: _cpu_ticks(members[name]) - before[name])
    return busy[-1] if target == "leader" else busy[0]


def run_profiled(mode: str, target: str, txs: int, out: Path, rate: int, pyspy: str) -> Path:
    """One bench run with py-spy on one process: a member (n1.., or `leader`/`follower`) or
    the clients (`client`). One at a time: each py-spy at 250 Hz takes about 15% of a core,
    and five at once on two cores slowed the bench to a third. Writes out/MODE-TARGET.raw and
    the bench's figures (its --json, plus `profiled`, the process's name, and `pyspy_cpu_s`)
    to out/MODE-TARGET.json, and returns the latter."""
    figures_path = out / f"{mode}-{target}.json"
    bench = subprocess.Popen(
        [
            *(sys.executable, "-m", "consortium", "bench", "--mode", mode, "--txs", str(txs)),
            *("--json", str(figures_path)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert bench.stdout is not None and bench.stderr is not None
    stdout_lines: list[str] = []
    reader = threading.Thread(target=lambda: stdout_lines.extend(bench.stdout or []), daemon=True)
    reader.start()
    spy: subprocess.Popen[bytes] | None = None
    name = target
    progress = re.compile(r"(\d+)/(\d+) decided")
    for line in bench.stderr:
        sys.stderr.write(f"  [{mode} {target}] {line}")
        m = progress.search(line)
        if m is None:
            continue
        if spy is None:
            members = member_pids(bench.pid)
            pids = {**members, CLIENT: bench.pid}
            name = _resolve(target, members)
            if name not in pids:
                bench.kill()
                raise ProfileError(f"{target}: no such process (members: {', '.join(members)})")
            pid = pids[name]
            window = (time.monotonic(), _cpu_ticks(pid), _thread_ticks(pid))
            spy = subprocess.Popen(
                [
                    *(pyspy, "record", "--pid", str(pid), "--rate", str(rate)),
                    *("--nonblocking", "--format", "raw", "--duration", "600"),
                    *("--output", str(out / f"{mode}-{target}.raw")),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        if m.group(1) == m.group(2):
            break
    spy_cpu = 0.0
    if spy is not None:
        # The process's own CPU over the profiled window, to set against the busy samples.
        window_s = time.monotonic() - window[0]
        window_ticks = max(1, _cpu_ticks(pid) - window[1])
        window_cpu_s = window_ticks / os.sysconf("SC_CLK_TCK")
        main_fraction = min(1.0, (_thread_ticks(pid) - window[2]) / window_ticks)
        spy.send_signal(signal.SIGINT)
        _, _, usage = os.wait4(spy.pid, 0)  # its rusage: what profiling took from the machine
        spy.returncode = 0
        spy_cpu = usage.ru_utime + usage.ru_stime
    for line in bench.stderr:
        sys.stderr.write(f"  [{mode} {target}] {line}")
    code = bench.wait()
    reader.join(timeout=10)
    if code != 0:
        raise ProfileError(f"bench --mode {mode} exited {code}: {''.join(stdout_lines)[-200:]}")
    if spy is None:
        raise ProfileError(f"bench --mode {mode} printed no progress line to attach at")
    runs: list[dict[str, object]] = json.loads(figures_path.read_text())
    figures = runs[0]["figures"]
    assert isinstance(figures, dict)
    figures["profiled"] = name
    figures["pyspy_cpu_s"] = round(spy_cpu, 2)
    figures["rate_hz"] = rate
    figures["window_s"] = round(window_s, 2)
    figures["window_cpu_s"] = round(window_cpu_s, 2)
    figures["window_main_thread_fraction"] = round(main_fraction, 3)
    figures_path.write_text(json.dumps(runs, indent=2))
    return figures_path


# --- the report -------------------------------------------------------------------------------


@dataclass
class Column:
    """One profiled process: its label, profile and CPU ms per committed transaction (from
    the bench run it was profiled in)."""

    label: str
    profile: Profile
    cpu_ms_per_tx: float
    run: str  # the bench run's tx/s and the CPU py-spy took
    raw: str = ""


def column(mode: str, target: str, out: Path) -> Column:
    """The profile of one process with the CPU figures of its run. A member is labelled
    primary/leader if it sent the most bytes in its run (it carries the transaction bodies
    to the others), backup/follower otherwise."""
    figures_path = out / f"{mode}-{target}.json"
    if not figures_path.exists():
        raise ProfileError(f"{figures_path}: no bench figures; run without --summarise-only")
    figures = json.loads(figures_path.read_text())[0]["figures"]
    committed = _num(figures["committed"])
    name = str(figures.get("profiled", target))
    per_member = figures["per_member"]
    if name == CLIENT:
        label = f"{mode} clients"
        cpu = 1000 * _num(figures["client_cpu_s"]) / committed
    else:
        if name not in per_member:
            raise ProfileError(f"{figures_path}: no member {name}")
        top = max(per_member, key=lambda n: float(per_member[n]["bytes"]))
        head, tail = ("primary", "backup") if mode == "pbft" else ("leader", "follower")
        label = f"{mode} {name} ({head if name == top else tail})"
        cpu = 1000 * _num(per_member[name]["cpu_s"]) / committed
    fraction = figures.get("window_main_thread_fraction")
    profile = _load(out / f"{mode}-{target}.raw", None if fraction is None else _num(fraction))
    main = (
        "main thread's CPU share not measured: raw samples"
        if fraction is None
        else f"{100 * _num(fraction):.0f}% on the main thread"
    )
    sampled = profile.busy / _num(figures.get("rate_hz", RATE_HZ))
    run = (
        f"{figures['tx_per_s']:,.0f} tx/s; {figures.get('window_cpu_s')} CPU s in "
        f"{figures.get('window_s')} s profiled ({main}), {sampled:.1f} s of busy samples; "
        f"py-spy took {figures.get('pyspy_cpu_s')} CPU s"
    )
    return Column(label, profile, cpu, run, (out / f"{mode}-{target}.raw").read_text())


def _num(value: object) -> float:
    if not isinstance(value, int | float):
        raise ProfileError(f"bench figures: {value!r} is not a number")
    return float(value)


def _load(path: Path, main_cpu_fraction: float | None) -> Profile:
    try:
        return summarise(path.read_text(), main_cpu_fraction)
    except ProfileError as exc:
        raise ProfileError(f"{path}: {exc}") from None


def category_table(cols: list[Column]) -> list[str]:
    """Markdown: per category, ms of CPU per committed transaction and % of the CPU."""
    head = "| category | " + " | ".join(c.label for c in cols) + " |"
    lines = [head, "|---" * (len(cols) + 1) + "|"]
    for name in CATEGORIES:
        if not any(c.profile.share(name) for c in cols):
            continue
        cells = [
            f"{c.cpu_ms_per_tx * c.profile.share(name):.3f} ({100 * c.profile.share(name):.0f}%)"
            for c in cols
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(
        "| **CPU ms per tx** | " + " | ".join(f"{c.cpu_ms_per_tx:.3f}" for c in cols) + " |"
    )
    lines.append("| busy samples | " + " | ".join(f"{c.profile.busy:,}" for c in cols) + " |")
    lines.append("| its run | " + " | ".join(c.run for c in cols) + " |")
    return lines


def top_table(col: Column, count: int = 15) -> list[str]:
    lines = [f"{col.label}: top {count} functions by self time", ""]
    lines += ["| function | samples | % of CPU | ms/tx |", "|---|---|---|---|"]
    for func, n, share in col.profile.functions()[:count]:
        lines.append(f"| `{func}` | {n:,} | {100 * share:.1f} | {col.cpu_ms_per_tx * share:.4f} |")
    return lines


def callers_table(col: Column, count: int = 6) -> list[str]:
    lines = [f"{col.label}: who asks for the Ed25519 verifications", ""]
    lines += ["| caller | samples | ms/tx |", "|---|---|---|"]
    for func, n, share in col.profile.callers()[:count]:
        lines.append(f"| `{func}` | {n:,} | {col.cpu_ms_per_tx * share:.4f} |")
    return lines


def inclusive(raw: str, pattern: str, profile: Profile) -> float:
    """The CPU share of the samples whose stack holds every '&'-separated part of `pattern`
    (a frame's text, line numbers included: `store.py:964` is one statement), weighted as
    the profile weights its threads."""
    parts = pattern.split("&")
    wm, ww = profile.weights()
    share = 0.0
    for line in raw.splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not count_text.isdigit() or not stack_text.strip():
            continue
        stack = stack_text.split(";")
        if is_idle(stack) or not all(p in stack_text for p in parts):
            continue
        share += int(count_text) * (ww if is_worker(stack) else wm)
    return share


def inclusive_table(cols: list[Column], patterns: list[str]) -> list[str]:
    """Markdown: per pattern, ms of CPU per transaction spent in it and below it."""
    lines = ["| inclusive | " + " | ".join(c.label for c in cols) + " |"]
    lines.append("|---" * (len(cols) + 1) + "|")
    for pattern in patterns:
        cells = [f"{c.cpu_ms_per_tx * inclusive(c.raw, pattern, c.profile):.4f}" for c in cols]
        lines.append(f"| `{pattern}` | " + " | ".join(cells) + " |")
    return lines


def report(cols: list[Column], patterns: list[str] | None = None) -> str:
    lines = category_table(cols)
    if patterns:
        lines += ["", *inclusive_table(cols, patterns)]
    for col in cols:
        lines += ["", *top_table(col)]
        if col.profile.callers():
            lines += ["", *callers_table(col)]
    return "\n".join(lines) + "\n"


DEFAULT_TARGETS = {"pbft": "n1,n2,client", "raft": "leader,follower,client"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True, help="raw profiles and figures here")
    parser.add_argument("--txs", type=int, default=20_000)
    parser.add_argument("--modes", default="pbft,raft")
    parser.add_argument(
        "--targets",
        help="one bench run each: n1.., leader, follower, client "
        "(default: pbft n1,n2,client; raft leader,follower,client)",
    )
    parser.add_argument("--rate", type=int, default=RATE_HZ)
    parser.add_argument(
        "--inclusive",
        action="append",
        default=[],
        help="also report ms/tx in and below frames matching this (A&B: both), repeatable",
    )
    parser.add_argument("--summarise-only", action="store_true", help="re-read --out only")
    args = parser.parse_args(argv)
    pyspy = str(Path(sys.executable).parent / "py-spy")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        cols: list[Column] = []
        for mode in args.modes.split(","):
            if mode not in DEFAULT_TARGETS:
                raise ProfileError(f"--modes: {mode!r} is neither pbft nor raft")
            for target in (args.targets or DEFAULT_TARGETS[mode]).split(","):
                if not args.summarise_only:
                    if not os.access(pyspy, os.X_OK):
                        raise ProfileError(f"{pyspy}: not found; pip install py-spy into the venv")
                    run_profiled(mode, target, args.txs, args.out, args.rate, pyspy)
                    time.sleep(1.0)  # let the machine settle between runs
                cols.append(column(mode, target, args.out))
                print(f"{cols[-1].label}: {cols[-1].run}", file=sys.stderr)
        text = report(cols, args.inclusive)
        (args.out / "summary.md").write_text(text)
        print(text)
    except (ProfileError, OSError, KeyError, ValueError) as exc:
        print(f"profile_bench: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
