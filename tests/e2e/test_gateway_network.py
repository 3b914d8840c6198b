"""The HTTP/JSON gateway on real member processes over loopback (docs/gateway.md): a 4-member
pbft network written by `init --gateway`, the Python gateway client deciding by f+1 distinct
members' signatures, its receipt document checked offline, a tampered document and a forged
bundle refused, and a Server-Sent Events follow read block by block.

pbft n = 4, f = 1: a receipt needs 2 distinct member signatures.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from consortium.cli.network import LocalNetwork, init_network, load_client_setup
from consortium.client.gateway import Gateway, GatewayClient, load_gateways
from consortium.crypto.codec import unpack
from consortium.crypto.keys import KeyPair
from consortium.crypto.signing import Domain, Ed25519Signer, Ed25519Verifier
from consortium.ledger.block import BlockHeader, Receipt
from consortium.ledger.certificates import SignedVote, block_signature_body
from consortium.ledger.genesis import Genesis, Params
from consortium.ledger.tx import Put, Transaction
from consortium.protocol.receipts import ReceiptFormatError, loads, verify_receipt
from consortium.protocol.verify import Bundle, FollowedBlock, verify_bundle, verify_followed
from tests.e2e.procs import running

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    directory = tmp_path_factory.mktemp("gateways") / "net"
    init_network(
        directory, members=4, clients=1, gateway=True, params=Params(request_timeout_ms=2000)
    )
    with running(directory) as net:
        yield net


def setup(network: LocalNetwork) -> tuple[Genesis, list[Gateway], KeyPair]:
    client = load_client_setup(network.directory)
    return client.genesis, load_gateways(network.directory / "gateways.json"), client.key(1)


def signed(genesis: Genesis, key: KeyPair, name: bytes) -> Transaction:
    expiry = int(time.time() * 1000) + 60_000
    return Transaction.create(key, genesis.chain_id, os.urandom(16), expiry, [Put(name, b"v")])


def flip(text: str, at: int) -> str:
    return text[:at] + ("0" if text[at] != "0" else "1") + text[at + 1 :]


def test_f_plus_1_receipts_through_the_gateways_verify_offline_and_tampering_is_refused(
    network: LocalNetwork,
) -> None:
    genesis, gateways, key = setup(network)
    assert [g.member for g in gateways] == ["n1", "n2", "n3", "n4"]
    tx = signed(genesis, key, b"through-http")
    outcome = GatewayClient(genesis, gateways).submit(tx, timeout_s=20)
    assert outcome.status == "committed", outcome.reason
    assert outcome.confirmations >= genesis.f + 1 == 2
    proof = outcome.proof
    assert proof is not None and proof.receipt.tx_id == tx.id
    assert len(set(proof.signers())) >= 2  # distinct members
    document = outcome.receipt_document(genesis)
    assert verify_receipt(loads(document), genesis) is None

    doc = json.loads(document)
    # One byte of a block signature changed: the document reads, and does not verify.
    signatures = [dict(s) for s in doc["block_signatures"]]
    signatures[0]["signature"] = flip(signatures[0]["signature"], 10)
    problem = verify_receipt(loads(json.dumps({**doc, "block_signatures": signatures})), genesis)
    assert problem is not None and "signature" in problem
    # One byte of the header changed: refused (its hash is no longer the one claimed).
    tampered = json.dumps({**doc, "header": flip(doc["header"], len(doc["header"]) - 70)})
    with pytest.raises(ReceiptFormatError):
        loads(tampered)


class _Forger(BaseHTTPRequestHandler):
    """A gateway that answers every submit and receipt with one forged bundle."""

    forged: str = ""

    def _answer(self, doc: Any) -> None:
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        result = {"tx_id": "", "status": "committed", "detail": "", "receipt": self.forged}
        self._answer({"results": [result]})

    def do_GET(self) -> None:
        self._answer({"tx_id": "", "height": 1, "receipt": self.forged})

    def log_message(self, *args: Any) -> None:
        pass


def test_a_bundle_signed_by_a_key_that_is_no_members_is_refused(network: LocalNetwork) -> None:
    genesis, gateways, key = setup(network)
    tx = signed(genesis, key, b"to-forge")
    outcome = GatewayClient(genesis, gateways[:2]).submit(tx, timeout_s=20)
    assert outcome.status == "committed" and outcome.proof is not None
    real = Bundle(
        outcome.proof.receipt,
        outcome.proof.proof,
        outcome.proof.tree_size,
        outcome.proof.header,
        outcome.proof.signatures[0],
    )
    stranger = KeyPair.generate()
    forged_votes = []
    for signer in (0, 1):  # claiming to be n1, then n2
        body = block_signature_body(real.header.height, real.header.hash, signer)
        sig = Ed25519Signer(stranger).sign(Domain.BLOCK, genesis.chain_id, body)
        forged_votes.append(SignedVote(body, sig))
    forged = [replace(real, signature=v) for v in forged_votes]
    assert all(
        "bad block signature" in (verify_bundle(b, genesis, Ed25519Verifier()) or "")
        for b in forged
    )

    servers = []
    for bundle in forged:
        handler = type("Forger", (_Forger,), {"forged": base64.b64encode(bundle.encode()).decode()})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    try:
        # (configured as n1's and n2's gateways: a client lists each member once)
        liars = [
            Gateway(f"n{i + 1}", f"http://127.0.0.1:{s.server_address[1]}")
            for i, s in enumerate(servers)
        ]
        client = GatewayClient(genesis, liars)
        outcome = client.submit(tx, timeout_s=2)
        assert outcome.status == "pending" and outcome.confirmations == 0
        assert set(client.refused) == {"n1", "n2"}
        assert all("bad block signature" in why for why in client.refused.values())
        # With n3's and n4's honest gateways: decided by them alone, the forgeries counted
        # for no one.
        client = GatewayClient(genesis, [*liars, *gateways[2:]])
        outcome = client.submit(tx, timeout_s=20)
        assert outcome.status == "committed" and outcome.proof is not None
        assert not set(outcome.proof.signatures) & set(forged_votes)
        assert verify_receipt(loads(outcome.receipt_document(genesis)), genesis) is None
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def test_a_server_sent_events_follow_reads_verified_blocks(network: LocalNetwork) -> None:
    genesis, gateways, key = setup(network)
    client = GatewayClient(genesis, gateways)
    for i in range(2):
        assert client.submit(signed(genesis, key, b"sse%d" % i), timeout_s=20).status == "committed"
    url = gateways[1].url.removeprefix("http://")
    host, port = url.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/v1/follow?from=1", headers={"Accept": "text/event-stream"})
        reply = conn.getresponse()
        assert reply.status == 200 and reply.getheader("Content-Type") == "text/event-stream"
        heights = []
        event: dict[str, str] = {}
        while len(heights) < 2:
            line = reply.readline().decode().rstrip("\n")
            if line:
                if not line.startswith(":"):
                    name, _, value = line.partition(": ")
                    event[name] = value
                continue
            if event.get("event") == "block":
                data = json.loads(event["data"])
                header, receipts, signature = unpack(base64.b64decode(data["block"]))
                block = FollowedBlock(
                    1,
                    BlockHeader.from_array(header),
                    tuple(Receipt.from_array(r) for r in receipts),
                    SignedVote.from_array(signature),
                )
                assert verify_followed(block, genesis, Ed25519Verifier(), 1) is None  # n2's
                assert block.header.height == data["height"] == int(event["id"])
                heights.append(data["height"])
            event = {}
        assert heights == [1, 2]
    finally:
        conn.close()
