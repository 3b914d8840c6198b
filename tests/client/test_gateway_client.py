"""The Python gateway client (client/gateway.py) against fake gateways on 127.0.0.1: its
configuration is checked against genesis (each gateway a member's, each member once), what
went wrong is reported per submit, and a gateway whose answer breaks the decoder is that
member's error, not a thread that dies silently.

The genesis is tests/ledger/chain_fixture.py's (pbft, n = 4: f+1 = 2 receipts needed); the
bundles are real ones of tests/protocol/fixtures.py's block, signed by the members' keys.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from consortium.client import gateway as gateway_module
from consortium.client.errors import ClientError
from consortium.client.gateway import Gateway, GatewayClient, load_gateways
from consortium.protocol.verify import Bundle
from tests.protocol.fixtures import BLOCK, GENESIS, good_bundle

# (method, path, body) -> (status, JSON answer)
Answer = Callable[[str, str, Any], tuple[int, Any]]


@contextmanager
def fake_gateway(answer: Answer) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """A gateway answering with `answer`; yields its URL and the calls it got."""
    calls: list[tuple[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            calls.append((method, self.path))
            status, doc = answer(method, self.path, body)
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            self._serve("POST")

        def do_GET(self) -> None:
            self._serve("GET")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", calls
    finally:
        server.shutdown()
        server.server_close()


def submitted_tx_id(body: Any) -> bytes:
    from consortium.crypto.codec import unpack_canonical
    from consortium.ledger.tx import Transaction

    raw = base64.b64decode(body["transactions"][0])
    return Transaction.from_array(unpack_canonical(raw), GENESIS.params).id


def bundle_text(bundle: Bundle) -> str:
    return base64.b64encode(bundle.encode()).decode()


def write_gateways(path: Path, members: list[str]) -> Path:
    doc = {
        "chain_id": GENESIS.chain_id.hex(),
        "gateways": [
            {"member": m, "url": f"http://127.0.0.1:{9 + i}"} for i, m in enumerate(members)
        ],
    }
    path.write_text(json.dumps(doc))
    return path


# --- configuration: each gateway a genesis member's, each member once ------------------------


def test_gateways_must_name_genesis_members_each_once(tmp_path: Path) -> None:
    good = load_gateways(write_gateways(tmp_path / "good.json", ["n1", "n2", "n3", "n4"]), GENESIS)
    assert [g.member for g in good] == ["n1", "n2", "n3", "n4"]
    assert GatewayClient(GENESIS, good).indexes == [0, 1, 2, 3]

    twice = write_gateways(tmp_path / "twice.json", ["n1", "n2", "n2"])
    with pytest.raises(ClientError, match=r"twice.json: gateway for 'n2' is listed twice"):
        load_gateways(twice, GENESIS)
    stranger = write_gateways(tmp_path / "stranger.json", ["n1", "liar"])
    with pytest.raises(ClientError, match=r"gateway for 'liar': no such member in genesis"):
        load_gateways(stranger, GENESIS)
    # The client refuses them too, however the list was made.
    with pytest.raises(ClientError, match="listed twice"):
        GatewayClient(GENESIS, [Gateway("n1", "http://127.0.0.1:1"), Gateway("n1", "http://x:2")])
    with pytest.raises(ClientError, match="no such member"):
        GatewayClient(GENESIS, [Gateway("n5", "http://127.0.0.1:1")])


def test_one_member_s_unsigned_rejections_cannot_reject_a_valid_transaction() -> None:
    """A lying gateway for n1 answers bad_signature; honest n2 and n3 prove the receipt. With
    rejections counted per configured entry, n1 listed twice was f+1 = 2 "rejections"; now it
    is refused at construction, and n1 once is one voice the receipts outweigh."""
    tx = BLOCK.txs[2]

    def liar(method: str, path: str, body: Any) -> tuple[int, Any]:
        result = {"tx_id": tx.id.hex(), "status": "rejected", "detail": "bad_signature"}
        return 200, {"results": [{**result, "receipt": None}]}

    def honest(signer: int) -> Answer:
        def answer(method: str, path: str, body: Any) -> tuple[int, Any]:
            # (slow enough that the liar's answers come first)
            threading.Event().wait(0.3)
            text = bundle_text(good_bundle(2, signer))
            result = {"tx_id": tx.id.hex(), "status": "committed", "detail": "", "receipt": text}
            return 200, {"results": [result]}

        return answer

    with (
        fake_gateway(liar) as (lie, _),
        fake_gateway(honest(1)) as (n2, _),
        fake_gateway(honest(2)) as (n3, _),
    ):
        with pytest.raises(ClientError, match="listed twice"):
            GatewayClient(GENESIS, [Gateway("n1", lie), Gateway("n1", lie), Gateway("n2", n2)])
        client = GatewayClient(GENESIS, [Gateway("n1", lie), Gateway("n2", n2), Gateway("n3", n3)])
        outcome = client.submit(tx, timeout_s=10)
    assert outcome.status == "committed", outcome.reason
    assert outcome.confirmations == 2


# --- what went wrong is reported per submit ----------------------------------------------------


def test_a_pending_reason_names_this_submit_s_failures_only() -> None:
    first, second = BLOCK.txs[1], BLOCK.txs[2]

    def answer(method: str, path: str, body: Any) -> tuple[int, Any]:
        if method == "POST" and submitted_tx_id(body) == first.id:
            return 503, {"error": {"code": "overloaded", "message": "first-only failure"}}
        if method == "POST":
            result = {"tx_id": second.id.hex(), "status": "accepted", "detail": ""}
            return 200, {"results": [{**result, "receipt": None}]}
        return 404, {"error": {"code": "not_found", "message": "no receipt yet"}}

    with fake_gateway(answer) as (url, calls):
        client = GatewayClient(GENESIS, [Gateway("n1", url)], wait_ms=50)
        outcome = client.submit(first, timeout_s=1.0)
        assert outcome.status == "pending"
        assert "n1: 503 overloaded: first-only failure" in outcome.reason
        assert "first-only failure" in client.errors["n1"]

        outcome = client.submit(second, timeout_s=1.0)
        assert outcome.status == "pending"
        assert outcome.reason == "0 of 2 confirmations", outcome.reason
        assert client.errors == {} and client.refused == {}
        assert ("GET", f"/v1/transactions/{second.id.hex()}/receipt?wait_ms=50") in calls


def test_an_answer_that_breaks_the_decoder_is_that_member_s_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever decoding an untrusted answer raises (here an error the decoder was never meant
    to raise) is recorded as that member's error and the gateway is asked again; before, the
    gateway's thread died and the pending reason said nothing about it."""
    tx = BLOCK.txs[2]
    text = bundle_text(good_bundle(2, 1))

    def broken(answer: str) -> Bundle:
        raise RuntimeError("the decoder broke")

    monkeypatch.setattr(gateway_module, "decode_bundle", broken)

    def answer(method: str, path: str, body: Any) -> tuple[int, Any]:
        if method == "GET":
            return 200, {"tx_id": tx.id.hex(), "height": BLOCK.height, "receipt": text}
        result = {"tx_id": tx.id.hex(), "status": "committed", "detail": "", "receipt": text}
        return 200, {"results": [result]}

    with fake_gateway(answer) as (url, calls):
        client = GatewayClient(GENESIS, [Gateway("n2", url)])
        outcome = client.submit(tx, timeout_s=1.5)
    assert outcome.status == "pending"
    assert "n2: the decoder broke" in outcome.reason
    assert len(calls) >= 2  # asked again after the failure (the thread lived on)


