"""A client of the members' HTTP/JSON gateways (docs/gateway.md), in the standard library alone
(http.client, a thread per gateway): submit a signed transaction to every member's gateway and
believe only what f+1 DISTINCT members signed (raft: one), exactly as with the native port.

Gateway URLs are client configuration (net/gateways.json, `load_gateways`), never trusted: a
gateway is only a way to reach a member, and what it answers is believed for the signatures in
it, not for where it came from. Each receipt bundle is decoded from its canonical msgpack and
checked with protocol/verify.py (`verify_bundle`: this chain, the receipt's Merkle proof to the
header, a genesis member's block signature over it); a member counts once, by the signer its
verified block signature names (so a gateway relaying another member's bundle adds nothing, and
a forged one counts for no one); the decision is client/tally.py's, the receipt document
client/receipts.py's, which `verify_receipt` (protocol/receipts.py) checks offline.

    gateways = load_gateways(Path("net/gateways.json"), genesis)
    outcome = GatewayClient(genesis, gateways).submit(tx, timeout_s=30)
    outcome.receipt_document(genesis)      # committed: the JSON receipt document

Each gateway's thread submits with `?wait_ms=` (its answer carries the receipt if the block
executes meanwhile), then asks `GET /v1/transactions/{id}/receipt?wait_ms=` until the
transaction is decided or the time is up; a gateway that fails is asked again after a pause.
The threads stop at the deadline, or once the decision is made (after their current call).
"""

from __future__ import annotations

import base64
import http.client
import json
import queue
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from consortium.client.errors import ClientError
from consortium.client.outcome import TxOutcome
from consortium.client.receipts import from_bundles
from consortium.client.tally import Vouch, is_final_rejection, tally
from consortium.crypto.certs import CertificateError, certificate_public_key
from consortium.crypto.codec import WireFormatError, pack, unpack_canonical
from consortium.crypto.signing import Ed25519Verifier, Verifier
from consortium.ledger.genesis import Genesis
from consortium.ledger.tx import Transaction
from consortium.protocol.receipts import signatures_needed
from consortium.protocol.verify import Bundle, verify_bundle

WAIT_MS = 5_000  # each call's wait_ms (the gateway's cap is 30000)
RETRY_PAUSE_S = 0.5  # after a gateway failed, before asking it again
ANSWER_BYTES_MAX = 16 << 20  # a gateway answer read at most this long


@dataclass(frozen=True, slots=True)
class Gateway:
    """One member's gateway, as configuration names it: `member` is the member's name in
    genesis (each member at most once), `url` where to reach its gateway."""

    member: str
    url: str


def member_indexes(gateways: Sequence[Gateway], genesis: Genesis) -> list[int]:
    """Each gateway's member, as its genesis index; ClientError when a name is no member's or
    a member is listed twice (two entries for one member would make it two voices: its
    unsigned rejections would count twice)."""
    indexes: list[int] = []
    for g in gateways:
        member = genesis.member_by_name(g.member)
        if member is None:
            raise ClientError(f"gateway for {g.member!r}: no such member in genesis")
        if member.index in indexes:
            raise ClientError(f"gateway for {g.member!r} is listed twice")
        indexes.append(member.index)
    return indexes


