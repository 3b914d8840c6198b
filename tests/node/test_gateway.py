"""The HTTP/JSON gateway (node/gateway, docs/gateway.md): every endpoint's happy path on a real
member in-process, bad input on every endpoint, the limits (slow clients, connection caps,
SSE subscribers, a subscriber that never reads), TLS, the OpenAPI document against the server,
and the Python gateway client (client/gateway.py).

Two kinds of member:
- `gateway_member`: a real one-member raft network in-process (it commits alone), its gateway
  on 127.0.0.1 port 0; real time, short deadlines where one is waited for.
- `fake_gateway`: the member's real ClientService over a FakeNode and a stored chain
  (tests/node/fakes.py), the gateway served over in-memory streams on trio's autojump clock:
  deadlines of seconds are exact and take no time.
After each abuse the member still serves a normal gateway request (and, on the real member,
a native client port request).
"""

from __future__ import annotations

import base64
import json
import os
import re
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import trio
import trio.testing
from typer.testing import CliRunner

from consortium.cli.main import app
from consortium.cli.network import init_network, load_client_setup
from consortium.client.gateway import (
    Gateway,
    GatewayClient,
    decode_bundle,
    load_gateways,
)
from consortium.crypto.codec import pack, unpack
from consortium.crypto.keys import KeyPair
from consortium.crypto.merkle import MerkleTree
from consortium.crypto.signing import Ed25519Verifier
from consortium.ledger.block import BlockHeader, Receipt
from consortium.ledger.certificates import SignedVote
from consortium.ledger.tx import Put, Transaction
from consortium.node.config import ConfigError, config_path, load_config, load_identity
from consortium.node.gateway import GatewayServer
from consortium.node.gateway import server as gateway_module
from consortium.node.gateway.http11 import ERRORS, HttpError, Limits
from consortium.node.gateway.server import ROUTES, SSE_CREDIT, openapi_document
from consortium.node.runtime import Node, make_node
from consortium.node.service import ClientService
from consortium.protocol import limits as protocol_limits
from consortium.protocol.framing import FrameReader, encode_frames
from consortium.protocol.messages import encode_block_receipts
from consortium.protocol.receipts import loads, verify_receipt
from consortium.protocol.tls import make_context
from consortium.protocol.verify import (
    FollowedBlock,
    ReadReply,
    verify_bundle,
    verify_followed,
    verify_read,
)
from tests.ledger.chain_fixture import build_chain
from tests.node.fakes import GENESIS, FakeNode, max_gap_while, open_store
from tests.protocol.fixtures import BLOCK, block_vote, good_bundle

HOST = "127.0.0.1"
VERIFIER = Ed25519Verifier()
DOC = json.loads(openapi_document())


# --- a raw HTTP/1.1 client -------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def doc(self) -> Any:
        return json.loads(self.body)

    @property
    def code(self) -> str:
        return str(self.doc["error"]["code"])


