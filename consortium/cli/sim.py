"""`consortium sim`: run seeded simulations of unmodified PBFT cores (or, with --mode raft,
Raft cores) from the command line, with chosen network faults, crashes, partitions and
Byzantine behaviours, or fault mixes (both modes: partitions held past the view-change or
election timeout and flapped while f members are down or mute all along; raft: its own crash,
partition and power-loss mixes too), or a member's clock wrong (--clock, both modes); print a
summary; and replay one seed with a readable trace.

This is the work behind the command; its options and help are in sim_cmd.py, so that
`consortium --help` does not load the simulator."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import typer

from consortium.cli.progress import live_bar
from consortium.sim.byzantine import BEHAVIOURS
from consortium.sim.checkers import LivenessViolation, SafetyViolation
from consortium.sim.clock_scenarios import CLOCK_MIXES, plan, run_clock
from consortium.sim.flapping import FLAPPING
from consortium.sim.raft_scenarios import RAFT_MIXES, run_raft, run_raft_flapping
from consortium.sim.scenarios import FAULTS, Outcome, Scenario, run_seed

T = TypeVar("T")

EXIT_FAILED = 1


def parse_seeds(text: str) -> list[int]:
    """'0-99', '3,7,11' or a mix: '0-9,42'."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        first, dash, last = part.partition("-")
        try:
            lo = int(first)
            hi = int(last) if dash else lo
        except ValueError:
            raise typer.BadParameter(f"{part!r}: seeds are numbers or ranges like 0-99") from None
        if hi < lo or hi - lo > 1_000_000:
            raise typer.BadParameter(f"{part!r}: not a range")
        seeds.extend(range(lo, hi + 1))
    if not seeds:
        raise typer.BadParameter("no seeds")
    return seeds


def run(
    *,
    mode: str,
    mix: list[str] | None,
    n: int | None,
    seeds: str,
    txs: int,
    faults: str,
    partition: bool,
    crash: bool,
    byzantine: list[str] | None,
    liars: str,
    trace: int | None,
    trace_lines: int,
    clock: list[str] | None,
) -> None:
    """`consortium sim` with the options it was given (sim_cmd.py declares them)."""
    if clock:
        _clock(mode, n, seeds, txs, clock, trace, trace_lines)
        return
    if mode == "raft":
        _raft(n or 3, seeds, txs, mix, trace, trace_lines)
        return
    if mode != "pbft":
        raise typer.BadParameter("pbft or raft", param_hint="--mode")
    if n is None:
        n = 4
    if n < 4:
        raise typer.BadParameter("pbft needs n >= 4", param_hint="--n")
    if faults not in FAULTS:
        raise typer.BadParameter(f"choose one of {', '.join(FAULTS)}", param_hint="--faults")
    names: list[str | None] = [None]
    mixes: list[str | None] = [None]
    if mix:
        mixes = list(FLAPPING) if mix == ["all"] else list(mix)
        unknown = [x for x in mixes if x not in FLAPPING]
        if unknown:
            raise typer.BadParameter(
                f"{unknown[0]!r}: choose from {', '.join(FLAPPING)} or all", param_hint="--mix"
            )
        if byzantine or partition or crash:
            raise typer.BadParameter(
                "a flapping mix brings its own faults (f members down or mute, partitions): "
                "leave out --byzantine, --partition and --crash",
                param_hint="--mix",
            )
    if byzantine:
        names = list(BEHAVIOURS) if byzantine == ["all"] else list(byzantine)
        unknown = [b for b in names if b not in BEHAVIOURS]
        if unknown:
            raise typer.BadParameter(
                f"{unknown[0]!r}: choose from {', '.join(BEHAVIOURS)} or all",
                param_hint="--byzantine",
            )
    try:
        members = tuple(int(x) for x in liars.split(","))
    except ValueError:
        raise typer.BadParameter("indexes like 0 or 0,4", param_hint="--liars") from None
    f = (n - 1) // 3
    if len(set(members)) > f or any(not 0 <= m < n for m in members):
        raise typer.BadParameter(
            f"at most f = {f} distinct members in 0..{n - 1}", param_hint="--liars"
        )

    runs = [(name, m) for m in mixes for name in names]

    def scenario(name: str | None, m: str | None) -> Scenario:
        return Scenario(n, txs, faults, partition, crash, name, members, m)

    if trace is not None:
        outcome = run_seed(scenario(*runs[0]), trace, _trace_printer(trace_lines))
        typer.echo(_line(outcome))
        raise typer.Exit(0 if outcome.ok else EXIT_FAILED)

    chosen = parse_seeds(seeds)
    typer.echo(
        f"{'behaviour or mix':<22} {'seeds':>6} {'ok':>6} {'safety':>7} {'liveness':>9} "
        f"{'sim s':>8} {'wall s':>7}"
    )
    failed: list[tuple[str | None, str | None, Outcome]] = []
    with _seeds_bar(len(runs) * len(chosen)) as tick:
        for name, m in runs:
            started = time.monotonic()
            outcomes = [tick(run_seed(scenario(name, m), seed)) for seed in chosen]
            bad = [o for o in outcomes if not o.ok]
            failed += [(name, m, o) for o in bad]
            typer.echo(
                f"{m or name or 'none':<22} {len(outcomes):>6} {len(outcomes) - len(bad):>6} "
                f"{sum(o.failure == 'safety' for o in bad):>7} "
                f"{sum(o.failure in ('liveness', 'error') for o in bad):>9} "
                f"{sum(o.simulated_ms for o in outcomes) / 1000:>8.1f} "
                f"{time.monotonic() - started:>7.1f}"
            )
    for name, m, o in failed[:10]:
        typer.echo(f"FAILED {m or name or 'none'} {_line(o)}")
    if failed:
        name, m, first = failed[0]
        flags = " ".join(
            x
            for x in (
                f"--n {n} --txs {txs} --faults {faults} --liars {liars}",
                "--partition" if partition else "",
                "--crash" if crash else "",
                f"--byzantine {name}" if name else "",
                f"--mix {m}" if m else "",
            )
            if x
        )
        typer.echo(f"replay: consortium sim {flags} --trace {first.seed}")
        raise typer.Exit(EXIT_FAILED)