def load_gateways(path: Path, genesis: Genesis | None = None) -> list[Gateway]:
    """gateways.json (`consortium init --gateway`); ClientError when it cannot be read, or
    names another chain than `genesis`, or (with `genesis`) a member genesis does not list or
    one member twice."""
    try:
        doc = json.loads(path.read_text())
        gateways = [Gateway(str(g["member"]), str(g["url"])) for g in doc["gateways"]]
        chain_id = str(doc["chain_id"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ClientError(f"{path}: not a gateways file ({exc})") from None
    if genesis is not None:
        if chain_id != genesis.chain_id.hex():
            raise ClientError(
                f"{path} is for chain {chain_id[:16]}…, this genesis is "
                f"{genesis.chain_id.hex()[:16]}…"
            )
        try:
            member_indexes(gateways, genesis)
        except ClientError as exc:
            raise ClientError(f"{path}: {exc}") from None
    return gateways


class GatewayError(ClientError):
    """A gateway answered with an error (its JSON `error`), or not as documented."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code


def decode_bundle(text: str) -> Bundle:
    """A receipt bundle from a gateway's base64; WireFormatError when it is not one."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        raise WireFormatError("a receipt bundle is not base64") from None
    return Bundle.from_array(unpack_canonical(raw))


class _Http:
    """One keep-alive connection to one gateway."""

    def __init__(
        self, url: str, timeout_s: float, context: ssl.SSLContext | None, pin: bytes
    ) -> None:
        """`pin`: the genesis key of the member this URL is configured for; an https://
        gateway must present a certificate for exactly that key (the network's issuer is
        public: anyone can chain a certificate to it, so the chain alone proves nothing)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ClientError(f"{url!r} is not an http:// or https:// gateway URL")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        self.timeout_s = timeout_s
        self.context = context
        self.pin = pin
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """(status, JSON answer); OSError or http.client.HTTPException when the gateway
        cannot be asked (the connection is dropped then)."""
        if self.conn is None:
            self.conn = (
                http.client.HTTPSConnection(
                    self.host, self.port, timeout=self.timeout_s, context=self.context
                )
                if self.https
                else http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            )
            if self.https:
                self._pinned()
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            self.conn.request(method, path, body=data, headers=headers)
            reply = self.conn.getresponse()
            raw = reply.read(ANSWER_BYTES_MAX + 1)
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        if len(raw) > ANSWER_BYTES_MAX:
            self.close()
            raise ClientError(f"an answer longer than {ANSWER_BYTES_MAX} bytes")
        try:
            doc = json.loads(raw)
        except ValueError:
            raise GatewayError(reply.status, "not_json", "the answer is not JSON") from None
        if reply.status != 200:
            error = doc.get("error") if isinstance(doc, dict) else None
            if not isinstance(error, dict):
                raise GatewayError(reply.status, "unknown", "an error without an error body")
            raise GatewayError(reply.status, str(error.get("code")), str(error.get("message")))
        return reply.status, doc

    def _pinned(self) -> None:
        """Connect, and refuse a gateway whose certificate is not for the member's key,
        before anything is sent (as the native client pins its TLS connections)."""
        assert self.conn is not None
        try:
            self.conn.connect()
            sock = self.conn.sock
            der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        key = None
        if der is not None:
            try:
                key = certificate_public_key(der)
            except CertificateError:
                key = None
        if key != self.pin:
            self.close()
            raise ClientError(
                f"the gateway at {self.host}:{self.port} presented a certificate for another key "
                f"than its member's ({self.pin.hex()[:16]}…): not that member (check gateways.json)"
            )

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class _Submission:
    """One submit's record of what went wrong with each member (by name, for messages): the
    threads of one transaction write here, so another transaction's failures never show."""

    def __init__(self) -> None:
        self.refused: dict[str, str] = {}  # member -> why its last bundle was not believed
        self.errors: dict[str, str] = {}  # member -> its last failure


class GatewayClient:
    """Submits to every member's gateway and decides by f+1 (module docstring).
    `gateways`: at most one per member, each named as genesis names it (ClientError
    otherwise). `ssl_context`: for https:// gateways (mutual TLS: a client context presenting
    the certificate of an admitted key, protocol/tls.py make_context).

    After each `submit`, `refused` and `errors` say what went wrong with each member during
    THAT submit (the pending outcome's reason lists them too)."""

    def __init__(
        self,
        genesis: Genesis,
        gateways: Sequence[Gateway],
        *,
        ssl_context: ssl.SSLContext | None = None,
        verifier: Verifier | None = None,
        wait_ms: int = WAIT_MS,
    ) -> None:
        if not gateways:
            raise ClientError("no gateways to ask")
        self.genesis = genesis
        self.gateways = list(gateways)
        self.indexes = member_indexes(self.gateways, genesis)
        self.ssl_context = ssl_context
        self.verifier = verifier or Ed25519Verifier()
        self.wait_ms = wait_ms
        self.refused: dict[str, str] = {}  # the last submit's: member -> why not believed
        self.errors: dict[str, str] = {}  # the last submit's: member -> its last failure

    def submit(self, tx: Transaction, *, timeout_s: float = 30.0) -> TxOutcome:
        """Submit `tx` to every gateway and wait, at most `timeout_s`, until f+1 distinct
        members' verified receipt bundles agree (committed: `proof` is the receipt document's
        content) or f+1 members report the same final rejection; else pending."""
        started = time.monotonic()
        deadline = started + timeout_s
        body = {"transactions": [base64.b64encode(pack(tx.to_array())).decode("ascii")]}
        # (member index, its bundle or None, the rejection's reason)
        answers: queue.Queue[tuple[int, Bundle | None, str]] = queue.Queue()
        stop = threading.Event()
        record = _Submission()
        threads = [
            threading.Thread(
                target=self._ask,
                args=(g, index, tx.id, body, deadline, answers, stop, record),
                daemon=True,
                name=f"gateway {g.member}",
            )
            for g, index in zip(self.gateways, self.indexes, strict=True)
        ]
        for thread in threads:
            thread.start()
        needed = signatures_needed(self.genesis)
        vouched: dict[int, Vouch] = {}
        rejected: dict[int, str] = {}
        decision = tally(vouched, {}, needed)
        try:
            # (until every thread ended AND its last answer is taken: it may end right after)
            while time.monotonic() < deadline and (
                any(t.is_alive() for t in threads) or not answers.empty()
            ):
                try:
                    index, bundle, reason = answers.get(timeout=0.05)
                except queue.Empty:
                    continue
                name = self.genesis.members[index].name
                if bundle is not None:
                    self._vouch(name, tx.id, bundle, vouched, record)
                elif is_final_rejection(reason):
                    rejected[index] = reason
                else:
                    record.errors[name] = f"rejected: {reason}"
                # A rejection counts by member (nothing signs it; each member has one gateway
                # here, so one voice): f+1 alike decide, and only a final one.
                decision = tally(vouched, rejected, needed)
                if decision.status != "pending":
                    break
        finally:
            stop.set()
        self.refused, self.errors = dict(record.refused), dict(record.errors)
        if decision.status == "committed":
            proof = from_bundles(decision.bundles)
            return TxOutcome(
                tx.id,
                "committed",
                receipt=proof.receipt,
                height=proof.receipt.height,
                block_hash=decision.block_hash,
                reason=decision.reason,
                confirmations=decision.confirmations,
                latency_s=time.monotonic() - started,
                proof=proof,
            )
        if decision.status == "rejected":
            return TxOutcome(
                tx.id, "rejected", reason=decision.reason, confirmations=decision.confirmations
            )
        why = "; ".join(f"{m}: {e}" for m, e in sorted({**self.errors, **self.refused}.items()))
        return TxOutcome(
            tx.id,
            "pending",
            reason=decision.reason + (f" ({why})" if why else ""),
            confirmations=decision.confirmations,
        )

    def _vouch(
        self,
        member: str,
        tx_id: bytes,
        bundle: Bundle,
        vouched: dict[int, Vouch],
        record: _Submission,
    ) -> None:
        """Count `bundle` (as `member`'s gateway sent it) for the member that signed it, once
        it verifies and is this transaction's."""
        if bundle.receipt.tx_id != tx_id:
            record.refused[member] = "a receipt for another transaction"
            return
        problem = verify_bundle(bundle, self.genesis, self.verifier)
        if problem is not None:
            record.refused[member] = problem
            return
        signer = bundle.signer()
        assert signer is not None  # (verify_bundle checked it names a member)
        vouched.setdefault(signer, Vouch(bundle.receipt.encode(), bundle.header.hash, bundle))

    def _ask(
        self,
        gateway: Gateway,
        index: int,
        tx_id: bytes,
        body: dict[str, Any],
        deadline: float,
        answers: queue.Queue[tuple[int, Bundle | None, str]],
        stop: threading.Event,
        record: _Submission,
    ) -> None:
        """One gateway's thread: submit, then ask for the receipt until decided or done. Any
        failure is that member's error (never the thread's end): what a gateway sends is
        untrusted, so whatever decoding it raises is a reason to ask again, not a bug to die
        of silently."""
        try:
            http_ = _Http(
                gateway.url,
                10.0 + self.wait_ms / 1000,
                self.ssl_context,
                self.genesis.members[index].public_key,
            )
        except ClientError as exc:
            record.errors[gateway.member] = str(exc)
            return
        submitted = False
        try:
            while not stop.is_set() and (left_ms := int((deadline - time.monotonic()) * 1000)) > 0:
                wait = min(self.wait_ms, left_ms)
                try:
                    if not submitted:
                        _, doc = http_.request("POST", f"/v1/transactions?wait_ms={wait}", body)
                        submitted = True
                        result = doc["results"][0]
                        if result["status"] == "rejected":
                            reason = str(result["detail"])
                            answers.put((index, None, reason))
                            if is_final_rejection(reason):
                                return
                            submitted = False  # (overloaded, unknown_client: not final)
                            stop.wait(RETRY_PAUSE_S)
                            continue
                        text = result["receipt"]
                    else:
                        path = f"/v1/transactions/{tx_id.hex()}/receipt?wait_ms={wait}"
                        try:
                            _, doc = http_.request("GET", path)
                        except GatewayError as exc:
                            if exc.code == "not_found":
                                continue  # not executed there yet: ask again
                            raise
                        text = doc["receipt"]
                    if text is None:
                        continue
                    answers.put((index, decode_bundle(text), ""))
                    return
                except Exception as exc:  # (see the docstring)
                    record.errors[gateway.member] = str(exc) or type(exc).__name__
                    stop.wait(RETRY_PAUSE_S)
        finally:
            http_.close()
