"""Admitting and revoking a client on real member processes, the way operators do it: a key
made with `client keygen`, a proposal, each member signing its own copy, a submit, and the
change taking effect at the first checkpoint after its block."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from consortium.cli.demo import heights, wait_for_leader, wait_same_height, wait_until_up
from consortium.cli.network import LocalNetwork, init_network, load_client_setup
from consortium.client import ConsortiumClient, TxOutcome
from consortium.crypto.keys import KeyPair
from consortium.ledger.genesis import Genesis, Mode, Params
from consortium.ledger.tx import Put
from tests.e2e.procs import cli
from tests.e2e.test_network import block_hashes

pytestmark = pytest.mark.e2e

K = 4  # checkpoint interval: changes take effect within a few blocks


def start(tmp_path: Path, mode: Mode) -> LocalNetwork:
    directory = tmp_path / "net"
    init_network(
        directory,
        members=4 if mode == "pbft" else 3,
        clients=1,
        mode=mode,
        params=Params(checkpoint_interval=K, window=2 * K, request_timeout_ms=2000),
    )
    net = LocalNetwork(directory)
    net.start()
    genesis = load_client_setup(directory).genesis
    trio.run(wait_until_up, genesis, 30.0)
    if mode == "raft":
        trio.run(wait_for_leader, genesis, 30.0)
    return net


@pytest.fixture(params=["pbft", "raft"])
def network(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalNetwork]:
    net = start(tmp_path, request.param)
    try:
        yield net
    finally:
        net.stop()


def submit(genesis: Genesis, keys: KeyPair, value: bytes, timeout_s: float = 15.0) -> TxOutcome:
    async def main() -> TxOutcome:
        async with ConsortiumClient(genesis, keys) as c:
            await c.wait_connected(timeout_s=5.0)
            (outcome,) = await c.submit_and_wait([c.make_tx([Put(b"k", value)])], timeout_s)
            return outcome

    return trio.run(main)


def reach(genesis: Genesis, keys: KeyPair, height: int) -> None:
    """Commit transactions of an admitted client until every member is at `height` or above."""
    members = list(range(genesis.n))
    while min(trio.run(heights, genesis, members).values()) < height:
        outcome = submit(genesis, keys, b"filler")
        assert outcome.status == "committed", outcome
    trio.run(wait_same_height, genesis, members, 20.0)


def ok(result: object) -> str:
    assert result.returncode == 0, result.stdout + result.stderr  # type: ignore[attr-defined]
    return str(result.stdout)  # type: ignore[attr-defined]


def change(net: LocalNetwork, kind: str, key_file: Path, signers: list[str], out: Path) -> None:
    """Propose, then each member signs its own copy (as on separate machines)."""
    d = net.directory
    ok(
        cli(
            "client",
            f"propose-{kind}",
            "--key",
            str(key_file),
            "--label",
            "acme",
            "--net",
            str(d),
            "--out",
            str(out),
        )
    )
    for name in signers:
        signed = ok(
            cli(
                "client",
                "sign",
                str(out),
                "--home",
                str(d / "nodes" / name),
                "--out",
                str(out.with_suffix(f".{name}.json")),
                "--yes",
            )
        )
        assert f"{name} approved: {kind} client" in signed


def test_a_client_is_admitted_then_revoked_by_a_quorum_of_members(
    network: LocalNetwork, tmp_path: Path
) -> None:
    d = network.directory
    setup = load_client_setup(d)
    genesis = setup.genesis
    (c1,) = setup.keys()
    quorum = genesis.quorum
    names = [m.name for m in genesis.members]

    key_file = tmp_path / "acme.pem"
    public = ok(cli("client", "keygen", "--out", str(key_file))).splitlines()[0]
    acme = KeyPair.load(key_file)
    assert public == acme.public.hex()

    # Unknown: refused at submit by every member, never final (a member may lag behind the
    # block admitting the key): pending, saying the members report unknown_client.
    refused = submit(genesis, acme, b"too early", timeout_s=2)
    assert refused.status == "pending" and "members report unknown_client" in refused.reason, (
        refused
    )

    # Approved by one member fewer than the quorum: refused before anything is submitted.
    admit = tmp_path / "admit.json"
    change(network, "admit", Path(f"{key_file}.pub"), names[:quorum], admit)
    short = cli(
        "client",
        "submit",
        *[str(admit.with_suffix(f".{n}.json")) for n in names[: quorum - 1]],
        "--net",
        str(d),
    )
    signatures = "1 member signature" if quorum == 2 else f"{quorum - 1} member signatures"
    assert short.returncode == 1 and f"{signatures}, {quorum} needed" in (short.stderr), (
        short.stdout + short.stderr
    )

    # A quorum of copies, merged and submitted by a member that is not a client.
    copies = [str(admit.with_suffix(f".{n}.json")) for n in names[:quorum]]
    result = cli("client", "submit", *copies, "--home", str(d / "nodes" / names[-1]), "--json")
    doc = json.loads(ok(result))
    effective = doc["effective_height"]
    assert doc["receipt"] == {"status": "ok", "reason": ""}
    assert effective % K == 0 and doc["height"] < effective <= doc["height"] + K

    listed = json.loads(ok(cli("client", "list", "--net", str(d), "--json")))
    assert [p["public_key"] for p in listed["pending"]] == [acme.public.hex()]
    assert listed["pending"][0]["effective_height"] == effective
    assert acme.public.hex() not in [c["public_key"] for c in listed["admitted"]]

    reach(genesis, c1, effective)
    accepted = submit(genesis, acme, b"admitted")
    assert accepted.status == "committed" and accepted.receipt is not None, accepted
    assert accepted.receipt.status == "ok" and accepted.height is not None
    assert accepted.height >= effective

    listed = json.loads(ok(cli("client", "list", "--net", str(d), "--json")))
    assert {"public_key": acme.public.hex(), "label": "acme"} in listed["admitted"]
    assert listed["pending"] == [] and listed["agreed_by"] == genesis.n

    # Revoked by another quorum of members, submitted by the genesis client.
    revoke = tmp_path / "revoke.json"
    change(network, "revoke", key_file, names[-quorum:], revoke)
    copies = [str(revoke.with_suffix(f".{n}.json")) for n in names[-quorum:]]
    text = ok(cli("client", "submit", *copies, "--net", str(d), "--client", "1"))
    assert "accepted at height" in text and "takes effect at height" in text
    revoked_at = int(text.rsplit("takes effect at height ", 1)[1].split()[0])
    # Until the effective height the client is still served...
    before = submit(genesis, acme, b"still admitted")
    assert before.status == "committed" and before.receipt is not None, before
    assert (before.receipt.status == "ok") == (
        before.height is not None and before.height < revoked_at
    )
    reach(genesis, c1, revoked_at)
    # ...and from it refused again.
    again = submit(genesis, acme, b"revoked", timeout_s=2)
    assert again.status == "pending" and "members report unknown_client" in again.reason, again
    listed = json.loads(ok(cli("client", "list", "--net", str(d), "--json")))
    assert acme.public.hex() not in [c["public_key"] for c in listed["admitted"]]
    assert listed["pending"] == []

    height = trio.run(wait_same_height, genesis, list(range(genesis.n)), 20.0)
    network.stop()
    chains = [block_hashes(home, genesis) for home in network.homes]
    assert len(chains[0]) == height + 1
    assert all(chain == chains[0] for chain in chains[1:]), "ledgers differ"
    for home in network.homes:
        assert "OK" in ok(cli("ledger", "verify", "--home", str(home)))
