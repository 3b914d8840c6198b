"""Members on separate "hosts": each in its own Linux network namespace with its own address,
set up the way operators on separate machines would (keygen on each, genesis assembled from the
member files, `node start --home` in each namespace), then a partition made inside the
namespaces by taking a member's link down.

Topology, created by the test and removed by its fixture's finalizer even on failure:

    cs<pid>n1  eth0 10.77.0.1/24 --veth-- vn1 \\
    cs<pid>n2  eth0 10.77.0.2/24 --veth-- vn2  +- br0 10.77.0.254/24 in cs<pid>hub (clients)
    ...                                       /

No namespace has a default route or any link to the root namespace, so nothing the members or
clients send can leave the namespaces. Needs root (CI runs as root): without it, the tests fail
saying so, never skip.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from consortium.ledger.genesis import Genesis
from consortium.ledger.store import BlockStore

pytestmark = pytest.mark.e2e

IP = shutil.which("ip") or "/usr/sbin/ip"
SUBNET = "10.77.0"
HUB_ADDRESS = f"{SUBNET}.254"
REPO = Path(__file__).resolve().parents[2]
CONSORTIUM = [sys.executable, "-m", "consortium"]
CLIENT_SCRIPT = str(Path(__file__).with_name("netns_client.py"))


class Namespaces:
    """A hub namespace with a bridge, and one namespace per member joined to it by a veth."""

    def __init__(self, members: int) -> None:
        tag = f"cs{os.getpid()}"
        self.hub = f"{tag}hub"
        self.members = [f"{tag}n{i + 1}" for i in range(members)]
        self.created: list[str] = []

    def ip(self, *args: str) -> None:
        result = subprocess.run(
            [IP, *args], capture_output=True, text=True, timeout=10, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")

    def create(self) -> None:
        self.ip("netns", "add", self.hub)
        self.created.append(self.hub)
        self.ip("-n", self.hub, "link", "set", "lo", "up")
        self.ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        self.ip("-n", self.hub, "addr", "add", f"{HUB_ADDRESS}/24", "dev", "br0")
        self.ip("-n", self.hub, "link", "set", "br0", "up")
        for i, ns in enumerate(self.members, start=1):
            self.ip("netns", "add", ns)
            self.created.append(ns)
            self.ip("-n", ns, "link", "set", "lo", "up")
            # Both ends are created inside namespaces: nothing appears in the root namespace.
            self.ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"vn{i}")
            self.ip("-n", ns, "link", "set", f"vn{i}", "netns", self.hub)
            self.ip("-n", ns, "addr", "add", f"{SUBNET}.{i}/24", "dev", "eth0")
            self.ip("-n", ns, "link", "set", "eth0", "up")
            self.ip("-n", self.hub, "link", "set", f"vn{i}", "master", "br0")
            self.ip("-n", self.hub, "link", "set", f"vn{i}", "up")

    def routes(self, ns: str) -> str:
        return subprocess.run(
            [IP, "-n", ns, "route", "show"], capture_output=True, text=True, timeout=10, check=True
        ).stdout

    def cut(self, member: int) -> None:
        """Take member `member`'s (1-based) link down at the hub: it reaches nobody."""
        self.ip("-n", self.hub, "link", "set", f"vn{member}", "down")

    def heal(self, member: int) -> None:
        self.ip("-n", self.hub, "link", "set", f"vn{member}", "up")

    def destroy(self) -> None:
        for ns in reversed(self.created):
            subprocess.run([IP, "netns", "del", ns], capture_output=True, timeout=10, check=False)
        self.created.clear()


