"""The peer port of real members under attack (docs/operations.md, "Peer port limits"), with an
honest load below saturation throughout, measured from the client side (a transaction counts
when committed with f+1 receipts) and compared as ratios, since the machine is shared:

- a stranger with no key holds about 100 idle connections on every member's peer port
  (consortium/testing/peer_flood.py, its own process, re-opening at a fixed rate): a member
  stopped with SIGTERM during it exits at once, starts again, reconnects to its peers and
  catches up; the honest load keeps at least half its throughput and is back to speed soon
  after the attack;
- a copy of n2's home started as a second process claiming n2: the others say "two processes
  claim n2" in status while it runs, the network keeps committing, and the reason goes after
  the copy stops."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from consortium.cli.demo import wait_until_up
from consortium.cli.network import LocalNetwork, free_ports, init_network, load_client_setup
from consortium.client import ConsortiumClient
from consortium.ledger.genesis import Params
from consortium.testing.attacks import Load, honest_load
from tests.e2e.procs import cli

pytestmark = pytest.mark.e2e

HONEST_RATE = 100.0  # tx/s, below what a loaded 2-core machine commits
RECOVERED = 0.8  # "full speed": at least this fraction of the rate before the attack
# The bound: a member stopped with SIGTERM exits within 2 s, even while it is flooded
# (measured 0.3 to 0.7 s here, with a CPU-bound process beside it too: docs/operations.md,
# "Peer port limits").
SIGTERM_S_MAX = 2.0
REJOIN_S_MAX = 20.0  # a restart and catch-up take about 3 s here
# --duplicate-shown-s of the members in the duplicate test (30 s otherwise): longer than the
# copy's redials are apart (its backoff, at most 3 s with jitter, and the 1 s ping each costs)
SHOWN_S = 8.0


async def status_of(observer: ConsortiumClient, member: int) -> dict[str, Any] | None:
    try:
        return await observer.status(member, 1.0)
    except Exception:  # a stopped or starting member does not answer
        return None


async def wait_exit(proc: subprocess.Popen[bytes], timeout_s: float) -> float:
    """Seconds until `proc` exits (polled: nothing in trio waits on another process's exit)."""
    started = time.monotonic()
    while True:
        if proc.poll() is not None or time.monotonic() - started >= timeout_s:
            return time.monotonic() - started
        await trio.sleep(0.01)


def start_attacker(directory: Path) -> subprocess.Popen[bytes]:
    """consortium/testing/peer_flood.py at its defaults (100 idle connections per member from
    10 loopback addresses, 100 opened a second per member), as its own process."""
    flood = ["-m", "consortium.testing.peer_flood", "--net", str(directory)]
    return subprocess.Popen(
        [sys.executable, *flood, "--seconds", "50"],  # stopped long before; bounded if we die
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def start_copy(home: Path) -> subprocess.Popen[bytes]:
    """`consortium node start` of a copied home, logging to its node.log."""
    with (home / "node.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "consortium", "node", "start", "--home", str(home)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def make_network(tmp_path: Path) -> LocalNetwork:
    directory = tmp_path / "net"
    init_network(directory, members=4, clients=3, params=Params(request_timeout_ms=2000))
    return LocalNetwork(directory, log_level="warning")


@pytest.fixture
def net(tmp_path: Path) -> Iterator[LocalNetwork]:
    network = make_network(tmp_path)
    network.start()
    try:
        trio.run(wait_until_up, load_client_setup(network.directory).genesis, 30.0)
        yield network
    finally:
        network.stop()


@dataclass
class Figures:
    before: float = 0.0
    during: float = 0.0
    after: float = 0.0
    back_to_speed_s: float | None = None
    sigterm_s: float = 0.0
    rejoined_s: float = 0.0  # from its start until n4 had its peers live and the others' height
    transport: dict[str, int] = field(default_factory=dict)  # the members' counters, summed

    @property
    def baseline(self) -> float:
        """The rate before, at most the offered rate (attacks.Figures.baseline: batches that
        waited while the clients connected can make a window before count more)."""
        return min(self.before, HONEST_RATE)

    def __str__(self) -> str:
        back = "never" if self.back_to_speed_s is None else f"{self.back_to_speed_s:.2f} s"
        return (
            f"honest tx/s before {self.before:.0f}, during {self.during:.0f}, after "
            f"{self.after:.0f} (back to speed after {back}); SIGTERM to exit "
            f"{self.sigterm_s:.2f} s; restarted n4 rejoined in {self.rejoined_s:.1f} s; "
            f"handshake_evicted {self.transport.get('handshake_evicted', 0)}, "
            f"handshake_timeout {self.transport.get('handshake_timeout', 0)}"
        )


BEFORE_S = 4.0
SETTLE_S = 1.0  # the first second of each phase is left out of its rate
AFTER_S = 6.0


def test_a_member_restarted_during_a_handshake_flood_rejoins_and_honest_load_goes_on(
    net: LocalNetwork,
) -> None:
    setup = load_client_setup(net.directory)
    genesis, keys = setup.genesis, setup.keys()
    fig = Figures()
    load = Load()
    attacker: subprocess.Popen[bytes] | None = None

    async def scenario() -> None:
        nonlocal attacker
        async with trio.open_nursery() as nursery, ConsortiumClient(genesis) as observer:
            nursery.start_soon(honest_load, genesis, keys, HONEST_RATE, load)
            t0 = trio.current_time()
            await trio.sleep(BEFORE_S)
            attacker = start_attacker(net.directory)
            attack_start = trio.current_time()
            await trio.sleep(2.0)
            # n4, a backup (n1 is the primary of view 0): no view change to wait for.
            net.procs["n4"].send_signal(signal.SIGTERM)
            fig.sigterm_s = await wait_exit(net.procs["n4"], 10.0)
            assert net.procs["n4"].poll() is not None, "n4 ignored SIGTERM"
            net.start("n4")
            started = trio.current_time()
            n4: dict[str, Any] | None = None
            with trio.move_on_after(REJOIN_S_MAX):
                while True:
                    await trio.sleep(0.2)
                    heights = [
                        (await status_of(observer, i) or {}).get("height", 0) for i in (0, 1)
                    ]
                    n4 = await status_of(observer, 3)
                    if (
                        n4 is not None
                        and all(p["outbound_live"] and p["inbound_live"] for p in n4["peers"])
                        and n4["height"] >= max(heights)
                    ):
                        break
            fig.rejoined_s = trio.current_time() - started
            peers = None if n4 is None else [(p["name"], p["last_error"]) for p in n4["peers"]]
            assert fig.rejoined_s < REJOIN_S_MAX, f"n4 isolated by the flood: {peers}"
            assert attacker.poll() is None, "the attack ended before n4 rejoined: proves nothing"
            await trio.sleep(2.0)
            for i in range(genesis.n):
                for event, count in (
                    ((await status_of(observer, i)) or {}).get("transport", {}).items()
                ):
                    fig.transport[event] = fig.transport.get(event, 0) + int(count)
            attacker.kill()
            attacker.wait()
            attack_end = trio.current_time()
            await trio.sleep(AFTER_S)
            nursery.cancel_scope.cancel()
        fig.before = load.rate(t0 + SETTLE_S, t0 + BEFORE_S)
        fig.during = load.rate(attack_start + SETTLE_S, attack_end)
        fig.after = load.rate(attack_end + 2.0, attack_end + AFTER_S)
        for k in range(int((AFTER_S - 1.0) / 0.25) + 1):
            at = attack_end + k * 0.25
            if load.rate(at, at + 1.0) >= RECOVERED * fig.baseline:
                fig.back_to_speed_s = k * 0.25
                break

    try:
        trio.run(scenario)
    finally:
        if attacker is not None and attacker.poll() is None:
            attacker.kill()
            attacker.wait()
    print(f"\n{fig}")
    # The flood reached the members: their slots were taken and idle connections evicted.
    assert fig.transport.get("handshake_evicted", 0) >= 500, fig.transport
    assert fig.before >= 0.5 * HONEST_RATE, fig  # the honest load ran before the attack
    assert fig.during >= 0.5 * fig.baseline, fig
    assert fig.after >= RECOVERED * fig.baseline, fig
    assert fig.back_to_speed_s is not None and fig.back_to_speed_s <= 5.0, fig
    assert fig.sigterm_s <= SIGTERM_S_MAX, fig


def copy_home(home: Path, to: Path) -> None:
    """A copy of a stopped member's home, as on a second host: same key and ledger, its own
    listen ports (so it can bind here; it still dials the others as that member)."""
    shutil.copytree(home, to, ignore=shutil.ignore_patterns("node.log"))
    config = to / "config" / "node.toml"
    peer, client, http = free_ports(3)
    lines = []
    section = ""
    for line in config.read_text().splitlines():
        if line.startswith("["):
            section = line.strip()
        elif line.startswith("peer = ") and section == "[listen]":
            line = f'peer = "127.0.0.1:{peer}"'
        elif line.startswith("client = ") and section == "[listen]":
            line = f'client = "127.0.0.1:{client}"'
        elif line.startswith("listen = ") and section == "[http]":
            line = f'listen = "127.0.0.1:{http}"'
        lines.append(line)
    config.write_text("\n".join(lines) + "\n")


CLAIM = "two processes claim n2"


def test_a_copy_of_a_members_home_started_as_a_second_process_is_named_in_status(
    tmp_path: Path,
) -> None:
    net = make_network(tmp_path)
    setup = load_client_setup(net.directory)
    genesis, keys = setup.genesis, setup.keys()
    shown = ("--duplicate-shown-s", str(SHOWN_S))
    copy: subprocess.Popen[bytes] | None = None
    try:
        for home in net.homes:
            net.start(home.name, faults=shown)
        trio.run(wait_until_up, genesis, 30.0)
        # n2 stopped a moment for a consistent copy of its store, then started again.
        net.kill("n2", signal.SIGTERM)
        copy_home(net.homes[1], tmp_path / "n2-copy")
        net.start("n2", faults=shown)
        trio.run(wait_until_up, genesis, 30.0)
        load = Load()

        async def reasons(observer: ConsortiumClient) -> list[str]:
            # A warning, never a reason n3 is not ready (explain.peer_warnings).
            n3 = await status_of(observer, 2)
            if n3 is not None:
                assert not any(r.startswith(CLAIM) for r in n3["not_progressing_because"]), n3
            return [] if n3 is None else list(n3["warnings"])

        async def scenario() -> tuple[float, float, list[str]]:
            nonlocal copy
            async with trio.open_nursery() as nursery, ConsortiumClient(genesis) as observer:
                nursery.start_soon(honest_load, genesis, keys, HONEST_RATE, load)
                t0 = trio.current_time()
                await trio.sleep(3.0)
                copy = start_copy(tmp_path / "n2-copy")
                copy_start = trio.current_time()
                with trio.fail_after(15):
                    while True:
                        if any(r.startswith(CLAIM) for r in await reasons(observer)):
                            break
                        await trio.sleep(0.1)
                named = trio.current_time() - copy_start  # its start (imports) included
                seen = await reasons(observer)
                text = await trio.to_thread.run_sync(cli, "status", "--net", str(net.directory))
                assert CLAIM in text.stdout, text.stdout + text.stderr
                await trio.sleep(3.0)
                copy.send_signal(signal.SIGTERM)
                await wait_exit(copy, 10.0)
                copy_end = trio.current_time()
                # Shown for SHOWN_S after the last sighting, not gone with the copy.
                assert any(CLAIM in r for r in await reasons(observer))
                with trio.fail_after(SHOWN_S + 10):
                    while True:
                        if not any(CLAIM in r for r in await reasons(observer)):
                            break
                        await trio.sleep(0.2)
                gone = trio.current_time() - copy_end
                text = await trio.to_thread.run_sync(cli, "status", "--net", str(net.directory))
                assert text.returncode == 0, text.stdout + text.stderr
                assert CLAIM not in text.stdout, text.stdout
                nursery.cancel_scope.cancel()
            before = load.rate(t0 + 1.0, copy_start)
            during = load.rate(copy_start, copy_end)
            print(
                f"\nhonest tx/s before {before:.0f}, with the copy {during:.0f}; reason shown "
                f"{named:.1f} s after the copy started, gone {gone:.1f} s after it stopped"
            )
            assert during >= 0.5 * before, (before, during)
            return before, during, seen

        _, _, seen = trio.run(scenario)
        (claim,) = [r for r in seen if r.startswith(CLAIM)]
        assert "stop one of them" in claim, claim
        assert copy is not None and copy.poll() is not None
    finally:
        if copy is not None and copy.poll() is None:
            copy.kill()
            copy.wait()
        net.stop()
