"""Receipts and following blocks on real member processes over loopback TCP, driven the way
a user would: the CLI as separate processes, and the client library.

pbft n = 4, f = 1: a receipt document carries >= 2 distinct member signatures.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from contextlib import aclosing
from pathlib import Path

import pytest
import trio

from consortium.cli.demo import wait_until_up
from consortium.cli.network import LocalNetwork, init_network, load_client_setup
from consortium.client import ConsortiumClient
from consortium.client.follow import CommittedBlock
from consortium.ledger.store import BlockStore
from consortium.ledger.tx import Put
from tests.e2e.procs import cli

pytestmark = pytest.mark.e2e


@pytest.fixture
def raft(tmp_path: Path) -> Iterator[LocalNetwork]:
    directory = tmp_path / "rnet"
    init_network(directory, members=3, clients=1, mode="raft")
    net = LocalNetwork(directory)
    net.start()
    try:
        trio.run(wait_until_up, load_client_setup(directory).genesis, 30.0)
        yield net
    finally:
        net.stop()


def flip_hex_digit(text: str, at: int) -> str:
    return text[:at] + ("0" if text[at] != "0" else "1") + text[at + 1 :]


def test_a_receipt_written_at_submit_verifies_offline_and_a_changed_byte_is_refused(
    network: LocalNetwork, tmp_path: Path
) -> None:
    net = str(network.directory)
    genesis_file = str(network.directory / "genesis.json")
    receipt = tmp_path / "receipt.json"
    submitted = cli("tx", "submit", "put", "greeting", "hello", "--net", net,
                    "--receipt-out", str(receipt))  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr + submitted.stdout
    assert "receipt written to" in submitted.stdout
    doc = json.loads(receipt.read_text())
    tx_id = doc["tx_id"]
    assert f"submitted {tx_id}" in submitted.stderr

    ok = cli("tx", "verify-receipt", str(receipt), "--genesis", genesis_file)
    assert ok.returncode == 0, ok.stderr + ok.stdout
    assert "VALID" in ok.stdout and tx_id in ok.stdout
    assert f"height {doc['height']}" in ok.stdout
    assert "2 needed" in ok.stdout

    # One hex digit of the header changed: the signatures no longer cover it.
    tampered = tmp_path / "tampered.json"
    at = len(doc["header"]) - 70  # inside the receipts root, the consensus metadata follows
    tampered.write_text(json.dumps({**doc, "header": flip_hex_digit(doc["header"], at)}))
    bad = cli("tx", "verify-receipt", str(tampered), "--genesis", genesis_file)
    assert bad.returncode == 1
    assert "INVALID" in bad.stderr

    # The receipt's own bytes changed (its claims re-pointed to match): not in the block.
    receipt_bytes = doc["receipt"]
    forged = flip_hex_digit(receipt_bytes, len(receipt_bytes) - 1)  # its index
    assert forged != receipt_bytes
    altered = tmp_path / "altered.json"
    altered.write_text(json.dumps({**doc, "receipt": forged, "index": doc["index"] ^ 1}))
    bad = cli("tx", "verify-receipt", str(altered), "--genesis", genesis_file)
    assert bad.returncode == 1
    assert "INVALID" in bad.stderr and ("Merkle" in bad.stderr or "outside" in bad.stderr)

    # Only f signatures.
    short = tmp_path / "short.json"
    short.write_text(json.dumps({**doc, "block_signatures": doc["block_signatures"][:1]}))
    bad = cli("tx", "verify-receipt", str(short), "--genesis", genesis_file, "--json")
    assert bad.returncode == 1
    assert "1 distinct block signatures, 2 needed" in json.loads(bad.stdout)["problem"]

    # Another network's genesis.
    other = tmp_path / "other"
    init_network(other, members=4, clients=1)
    bad = cli("tx", "verify-receipt", str(receipt), "--genesis", str(other / "genesis.json"))
    assert bad.returncode == 1 and "another network" in bad.stderr

    # Later, from the members: status, and the receipt fetched again.
    status = cli("tx", "status", tx_id, "--net", net)
    assert status.returncode == 0, status.stderr + status.stdout
    assert "committed" in status.stdout
    again = tmp_path / "again.json"
    fetched = cli("tx", "receipt", tx_id, "--out", str(again), "--net", net)
    assert fetched.returncode == 0, fetched.stderr + fetched.stdout
    again.write_text("kept")  # an existing file is kept, unless --force
    refused = cli("tx", "receipt", tx_id, "--out", str(again), "--net", net)
    assert refused.returncode == 2 and "exists; pass --force" in refused.stderr
    assert again.read_text() == "kept"
    forced = cli("tx", "receipt", tx_id, "--out", str(again), "--net", net, "--force")
    assert forced.returncode == 0 and json.loads(again.read_text()), forced.stderr
    ok = cli("tx", "verify-receipt", str(again), "--genesis", genesis_file)
    assert ok.returncode == 0 and tx_id in ok.stdout

    # An id nobody has: unknown to every member (not "pending"), exit 3, and what to do.
    unknown = cli("tx", "status", "ab" * 32, "--net", net)
    assert unknown.returncode == 3
    assert "status    unknown (unknown to all 4 members" in unknown.stdout, unknown.stdout
    assert "pending: may still commit" not in unknown.stdout
    assert f"consortium tx status {'ab' * 32} --net {net} --wait 10" in unknown.stdout


def test_following_while_submitting_yields_the_stored_ledger_in_order(
    network: LocalNetwork,
) -> None:
    setup = load_client_setup(network.directory)
    genesis = setup.genesis
    keys = setup.keys()
    submitted: set[bytes] = set()
    followed: list[CommittedBlock] = []

    async def scenario() -> None:
        with trio.fail_after(60):
            await run()

    async def run() -> None:
        async with (
            ConsortiumClient(genesis, keys[0]) as submitter,
            ConsortiumClient(genesis) as follower,
        ):

            async def follow() -> None:
                seen: set[bytes] = set()
                async with aclosing(follower.follow(1)) as blocks:
                    async for block in blocks:
                        followed.append(block)
                        seen.update(block.tx_ids)
                        if len(submitted) == 120 and submitted <= seen:
                            return

            async with trio.open_nursery() as nursery:
                nursery.start_soon(follow)
                for round_ in range(6):
                    txs = [
                        submitter.make_tx([Put(b"f%d-%d" % (round_, i), b"v")]) for i in range(20)
                    ]
                    submitted.update(t.id for t in txs)
                    outcomes = await submitter.submit_and_wait(txs, timeout_s=20)
                    assert {o.status for o in outcomes} == {"committed"}
                    await trio.sleep(0.1)

    trio.run(scenario)
    heights = [b.height for b in followed]
    assert heights == list(range(1, len(followed) + 1))
    for earlier, later in itertools.pairwise(followed):
        assert later.header.prev_hash == earlier.block_hash
    assert all(len(b.signers) >= 2 for b in followed)

    # What the CLI prints from the same network, while it still runs.
    printed = cli("ledger", "follow", "--net", str(network.directory), "--from", "1",
                  "--count", str(len(followed)), "--json")  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    lines = [json.loads(line) for line in printed.stdout.splitlines()]
    assert [line["block_hash"] for line in lines] == [b.block_hash.hex() for b in followed]

    network.stop()
    for home in network.homes:
        store = BlockStore.open(home / "data" / "ledger.sqlite", genesis)
        try:
            stored = [store.block_hash_at(h) for h in heights]
        finally:
            store.close()
        assert stored == [b.block_hash for b in followed], f"{home.name} differs"


def test_raft_receipts_carry_one_member_signature_and_verify_offline(
    raft: LocalNetwork, tmp_path: Path
) -> None:
    net = str(raft.directory)
    receipt = tmp_path / "receipt.json"
    submitted = cli("tx", "submit", "put", "k", "v", "--net", net, "--receipt-out", str(receipt))
    assert submitted.returncode == 0, submitted.stderr + submitted.stdout
    ok = cli("tx", "verify-receipt", str(receipt), "--net", net)
    assert ok.returncode == 0, ok.stderr + ok.stdout
    assert "1 needed" in ok.stdout
    doc = json.loads(receipt.read_text())
    empty = tmp_path / "unsigned.json"
    empty.write_text(json.dumps({**doc, "block_signatures": []}))
    bad = cli("tx", "verify-receipt", str(empty), "--net", net)
    assert bad.returncode == 1 and "0 distinct block signatures, 1 needed" in bad.stderr
    printed = cli("ledger", "follow", "--net", net, "--from", "1", "--count", "1")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.split()[0] == "1"
