"""Ed25519 keys: generation, PKCS#8 PEM key files (mode 0600, optional passphrase), and public-key
validation at enrolment.

The cryptography library accepts a trivial signature (R = identity, S = 0) for any message under
a small-order public key (shared/testdata/ed25519-small-order-keys.txt), so every member and
client key is checked with libsodium's point validation before it is enrolled: the encoding must
be canonical, on the curve, in the prime-order subgroup and not of small order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nacl.bindings
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


class InvalidKeyError(ValueError):
    """A key file or public key that cannot be used; the message says what to do."""


def validate_public_key(raw: bytes) -> bytes:
    """Return `raw` if it is an acceptable Ed25519 public key, else raise InvalidKeyError."""
    if not isinstance(raw, bytes) or len(raw) != PUBLIC_KEY_BYTES:
        raise InvalidKeyError(f"an Ed25519 public key is {PUBLIC_KEY_BYTES} bytes")
    # libsodium: canonical encoding, on the main subgroup, not of small order.
    if not nacl.bindings.crypto_core_ed25519_is_valid_point(raw):
        raise InvalidKeyError(
            f"public key {raw.hex()[:16]}… is not a valid Ed25519 point of prime order "
            "(small-order and non-canonical keys are refused)"
        )
    return raw


@dataclass(frozen=True, slots=True)
class KeyPair:
    private: Ed25519PrivateKey
    public: bytes

    @classmethod
    def generate(cls) -> KeyPair:
        sk = Ed25519PrivateKey.generate()
        return cls(sk, _raw_public(sk))

    @classmethod
    def from_seed(cls, seed: bytes) -> KeyPair:
        """Deterministic key from a 32-byte seed (tests and simulations only)."""
        sk = Ed25519PrivateKey.from_private_bytes(seed)
        return cls(sk, _raw_public(sk))

    def seed(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def to_pem(self, passphrase: bytes | None = None) -> bytes:
        enc: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase)
            if passphrase
            else serialization.NoEncryption()
        )
        return self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc
        )

    def save(self, path: Path, passphrase: bytes | None = None) -> None:
        """Write PKCS#8 PEM, created with mode 0600 (never world-readable, even briefly)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(self.to_pem(passphrase))
            f.flush()
            os.fsync(f.fileno())

    @classmethod
    def load(cls, path: Path, passphrase: bytes | None = None) -> KeyPair:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InvalidKeyError(f"{path}: cannot read key file: {exc.strerror}") from None
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise InvalidKeyError(
                f"{path}: key file is readable by others (mode {mode:o}); run chmod 600 {path}"
            )
        try:
            sk = serialization.load_pem_private_key(data, password=passphrase)
        except TypeError:
            raise InvalidKeyError(
                f"{path}: the key is passphrase-protected; give the passphrase "
                "(CONSORTIUM_KEY_PASSPHRASE)"
                if passphrase is None
                else f"{path}: a passphrase was given but the key is not encrypted"
            ) from None
        except ValueError:
            if passphrase is not None and b"ENCRYPTED" in data:
                raise InvalidKeyError(
                    f"{path}: the passphrase is wrong for this encrypted key"
                ) from None
            raise InvalidKeyError(f"{path}: not a PKCS#8 PEM private key") from None
        if not isinstance(sk, Ed25519PrivateKey):
            raise InvalidKeyError(f"{path}: not an Ed25519 key")
        return cls(sk, _raw_public(sk))


def _raw_public(sk: Ed25519PrivateKey) -> bytes:
    return sk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