# --- HTTPS: the gateway must present its member's key ----------------------------------------


def test_an_https_gateway_with_another_member_s_key_is_refused_before_anything_is_sent() -> None:
    """The network's issuer is public, so any endpoint can chain a certificate to it: the
    client pins the key genesis lists for the member the URL is configured for (as the native
    client pins its connections), or an impostor could answer in that member's name."""
    import ssl

    from consortium.crypto.keys import KeyPair
    from consortium.protocol.tls import make_context
    from tests.ledger.chain_fixture import MEMBERS

    seen: list[str] = []

    def answer(method: str, path: str, body: Any) -> tuple[int, Any]:
        seen.append(path)
        return 200, {"ok": True}

    with fake_gateway(answer) as (url, _), _tls_front(url, MEMBERS[2]) as https_url:
        client_context = make_context(
            KeyPair.from_seed(b"\x07" * 32), "c1", GENESIS.chain_id, server=False
        )
        impostor = gateway_module._Http(https_url, 5.0, client_context, MEMBERS[1].public)
        with pytest.raises(ClientError, match="certificate for another key than its member"):
            impostor.request("GET", "/v1/status")
        assert seen == []  # refused at the handshake's end: the request never left
        member = gateway_module._Http(https_url, 5.0, client_context, MEMBERS[2].public)
        assert member.request("GET", "/v1/status") == (200, {"ok": True})
        member.close()
        assert seen == ["/v1/status"]
        assert isinstance(client_context, ssl.SSLContext)


@contextmanager
def _tls_front(url: str, keys: Any) -> Iterator[str]:
    """A TLS terminator on 127.0.0.1 presenting `keys`' certificate (the network's issuer),
    relaying to the plain gateway at `url`."""
    import socket

    from consortium.protocol.tls import make_context

    context = make_context(keys, "gw", GENESIS.chain_id, server=True)
    listener = socket.create_server(("127.0.0.1", 0))
    port = int(url.rsplit(":", 1)[1])
    stop = threading.Event()
    opened: list[socket.socket] = []  # closed at the end, whatever the relays did

    def relay(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for end in (a, b):
                with suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                raw.settimeout(5.0)
                tls = context.wrap_socket(raw, server_side=True)
                tls.settimeout(None)
            except OSError:
                raw.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", port))
            opened.extend((tls, upstream))
            threading.Thread(target=relay, args=(tls, upstream), daemon=True).start()
            threading.Thread(target=relay, args=(upstream, tls), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(2.0)
        listener.close()
        for end in opened:
            end.close()
