"""TLS 1.3 on the peer and client ports: mutual, pinned to the keys genesis lists.

Theory of operation (docs/tls.md has the reasons)
-------------------------------------------------
- Identity is the Ed25519 key genesis lists for a member or a client: each side presents a
  certificate for exactly that key (derived from the key at start, crypto/certs.py) and checks
  the other side's certificate key against genesis right after the handshake ("the pin"). A
  dialer accepts only the key of the member it dialed; the peer port accepts only member keys;
  the client port accepts admitted client keys and member keys. TLS 1.3's CertificateVerify
  proves possession of the key, so nothing else about the certificate matters.
- OpenSSL still verifies the chain (Python's ssl has no verify callback, and a server only asks
  for a client certificate when it verifies it): our contexts trust exactly one anchor, the
  network's public issuer, and never check dates (X509_V_FLAG_NO_CHECK_TIME). An expired or
  not-yet-valid certificate therefore cannot take a network down, and a certificate from another
  network fails with a message that says so.
- TLS 1.3 only, no session tickets (no resumption: one handshake per long-lived connection),
  no hostname check (members are named by key, not by DNS).
- Mismatch detection. A TLS connection opens with a handshake record (first byte 0x16); ours
  opens with a 4-byte frame length whose first byte is 0 for every legal frame. A listener
  peeks at the first bytes (`SniffStream`) and answers the wrong kind in PLAIN framing with a
  sentence that names the setting to change; a TLS dialer that receives plain bytes instead of
  a TLS record decodes them (`explain_failure`), so both sides log and show the same reason
  instead of a hang or "wrong version number".
"""

from __future__ import annotations

import os
import secrets
import ssl
import tempfile
from pathlib import Path
from typing import Any

import trio
from cryptography.hazmat.primitives import serialization

from consortium.crypto.certs import (
    CertificateError,
    certificate_fingerprint,
    certificate_pem,
    certificate_public_key,
    issue_certificate,
    issuer_certificate,
)
from consortium.crypto.codec import WireFormatError, as_list, unpack_canonical
from consortium.crypto.keys import KeyPair
from consortium.protocol.framing import HEADER

TLS_HANDSHAKE_RECORD = 0x16
TLS_ALERT_RECORD = 0x15
X509_V_FLAG_NO_CHECK_TIME = 0x200000  # OpenSSL >= 1.1.0; not exported by Python's ssl
RECORD_BYTES_MAX = 4096  # what a dialer keeps of the bytes it received, to explain a failure
MESSAGE_CHARS_MAX = 300
# OpenSSL X509_V_ERR_*: the certificate does not chain to our issuer (another network's):
# unable to get issuer (2), signature failure (7), self-signed leaf (18) or in chain (19),
# unable to get local issuer (20), unable to verify the first certificate (21).
CHAIN_ERRORS = frozenset({2, 7, 18, 19, 20, 21})


class TlsRefused(Exception):
    """The other side's TLS identity is not acceptable; the message says why and what to do."""