def _trace_printer(limit: int) -> Callable[[str], None]:
    """Echo trace lines, cut after `limit` with a note saying how to see more."""
    lines = 0

    def emit(line: str) -> None:
        nonlocal lines
        lines += 1
        if lines <= limit:
            typer.echo(line)
        elif lines == limit + 1:
            typer.echo(f"... trace cut at {limit} lines (--trace-lines)")

    return emit


def _raft(
    n: int, seeds: str, txs: int, mixes: list[str] | None, trace: int | None, trace_lines: int
) -> None:
    if n < 1:
        raise typer.BadParameter("at least one member", param_hint="--n")
    known = RAFT_MIXES + FLAPPING
    if not mixes or mixes == ["all"]:
        # (a flapping mix partitions the members that are not faulty: two at least)
        names = list(known if n >= 2 else RAFT_MIXES)
    else:
        names = list(mixes)
    unknown = [x for x in names if x not in known]
    if unknown:
        raise typer.BadParameter(
            f"{unknown[0]!r}: choose from {', '.join(known)} or all", param_hint="--mix"
        )
    if n < 2 and any(x in FLAPPING for x in names):
        raise typer.BadParameter("a flapping mix needs n >= 2", param_hint="--n")
    if trace is not None:
        failure = _raft_one(trace, n, names[0], txs, _trace_printer(trace_lines))
        typer.echo(f"seed {trace} ({names[0]}, n={n}): {failure or 'ok'}")
        raise typer.Exit(EXIT_FAILED if failure else 0)
    _table(
        "mix",
        names,
        parse_seeds(seeds),
        lambda name, seed: _raft_one(seed, n, name, txs, None),
        lambda name, seed: name,
        lambda name, seed: (
            f"consortium sim --mode raft --n {n} --txs {txs} --mix {name} --trace {seed}"
        ),
    )


@contextlib.contextmanager
def _seeds_bar(total: int) -> Iterator[Callable[[T], T]]:
    """A tick to call with each seed's result as it comes: on a terminal it moves a live bar
    (seeds done, seeds a second) below the table; piped, the table alone, as before."""
    bar = live_bar(total, "seeds", "seed")
    done = [0]

    def tick(result: T) -> T:
        done[0] += 1
        if bar is not None:
            bar.update(done[0])
        return result

    try:
        yield tick
    finally:
        if bar is not None:
            bar.close()


