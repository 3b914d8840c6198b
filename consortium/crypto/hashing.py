"""SHA-256 digests. Every hash in the ledger and the protocols is SHA-256 over canonical bytes."""

from __future__ import annotations

import hashlib

DIGEST_BYTES = 32


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def sha256_concat(*parts: bytes) -> bytes:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.digest()
