"""`consortium client tls-files`: what a client in another language needs for HTTPS gateways
(mutual TLS, docs/tls.md): the certificate for its key under the network's issuer, the issuer's
certificate to trust, and the key in PKCS#8 PEM (encrypted as the key file was)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from consortium.cli.main import app
from consortium.cli.network import init_network, load_client_setup
from consortium.crypto.certs import certificate_public_key, issuer_certificate
from consortium.crypto.keys import KeyPair


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_tls_files_are_a_certificate_its_issuer_and_the_key(tmp_path: Path) -> None:
    net = tmp_path / "net"
    init_network(net, members=4, clients=1, gateway=True, tls=True)
    setup = load_client_setup(net)
    genesis, keys = setup.genesis, setup.key(1)
    out = tmp_path / "tls"
    key_file = net / "clients" / "c1.pem"
    assert key_file.is_file()
    code, text = run(
        "client", "tls-files", "--key", str(key_file), "--genesis", str(net / "genesis.json"),
        "--out", str(out),
    )  # fmt: skip
    assert code == 0, text
    assert "cert.pem" in text and "as 'c1'" in text

    cert = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    assert ca == issuer_certificate(genesis.chain_id)
    cert.verify_directly_issued_by(ca)
    der = cert.public_bytes(serialization.Encoding.DER)
    assert certificate_public_key(der) == keys.public
    key = serialization.load_pem_private_key((out / "key.pem").read_bytes(), None)
    assert isinstance(key, Ed25519PrivateKey)
    assert KeyPair(key, keys.public).seed() == keys.seed()
    assert b"BEGIN PRIVATE KEY" in (out / "key.pem").read_bytes()  # PKCS#8
    assert (out / "key.pem").stat().st_mode & 0o777 == 0o600
    # What OpenSSL makes of them: a client context presenting the certificate, trusting the CA.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_cert_chain(out / "cert.pem", out / "key.pem")
    ctx.load_verify_locations(out / "ca.pem")

    # Never overwritten.
    code, text = run(
        "client", "tls-files", "--key", str(key_file), "--net", str(net), "--out", str(out)
    )
    assert code == 2 and "exists" in text


def test_an_encrypted_key_stays_encrypted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    net = tmp_path / "net"
    init_network(net, members=4, clients=1)
    keys = KeyPair.generate()
    key_file = tmp_path / "app.pem"
    keys.save(key_file, b"s3cret")
    code, text = run("client", "tls-files", "--key", str(key_file), "--net", str(net), "--out", "x")
    assert code == 2 and "CONSORTIUM_KEY_PASSPHRASE" in text

    monkeypatch.setenv("CONSORTIUM_KEY_PASSPHRASE", "s3cret")
    out = tmp_path / "tls"
    code, text = run(
        "client", "tls-files", "--key", str(key_file), "--net", str(net), "--out", str(out)
    )
    assert code == 0, text
    assert "not list this key" in text  # (not admitted in genesis: said, not refused)
    pem = (out / "key.pem").read_bytes()
    assert b"BEGIN ENCRYPTED PRIVATE KEY" in pem
    key = serialization.load_pem_private_key(pem, b"s3cret")
    assert isinstance(key, Ed25519PrivateKey)
    assert KeyPair(key, keys.public).seed() == keys.seed()
    cert = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    assert certificate_public_key(cert.public_bytes(serialization.Encoding.DER)) == keys.public
