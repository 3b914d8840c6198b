"""Print the table of client port attacks in docs/operations.md ("Client port attacks").

Runs, for each attack, a fresh local network of 4 members (TLS off, 127.0.0.1), an honest load
below saturation and the attack from its own process (consortium/testing/attacks.py, the same
drivers as tests/e2e/test_attacks.py), and prints one Markdown row each:

    PYTHONPATH=. python scripts/attack_figures.py            # every attack, both modes
    PYTHONPATH=. python scripts/attack_figures.py flood:raft # one
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import trio

from consortium.cli.demo import wait_until_up
from consortium.cli.network import LocalNetwork, init_network, load_client_setup
from consortium.ledger.genesis import Mode, Params
from consortium.testing import attacks

RUNS: dict[str, tuple[str, Mode, float, float]] = {
    # name: (attack, mode, attack rate per member, honest tx/s)
    "blocks:pbft": ("blocks", "pbft", 2.0, 100.0),
    "idle:pbft": ("idle", "pbft", 1200.0, 100.0),
    "flood:pbft": ("flood", "pbft", 60000.0, 100.0),
    "flood:raft": ("flood", "raft", 60000.0, 350.0),
}
RATE_UNITS = {
    "blocks": "writes of 3,000 `block` requests /s",
    "idle": "idle connections",
    "flood": "bad tx/s",
}


def run(name: str) -> attacks.Figures:
    kind, mode, rate, honest = RUNS[name]
    with tempfile.TemporaryDirectory(prefix="attack-") as tmp:
        directory = Path(tmp) / "net"
        init_network(
            directory, members=4, clients=3, mode=mode, params=Params(request_timeout_ms=2000)
        )
        net = LocalNetwork(directory, log_level="warning")
        net.start()
        try:
            setup = load_client_setup(directory)
            trio.run(wait_until_up, setup.genesis, 30.0)
            height = attacks.commit_big_blocks(directory) if kind == "blocks" else 1
            return trio.run(
                attacks.scenario,
                directory,
                setup.genesis,
                setup.keys(),
                net.procs,
                kind,
                rate,
                honest,
                height,
            )
        finally:
            net.stop()


def main(argv: list[str]) -> int:
    names = argv or list(RUNS)
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        print(f"unknown run {', '.join(unknown)}; known: {', '.join(RUNS)}", file=sys.stderr)
        return 2
    print(
        "| attack | mode | attack rate (per member) | honest tx/s before | during "
        "| lowest 1 s during | after | p95 commit latency before / during "
        "| bad signatures checked /s per member | back to full speed | SIGTERM to all stopped |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        f = run(name)
        back = "—" if f.back_to_speed_s is None else f"{f.back_to_speed_s:.2f} s"
        print(
            f"| {f.kind} | {f.mode} | {f.attack_rate:,.0f} {RATE_UNITS[f.kind]} | "
            f"{f.before:.0f} | {f.during:.0f} | {f.during_min:.0f} | {f.after:.0f} | "
            f"{f.p95_before_s:.2f} s / {f.p95_during_s:.2f} s | {f.bad_signatures_per_s:,.0f} | "
            f"{back} | {f.sigterm_s:.2f} s |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
