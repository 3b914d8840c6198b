"""PBFT faults on real processes over loopback: the primary killed (kill -9) or stopped (SIGSTOP)
under load, a member down for thousands of transactions, a member started in a test-only
Byzantine mode, and a backup whose clock is an hour ahead. After each: commits go on, nothing a
client saw committed is lost, the ledgers are identical and `ledger verify` passes. And the
primary restored from a backup two blocks old (docs/operations.md, Restoring): it proposes
nothing in its old view, nobody sees it contradict itself, and it takes part again after the
view change that replaces it."""

from __future__ import annotations

import re
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from consortium.cli.demo import wait_same_height, wait_until_up
from consortium.cli.network import LocalNetwork, init_network, load_client_setup
from consortium.client import ConsortiumClient
from consortium.crypto.keys import KeyPair
from consortium.ledger.genesis import Genesis, Params
from consortium.ledger.store import BlockStore
from consortium.ledger.tx import Get, Put
from consortium.node.preflight import NEW_MARK
from tests.e2e.procs import cli
from tests.e2e.test_network import block_hashes

pytestmark = pytest.mark.e2e

TIMEOUT_MS = 1_000  # the view-change timeout of these networks


def make_network(tmp_path: Path, **params: int) -> LocalNetwork:
    directory = tmp_path / "net"
    init_network(
        directory,
        members=4,
        clients=3,
        params=Params(request_timeout_ms=TIMEOUT_MS, **params),  # type: ignore[arg-type]
    )
    return LocalNetwork(directory)


@pytest.fixture
def net(tmp_path: Path) -> Iterator[LocalNetwork]:
    network = make_network(tmp_path)
    network.start()
    try:
        trio.run(wait_until_up, load_client_setup(network.directory).genesis, 30.0)
        yield network
    finally:
        network.stop()


async def statuses(genesis: Genesis, members: list[int]) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    async with ConsortiumClient(genesis) as client:
        for i in members:
            try:
                out[i] = await client.status(i, 1.0)
            except Exception:  # a stopped member does not answer
                continue
    return out


async def submit(genesis: Genesis, key: KeyPair, count: int, tag: str) -> list[bytes]:
    """Submit `count` transactions, 50 at a time; returns the ids seen committed."""
    async with ConsortiumClient(genesis, key) as client:
        return await submit_with(client, count, tag)


async def submit_with(client: ConsortiumClient, count: int, tag: str) -> list[bytes]:
    committed: list[bytes] = []
    for start in range(0, count, 50):
        txs = [
            client.make_tx([Put(f"{tag}/{start + j}".encode(), b"v")])
            for j in range(min(50, count - start))
        ]
        outcomes = await client.submit_and_wait(txs, timeout_s=30.0)
        for tx, outcome in zip(txs, outcomes, strict=True):
            if outcome.status == "committed":
                committed.append(tx.id)
    return committed


def check_ledgers(network: LocalNetwork, genesis: Genesis, committed: list[bytes]) -> None:
    """Stopped network: identical ledgers that verify and hold every id seen committed."""
    network.stop()
    chains = [block_hashes(home, genesis) for home in network.homes]
    for chain in chains[1:]:
        assert chain == chains[0], "block hashes differ at some height"
    store = BlockStore.open(network.homes[1] / "data" / "ledger.sqlite", genesis)
    try:
        lost = [tx_id for tx_id in committed if store.receipt_of(tx_id) is None]
    finally:
        store.close()
    assert not lost, f"{len(lost)} transactions a client saw committed are not in the ledger"
    for home in network.homes:
        result = cli("ledger", "verify", "--home", str(home))
        assert result.returncode == 0, result.stderr + result.stdout