def make_context(keys: KeyPair, name: str, chain_id: bytes, *, server: bool) -> ssl.SSLContext:
    """A TLS 1.3 context presenting the certificate of `keys` on network `chain_id`, requiring
    the other side's certificate, trusting only the network issuer, ignoring dates."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags = ctx.verify_flags | X509_V_FLAG_NO_CHECK_TIME
    # Asserted, not assumed: if this OpenSSL ignored the flag, certificate dates would matter.
    assert ctx.verify_flags & X509_V_FLAG_NO_CHECK_TIME, "OpenSSL refused NO_CHECK_TIME"
    ctx.load_verify_locations(cadata=certificate_pem(issuer_certificate(chain_id)).decode())
    if server:
        ctx.num_tickets = 0
    _load_chain(ctx, certificate_pem(issue_certificate(keys, name, chain_id)), keys)
    return ctx


def _load_chain(ctx: ssl.SSLContext, cert_pem: bytes, keys: KeyPair) -> None:
    """ssl loads certificates and keys from files only: write them into a private temporary
    directory, the key encrypted under a one-time passphrase that never leaves memory."""
    passphrase = secrets.token_bytes(32)
    key_pem = keys.private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )
    with tempfile.TemporaryDirectory(prefix="consortium-tls-") as tmp:
        cert_path = Path(tmp) / "cert.pem"
        key_path = Path(tmp) / "key.pem"
        for path, data in ((cert_path, cert_pem), (key_path, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        ctx.load_cert_chain(cert_path, key_path, password=passphrase)


class TlsIdentity:
    """Our side of TLS on one network: the contexts for accepting and for dialing."""

    def __init__(self, keys: KeyPair, name: str, chain_id: bytes) -> None:
        self.keys = keys
        self.name = name
        self.chain_id = chain_id
        self.certificate = issue_certificate(keys, name, chain_id)
        self.server_context = make_context(keys, name, chain_id, server=True)
        self.client_context = make_context(keys, name, chain_id, server=False)

    def describe(self) -> dict[str, Any]:
        """For status: what we present (derived from the key; nothing to renew)."""
        return {
            "certificate": f"derived from the key for {self.name} at start",
            "public_key": self.keys.public.hex(),
            "fingerprint_sha256": certificate_fingerprint(self.certificate),
            "not_after": self.certificate.not_valid_after_utc.isoformat(),
            "dates_checked": False,
        }


def peer_key(stream: trio.SSLStream[Any]) -> bytes:
    """The Ed25519 public key of the certificate the other side presented (after the
    handshake); TlsRefused when it presented none or not an Ed25519 one."""
    der = stream.getpeercert(binary_form=True)
    if not der:
        raise TlsRefused("presented no TLS certificate")
    try:
        return certificate_public_key(der)
    except CertificateError as exc:
        raise TlsRefused(f"presented an unusable TLS certificate: {exc}") from None


class SniffStream(trio.abc.Stream):
    """A stream that first hands out `prefix` (bytes already read to look at them) and keeps
    up to `record_bytes_max` of what it receives (to explain a failed TLS handshake)."""

    def __init__(
        self, inner: trio.abc.Stream, prefix: bytes = b"", record_bytes_max: int = 0
    ) -> None:
        self.inner = inner
        self._prefix = prefix
        self._record_max = record_bytes_max
        self.received = bytearray()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            n = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:n], self._prefix[n:]
            await trio.lowlevel.checkpoint()
            return data
        data = bytes(await self.inner.receive_some(max_bytes))
        if len(self.received) < self._record_max:
            self.received += data[: self._record_max - len(self.received)]
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()


def is_tls_hello(first: bytes) -> bool:
    """Whether a connection's first bytes are a TLS handshake record (never a legal frame:
    our frames start with a length far below 0x16000000)."""
    return bool(first) and first[0] == TLS_HANDSHAKE_RECORD


def plain_message(received: bytes) -> str | None:
    """The sentence in a plain refusal a listener sent us instead of TLS: ["refused", why] on
    the peer port, [0, "error", why] on the client port. None when `received` is not one."""
    if len(received) < HEADER.size:
        return None
    (length,) = HEADER.unpack_from(received)
    body = bytes(received[HEADER.size : HEADER.size + length])
    if not 0 < length == len(body):
        return None
    try:
        msg = as_list(unpack_canonical(body, max_len=RECORD_BYTES_MAX), what="refusal")
    except WireFormatError:
        return None
    text = msg[-1] if msg else None
    if len(msg) in (2, 3) and isinstance(text, str):
        return text[:MESSAGE_CHARS_MAX]
    return None


def explain_failure(exc: BaseException, received: bytes, who: str) -> str:
    """One sentence for a failed TLS handshake with `who`, naming the likely fix."""
    if received and received[0] not in (TLS_HANDSHAKE_RECORD, TLS_ALERT_RECORD):
        said = plain_message(received)
        if said is not None:
            return f"{who} answered without TLS: {said}"
        return (
            f"{who} answered without TLS (first byte 0x{received[0]:02x}): it is not running "
            "with TLS on this port; every member and client of a network must agree"
        )
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ssl.SSLCertVerificationError):
        hint = (
            ": it is not issued for this network; is it running with another genesis.json?"
            if cause.verify_code in CHAIN_ERRORS
            else ""
        )
        return f"{who}'s TLS certificate does not verify ({cause.verify_message}){hint}"
    if isinstance(cause, ssl.SSLError):
        reason = (cause.reason or str(cause)).lower()
        if (
            "unknown_ca" in reason
            or "bad_certificate" in reason
            or "certificate_required" in reason
        ):
            return (
                f"{who} refused our TLS certificate ({reason}): it is running with another "
                "genesis.json (our certificate is issued for this network only)"
            )
        if "version" in reason or "protocol" in reason:
            return f"{who} does not speak TLS 1.3 ({reason})"
        return f"TLS connection with {who} failed ({reason})"
    if not received:
        return f"{who} closed the connection during the TLS handshake"
    return f"TLS connection with {who} failed ({exc or type(exc).__name__})"