class Cluster:
    """Member processes, each started in its namespace the way an operator starts one."""

    def __init__(self, namespaces: Namespaces, root: Path) -> None:
        self.ns = namespaces
        self.root = root
        self.net = root / "net"
        self.homes: list[Path] = []
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def setup(self, mode: str, members: int) -> Genesis:
        """keygen on each "host", genesis from the member files, genesis copied to each home."""
        for i in range(1, members + 1):
            home = self.root / f"home-n{i}"
            run(
                "keygen",
                "--home",
                str(home),
                "--name",
                f"n{i}",
                "--peer",
                f"{SUBNET}.{i}:7101",
                "--client",
                f"{SUBNET}.{i}:7201",
            )
            self.homes.append(home)
        args = ["genesis", "--dir", str(self.net), "--mode", mode, "--clients", "2"]
        for home in self.homes:
            args += ["--member", str(home / "config" / "member.json")]
        run(*args)
        for home in self.homes:
            shutil.copy(self.net / "genesis.json", home / "config" / "genesis.json")
        return Genesis.load(self.net / "genesis.json")

    def start(self, member: int) -> None:
        home = self.homes[member - 1]
        log = (home / "node.log").open("ab")
        self.procs[member] = subprocess.Popen(
            [
                IP,
                "netns",
                "exec",
                self.ns.members[member - 1],
                *CONSORTIUM,
                "node",
                "start",
                "--home",
                str(home),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def in_hub(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [IP, "netns", "exec", self.ns.hub, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
            check=False,
        )

    def status(self) -> list[dict[str, object]]:
        result = self.in_hub(*CONSORTIUM, "status", "--net", str(self.net), "--json")
        doc = json.loads(result.stdout)  # {"network": ..., "members": [one per member]}
        assert isinstance(doc, dict) and isinstance(doc["members"], list), doc
        assert doc["network"]["n"] == len(doc["members"])
        members: list[dict[str, object]] = doc["members"]
        return members

    def heights(self) -> dict[str, int | None]:
        return {
            str(s.get("member")): None if s.get("error") else int(str(s["height"]))
            for s in self.status()
        }

    def load(self, count: int) -> tuple[int, int]:
        result = self.in_hub(sys.executable, CLIENT_SCRIPT, str(self.net), str(count))
        assert result.returncode == 0, result.stderr[-2000:]
        doc = json.loads(result.stdout.strip().splitlines()[-1])
        return int(doc["committed"]), int(doc["failed"])

    def logs(self) -> str:
        return "\n".join(
            f"--- {h.name}/node.log (last lines)\n"
            + "\n".join((h / "node.log").read_text(errors="replace").splitlines()[-15:])
            for h in self.homes
            if (h / "node.log").exists()
        )


def run(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*CONSORTIUM, *args], capture_output=True, text=True, timeout=60, cwd=REPO, check=False
    )
    assert result.returncode == 0, f"consortium {' '.join(args)}: {result.stdout}{result.stderr}"
    return result


def wait_for(what: str, check: object, timeout_s: float, cluster: Cluster) -> object:
    """Poll `check()` until it returns a truthy value; fail naming `what` with the logs."""
    assert callable(check)
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    pytest.fail(f"{what} within {timeout_s:.0f} s; last: {last}\n{cluster.logs()}")


@pytest.fixture
def namespaces_factory() -> Iterator[list[Namespaces]]:
    made: list[Namespaces] = []
    try:
        yield made
    finally:
        for ns in made:
            ns.destroy()


def make_namespaces(made: list[Namespaces], members: int) -> Namespaces:
    ns = Namespaces(members)
    made.append(ns)  # registered before creation: a half-made topology is removed too
    try:
        ns.create()
    except (RuntimeError, OSError) as exc:
        pytest.fail(
            f"cannot create network namespaces ({exc}). These tests need root and iproute2 "
            f"({IP}); CI runs them as root"
        )
    for name in ns.members:
        assert "default" not in ns.routes(name), f"{name} has a default route"
    assert "default" not in ns.routes(ns.hub)
    return ns


@pytest.fixture
def cluster_factory(tmp_path: Path, namespaces_factory: list[Namespaces]) -> Iterator[object]:
    clusters: list[Cluster] = []

    def make(members: int) -> Cluster:
        ns = make_namespaces(namespaces_factory, members)
        cluster = Cluster(ns, tmp_path / f"c{len(clusters)}")
        cluster.root.mkdir()
        clusters.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in clusters:
            cluster.stop()  # before the namespaces go (the fixture above is torn down after)


def ledger_hashes(home: Path, genesis: Genesis) -> list[bytes]:
    store = BlockStore.open(home / "data" / "ledger.sqlite", genesis)
    try:
        hashes = [store.block_hash_at(h) for h in range(store.height + 1)]
    finally:
        store.close()
    return [h for h in hashes if h is not None]


def finish_and_audit(cluster: Cluster, genesis: Genesis) -> None:
    cluster.stop()
    chains = [ledger_hashes(home, genesis) for home in cluster.homes]
    for name, chain in zip(cluster.homes, chains, strict=True):
        assert chain == chains[0], f"{name.name}'s ledger differs from {cluster.homes[0].name}'s"
    for home in cluster.homes:
        result = subprocess.run(
            [*CONSORTIUM, "ledger", "verify", "--home", str(home)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_pbft_members_in_separate_namespaces_survive_a_partition_and_catch_up(
    cluster_factory: object,
) -> None:
    assert callable(cluster_factory)
    cluster: Cluster = cluster_factory(4)
    genesis = cluster.setup("pbft", 4)
    for member in range(1, 5):
        cluster.start(member)
    wait_for(
        "all 4 members answering status from the hub",
        lambda: all(h is not None for h in cluster.heights().values()),
        45,
        cluster,
    )

    # A client in the hub namespace: one transaction from the CLI, then load.
    put = cluster.in_hub(
        *CONSORTIUM, "tx", "submit", "put", "where", "hub", "--net", str(cluster.net)
    )
    assert put.returncode == 0 and "status    committed" in put.stdout, put.stdout + put.stderr
    assert cluster.load(200) == (200, 0)
    check = subprocess.run(
        [
            IP,
            "netns",
            "exec",
            cluster.ns.members[0],
            *CONSORTIUM,
            "node",
            "check",
            "--home",
            str(cluster.homes[0]),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "3 of 3 peers reachable" in check.stdout

    # Partition: n4's link goes down. The three others (a quorum) keep committing.
    cluster.ns.cut(4)
    before = cluster.heights()
    assert before["n4"] is None, "n4 still answers the hub with its link down"
    assert cluster.load(300) == (300, 0)
    during = cluster.heights()
    assert during["n4"] is None
    majority = [during[n] for n in ("n1", "n2", "n3")]
    assert all(h is not None for h in majority)
    assert min(h for h in majority if h is not None) > max(
        h for n, h in before.items() if n != "n4" and h is not None
    )
    status = cluster.in_hub(*CONSORTIUM, "status", "--net", str(cluster.net))
    assert "3 of 4 up, tolerates 0 more" in status.stdout, status.stdout

    # n1 is backed up while it runs (a consistent copy, verified).
    backup = cluster.root / "n1-backup.sqlite"
    run("node", "backup", "--home", str(cluster.homes[0]), "--to", str(backup))

    # Heal: n4 catches up to the others, and everyone keeps committing.
    cluster.ns.heal(4)
    assert cluster.load(50) == (50, 0)

    def caught_up() -> dict[str, int | None] | None:
        hs = cluster.heights()
        return hs if None not in hs.values() and len(set(hs.values())) == 1 else None

    final = wait_for("n4 caught up with n1..n3 after the link came back", caught_up, 90, cluster)
    assert isinstance(final, dict)
    finish_and_audit(cluster, genesis)
    audit = run(
        "ledger", "verify", "--db", str(backup), "--genesis", str(cluster.net / "genesis.json")
    )
    assert "OK" in audit.stdout


def test_raft_members_in_separate_namespaces_replace_a_cut_off_leader(
    cluster_factory: object,
) -> None:
    assert callable(cluster_factory)
    cluster: Cluster = cluster_factory(3)
    genesis = cluster.setup("raft", 3)
    for member in range(1, 4):
        cluster.start(member)

    def leader() -> str | None:
        leaders = [str(s["member"]) for s in cluster.status() if s.get("role") == "leader"]
        return leaders[0] if len(leaders) == 1 else None

    first = wait_for("a raft leader elected", leader, 45, cluster)
    assert isinstance(first, str)
    assert cluster.load(150) == (150, 0)

    # Cut the leader off: the other two elect a new one and keep committing.
    cut = int(first.removeprefix("n"))
    cluster.ns.cut(cut)

    def new_leader() -> str | None:
        found = leader()
        return found if found not in (None, first) else None

    second = wait_for("a new leader among the two connected members", new_leader, 45, cluster)
    before = cluster.heights()
    assert cluster.load(150) == (150, 0)
    after = cluster.heights()
    assert after[first] is None
    others = [n for n in after if n != first]
    assert all((after[n] or 0) > (before[n] or 0) for n in others), (before, after)

    cluster.ns.heal(cut)

    def caught_up() -> bool:
        hs = cluster.heights()
        return None not in hs.values() and len(set(hs.values())) == 1

    wait_for(f"{first} caught up under leader {second}", caught_up, 60, cluster)
    finish_and_audit(cluster, genesis)