def test_killing_the_primary_under_load_moves_commits_to_a_new_view(net: LocalNetwork) -> None:
    setup = load_client_setup(net.directory)
    genesis, keys = setup.genesis, setup.keys()
    committed: list[bytes] = []
    timing: dict[str, float] = {}
    done = trio.Event()

    async def scenario() -> None:
        async def load(key: KeyPair, tag: str) -> None:
            # One connected client throughout: a new one would first wait for the dead member.
            async with ConsortiumClient(genesis, key) as client:
                rounds = 0
                while not done.is_set():  # load until the new view committed for a while
                    committed.extend(await submit_with(client, 100, f"{tag}{rounds}"))
                    rounds += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(load, keys[0], "a")
            nursery.start_soon(load, keys[1], "b")
            await trio.sleep(0.6)
            async with ConsortiumClient(genesis) as observer:  # connected before the kill

                async def survivors() -> list[dict[str, Any]]:
                    return [await observer.status(i, 1.0) for i in (1, 2, 3)]

                top = max(s["height"] for s in await survivors())
                net.kill("n1", signal.SIGKILL)
                killed = time.monotonic()
                with trio.fail_after(10 * TIMEOUT_MS / 1000):
                    while True:
                        moved = [
                            s
                            for s in await survivors()
                            if s["view"] >= 1 and s["core"]["view_active"]
                        ]
                        if moved and max(s["height"] for s in moved) > top:
                            timing["first_commit"] = time.monotonic() - killed
                            break
                        await trio.sleep(0.01)
            await trio.sleep(0.5)
            done.set()

    trio.run(scenario)
    print(f"\nprimary killed -> first commit in the new view: {timing['first_commit']:.3f} s")
    assert timing["first_commit"] <= 2 * TIMEOUT_MS / 1000
    trio.run(wait_same_height, genesis, [1, 2, 3], 20.0)
    net.start("n1")  # back from kill -9: it rejoins the new view and catches up
    committed += trio.run(submit, genesis, keys[2], 100, "c")
    trio.run(wait_same_height, genesis, [0, 1, 2, 3], 30.0)
    views = trio.run(statuses, genesis, [0, 1, 2, 3])
    assert len({s["view"] for s in views.values()}) == 1
    check_ledgers(net, genesis, committed)


def test_a_stopped_primary_comes_back_into_the_new_view_without_divergence(
    net: LocalNetwork,
) -> None:
    setup = load_client_setup(net.directory)
    genesis, keys = setup.genesis, setup.keys()
    committed = trio.run(submit, genesis, keys[0], 100, "a")
    net.procs["n1"].send_signal(signal.SIGSTOP)
    try:
        committed += trio.run(submit, genesis, keys[1], 300, "b")
        time.sleep(2 * TIMEOUT_MS / 1000)  # stopped for well over the view-change timeout
        others = trio.run(statuses, genesis, [1, 2, 3])
        assert all(s["view"] >= 1 for s in others.values())
    finally:
        net.procs["n1"].send_signal(signal.SIGCONT)
    committed += trio.run(submit, genesis, keys[2], 200, "c")
    trio.run(wait_same_height, genesis, [0, 1, 2, 3], 30.0)
    views = trio.run(statuses, genesis, [0, 1, 2, 3])
    assert len({s["view"] for s in views.values()}) == 1, views
    assert all(s["core"]["view_active"] for s in views.values())
    check_ledgers(net, genesis, committed)


def test_a_member_down_for_thousands_of_transactions_catches_up_after_restart(
    tmp_path: Path,
) -> None:
    # Small batches and window: thousands of transactions are hundreds of blocks, many windows.
    net = make_network(tmp_path, batch_txs_max=16, checkpoint_interval=8, window=16)
    net.start()
    try:
        caught_up(net)
    finally:
        net.stop()


def caught_up(net: LocalNetwork) -> None:
    setup = load_client_setup(net.directory)
    genesis, keys = setup.genesis, setup.keys()
    trio.run(wait_until_up, genesis, 30.0)
    net.kill("n4", signal.SIGKILL)

    async def load() -> list[bytes]:
        out: list[bytes] = []

        async def one(key: KeyPair, tag: str) -> None:
            out.extend(await submit(genesis, key, 1_500, tag))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, keys[0], "a")
            nursery.start_soon(one, keys[1], "b")
        return out

    committed = trio.run(load)
    assert len(committed) == 3_000
    lead = trio.run(statuses, genesis, [0])[0]["height"]
    assert lead > 4 * genesis.params.window  # far beyond what retransmission could bring
    net.start("n4")
    trio.run(wait_until_up, genesis, 30.0)
    trio.run(wait_same_height, genesis, [0, 1, 2, 3], 60.0)
    n4 = trio.run(statuses, genesis, [3])[3]
    assert n4["core"]["transferred_blocks"] >= lead - genesis.params.window
    check_ledgers(net, genesis, committed)