def request(
    method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test"]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def submit_body(*txs: Transaction | bytes) -> bytes:
    raw = [pack(t.to_array()) if isinstance(t, Transaction) else t for t in txs]
    return json.dumps({"transactions": [base64.b64encode(r).decode() for r in raw]}).encode()


JSON = {"Content-Type": "application/json"}


def post(body: bytes | None, headers: dict[str, str] | None = None, query: str = "") -> bytes:
    return request("POST", f"/v1/transactions{query}", body, JSON if headers is None else headers)


def get(path: str, headers: dict[str, str] | None = None) -> bytes:
    return request("GET", path, None, headers)


class Http:
    """One connection: raw requests out, whole responses in (Content-Length, or to EOF)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    @classmethod
    async def open(cls, port: int) -> Http:
        return cls(await trio.open_tcp_stream(HOST, port))

    async def _more(self) -> bool:
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        self.buffer += data
        return bool(data)

    async def head(self) -> tuple[int, dict[str, str]] | None:
        while b"\r\n\r\n" not in self.buffer:
            if not await self._more():
                return None
        end = self.buffer.index(b"\r\n\r\n")
        lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        del self.buffer[: end + 4]
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        return int(lines[0].split(" ")[1]), headers

    async def response(self) -> Reply | None:
        head = await self.head()
        if head is None:
            return None
        status, headers = head
        if "content-length" in headers:
            length = int(headers["content-length"])
            while len(self.buffer) < length:
                if not await self._more():
                    break
            body = bytes(self.buffer[:length])
            del self.buffer[:length]
        else:
            while await self._more():
                pass
            body = bytes(self.buffer)
            self.buffer.clear()
        return Reply(status, headers, body)

    async def ask(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        await self.stream.send_all(request(method, path, body, headers))
        reply = await self.response()
        assert reply is not None, f"no answer to {method} {path}"
        return reply

    async def closed(self) -> bool:
        """Whether the server closed the connection (EOF, once what was sent is read)."""
        while await self._more():
            pass
        return True

    async def aclose(self) -> None:
        await self.stream.aclose()


async def ask(
    port: int, method: str, path: str, body: bytes | None = None, **headers: str
) -> Reply:
    http = await Http.open(port)
    try:
        return await http.ask(
            method, path, body, {k.replace("_", "-"): v for k, v in headers.items()}
        )
    finally:
        await http.aclose()


# --- the OpenAPI document's schemas ---------------------------------------------------------


def check_schema(path: str, method: str, reply: Reply) -> None:
    """`reply` against the document's schema for that path, method and status."""
    responses = DOC["paths"][path][method.lower()]["responses"]
    assert str(reply.status) in responses, (path, method, reply.status)
    content = responses[str(reply.status)]["content"]
    schema = content["application/json"]["schema"]
    jsonschema.Draft202012Validator({**schema, "components": DOC["components"]}).validate(reply.doc)


def check_error(reply: Reply, status: int, code: str) -> None:
    assert (reply.status, reply.code) == (status, code), reply
    schema = {"$ref": "#/components/schemas/Error", "components": DOC["components"]}
    jsonschema.Draft202012Validator(schema).validate(reply.doc)
    assert reply.doc["error"]["message"]


# --- a real member ------------------------------------------------------------------------------


@asynccontextmanager
async def gateway_member(tmp_path: Path, *, tls: bool = False) -> AsyncIterator[Node]:
    """One-member raft (it commits alone) with its gateway on 127.0.0.1."""
    directory = tmp_path / "net"
    init_network(directory, members=1, clients=2, mode="raft", gateway=True, tls=tls)
    identity = load_identity(directory / "nodes" / "n1")
    node = make_node(
        identity.config,
        identity.genesis,
        identity.keys,
        peer_listen=(HOST, 0),
        client_listen=(HOST, 0),
        gateway_listen=(HOST, 0),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        yield node
        nursery.cancel_scope.cancel()


def client_key(node: Node, number: int = 1) -> KeyPair:
    return load_client_setup(node.config.home.parent.parent).key(number)


def signed_tx(node: Node, key: bytes = b"k", value: bytes = b"v", number: int = 1) -> Transaction:
    expiry = int(time.time() * 1000) + 60_000
    return Transaction.create(
        client_key(node, number), node.chain_id, os.urandom(16), expiry, [Put(key, value)]
    )


async def native_status(node: Node) -> str:
    """The member's status over its native client port (a frame, not HTTP)."""
    stream = await trio.open_tcp_stream(HOST, node.client_port)
    async with stream:
        await stream.send_all(encode_frames([pack(["status", 7])]))
        frame = await FrameReader(stream, 1 << 24).read()
    assert frame is not None
    req_id, kind, payload = unpack(frame)
    assert (req_id, kind) == (7, "ok")
    return str(json.loads(payload)["member"])


async def still_serves(node: Node) -> None:
    """The member answers a normal gateway request and a native port request."""
    assert node.gateway is not None
    reply = await ask(node.gateway_port, "GET", "/v1/status")
    assert reply.status == 200 and reply.doc["member"] == "n1"
    assert await native_status(node) == "n1"


async def test_every_endpoint_on_one_keep_alive_connection_agrees_with_the_document(
    tmp_path: Path,
) -> None:
    with trio.fail_after(30):
        async with gateway_member(tmp_path) as node:
            assert node.gateway is not None
            genesis = node.genesis
            http = await Http.open(node.gateway_port)
            first = signed_tx(node, b"greeting", b"hello")
            reply = await http.ask(
                "POST", "/v1/transactions?wait_ms=5000", submit_body(first), JSON
            )
            check_schema("/v1/transactions", "POST", reply)
            [result] = reply.doc["results"]
            assert result["tx_id"] == first.id.hex() and result["status"] == "committed"
            bundle = decode_bundle(result["receipt"])
            assert verify_bundle(bundle, genesis, VERIFIER) is None
            assert bundle.receipt.tx_id == first.id and bundle.receipt.status == "ok"

            # Without wait_ms: accepted now, its receipt asked for afterwards (and waited for).
            second = signed_tx(node, b"second", b"2")
            reply = await http.ask("POST", "/v1/transactions", submit_body(second), JSON)
            assert reply.doc["results"][0]["status"] in ("accepted", "committed")
            path = f"/v1/transactions/{second.id.hex()}/receipt?wait_ms=5000"
            reply = await http.ask("GET", path)
            check_schema("/v1/transactions/{tx_id}/receipt", "GET", reply)
            assert reply.doc["tx_id"] == second.id.hex()
            later = decode_bundle(reply.doc["receipt"])
            assert verify_bundle(later, genesis, VERIFIER) is None
            assert reply.doc["height"] == later.receipt.height >= bundle.receipt.height

            # A committed id resubmitted: its first receipt, the same bytes.
            reply = await http.ask("POST", "/v1/transactions", submit_body(first), JSON)
            assert reply.doc["results"][0]["receipt"] == result["receipt"]
            reply = await http.ask("GET", f"/v1/transactions/{first.id.hex()}/receipt")
            assert reply.doc["receipt"] == result["receipt"]

            key = base64.urlsafe_b64encode(b"greeting").rstrip(b"=").decode()
            reply = await http.ask("GET", f"/v1/kv/{key}")
            check_schema("/v1/kv/{key}", "GET", reply)
            read = ReadReply.from_array(unpack(base64.b64decode(reply.doc["reply"])))
            assert verify_read(read, genesis, VERIFIER, key=b"greeting", signer=0) is None
            assert base64.b64decode(reply.doc["value"]) == b"hello" == read.value
            reply = await http.ask("GET", "/v1/kv/bm9uZQ")  # "none": never written
            assert reply.status == 200 and reply.doc["value"] is None

            reply = await http.ask("GET", f"/v1/blocks/{bundle.receipt.height}")
            check_schema("/v1/blocks/{height}", "GET", reply)
            header, txs, receipts, _, signatures = unpack(base64.b64decode(reply.doc["block"]))
            assert BlockHeader.from_array(header).hash == bundle.header.hash
            assert first.id in [Receipt.from_array(r).tx_id for r in receipts]
            assert signatures and txs
            check_error(await http.ask("GET", "/v1/blocks/100000"), 404, "not_found")

            reply = await http.ask("GET", "/v1/status")
            check_schema("/v1/status", "GET", reply)
            assert reply.doc["member"] == "n1" and reply.doc["gateway"]["url"] == node.gateway.url

            reply = await http.ask("GET", "/openapi.json")
            assert reply.status == 200 and reply.body == openapi_document()

            await http.aclose()
            assert node.gateway.counters["connections"] == 1  # all of it on one connection
            assert node.gateway.counters["request_submit"] == 3
            node.status_view.exposition.prepare()
            metrics = node.status_view.exposition.text()
            assert 'consortium_gateway_events_total{event="request_submit"' in metrics
            assert 'event="error_not_found"' in metrics


async def test_a_follow_streams_verified_blocks_as_server_sent_events(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with gateway_member(tmp_path) as node:
            assert node.gateway is not None
            for i in range(2):
                body = submit_body(signed_tx(node, b"k%d" % i))
                reply = await ask(
                    node.gateway_port,
                    "POST",
                    "/v1/transactions?wait_ms=5000",
                    body,
                    content_type="application/json",
                )
                assert reply.doc["results"][0]["status"] == "committed"
            http = await Http.open(node.gateway_port)
            await http.stream.send_all(
                request("GET", "/v1/follow?from=1", None, {"Accept": "text/event-stream"})
            )
            status, headers = await http.head() or (0, {})
            assert status == 200 and headers["content-type"] == "text/event-stream"
            events = []
            while len(events) < 2:
                while b"\n\n" not in http.buffer:
                    assert await http._more()
                end = http.buffer.index(b"\n\n")
                text = bytes(http.buffer[:end]).decode()
                del http.buffer[: end + 2]
                if text.startswith(":"):
                    continue
                fields = dict(line.split(": ", 1) for line in text.split("\n"))
                events.append(fields)
            schema = {"$ref": "#/components/schemas/BlockEvent", "components": DOC["components"]}
            for height, event in enumerate(events, 1):
                assert event["event"] == "block" and event["id"] == str(height)
                data = json.loads(event["data"])
                jsonschema.Draft202012Validator(schema).validate(data)
                header, receipts, signature = unpack(base64.b64decode(data["block"]))
                block = FollowedBlock(
                    1,
                    BlockHeader.from_array(header),
                    tuple(Receipt.from_array(r) for r in receipts),
                    SignedVote.from_array(signature),
                )
                assert block.header.height == data["height"] == height
                assert verify_followed(block, node.genesis, VERIFIER, 0) is None
            assert node.gateway.sse_open == 1
            await http.aclose()
            while node.gateway.sse_open:  # noqa: ASYNC110
                await trio.sleep(0.01)
            assert not any(node.service._follows.values())  # unfollowed, disconnected
            await still_serves(node)


async def test_the_python_gateway_client_decides_and_its_receipt_verifies_offline(
    tmp_path: Path,
) -> None:
    with trio.fail_after(30):
        async with gateway_member(tmp_path) as node:
            assert node.gateway is not None
            directory = node.config.home.parent.parent
            gateways = load_gateways(directory / "gateways.json", node.genesis)
            assert [g.member for g in gateways] == ["n1"]
            # (the in-process member listens on a port of its own, not the file's)
            client = GatewayClient(node.genesis, [Gateway("n1", node.gateway.url)])
            tx = signed_tx(node, b"doc", b"1")
            outcome = await trio.to_thread.run_sync(lambda: client.submit(tx, timeout_s=20))
            assert outcome.status == "committed", outcome.reason
            assert outcome.confirmations == 1  # raft: one member's signature is enough
            proof = loads(outcome.receipt_document(node.genesis))
            assert verify_receipt(proof, node.genesis) is None
            assert proof.receipt.tx_id == tx.id


async def test_bad_input_on_every_endpoint_gets_a_clear_error_and_changes_nothing(
    tmp_path: Path,
) -> None:
    with trio.fail_after(60):
        async with gateway_member(tmp_path) as node:
            assert node.gateway is not None
            port = node.gateway_port
            body_max = node.gateway.limits.body_bytes_max
            height = node.store.height
            tx = signed_tx(node)
            forged = Transaction.from_array(
                [tx.to_array()[0], bytes(64)], node.genesis.params
            )  # (a signature of zeros)
            huge_key = base64.urlsafe_b64encode(b"k" * (protocol_limits.KEY_BYTES_MAX + 1))
            receipt = f"/v1/transactions/{tx.id.hex()}/receipt"
            too_many = {"transactions": [""] * (protocol_limits.TXS_PER_REQUEST_MAX + 1)}
            chunked = (
                b"POST /v1/transactions HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                b"Content-Type: application/json\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            )
            bad, json_, missing, not_allowed = (
                "bad_request",
                "bad_json",
                "not_found",
                "method_not_allowed",
            )
            cases: list[tuple[bytes, int, str]] = [
                # POST /v1/transactions
                (
                    post(None, {"Content-Length": str(body_max + 1), **JSON}),
                    413,
                    "payload_too_large",
                ),
                (post(b"{}", {"Content-Type": "text/plain"}), 415, "unsupported_media_type"),
                (post(b"x", {}), 415, "unsupported_media_type"),
                (post(b"{"), 400, json_),
                (post(b"\xff\xfe"), 400, json_),
                (post(b"[" * 100_000), 400, json_),
                (post(b"[]"), 400, bad),
                (post(b'{"transactions": "x"}'), 400, bad),
                (post(b'{"transactions": [], "x": 1}'), 400, bad),
                (post(b'{"transactions": [1]}'), 400, bad),
                (post(b'{"transactions": ["!!!"]}'), 400, bad),
                (post(b'{"transactions": ["AA="]}'), 400, bad),
                # a lone surrogate (valid JSON, no UTF-8 encoding): was a 500 and a traceback
                (post(b'{"transactions": ["\\ud800"]}'), 400, bad),
                (post('{"transactions": ["\u00e9AAA"]}'.encode()), 400, bad),
                (post(submit_body(b"\xcc\x01")), 400, bad),  # non-canonical msgpack
                (post(json.dumps(too_many).encode()), 400, bad),
                (post(submit_body(tx), query="?wait_ms=abc"), 400, bad),
                (post(submit_body(tx), query="?wait_ms=30001"), 400, bad),
                (post(submit_body(tx), query="?wait_ms=-1"), 400, bad),
                (post(submit_body(tx), query="?wait=5"), 400, bad),
                (chunked, 400, bad),
                # GET /v1/transactions/{tx_id}/receipt
                (get("/v1/transactions/xyz/receipt"), 400, bad),
                (get(receipt.replace(tx.id.hex(), tx.id.hex().upper())), 400, bad),
                (get(receipt.replace(tx.id.hex(), tx.id.hex()[:-1])), 400, bad),
                (get(f"{receipt}?wait_ms=1.5"), 400, bad),
                (get(receipt), 404, missing),
                (get(f"{receipt}?wait_ms=50"), 404, missing),
                # GET /v1/kv/{key}
                (get("/v1/kv/a+b"), 400, bad),
                (get("/v1/kv/abcde"), 400, bad),
                (get("/v1/kv/YQ=="), 400, bad),
                (get(f"/v1/kv/{huge_key.rstrip(b'=').decode()}"), 400, bad),
                (get("/v1/kv/"), 404, missing),
                # GET /v1/blocks/{height}
                (get("/v1/blocks/-1"), 400, bad),
                (get("/v1/blocks/1.5"), 400, bad),
                (get("/v1/blocks/abc"), 400, bad),
                (get("/v1/blocks/99999999999999999999"), 400, bad),
                (get("/v1/blocks/9223372036854775808"), 400, bad),
                (get("/v1/blocks/1?x=1"), 400, bad),
                # GET /v1/follow
                (get("/v1/follow"), 400, bad),
                (get("/v1/follow?from=x"), 400, bad),
                (get("/v1/follow", {"Last-Event-ID": "nope"}), 400, bad),
                # GET /v1/status, /openapi.json
                (request("GET", "/v1/status", b"body"), 400, bad),
                (get("/v1/status?verbose=1"), 400, bad),
                (get("/openapi.json?x"), 400, bad),
                # paths, methods, heads
                (get("/v2/anything"), 404, missing),
                (get("/"), 404, missing),
                (request("DELETE", "/v1/status"), 405, not_allowed),
                (get("/v1/transactions"), 405, not_allowed),
                (request("POST", "/v1/status", b"{}", JSON), 405, not_allowed),
                (get("/v1/status", {"X-Big": "x" * 9000}), 431, "header_too_large"),
                (b"NOT HTTP AT ALL\r\n\r\n", 400, bad),
                (b"GET /v1/status HTTP/2.0\r\nHost: t\r\n\r\n", 400, bad),
                (b"GET /v1/status HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n", 400, bad),
            ]
            for raw, status, code in cases:
                http = await Http.open(port)
                await http.stream.send_all(raw)
                reply = await http.response()
                assert reply is not None, raw[:80]
                check_error(reply, status, code)
                if status == 405:
                    assert reply.headers["allow"] in ("GET", "POST")
                await http.aclose()
            # Malformed transactions are the native handler's to judge: answered per
            # transaction, as the native port answers them.
            reply = await ask(
                port,
                "POST",
                "/v1/transactions",
                submit_body(pack([1, 2]), forged),
                content_type="application/json",
            )
            assert [r["status"] for r in reply.doc["results"]] == ["rejected", "rejected"]
            assert reply.doc["results"][0]["detail"].startswith("malformed")
            assert reply.doc["results"][1]["detail"] == "bad_signature"
            check_schema("/v1/transactions", "POST", reply)
            assert node.store.height == height  # nothing of it reached the ledger
            assert node.gateway.budget.held == 0 and node.gateway.sse_open == 0
            counters = node.gateway.counters
            assert counters["error_bad_request"] >= 30 and counters["error_payload_too_large"] == 1
            await still_serves(node)


async def test_an_oversize_body_is_refused_before_it_is_read_and_bodies_share_a_budget(
    tmp_path: Path,
) -> None:
    with trio.fail_after(20):
        async with gateway_member(tmp_path) as node:
            gateway = node.gateway
            assert gateway is not None
            http = await Http.open(node.gateway_port)
            length = gateway.limits.body_bytes_max + 1
            head = request(
                "POST", "/v1/transactions", None, {"Content-Length": str(length), **JSON}
            )
            # Some of the body follows at once (as a client that does not wait sends it): the
            # refusal is read all the same (the gateway lingers, it does not reset).
            await http.stream.send_all(head + b"x" * (256 << 10))
            reply = await http.response()
            assert reply is not None
            check_error(reply, 413, "payload_too_large")
            assert reply.headers["connection"] == "close" and await http.closed()
            await http.aclose()
            # Bodies held at once: one that does not fit what others hold waits for nothing.
            gateway.budget.held = gateway.budget.bytes_max - 10
            body = submit_body(signed_tx(node))
            reply = await ask(
                node.gateway_port, "POST", "/v1/transactions", body, content_type="application/json"
            )
            check_error(reply, 503, "overloaded")
            assert reply.headers["retry-after"] == "1"
            gateway.budget.held = 0
            reply = await ask(
                node.gateway_port, "POST", "/v1/transactions", body, content_type="application/json"
            )
            assert reply.status == 200 and gateway.budget.held == 0
            await still_serves(node)


async def test_a_bug_in_the_handler_is_answered_500_logged_and_the_gateway_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(20):
        async with gateway_member(tmp_path) as node:
            original = node.service.handle

            async def broken(conn: Any, request: Any) -> None:
                raise RuntimeError("a bug reached by client input")

            monkeypatch.setattr(node.service, "handle", broken)
            reply = await ask(node.gateway_port, "GET", "/v1/status")
            check_error(reply, 500, "internal")
            assert "a bug" not in reply.body.decode()  # (logged, not told)
            assert any("internal error in the gateway" in r.getMessage() for r in caplog.records)
            monkeypatch.setattr(node.service, "handle", original)
            await still_serves(node)


async def test_connections_are_capped_per_source_silent_ones_evicted_first(
    tmp_path: Path,
) -> None:
    with trio.fail_after(20):
        async with gateway_member(tmp_path) as node:
            gateway = node.gateway
            assert gateway is not None
            gateway.caps.source_connections_max = 2
            silent = [await Http.open(node.gateway_port) for _ in range(2)]
            while gateway.caps.slots < 2:  # noqa: ASYNC110
                await trio.sleep(0.01)
            # A client that asks takes a silent connection's slot.
            busy = [await Http.open(node.gateway_port) for _ in range(2)]
            for http in busy:
                assert (await http.ask("GET", "/v1/status")).status == 200
            for http in silent:
                assert await http.closed()
                await http.aclose()
            assert gateway.counters["evicted_idle_first_request"] == 2
            # Every slot holds a client that asked: the next is refused, told why.
            reply = await ask(node.gateway_port, "GET", "/v1/status")
            check_error(reply, 429, "overloaded")
            assert reply.headers["retry-after"] == "1"
            assert gateway.counters["refused_too_many_from_source"] == 1
            # In all, likewise (503: the gateway, not this client, is full).
            gateway.caps.source_connections_max = 64
            gateway.caps.connections_max = 2
            check_error(await ask(node.gateway_port, "GET", "/v1/status"), 503, "overloaded")
            for http in busy:
                await http.aclose()
            while gateway.caps.slots:  # noqa: ASYNC110
                await trio.sleep(0.01)
            await still_serves(node)


async def test_one_address_counts_its_connections_over_both_ports_together(
    tmp_path: Path,
) -> None:
    """The per-source limit is one count for the client port and the gateway: an address with
    its connections open on the native port has none left on the gateway, and back."""
    with trio.fail_after(20):
        async with gateway_member(tmp_path) as node:
            gateway = node.gateway
            assert gateway is not None and node.service._server is not None
            native_caps = node.service._server.caps
            assert gateway.caps.sources is native_caps.sources
            native_caps.source_connections_max = gateway.caps.source_connections_max = 2
            natives = []
            for req_id in (1, 2):  # two native connections that asked (not evictable)
                stream = await trio.open_tcp_stream(HOST, node.client_port)
                await stream.send_all(encode_frames([pack(["status", req_id])]))
                assert await FrameReader(stream, 1 << 24).read() is not None
                natives.append(stream)
            check_error(await ask(node.gateway_port, "GET", "/v1/status"), 429, "overloaded")
            assert gateway.counters["refused_too_many_from_source"] == 1
            await natives.pop().aclose()
            while native_caps.sources[HOST] > 1:  # noqa: ASYNC110
                await trio.sleep(0.01)
            http = await Http.open(node.gateway_port)
            assert (await http.ask("GET", "/v1/status")).status == 200
            # Now the gateway holds the address's second connection: the native port refuses.
            stream = await trio.open_tcp_stream(HOST, node.client_port)
            frame = await FrameReader(stream, 1 << 24).read()
            assert frame is not None and "connections open" in unpack(frame)[2]
            for closing in (stream, *natives, http):
                await closing.aclose()


async def test_tls_handshakes_at_once_are_capped(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with gateway_member(tmp_path, tls=True) as node:
            gateway = node.gateway
            assert gateway is not None
            gateway._handshakes_max = 1
            silent = await trio.open_tcp_stream(HOST, node.gateway_port)  # holds the one
            while not gateway._handshakes:  # noqa: ASYNC110
                await trio.sleep(0.01)
            context = make_context(client_key(node), "c1", node.chain_id, server=False)

            async def status() -> int | None:
                stream = await trio.open_ssl_over_tcp_stream(
                    HOST, node.gateway_port, ssl_context=context
                )
                try:
                    await stream.send_all(get("/v1/status"))
                    reply = await Http(stream).response()
                except (trio.BrokenResourceError, OSError):
                    return None
                finally:
                    await trio.aclose_forcefully(stream)
                return None if reply is None else reply.status

            assert await status() is None  # closed before its handshake
            assert gateway.counters["refused_too_many_handshakes"] == 1
            await silent.aclose()
            while gateway._handshakes:  # noqa: ASYNC110
                await trio.sleep(0.01)
            assert await status() == 200


async def test_sse_subscribers_are_capped_and_the_others_keep_streaming(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with gateway_member(tmp_path) as node:
            gateway = node.gateway
            assert gateway is not None
            gateway.sse_streams_max = 2
            streams = []
            for _ in range(2):
                http = await Http.open(node.gateway_port)
                await http.stream.send_all(request("GET", "/v1/follow?from=1"))
                head = await http.head()
                assert head is not None and head[0] == 200
                streams.append(http)
            reply = await ask(node.gateway_port, "GET", "/v1/follow?from=1")
            check_error(reply, 503, "too_many_subscribers")
            await still_serves(node)
            body = submit_body(signed_tx(node, b"live"))
            reply = await ask(
                node.gateway_port,
                "POST",
                "/v1/transactions?wait_ms=5000",
                body,
                content_type="application/json",
            )
            assert reply.doc["results"][0]["status"] == "committed"
            for http in streams:  # both streams get the new block
                while b"event: block" not in http.buffer:
                    assert await http._more()
                assert b"id: 1\n" in http.buffer
                await http.aclose()
            while gateway.sse_open:  # noqa: ASYNC110
                await trio.sleep(0.01)
            assert gateway.counters["sse_streams"] == 2
            assert gateway.counters["error_too_many_subscribers"] == 1


async def test_https_admits_only_keys_the_client_port_admits(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with gateway_member(tmp_path, tls=True) as node:
            gateway = node.gateway
            assert gateway is not None and gateway.url.startswith("https://")
            chain_id = node.chain_id

            def get(context: ssl.SSLContext | None, scheme: str = "https") -> tuple[int, Any]:
                import http.client

                conn = (
                    http.client.HTTPSConnection(
                        HOST, node.gateway_port, timeout=10, context=context
                    )
                    if scheme == "https"
                    else http.client.HTTPConnection(HOST, node.gateway_port, timeout=10)
                )
                try:
                    conn.request("GET", "/v1/status")
                    reply = conn.getresponse()
                    return reply.status, json.loads(reply.read())
                finally:
                    conn.close()

            admitted = make_context(client_key(node), "c1", chain_id, server=False)
            status, doc = await trio.to_thread.run_sync(get, admitted)
            assert status == 200 and doc["member"] == "n1"
            stranger = make_context(KeyPair.generate(), "x", chain_id, server=False)
            status, doc = await trio.to_thread.run_sync(get, stranger)
            assert status == 403 and doc["error"]["code"] == "forbidden"
            status, doc = await trio.to_thread.run_sync(lambda: get(None, "http"))
            assert status == 400 and "HTTPS" in doc["error"]["message"]
            # A client without a certificate fails the handshake (mutual TLS).
            bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            bare.check_hostname, bare.verify_mode = False, ssl.CERT_NONE
            with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                await trio.to_thread.run_sync(get, bare)
            assert gateway.counters["tls_unknown_client"] == 1
            assert gateway.counters["tls_required"] == 1
            # And the Python client decides over HTTPS.
            client = GatewayClient(node.genesis, [Gateway("n1", gateway.url)], ssl_context=admitted)
            tx = signed_tx(node)
            outcome = await trio.to_thread.run_sync(lambda: client.submit(tx, timeout_s=20))
            assert outcome.status == "committed", outcome.reason


async def test_a_key_revoked_while_its_gateway_request_waits_is_cut_off(tmp_path: Path) -> None:
    """The member's recheck of TLS keys, when client changes take effect, covers gateway
    connections too: a request waiting (wait_ms) is answered 403 and its connection closes,
    a stream ends with its `forbidden` event, not at their next request."""
    with trio.fail_after(30):
        async with gateway_member(tmp_path, tls=True) as node:
            gateway = node.gateway
            assert gateway is not None
            key = client_key(node)
            context = make_context(key, "c1", node.chain_id, server=False)

            async def connect_tls() -> Http:
                stream = await trio.open_ssl_over_tcp_stream(
                    HOST, node.gateway_port, ssl_context=context
                )
                return Http(stream)

            waiting, following = await connect_tls(), await connect_tls()
            path = f"/v1/transactions/{'ab' * 32}/receipt?wait_ms=20000"
            await waiting.stream.send_all(get(path))
            await following.stream.send_all(get("/v1/follow?from=1"))
            head = await following.head()
            assert head is not None and head[0] == 200
            while len(gateway.connections) < 2 or not node.service.watches.count:  # noqa: ASYNC110
                await trio.sleep(0.01)
            label = node.app.admitted.pop(key.public)  # revoked, as a client change does it
            try:
                block = type("Block", (), {"height": node.genesis.params.checkpoint_interval})
                node.service._block_executed(block)  # type: ignore[arg-type]
                start = trio.current_time()
                reply = await waiting.response()
                assert trio.current_time() - start < 5  # (not the 20 s it would have waited)
                assert reply is not None
                check_error(reply, 403, "forbidden")
                assert await waiting.closed()
                while await following._more():
                    pass
                tail = bytes(following.buffer).rsplit(b"event: error\n", 1)[1]
                assert json.loads(tail.split(b"data: ", 1)[1])["error"]["code"] == "forbidden"
                assert gateway.counters["tls_revoked_disconnected"] == 2
            finally:
                node.app.admitted[key.public] = label
            for http in (waiting, following):
                await http.aclose()


# --- the document and the server ----------------------------------------------------------------


def test_the_openapi_document_and_the_server_agree_on_paths_methods_and_error_codes() -> None:
    documented = {(m.upper(), p) for p, ops in DOC["paths"].items() for m in ops}
    routed = {(r.method, r.template) for r in ROUTES}
    assert documented == routed
    codes = DOC["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]
    assert set(codes["enum"]) == set(ERRORS)
    statuses = {
        int(s) for ops in DOC["paths"].values() for op in ops.values() for s in op["responses"]
    }
    assert {s for group in ERRORS.values() for s in group} <= statuses
    doc_text = (Path(__file__).resolve().parents[2] / "docs" / "gateway.md").read_text()
    for code, group in ERRORS.items():  # the user doc names each code with its status
        assert f"`{code}` ({group[0]}" in doc_text, code
    for route in ROUTES:
        assert f"{route.method} {route.template}" in doc_text or route.template == "/v1/follow"
    jsonschema.Draft202012Validator.check_schema(DOC["components"]["schemas"]["Error"])
    assert DOC["openapi"].startswith("3.1")


def test_every_route_takes_the_parameters_the_document_gives_and_checks_them_alike() -> None:
    """One table (server.ROUTES) is what the server takes and checks, and what the document
    must say: each route's parameters by name and place, whether required, their schemas; and
    on values at every edge the server's check and the document's schema agree."""
    samples = [
        *("", "0", "1", "01", "-1", "+1", "1.5", "1e3", " 1", "0x1", "a", "0" * 20),
        *("30000", "30001", "9223372036854775806", "9223372036854775807"),
        *("9223372036854775808", "99999999999999999999"),
        *("ab" * 32, "AB" * 32, "ab" * 31, "ab" * 33, "g" * 64),
        *("Y", "YQ", "YWI", "YWJj", "YWJjZ", "YWJjZA", "a+b", "a/b", "YQ==", "YQ=", "a_-b"),
        *("x" * 5461, "x" * 5462, "x" * 5463, "x" * 5464),
    ]
    for route in ROUTES:
        op = DOC["paths"][route.template][route.method.lower()]
        documented = {(p["name"], p["in"]): p for p in op.get("parameters", [])}
        assert set(documented) == {(p.name, p.where) for p in route.params}, route.template
        in_path = set(re.findall(r"{(\w+)}", route.template))
        assert in_path == {p.name for p in route.params if p.where == "path"}, route.template
        for param in route.params:
            doc = documented[(param.name, param.where)]
            where = f"{route.template} {param.name}"
            assert doc.get("required", False) == param.required, where
            schema = {k: v for k, v in doc["schema"].items() if k != "default"}
            assert schema == param.schema(), where
            validator = jsonschema.Draft202012Validator(schema)
            for text in samples:
                try:
                    param.check(text)
                    served = True
                except HttpError:
                    served = False
                if param.maximum is not None:  # (docs/gateway.md: digits only, at most 19)
                    number = re.fullmatch(r"[0-9]{1,19}", text) is not None
                    allowed = number and validator.is_valid(int(text))
                else:
                    allowed = validator.is_valid(text)
                assert served == allowed, (where, text, served)
    # The two the document got wrong: a key of 4k+1 characters, and `from` past 2^63-1.
    kv = {p.name: p for r in ROUTES for p in r.params}["key"]
    assert not jsonschema.Draft202012Validator(kv.schema()).is_valid("YWJjZ")
    assert DOC["paths"]["/v1/follow"]["get"]["parameters"][0]["schema"]["maximum"] == 2**63 - 1


def test_the_document_ships_with_the_package() -> None:
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '"consortium.node.gateway" = ["openapi.json"]' in pyproject
    assert (
        openapi_document() == (Path(gateway_module.__file__).parent / "openapi.json").read_bytes()
    )


def test_a_receipts_push_is_split_into_per_transaction_bundles() -> None:
    tree = MerkleTree([r.encode() for r in BLOCK.receipts])
    vote = block_vote(BLOCK, 1)
    frame = encode_block_receipts(BLOCK.header, vote, tree, BLOCK.receipts)
    server = GatewayServer(_Nothing(), listen=(HOST, 0), frame_bytes_max=1 << 20)  # type: ignore[arg-type]
    wanted = {BLOCK.receipts[2].tx_id, BLOCK.receipts[4].tx_id}
    found: dict[bytes, bytes] = {}
    server._receipts([frame], wanted, found)
    assert set(found) == wanted
    assert found[BLOCK.receipts[2].tx_id] == pack(good_bundle(2, 1).to_array())
    for raw in found.values():
        bundle = decode_bundle(base64.b64encode(raw).decode())
        assert verify_bundle(bundle, GENESIS, VERIFIER) is None


class _Nothing:
    async def handle(self, conn: Any, request: Any) -> None:
        pass

    def disconnected(self, conn: Any) -> None:
        pass

    def subscribed(self, conn: Any) -> bool:
        return False

    def unwatch(self, conn: Any, tx_ids: set[bytes]) -> None:
        pass


# --- limits on the autojump clock ----------------------------------------------------------------


class StatusNode(FakeNode):
    def status_json(self) -> str:
        return json.dumps(
            {
                "member": "m0",
                "index": 0,
                "mode": "pbft",
                "chain_id": "00" * 32,
                "height": self.store.height,
            }
        )


@asynccontextmanager
async def fake_gateway(
    tmp_path: Path, **options: Any
) -> AsyncIterator[tuple[GatewayServer, ClientService, trio.Nursery]]:
    node = StatusNode(0, open_store(tmp_path, "m0"))
    node.append(build_chain(30), 0)
    service = ClientService(node)  # type: ignore[arg-type]
    server = GatewayServer(
        service, listen=(HOST, 0), frame_bytes_max=GENESIS.params.frame_bytes_max, **options
    )
    try:
        async with trio.open_nursery() as nursery:
            service._nursery = nursery
            yield server, service, nursery
            nursery.cancel_scope.cancel()
    finally:
        node.store.close()


async def released(server: GatewayServer, http: Http) -> None:
    """The client closes its end: the server's slot is free within the linger time."""
    await http.aclose()
    with trio.fail_after(gateway_module.LINGER_S + 0.1):
        while server.caps.slots:  # noqa: ASYNC110
            await trio.sleep(0.01)


def connect(
    server: GatewayServer, nursery: trio.Nursery, *, lockstep: bool = False, host: str = "10.0.0.1"
) -> Http:
    client, end = (
        trio.testing.lockstep_stream_pair() if lockstep else trio.testing.memory_stream_pair()
    )
    nursery.start_soon(server.serve_stream, end, host, 40000)
    return Http(client)  # type: ignore[arg-type]


async def test_slow_clients_get_408_and_their_slot_back(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with fake_gateway(tmp_path) as (server, _, nursery):
        limits = server.limits
        # A head trickled in: 408 once the head deadline passed, then closed.
        http = connect(server, nursery)
        await http.stream.send_all(b"GET /v1/sta")
        await trio.sleep(limits.head_timeout_s / 2)
        await http.stream.send_all(b"tus HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        reply = await http.response()
        assert reply is not None
        check_error(reply, 408, "request_timeout")
        assert trio.current_time() == pytest.approx(limits.head_timeout_s, abs=0.01)
        assert await http.closed()
        await released(server, http)
        # A body trickled in: 408 at the body deadline, counted from the end of the head: the
        # grace, and the body's length at the minimum rate...
        http = connect(server, nursery)
        start = trio.current_time()
        await http.stream.send_all(
            request("POST", "/v1/transactions", None, {"Content-Length": "100", **JSON})
            + b'{"trans'
        )
        reply = await http.response()
        assert reply is not None
        check_error(reply, 408, "request_timeout")
        expected = limits.body_grace_s + 100 / limits.body_bytes_per_s_min
        assert trio.current_time() - start == pytest.approx(expected, abs=0.01)
        assert await http.closed()
        await released(server, http)
        # ...and never more than the body deadline, however long the body.
        http = connect(server, nursery)
        start = trio.current_time()
        length = limits.body_bytes_max
        await http.stream.send_all(
            request("POST", "/v1/transactions", None, {"Content-Length": str(length), **JSON})
        )
        reply = await http.response()
        assert reply is not None
        check_error(reply, 408, "request_timeout")
        assert limits.body_grace_s + length / limits.body_bytes_per_s_min > limits.body_timeout_s
        assert trio.current_time() - start == pytest.approx(limits.body_timeout_s, abs=0.01)
        assert await http.closed()
        await released(server, http)
        assert server.budget.held == 0
        # Keep-alive: a connection idle between requests is closed without a word.
        http = connect(server, nursery)
        start = trio.current_time()
        assert (await http.ask("GET", "/v1/status")).status == 200
        assert await http.closed() and http.buffer == b""
        assert trio.current_time() - start == pytest.approx(limits.idle_timeout_s, abs=0.01)
        assert server.caps.slots == 0 and not server.connections
        # A client that sends nothing at all: 408 at the first head's deadline.
        http = connect(server, nursery)
        reply = await http.response()
        assert reply is not None and reply.status == 408
        # Expect: 100-continue (curl, before a large body): told to go on, then answered.
        http = connect(server, nursery)
        head = request("POST", "/v1/transactions", None, {**JSON, "Expect": "100-continue"})
        body = b'{"transactions": [1]}'  # (answered by the gateway: no member behind it)
        await http.stream.send_all(
            head.replace(b"\r\n\r\n", f"\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        )
        assert await http.head() == (100, {})
        await http.stream.send_all(body)
        reply = await http.response()
        assert reply is not None
        check_error(reply, 400, "bad_request")
        assert "transactions[0]" in reply.doc["error"]["message"]
        await http.aclose()
        # Pipelined requests are answered in order, one at a time.
        http = connect(server, nursery)
        await http.stream.send_all(
            request("GET", "/v1/status")
            + request("GET", "/v1/blocks/2")
            + request("GET", "/v1/nope")
        )
        replies = [await http.response() for _ in range(3)]
        assert [r.status for r in replies if r is not None] == [200, 200, 404]
        await http.aclose()


async def test_heads_without_bodies_hold_no_budget_and_a_source_holds_only_its_share(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Body bytes are charged as they arrive: connections from one address that send a head
    announcing a large body and then nothing hold no budget (they used to reserve it all,
    and every other client's POST got 503), and what one address does send is capped at its
    share of the budget."""
    mib = 1 << 20
    options = {"body_bytes_held_max": 8 * mib, "body_bytes_source_max": 2 * mib}
    async with fake_gateway(tmp_path, **options) as (server, _, nursery):
        assert server.limits.body_bytes_max == 2 * mib  # (the share caps the largest body)

        def announce(length: int) -> bytes:
            return request(
                "POST", "/v1/transactions", None, {"Content-Length": str(length), **JSON}
            )

        heads = []
        for _ in range(20):  # announced: 20 MiB, over twice the whole budget
            http = connect(server, nursery, host="10.0.0.1")
            await http.stream.send_all(announce(mib))
            heads.append(http)
        await trio.sleep(0.5)
        assert server.budget.held == 0
        body = b'{"transactions": [1]}'  # (answered by the gateway: no member behind it)
        reply = await connect(server, nursery, host="10.0.0.2").ask(
            "POST", "/v1/transactions", body, JSON
        )
        check_error(reply, 400, "bad_request")  # served, not 503
        # What an address sends counts against its share (2 MiB), and only its own: past it,
        # 429 for that address, while another's bodies go on.
        partial = connect(server, nursery, host="10.0.0.1")
        await partial.stream.send_all(announce(2 * mib) + b" " * (mib * 3 // 2))
        await trio.sleep(0.1)
        assert server.budget.by_source["10.0.0.1"] == mib * 3 // 2
        over = connect(server, nursery, host="10.0.0.1")
        await over.stream.send_all(announce(mib) + b" " * mib)
        reply = await over.response()
        assert reply is not None
        check_error(reply, 429, "overloaded")
        assert reply.headers["connection"] == "close"
        other = connect(server, nursery, host="10.0.0.2")
        await other.stream.send_all(announce(2 * mib) + b" " * mib)
        await trio.sleep(0.1)
        assert server.budget.by_source["10.0.0.2"] == mib
        # The heads with no body: 408 at the grace plus their length at the minimum rate.
        for http in heads:
            reply = await http.response()
            assert reply is not None
            check_error(reply, 408, "request_timeout")
        limits = server.limits
        assert trio.current_time() == pytest.approx(
            limits.body_grace_s + mib / limits.body_bytes_per_s_min, abs=1
        )
        for http in (partial, other, over, *heads):
            await http.aclose()
        while server.caps.slots:  # noqa: ASYNC110
            await trio.sleep(0.1)
        assert server.budget.held == 0 and not server.budget.by_source


async def test_a_client_that_does_not_read_its_100_continue_is_closed_in_time(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with fake_gateway(tmp_path) as (server, _, nursery):
        http = connect(server, nursery, lockstep=True)
        head = request(
            "POST",
            "/v1/transactions",
            None,
            {**JSON, "Expect": "100-continue", "Content-Length": "1000"},
        )
        await http.stream.send_all(head)  # and never reads
        start = trio.current_time()
        with trio.fail_after(60):
            while server.caps.slots:  # noqa: ASYNC110
                await trio.sleep(0.1)
        assert trio.current_time() - start == pytest.approx(server.limits.send_timeout_s, abs=0.2)
        assert not server.connections and server.budget.held == 0


async def test_head_is_answered_without_a_body_and_keep_alive_goes_on(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with fake_gateway(tmp_path) as (server, _, nursery):
        http = connect(server, nursery)
        await http.stream.send_all(request("HEAD", "/v1/status") + request("GET", "/v1/status"))
        head = await http.head()
        assert head is not None
        status, headers = head
        assert status == 405 and headers["allow"] == "GET" and int(headers["content-length"]) > 0
        reply = await http.response()  # the next bytes are the next response, not a body
        assert reply is not None and reply.status == 200 and reply.doc["member"] == "m0"
        await http.aclose()


async def test_a_large_body_that_is_no_submit_is_refused_without_freezing_the_member(
    tmp_path: Path,
) -> None:
    """A submit body is never parsed as JSON on the event loop past JSON_PARSE_BYTES_MAX: 22 MB
    of nested or wide JSON cost seconds of CPU and hundreds of MB there, freezing consensus.
    Bodies near the size limit are refused by a linear scan (or, shaped right, by the
    per-transaction checks, which yield), and the loop stays responsive (CPU-time probe)."""
    async with fake_gateway(tmp_path) as (server, _, nursery):
        body_max = server.limits.body_bytes_max
        head, tail = b'{"transactions": ', b"}"
        room = body_max - len(head) - len(tail)
        valid = base64.b64encode(pack([[b"b" * 100, 1, 2], b"s" * 64])).decode()
        many = (room - 10) // (len(valid) + 4)
        bodies = {
            "nested": head + b"[" * (room // 2) + b"]" * (room // 2) + tail,
            "wide": b'{"x": [' + b"1," * ((body_max - 10) // 2) + b"1]}",
            "strings": head + b"[" + b'"",' * ((room - 10) // 3) + b'""]' + tail,
            "last": json.dumps({"transactions": [valid] * many + ["!"]}).encode(),
        }
        for name, body in bodies.items():
            assert body_max - 8192 < len(body) <= body_max, name
        status = connect(server, nursery, host="10.0.0.9")
        replies: dict[str, Reply] = {}

        async def work() -> None:
            for name, body in bodies.items():
                http = connect(server, nursery)
                replies[name] = await http.ask("POST", "/v1/transactions", body, JSON)
                await http.aclose()
                assert (await status.ask("GET", "/v1/status")).status == 200

        gap = await max_gap_while(work)
        for reply in replies.values():
            check_error(reply, 400, "bad_request")
        assert "at most 100000 transactions" in replies["strings"].doc["error"]["message"]
        assert f"transactions[{many}]" in replies["last"].doc["error"]["message"]
        # Parsing such a body as JSON on the loop froze it for seconds (3.6 s of CPU for 22 MB
        # nested); the scan costs 0.05-0.06 s alone, and up to 0.16 s was seen under a full
        # suite on two loaded cores (caches and clocks shared): the bound catches the former
        # with room for the latter.
        assert gap < 0.5, f"the event loop was frozen for {gap:.2f} s of CPU"
        assert server.budget.held == 0


async def test_a_large_submit_is_read_without_parsing_json() -> None:
    """The scanner reads every large submit a JSON encoder writes: whitespace anywhere between
    tokens, and the escaped solidus some encoders write in base64; what it makes is what the
    JSON parse of the same body makes."""
    server = GatewayServer(_Nothing(), listen=(HOST, 0), frame_bytes_max=1 << 20)  # type: ignore[arg-type]
    txs = [[[os.urandom(100), i, 2], os.urandom(64)] for i in range(2000)]
    texts = [base64.b64encode(pack(t)).decode() for t in txs]
    body = json.dumps({"transactions": texts}, indent=2).replace("/", "\\/").encode()
    assert len(body) > gateway_module.JSON_PARSE_BYTES_MAX
    scanned = gateway_module._scan_submit(body)
    assert isinstance(scanned, list)
    request = await server._native_submit(1, scanned)
    assert request == await server._native_submit(1, json.loads(body)["transactions"])
    assert request.txs == txs  # type: ignore[attr-defined]
    assert gateway_module._scan_submit(b' \n{ "transactions" :[ ]\t}\r\n') == []
    for bad in (b'{"transactions": [', b'{"transactions": []', b'{"transactions": []}x', b"[]"):
        assert isinstance(gateway_module._scan_submit(bad), str), bad


async def test_a_subscriber_that_never_reads_is_ended_and_costs_bounded_memory(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with fake_gateway(tmp_path) as (server, service, nursery):
        http = connect(server, nursery, lockstep=True)
        await http.stream.send_all(request("GET", "/v1/follow?from=1"))
        head = await http.head()
        assert head is not None and head[0] == 200
        while b"event: block" not in http.buffer:  # one event read, then no more
            assert await http._more()
        [conn] = server.connections.values()
        frame_bytes = len(service._block_frame(1, 1))
        peak = 0
        start = trio.current_time()
        while server.sse_open:
            peak = max(peak, conn.queued_bytes)
            await trio.sleep(0.5)
        assert trio.current_time() - start <= gateway_module.SSE_SEND_TIMEOUT_S + 2
        assert peak <= SSE_CREDIT * (frame_bytes + 64)  # credit-bounded, not 30 blocks
        assert server.counters["sse_slow_reader"] == 1
        assert not service._follows.get(conn.id)  # unfollowed and disconnected
        assert server.caps.slots == 0 and not server.connections
        # Another subscriber reads everything: its stream goes on.
        http = connect(server, nursery)
        await http.stream.send_all(request("GET", "/v1/follow?from=28"))
        while http.buffer.count(b"event: block") < 3:
            assert await http._more()
        assert b"id: 30\n" in http.buffer
        # Idle: a keepalive comment every 15 s.
        await trio.sleep(gateway_module.SSE_KEEPALIVE_S + 0.1)
        assert await http._more() and b": keepalive\n\n" in http.buffer
        await http.aclose()


async def test_a_slow_reader_is_told_why_its_stream_ended(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with fake_gateway(tmp_path) as (server, _, nursery):
        http = connect(server, nursery, lockstep=True)
        await http.stream.send_all(request("GET", "/v1/follow?from=1"))
        while b"event: block" not in http.buffer:
            assert await http._more()
        await trio.sleep(gateway_module.SSE_SEND_TIMEOUT_S + gateway_module.SSE_FINISH_S / 2)
        while await http._more():  # it reads again, within the time the error is given
            pass
        events = bytes(http.buffer).split(b"\n\n")
        assert events[-1] == b"" and events[-2].startswith(b"event: error\n")
        error = json.loads(events[-2].split(b"data: ", 1)[1])
        assert error["error"]["code"] == "overloaded"
        assert "not taken within" in error["error"]["message"]
        blocks = [e for e in events if e.startswith(b"event: block")]
        assert 1 < len(blocks) <= SSE_CREDIT  # what was queued, then the end: not all 30
        assert server.counters["sse_slow_reader"] == 1


async def test_one_address_cannot_take_every_stream_they_are_shared_fairly(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """As the member shares its follows (service._share_follow): one address holding every SSE
    slot gives one up to another that holds fewer (by two or more), told why."""
    async with fake_gateway(tmp_path, sse_streams_max=4) as (server, _, nursery):

        async def follow(host: str) -> Http:
            http = connect(server, nursery, host=host)
            await http.stream.send_all(request("GET", "/v1/follow?from=29"))
            head = await http.head()
            assert head is not None and head[0] == 200, head
            return http

        greedy = [await follow("10.0.0.1") for _ in range(4)]
        check_error(
            await connect(server, nursery, host="10.0.0.1").ask("GET", "/v1/follow?from=1"),
            503,
            "too_many_subscribers",
        )
        other = [await follow("10.0.0.2"), await follow("10.0.0.2")]
        assert server.sse_open == 4 and server.counters["sse_shared_fairly"] == 2
        # The newest two of the greedy address's streams ended, each with its reason.
        for http in greedy[2:]:
            while await http._more():
                pass
            error = json.loads(
                bytes(http.buffer).rsplit(b"event: error\n", 1)[1].split(b"data: ", 1)[1]
            )
            assert error["error"]["code"] == "overloaded" and "fairly" in error["error"]["message"]
        # Two each: the fair part. A third for either is refused, not shared.
        reply = await connect(server, nursery, host="10.0.0.2").ask("GET", "/v1/follow?from=1")
        check_error(reply, 503, "too_many_subscribers")
        for http in (*greedy[:2], *other):  # the others keep streaming
            while b"id: 30\n" not in http.buffer:
                assert await http._more()
            await http.aclose()
        while server.sse_open:  # noqa: ASYNC110
            await trio.sleep(0.1)


async def test_more_blocks_than_the_credit_end_the_stream_with_a_reason(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The member never sends a stream more blocks than its credit; if it did (a bug), the
    stream ends, told why, instead of an assert failing in the stream's task."""
    async with fake_gateway(tmp_path) as (server, _, nursery):
        http = connect(server, nursery, lockstep=True)
        await http.stream.send_all(request("GET", "/v1/follow?from=1"))
        await trio.sleep(1)  # (the writer is stuck on the head: SSE_CREDIT blocks queued)
        [conn] = server.connections.values()
        conn.push(b"\x93" + pack(1) + pack("block") + pack([b"header", [], b"signature"]))
        while await http._more():
            pass
        events = bytes(http.buffer).split(b"\n\n")
        assert events[-2].startswith(b"event: error\n"), events[-2:]
        error = json.loads(events[-2].split(b"data: ", 1)[1])
        assert error["error"]["code"] == "internal" and "granted" in error["error"]["message"]
        assert bytes(http.buffer).count(b"event: block\n") == SSE_CREDIT  # then the end
        assert server.counters["sse_credit_exceeded"] == 1
        while server.sse_open:  # noqa: ASYNC110
            await trio.sleep(0.1)


async def test_the_receipts_a_request_watches_are_unwatched_when_it_ends(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A wait_ms request's watches end with the request, not ID_WATCH_AGE_S (600 s) later on a
    keep-alive connection nobody reads pushes from."""
    async with fake_gateway(tmp_path) as (server, service, nursery):
        http = connect(server, nursery)
        reply = await http.ask("GET", f"/v1/transactions/{'ab' * 32}/receipt?wait_ms=1000")
        check_error(reply, 404, "not_found")
        [conn] = server.connections.values()  # (keep-alive: still open)
        assert service.watches.count == 0 and not conn.watched
        # A request still waiting when its client leaves: its watch ends with it as well.
        await http.stream.send_all(get(f"/v1/transactions/{'cd' * 32}/receipt?wait_ms=30000"))
        await trio.sleep(1)
        assert service.watches.count == 1
        await http.aclose()
        with trio.fail_after(60):
            while server.connections:  # noqa: ASYNC110
                await trio.sleep(0.1)
        assert service.watches.count == 0


def test_every_refusal_of_the_handler_names_its_kind_and_the_gateway_maps_each() -> None:
    """The gateway answers a handler's error reply by the kind the handler gave it, never by
    its English: every conn.error in service.py passes `kind=`, one of client_port.Refusal,
    and each kind has its HTTP status."""
    import ast
    import typing

    from consortium.node import client_port, service

    kinds = set(typing.get_args(client_port.Refusal))
    calls = [
        node
        for node in ast.walk(ast.parse(Path(service.__file__).read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "error"
        and not (isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "log")
    ]
    assert len(calls) >= 10
    for call in calls:
        given = {k.arg: k.value for k in call.keywords}
        where = f"service.py line {call.lineno}"
        assert "kind" in given, f"{where}: conn.error without kind="
        value = given["kind"]
        assert isinstance(value, ast.Constant) and value.value in kinds, where
    expected = {
        "bad_request": (400, "bad_request"),
        "overloaded": (503, "overloaded"),
        "too_many_follows": (503, "too_many_subscribers"),
        "internal": (500, "internal"),
    }
    assert set(expected) == kinds
    for kind, (status, code) in expected.items():
        error = gateway_module._refusal(kind, "a message in any words")
        assert (error.status, error.code) == (status, code), kind


async def test_a_stream_the_member_ends_ends_with_an_error_event(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with fake_gateway(tmp_path) as (server, _, nursery):
        http = connect(server, nursery)
        await http.stream.send_all(request("GET", "/v1/follow?from=1"))
        while b"event: block" not in http.buffer:
            assert await http._more()
        [conn] = server.connections.values()
        conn.close_soon("test", "the member is shutting down")
        while await http._more():
            pass
        tail = bytes(http.buffer).rsplit(b"event: error\n", 1)
        assert len(tail) == 2, http.buffer[-300:]
        error = json.loads(tail[1].split(b"data: ", 1)[1])
        assert error["error"]["code"] == "overloaded"
        assert "shutting down" in error["error"]["message"]
        while server.connections:  # noqa: ASYNC110
            await trio.sleep(0.1)
        assert server.sse_open == 0


# --- configuration and `consortium init --gateway` -----------------------------------------------


def test_init_gateway_writes_a_listener_per_member_and_gateways_json(tmp_path: Path) -> None:
    directory = tmp_path / "net"
    result = CliRunner().invoke(app, ["init", "--dir", str(directory), "--gateway"])
    assert result.exit_code == 0, result.output
    doc = json.loads((directory / "gateways.json").read_text())
    genesis = load_client_setup(directory).genesis
    assert set(doc) == {"chain_id", "gateways"} and doc["chain_id"] == genesis.chain_id.hex()
    assert [g["member"] for g in doc["gateways"]] == ["n1", "n2", "n3", "n4"]
    ports = set()
    for entry in doc["gateways"]:
        assert set(entry) == {"member", "url"} and entry["url"].startswith("http://127.0.0.1:")
        config = load_config(directory / "nodes" / entry["member"])
        assert config.gateway_listen is not None and not config.tls_gateway
        assert entry["url"] == f"http://127.0.0.1:{config.gateway_listen[1]}"
        ports.add(config.gateway_listen[1])
        assert entry["url"] in result.output
    assert len(ports) == 4
    assert [g.url for g in load_gateways(directory / "gateways.json", genesis)] == [
        g["url"] for g in doc["gateways"]
    ]
    # With TLS: https, and [tls] gateway = true.
    init_network(tmp_path / "tls", members=4, clients=1, gateway=True, tls=True)
    doc = json.loads((tmp_path / "tls" / "gateways.json").read_text())
    assert all(g["url"].startswith("https://") for g in doc["gateways"])
    assert load_config(tmp_path / "tls" / "nodes" / "n1").tls_gateway
    # Without --gateway: none.
    init_network(tmp_path / "plain", members=4, clients=1)
    assert not (tmp_path / "plain" / "gateways.json").exists()
    assert load_config(tmp_path / "plain" / "nodes" / "n1").gateway_listen is None


def test_init_gateway_with_hosts_refuses_a_gateway_port_that_is_another_listeners(
    tmp_path: Path,
) -> None:
    """With --hosts a gateway listens on its client port + 100: refused in one line when that
    is a peer port (or another listener's) on the same host, before anything is written."""
    hosts = "10.9.0.1,10.9.0.2,10.9.0.3,10.9.0.4"
    directory = tmp_path / "net"
    options = ["init", "--dir", str(directory), "--hosts", hosts, "--gateway"]
    result = CliRunner().invoke(app, [*options, "--client-port", "7000", "--peer-port", "7100"])
    assert result.exit_code != 0
    message = result.output.strip()
    assert "n1's gateway port 7100" in message and "n1's peer port" in message, message
    assert len(message.splitlines()) == 1 and not directory.exists()
    # Several members on one host: a member's gateway port is another member's peer port.
    shared = ["--hosts", "10.9.0.1,10.9.0.1", "--client-port", "7000", "--peer-port", "7101"]
    result = CliRunner().invoke(app, ["init", "--dir", str(directory), "--gateway", *shared])
    assert result.exit_code != 0, result.output
    assert "n2's gateway port 7101" in result.output and "n1's peer port" in result.output
    result = CliRunner().invoke(app, [*options, "--client-port", "7000", "--peer-port", "7200"])
    assert result.exit_code == 0, result.output
    doc = json.loads((directory / "gateways.json").read_text())
    assert doc["gateways"][0]["url"] == "http://10.9.0.1:7100"


def test_gateway_settings_are_checked_and_the_environment_turns_it_on(tmp_path: Path) -> None:
    init_network(tmp_path / "net", members=4, clients=1)
    home = tmp_path / "net" / "nodes" / "n1"
    text = config_path(home).read_text()
    config = load_config(home, {"CONSORTIUM_NODE_GATEWAY_LISTEN": "127.0.0.1:7399"})
    assert config.gateway_listen == ("127.0.0.1", 7399)
    config_path(home).write_text(text + "\n[gateway]\n")
    with pytest.raises(ConfigError, match=r"\[gateway\] needs 'gateway.listen'"):
        load_config(home, {})
    config_path(home).write_text(text + '\n[gateway]\nlisten = "nowhere"\n')
    with pytest.raises(ConfigError, match=r"'gateway\.listen'"):
        load_config(home, {})
    config_path(home).write_text(text)
    same = load_config(home, {}).client_listen
    with pytest.raises(ConfigError, match=r"'listen\.client' and 'gateway\.listen'"):
        load_config(home, {"CONSORTIUM_NODE_GATEWAY_LISTEN": f"{same[0]}:{same[1]}"})
    with pytest.raises(ConfigError, match=r"'tls\.gateway' is true but there is no gateway"):
        load_config(home, {"CONSORTIUM_NODE_TLS_GATEWAY": "true"})
    with pytest.raises(ConfigError, match=r"'tls\.gateway' must be true or false"):
        load_config(
            home,
            {
                "CONSORTIUM_NODE_TLS_GATEWAY": "yes",
                "CONSORTIUM_NODE_GATEWAY_LISTEN": "127.0.0.1:7399",
            },
        )
    config = load_config(
        home,
        {"CONSORTIUM_NODE_TLS_GATEWAY": "true", "CONSORTIUM_NODE_GATEWAY_LISTEN": "127.0.0.1:7399"},
    )
    assert config.tls_gateway and replace(config, tls_gateway=False) != config


def test_limits_are_what_the_document_says() -> None:
    assert gateway_module.WAIT_MS_MAX == 30_000
    assert gateway_module.HEAD_BYTES_MAX == 8192
    assert gateway_module.SSE_STREAMS_MAX < 32  # (the member's FOLLOWS_MAX: natives keep some)
    limits = GatewayServer(_Nothing(), listen=(HOST, 0), frame_bytes_max=1 << 20).limits  # type: ignore[arg-type]
    assert isinstance(limits, Limits)
    assert limits.body_bytes_max >= (1 << 20) * 4 // 3  # a frame's worth of base64 fits
