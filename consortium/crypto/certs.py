"""X.509 certificates for TLS, derived from the Ed25519 keys genesis already lists.

Trust never comes from these certificates: it comes from the pin (the peer's certificate public
key must be exactly a key genesis lists, and TLS 1.3's CertificateVerify proves the peer holds
its private key). The certificates exist because TLS carries keys in certificates, and because
OpenSSL, as Python's ssl module drives it (no verify callback), accepts a client certificate only
when it chains to a trust anchor. So every certificate of a network is issued by that network's
*issuer*, whose Ed25519 key is derived from the chain id: anyone holding genesis.json can compute
it, it is not a secret and not a CA anyone should trust. It makes OpenSSL request and accept the
peer's certificate; the pin decides (docs/tls.md).

Everything here is deterministic (fixed names, serials and dates; Ed25519 signatures are
deterministic), so one key and one chain id always give byte-identical certificates: a node
derives its certificate from its key at start and there is no certificate file to lose, let
expire or pair with the wrong key. Validity is 2000-01-01 .. 9999-12-31 (RFC 5280's "no
well-defined expiration date"), and our own TLS contexts do not check dates at all.
"""

from __future__ import annotations

import datetime
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from consortium.crypto.keys import KeyPair

ISSUER_DOMAIN = b"consortium/tls-issuer/1"
NOT_BEFORE = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)
NAME_CHARS_MAX = 64


class CertificateError(ValueError):
    """A certificate that is not a usable Ed25519 certificate; the message says which."""


def issuer_keys(chain_id: bytes) -> KeyPair:
    """The network issuer's key pair: public by construction (derived from the chain id)."""
    if len(chain_id) != 32:
        raise ValueError("a chain id is 32 bytes")
    return KeyPair.from_seed(hashlib.sha256(ISSUER_DOMAIN + chain_id).digest())


def _issuer_name(chain_id: bytes) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "consortium public TLS issuer"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"network {chain_id.hex()[:32]}"),
        ]
    )


def _serial(public_key: bytes) -> int:
    # Positive, at most 20 octets (RFC 5280 4.1.2.2), distinct per key.
    return int.from_bytes(hashlib.sha256(b"serial" + public_key).digest()[:16], "big") >> 1 or 1


def issuer_certificate(chain_id: bytes) -> x509.Certificate:
    """The self-signed certificate of the network issuer: the only trust anchor our TLS
    contexts load."""
    keys = issuer_keys(chain_id)
    name = _issuer_name(chain_id)
    public = keys.private.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(_serial(keys.public))
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(keys.private, None)
    )


def issue_certificate(keys: KeyPair, name: str, chain_id: bytes) -> x509.Certificate:
    """The TLS certificate for `keys` (a member's or a client's genesis key) on this network:
    subject CN = `name`, the Ed25519 public key, issued by the network issuer, valid for both
    ends of a connection (serverAuth and clientAuth)."""
    if not name or len(name) > NAME_CHARS_MAX:
        raise ValueError(f"a certificate name is 1..{NAME_CHARS_MAX} characters")
    issuer = issuer_keys(chain_id)
    public = keys.private.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(_issuer_name(chain_id))
        .public_key(public)
        .serial_number(_serial(keys.public))
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.private.public_key()),
            critical=False,
        )
        .sign(issuer.private, None)
    )


def certificate_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def certificate_public_key(der: bytes) -> bytes:
    """The raw Ed25519 public key of a DER certificate; CertificateError when it is not one."""
    try:
        cert = x509.load_der_x509_certificate(der)
        public = cert.public_key()
    except ValueError as exc:
        raise CertificateError(f"not a readable X.509 certificate: {exc}") from None
    if not isinstance(public, Ed25519PublicKey):
        raise CertificateError(
            f"certificate key is {type(public).__name__.removeprefix('_')}, not Ed25519"
        )
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def certificate_fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, as `openssl x509 -fingerprint -sha256` shows it."""
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2)).upper()