@pytest.mark.parametrize("mode", ["silent-primary", "equivocating-primary"])
def test_a_byzantine_primary_does_not_stop_the_other_three(tmp_path: Path, mode: str) -> None:
    network = make_network(tmp_path)
    genesis = load_client_setup(network.directory).genesis
    keys = load_client_setup(network.directory).keys()
    try:
        network.start("n1", faults=("--byzantine", mode))
        for name in ("n2", "n3", "n4"):
            network.start(name)
        trio.run(wait_until_up, genesis, 30.0)
        committed = trio.run(submit, genesis, keys[0], 300, "a")
        assert len(committed) == 300
        honest = trio.run(statuses, genesis, [1, 2, 3])
        assert all(s["view"] >= 1 for s in honest.values())  # n1 was replaced
        trio.run(wait_same_height, genesis, [1, 2, 3], 20.0)
        shown = cli("status", "--net", str(network.directory))
        assert shown.returncode == 0, shown.stderr
        if mode == "equivocating-primary":
            # n2 and n4 got both signed PRE-PREPAREs: kept as evidence, shown by status.
            assert "evidence held by n2: primary n1 of view 0" in shown.stdout, shown.stdout
            assert "conflicting_preprepare" in shown.stdout
    finally:
        network.stop()
    chains = [block_hashes(home, genesis) for home in network.homes[1:]]
    assert chains[0] == chains[1] == chains[2]
    for home in network.homes[1:]:
        result = cli("ledger", "verify", "--home", str(home))
        assert result.returncode == 0, result.stderr + result.stdout


def test_a_member_whose_state_rots_while_it_runs_sets_its_store_aside_and_refetches(
    tmp_path: Path,
) -> None:
    """A value in n4's state goes wrong in memory while it runs (the test's --rot-file): it
    executes a read of that key to another result than the others, so its block hash at the
    next checkpoint is not the one a quorum certifies. It must stop voting, set its store
    aside (kept, renamed) and start again from an empty store, re-fetching the ledger from
    peers: back to the same chain as the others, with nothing lost."""
    network = make_network(tmp_path, checkpoint_interval=4)
    setup = load_client_setup(network.directory)
    genesis, keys = setup.genesis, setup.keys()
    rot = tmp_path / "rot"
    data = network.homes[3] / "data"
    try:
        network.start("n4", faults=("--rot-file", str(rot)))
        for name in ("n1", "n2", "n3"):
            network.start(name)
        trio.run(wait_until_up, genesis, 30.0)
        committed = trio.run(submit, genesis, keys[0], 20, "a")
        assert len(committed) == 20
        staged = tmp_path / "rot.tmp"
        staged.write_text("a/0")
        staged.rename(rot)  # (whole, never half written)
        deadline = time.monotonic() + 10
        while rot.exists():
            assert time.monotonic() < deadline, "n4 never read the rot file"
            time.sleep(0.05)

        async def read_the_rotten_key() -> None:
            async with ConsortiumClient(genesis, keys[1]) as client:
                tx = client.make_tx([Get(b"a/0")])
                (outcome,) = await client.submit_and_wait([tx], timeout_s=30.0)
                assert outcome.status == "committed", outcome
                assert outcome.receipt is not None and outcome.receipt.results == (b"v",)

        trio.run(read_the_rotten_key)
        # More batches, to a checkpoint past the read, and on while n4 re-fetches.
        committed += trio.run(submit, genesis, keys[2], 100, "b")
        deadline = time.monotonic() + 30
        while not list(data.glob("ledger.diverged-*.sqlite")):
            assert time.monotonic() < deadline, "n4 never set its store aside"
            time.sleep(0.1)
        committed += trio.run(submit, genesis, keys[0], 40, "c")
        trio.run(wait_same_height, genesis, [0, 1, 2, 3], 30.0)
        n4 = trio.run(statuses, genesis, [3])[3]
        assert n4["core"]["diverged"] is None, n4["core"]["diverged"]
    finally:
        network.stop()
    assert len(list(data.glob("ledger.diverged-*.sqlite"))) == 1  # kept, once
    check_ledgers(network, genesis, committed)


