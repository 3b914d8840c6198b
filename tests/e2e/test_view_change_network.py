"""PBFT view change on real processes over loopback, when faults outlast the timers: one member
of four down for the whole test while partitions among the other three, each held longer than
the current (doubled) view-change timeout and each with its own split, come and go. After the
network heals for good, new transactions must commit at the three live members, into identical
ledgers that `ledger verify` accepts.

Before the NEW-VIEW timer counted VIEW-CHANGEs for later views, this could stop the network for
good: one member at view v+2 holding only its own VIEW-CHANGE, the two others at v+1 holding two
each, no timer running anywhere, the height frozen while clients kept submitting.

Partitions use the test entry point's --partition-file (consortium/testing/member.py; see
tests/e2e/test_raft.py): a member drops all frames to and from the members named in its file."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from consortium.cli.demo import wait_same_height
from consortium.cli.network import LocalNetwork, init_network, load_client_setup
from consortium.client import ConsortiumClient
from consortium.crypto.keys import KeyPair
from consortium.ledger.genesis import Genesis, Params
from consortium.ledger.tx import Put
from tests.e2e.procs import cli
from tests.e2e.test_faults import statuses
from tests.e2e.test_network import block_hashes

pytestmark = pytest.mark.e2e

TIMEOUT_MS = 200  # the base view-change timeout: short, so the doubled ones stay short too
PAUSE_TIMEOUT_MS = 1_000  # the paused-backup test's
LIVE = [0, 1, 2]  # n4 is down for the whole test
SPLITS = [["n1"], ["n2"], ["n3"], ["n1"], ["n2"]]  # each cut off from the other two in turn
RECOVERY_S = 20.0  # after healing, new transactions commit within this (a few timeouts)


async def wait_live(genesis: Genesis, timeout_s: float) -> None:
    with trio.fail_after(timeout_s):
        while True:
            if len(await statuses(genesis, LIVE)) == len(LIVE):
                return
            await trio.sleep(0.1)


async def live_statuses(client: ConsortiumClient) -> dict[int, dict[str, Any]]:
    """From a client already connected (a new one would first wait for the down member)."""
    return {i: await client.status(i, 1.0) for i in LIVE}


def test_partitions_flapped_past_the_timeout_with_a_member_down_heal_and_commit(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "net"
    init_network(directory, members=4, clients=2, params=Params(request_timeout_ms=TIMEOUT_MS))
    net = LocalNetwork(directory)
    setup = load_client_setup(directory)
    genesis, keys = setup.genesis, setup.keys()
    for home in net.homes[:3]:
        net.start(home.name, faults=("--partition-file", str(home / "partition")))
    try:
        trio.run(wait_live, genesis, 30.0)
        seen = trio.run(flap_then_heal, net, genesis, keys[0])
        print(
            f"\nviews at the heal: {seen['views_at_heal']}; timeouts held: {seen['held_s']}; "
            f"first commit {seen['recovered_s']:.2f} s after the heal"
        )
        found = trio.run(statuses, genesis, LIVE)
        assert len({s["view"] for s in found.values()}) == 1, found
        assert all(s["core"]["view_active"] for s in found.values())
    finally:
        net.stop()
    chains = [block_hashes(home, genesis) for home in net.homes[:3]]
    assert chains[0] == chains[1] == chains[2]
    assert len(chains[0]) > 2
    for home in net.homes[:3]:
        result = cli("ledger", "verify", "--home", str(home))
        assert result.returncode == 0, result.stderr + result.stdout


async def flap_then_heal(net: LocalNetwork, genesis: Genesis, key: KeyPair) -> dict[str, Any]:
    seen: dict[str, Any] = {"held_s": []}
    async with ConsortiumClient(genesis, key) as client:

        async def commit(tag: str, count: int, timeout_s: float) -> None:
            txs = [client.make_tx([Put(f"{tag}/{i}".encode(), b"v")]) for i in range(count)]
            outcomes = await client.submit_and_wait(txs, timeout_s=timeout_s)
            if [o.status for o in outcomes] != ["committed"] * count:
                stuck = {
                    f"n{i + 1}": (s["view"], s["core"]["view_active"], s["height"])
                    for i, s in (await live_statuses(client)).items()
                }
                waiting = {
                    f"n{i + 1}": s["core"]["waiting_for"]
                    for i, s in (await live_statuses(client)).items()
                }
                raise AssertionError(
                    f"{tag}: {[o.status for o in outcomes]} after {timeout_s} s; "
                    f"(view, active, height): {stuck}; waiting for: {waiting}"
                )

        await commit("before", 3, 20.0)
        pending: list[bytes] = []
        for k, side in enumerate(SPLITS):
            # Held longer than the timeout the members have now (it doubles with each view
            # change), so every live member's timer fires in it; a request is pending in it.
            found = await live_statuses(client)
            timeout_s = max(int(s["core"]["view_timeout_ms"]) for s in found.values()) / 1000
            hold_s = 2 * timeout_s + 0.1
            cut_off(net, side)
            await trio.sleep(0.1)  # the members poll their files every 50 ms
            pending += await client.submit([client.make_tx([Put(b"flap/%d" % k, b"v")])])
            await trio.sleep(hold_s)
            heal_files(net)
            seen["held_s"].append(round(hold_s, 2))
            await trio.sleep(0.05 * (k % 3))  # a short heal: some messages get through
        healed = time.monotonic()
        found = await live_statuses(client)
        seen["views_at_heal"] = {
            i: (s["view"], s["core"]["view_active"]) for i, s in sorted(found.items())
        }
        await commit("after", 5, RECOVERY_S)
        seen["recovered_s"] = time.monotonic() - healed
        outcomes = await client.wait(pending, 10.0)
        assert [o.status for o in outcomes] == ["committed"] * len(pending), outcomes
    return seen


def cut_off(net: LocalNetwork, side: list[str]) -> None:
    """Partition `side` from the other members, both ways."""
    names = [home.name for home in net.homes]
    other = [name for name in names if name not in side]
    for home in net.homes:
        away = other if home.name in side else side
        (home / "partition").write_text("\n".join(away))


def heal_files(net: LocalNetwork) -> None:
    for home in net.homes:
        (home / "partition").write_text("")


def test_a_backup_paused_past_the_timeout_rejoins_without_a_view_change(tmp_path: Path) -> None:
    # n4 is stopped (SIGSTOP) for three timeouts while the others commit, with requests it had
    # received pending. When it runs again, nothing it watched has timed out: the time it was
    # stopped does not count towards its view-change timers, so it does not ask alone for view
    # 1 (where it would count as faulty until the others' next view change), but catches up
    # in view 0 with the others. (A longer base timeout than the flapping test's: after it
    # resumes, n4 has half a timeout to read what arrived and execute, which a loaded machine
    # needs; the old clock made it suspect the primary at its first tick whatever the timeout.)
    directory = tmp_path / "net"
    init_network(
        directory, members=4, clients=2, params=Params(request_timeout_ms=PAUSE_TIMEOUT_MS)
    )
    net = LocalNetwork(directory)
    setup = load_client_setup(directory)
    genesis, keys = setup.genesis, setup.keys()
    net.start()
    try:
        trio.run(wait_all, genesis, 30.0)

        async def scenario() -> dict[int, dict[str, Any]]:
            done = trio.Event()
            async with ConsortiumClient(genesis, keys[0]) as client:

                async def load() -> None:  # n4 always holds requests not executed yet
                    rounds = 0
                    while not done.is_set():
                        txs = [
                            client.make_tx([Put(b"load/%d/%d" % (rounds, i), b"v")])
                            for i in range(20)
                        ]
                        await client.submit_and_wait(txs, timeout_s=20.0)
                        rounds += 1

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(load)
                    await trio.sleep(0.5)
                    net.procs["n4"].send_signal(signal.SIGSTOP)
                    try:
                        await trio.sleep(3 * PAUSE_TIMEOUT_MS / 1000)
                    finally:
                        net.procs["n4"].send_signal(signal.SIGCONT)
                    await trio.sleep(2 * PAUSE_TIMEOUT_MS / 1000)
                    done.set()
                await trio.sleep(0.5)
                return {i: await client.status(i, 1.0) for i in range(4)}

        found = trio.run(scenario)
        summary = {
            i: (s["view"], s["core"]["view_active"], s["height"], s["core"]["waiting_for"])
            for i, s in found.items()
        }
        assert all(s["view"] == 0 and s["core"]["view_active"] for s in found.values()), summary
        trio.run(wait_same_height, genesis, [0, 1, 2, 3], 20.0)  # n4 catches up in view 0
        stalls = found[3]["stalls"]
        assert stalls["count"] >= 1 and stalls["skipped_ms"] >= PAUSE_TIMEOUT_MS, stalls
    finally:
        net.stop()


async def wait_all(genesis: Genesis, timeout_s: float) -> None:
    with trio.fail_after(timeout_s):
        while True:
            if len(await statuses(genesis, [0, 1, 2, 3])) == 4:
                return
            await trio.sleep(0.1)
