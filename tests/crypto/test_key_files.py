"""Key files: PKCS#8 PEM, created 0600, optional passphrase, clear refusals."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from consortium.crypto.keys import InvalidKeyError, KeyPair

SEED = bytes(range(32))


def test_a_saved_key_is_mode_0600_from_the_start_and_loads_back(tmp_path: Path) -> None:
    keys = KeyPair.from_seed(SEED)
    path = tmp_path / "config" / "node_key.pem"
    old = os.umask(0)  # even a permissive umask must not make it readable by others
    try:
        keys.save(path)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = KeyPair.load(path)
    assert loaded.public == keys.public and loaded.seed() == SEED


def test_an_existing_key_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    KeyPair.from_seed(SEED).save(path)
    with pytest.raises(FileExistsError):
        KeyPair.generate().save(path)
    assert KeyPair.load(path).seed() == SEED


def test_a_passphrase_round_trips(tmp_path: Path) -> None:
    keys = KeyPair.from_seed(SEED)
    path = tmp_path / "k.pem"
    keys.save(path, b"correct horse")
    text = path.read_bytes()
    assert b"ENCRYPTED" in text and keys.to_pem() not in text
    assert KeyPair.load(path, b"correct horse").public == keys.public


def test_a_wrong_or_missing_passphrase_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    KeyPair.from_seed(SEED).save(path, b"correct horse")
    with pytest.raises(InvalidKeyError, match="passphrase is wrong"):
        KeyPair.load(path, b"battery staple")
    with pytest.raises(InvalidKeyError, match="passphrase-protected; give the passphrase"):
        KeyPair.load(path)


def test_a_passphrase_for_an_unencrypted_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    KeyPair.from_seed(SEED).save(path)
    with pytest.raises(InvalidKeyError, match="not encrypted"):
        KeyPair.load(path, b"pass")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o666])
def test_a_key_file_readable_by_others_is_refused_with_the_fix(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "k.pem"
    KeyPair.from_seed(SEED).save(path)
    os.chmod(path, mode)
    with pytest.raises(InvalidKeyError, match=f"readable by others.*chmod 600 {path}"):
        KeyPair.load(path)


def test_files_that_are_not_ed25519_keys_are_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a key")
    os.chmod(garbage, 0o600)
    with pytest.raises(InvalidKeyError, match="not a PKCS#8 PEM private key"):
        KeyPair.load(garbage)
    ec_key = tmp_path / "ec.pem"
    ec_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(ec_key, 0o600)
    with pytest.raises(InvalidKeyError, match="not an Ed25519 key"):
        KeyPair.load(ec_key)
    with pytest.raises(InvalidKeyError, match="cannot read key file"):
        KeyPair.load(tmp_path / "missing.pem")


def test_keys_from_one_seed_are_deterministic_and_generated_keys_differ() -> None:
    assert KeyPair.from_seed(SEED).public == KeyPair.from_seed(SEED).public
    assert KeyPair.generate().public != KeyPair.generate().public