def restore_backup(home: Path, backup: Path) -> None:
    """docs/operations.md, Restoring, steps 2-3: the data directory moved away, an empty one
    made, the (audited) backup copied in as the ledger file."""
    audit = cli(
        "ledger", "verify", "--db", str(backup), "--genesis", str(home / "config" / "genesis.json")
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr
    shutil.move(home / "data", home / "data.broken")
    (home / "data").mkdir()
    shutil.copy(backup, home / "data" / "ledger.sqlite")


def test_a_primary_restored_from_a_backup_two_blocks_old_proposes_nothing_in_its_old_view(
    net: LocalNetwork,
) -> None:
    setup = load_client_setup(net.directory)
    genesis, keys = setup.genesis, setup.keys()
    home = net.homes[0]
    # A network's first start after `init` is not held up: no member recovers, and the marks
    # `init` left in the new data directories are gone once the ledgers exist.
    first = trio.run(statuses, genesis, [0, 1, 2, 3])
    assert all(s["core"]["recovering"] is None and s["ready"] for s in first.values()), first
    assert not [h for h in net.homes if (h / "data" / NEW_MARK).exists()]
    committed = trio.run(submit, genesis, keys[0], 20, "a")
    backup = net.directory / "n1-backup.sqlite"
    made = cli("node", "backup", "--home", str(home), "--to", str(backup))
    assert made.returncode == 0, made.stdout + made.stderr
    backed = int(re.search(r"height (\d+)", made.stdout).group(1))  # type: ignore[union-attr]
    for round_ in range(2):  # two more blocks, at least: each round waits for its commits
        committed += trio.run(submit, genesis, keys[0], 10, f"b{round_}")
    before = trio.run(statuses, genesis, [0, 1, 2, 3])
    assert before[0]["height"] >= backed + 2 and before[0]["view"] == 0  # n1 is primary
    net.kill("n1", signal.SIGTERM)
    restore_backup(home, backup)
    checked = cli("node", "check", "--home", str(home), "--timeout", "1")
    assert "note it starts in recovery from a restored backup" in checked.stdout, checked.stdout
    net.start("n1")

    async def recovering() -> dict[str, Any]:
        # Until n1 has its floor (the others' views, reported to it): asked while they are all
        # still in view 0, it is 1, the view the others change to next. (Had they changed
        # views before answering, n1 would wait for their following view change: under load
        # the answers can come late, so the test waits for them before giving work.)
        with trio.fail_after(20):
            while True:
                n1 = (await statuses(genesis, [0])).get(0)
                if n1 is not None and (n1["core"]["recovering"] or {}).get("floor") is not None:
                    return n1
                await trio.sleep(0.1)

    n1 = trio.run(recovering)
    assert n1["core"]["recovering"]["floor"] == 1, n1["core"]["recovering"]
    assert any(
        r.startswith("recovering from a restored backup: ") for r in n1["not_progressing_because"]
    ), n1["not_progressing_because"]
    # Clients go on: the others replace the silent n1 by a view change, and n1 follows them.
    committed += trio.run(submit, genesis, keys[1], 100, "c")
    others = trio.run(statuses, genesis, [1, 2, 3])
    assert all(s["view"] >= 1 for s in others.values())
    for s in others.values():
        # n1 signed nothing that contradicts what it sent before its backup was restored.
        assert s["rejected"].get("conflicts_committed", 0) == 0, s["rejected"]
        assert s["rejected"].get("conflicting_preprepare", 0) == 0, s["rejected"]
        assert s["evidence"] == []

    async def recovered() -> dict[str, Any]:
        with trio.fail_after(30):
            while True:
                n1 = (await statuses(genesis, [0])).get(0)
                if n1 is not None and n1["core"]["recovering"] is None:
                    return n1
                await trio.sleep(0.2)

    n1 = trio.run(recovered)
    assert n1["view"] >= 1 and n1["core"]["view_active"]
    # (today's start proposed again at a seq it had proposed: the others held the first
    # PRE-PREPARE as evidence, or n1 had fetched that block and refused its own proposal)
    assert n1["rejected"].get("conflicts_committed", 0) == 0, n1["rejected"]
    trio.run(wait_same_height, genesis, [0, 1, 2, 3], 30.0)
    # It takes part again: with n3 down, nothing commits without n1's votes.
    net.kill("n3", signal.SIGTERM)
    committed += trio.run(submit, genesis, keys[2], 50, "d")
    net.start("n3")
    trio.run(wait_until_up, genesis, 30.0)
    trio.run(wait_same_height, genesis, [0, 1, 2, 3], 30.0)
    check_ledgers(net, genesis, committed)


def test_a_backup_an_hour_ahead_keeps_up_accepts_submissions_and_says_its_clock_is_off(
    tmp_path: Path,
) -> None:
    """n4's clock is an hour ahead (the test entry point's --clock-offset-file): it used to refuse
    every submission as expired, so it never checked a client signature before the batch that
    carried it, and fell behind under load."""
    network = make_network(tmp_path)
    setup = load_client_setup(network.directory)
    genesis, keys = setup.genesis, setup.keys()
    (network.homes[3] / "clock").write_text("3600000")
    try:
        for home in network.homes:
            network.start(home.name, faults=("--clock-offset-file", str(home / "clock")))
        trio.run(wait_until_up, genesis, 30.0)
        committed = trio.run(submit, genesis, keys[0], 300, "a")
        assert len(committed) == 300
        trio.run(wait_same_height, genesis, [0, 1, 2, 3], 20.0)
        n4 = trio.run(statuses, genesis, [3])[3]
        metrics = n4["metrics"]
        assert metrics["rejected_at_submit"].get("expired", 0) == 0, metrics["rejected_at_submit"]
        assert metrics["signature_cache_hits"] > 0  # checked at submit, before the batches
        assert n4["rejected"].get("timestamp_skew", 0) > 0  # its PREPAREs are withheld
        assert n4["clock"]["disagrees"] and 3_599_000 < n4["clock"]["offset_ms"] < 3_601_000
        assert any(
            r.startswith("clock: this member's clock is 3,6")
            and "ahead of the batches a quorum committed" in r
            for r in n4["not_progressing_because"]
        ), n4["not_progressing_because"]
        others = trio.run(statuses, genesis, [0, 1, 2])
        assert not any(s["clock"]["disagrees"] for s in others.values())
    finally:
        network.stop()
    check_ledgers(network, genesis, committed)


def test_an_edited_state_table_is_refused_at_start_and_refetched_from_the_others(
    net: LocalNetwork,
) -> None:
    """Issue 15: an edited value in kv passed `node start` and the member forked silently."""
    import sqlite3

    setup = load_client_setup(net.directory)
    genesis, keys = setup.genesis, setup.keys()
    committed = trio.run(submit, genesis, keys[0], 60, "a")
    assert len(committed) == 60
    trio.run(wait_same_height, genesis, [0, 1, 2, 3], 30.0)
    # n1, the primary of view 0: the others stay in view 0 while it is down (no requests), so
    # from lost state it learns the floor 1 and follows their view change once clients go on.
    net.kill("n1", signal.SIGTERM)
    home = net.homes[0]
    db = sqlite3.connect(home / "data" / "ledger.sqlite")
    db.execute("UPDATE kv SET value = ? WHERE key = ?", (b"forged", b"a/7"))
    db.commit()
    db.close()
    refused = cli("node", "start", "--home", str(home), timeout=30)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    message = refused.stderr.strip()
    assert "\n" not in message and "Traceback" not in message, message
    assert "the state table (kv) does not match its digest: edited or damaged" in message
    assert f"consortium node refetch --home {home}`" in message
    moved = cli("node", "refetch", "--home", str(home))
    assert moved.returncode == 0, moved.stdout + moved.stderr
    aside = list((home / "data").glob("ledger.damaged-*.sqlite"))
    assert len(aside) == 1 and not (home / "data" / "ledger.sqlite").exists()
    net.start("n1")

    async def n1_status(done: str) -> dict[str, Any]:
        with trio.fail_after(30):
            while True:
                n1 = (await statuses(genesis, [0])).get(0)
                recovering = None if n1 is None else n1["core"]["recovering"]
                if n1 is not None and (
                    (recovering or {}).get("floor") is not None
                    if done == "floor"
                    else recovering is None and n1["ready"]
                ):
                    return n1
                await trio.sleep(0.2)

    assert trio.run(n1_status, "floor")["core"]["recovering"]["floor"] == 1
    committed += trio.run(submit, genesis, keys[1], 60, "b")
    n1 = trio.run(n1_status, "ready")
    assert n1["view"] >= 1 and n1["core"]["view_active"]
    trio.run(wait_same_height, genesis, [0, 1, 2, 3], 60.0)
    check_ledgers(net, genesis, committed)  # same block hashes everywhere; all verify