def _table(
    heading: str,
    names: list[str],
    chosen: list[int],
    one: Callable[[str, int], str],
    label: Callable[[str, int], str],
    replay: Callable[[str, int], str],
) -> None:
    """Run every seed of every mix (one: '' when it passed, else why), a line per mix; the
    failures, and how to replay the first (exit EXIT_FAILED)."""
    width = max(len(heading), *(len(name) for name in names)) + 2
    typer.echo(
        f"{heading:<{width}} {'seeds':>6} {'ok':>6} {'safety':>7} {'liveness':>9} {'wall s':>7}"
    )
    failed: list[tuple[str, int, str]] = []
    with _seeds_bar(len(names) * len(chosen)) as tick:
        for name in names:
            started = time.monotonic()
            bad = [(seed, tick(one(name, seed))) for seed in chosen]
            bad = [(seed, why) for seed, why in bad if why]
            failed += [(name, seed, why) for seed, why in bad]
            typer.echo(
                f"{name:<{width}} {len(chosen):>6} {len(chosen) - len(bad):>6} "
                f"{sum(why.startswith('safety') for _, why in bad):>7} "
                f"{sum(not why.startswith('safety') for _, why in bad):>9} "
                f"{time.monotonic() - started:>7.1f}"
            )
    for name, seed, why in failed[:10]:
        typer.echo(f"FAILED {label(name, seed)} seed {seed}: {why}")
    if failed:
        name, seed, _ = failed[0]
        typer.echo(f"replay: {replay(name, seed)}")
        raise typer.Exit(EXIT_FAILED)


def _raft_one(seed: int, n: int, mix: str, txs: int, emit: Callable[[str], None] | None) -> str:
    """'' when the run passed, else 'safety: ...' or 'liveness: ...'."""
    if mix in FLAPPING:
        return _verdict(lambda: run_raft_flapping(seed, n, mix, txs=txs, trace=emit))
    return _verdict(lambda: run_raft(seed, n, mix, txs=txs, trace=emit))


def _verdict(run: Callable[[], object]) -> str:
    """'' when `run` returned, else 'safety: ...', 'liveness: ...' or 'error: ...'."""
    try:
        run()
    except SafetyViolation as exc:
        return f"safety: {exc}"
    except LivenessViolation as exc:
        return f"liveness: {exc}"
    except Exception as exc:  # a crash of the core is a failure to report, not to hide
        return f"error: {type(exc).__name__}: {exc}"
    return ""


def _clock(
    mode: str,
    n: int | None,
    seeds: str,
    txs: int,
    mixes: list[str],
    trace: int | None,
    trace_lines: int,
) -> None:
    """The clock mixes (sim/clock_scenarios.py) of one mode."""
    if mode not in CLOCK_MIXES:
        raise typer.BadParameter("pbft or raft", param_hint="--mode")
    known = CLOCK_MIXES[mode]
    names = list(known) if mixes == ["all"] else list(mixes)
    unknown = [x for x in names if x not in known]
    if unknown:
        raise typer.BadParameter(
            f"{unknown[0]!r}: {mode} has {', '.join(known)} or all", param_hint="--clock"
        )
    members = n or (4 if mode == "pbft" else 3)
    if mode == "pbft" and members < 4:
        raise typer.BadParameter("pbft needs n >= 4", param_hint="--n")
    if trace is not None:
        failure = _clock_one(trace, names[0], members, txs, _trace_printer(trace_lines))
        variant = plan(names[0], trace).variant
        typer.echo(f"seed {trace} ({names[0]}: {variant}, n={members}): {failure or 'ok'}")
        raise typer.Exit(EXIT_FAILED if failure else 0)
    _table(
        "clock mix",
        names,
        parse_seeds(seeds),
        lambda name, seed: _clock_one(seed, name, members, txs, None),
        lambda name, seed: f"{name} ({plan(name, seed).variant})",
        lambda name, seed: (
            f"consortium sim --mode {mode} --n {members} --txs {txs} --clock {name} --trace {seed}"
        ),
    )


def _clock_one(seed: int, mix: str, n: int, txs: int, emit: Callable[[str], None] | None) -> str:
    """'' when the run passed, else 'safety: ...' (a clock violation among them) or
    'liveness: ...'."""
    return _verdict(lambda: run_clock(seed, mix, n, txs=txs, trace=emit))


def _line(o: Outcome) -> str:
    status = "ok" if o.ok else f"{o.failure}: {o.message}"
    return (
        f"seed {o.seed}: {status} ({o.simulated_ms / 1000:.1f} s simulated, {o.steps} steps, "
        f"{o.sent} messages, {o.dropped} dropped, heights {o.heights}, views {o.views})"
    )
