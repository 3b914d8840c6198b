"""The canonical encoding: msgpack arrays of a fixed field order, ints, bytes, strings, no floats.

msgpack accepts several byte encodings of one value (the integer 1 as fixint, uint8, int16, ...;
see shared/testdata/msgpack-noncanonical.txt). Anything that is hashed or signed is produced by
`pack` (which always chooses the shortest form) and anything received that will be hashed or
whose signature will be checked must pass `unpack_canonical`, which re-encodes the decoded value
and refuses the frame unless the bytes are identical. Signatures are still checked over the bytes
received, never over a re-encoding.
"""

from __future__ import annotations

from typing import Any

import msgpack

from consortium.crypto.hashing import sha256


class WireFormatError(ValueError):
    """Bytes that are not a well-formed, canonical value of the expected shape."""


# Limits passed to every unpackb: nothing a peer sends can make us allocate more than this.
_MAX_BIN = 16 * 1024 * 1024
_MAX_STR = 1024 * 1024
_MAX_ARRAY = 1_000_000
_MAX_MAP = 0  # maps are never part of the wire format (their key order is not canonical)


def pack(value: Any) -> bytes:
    """Canonical bytes of `value` (lists/tuples, ints, bytes, str, bool, None only)."""
    return msgpack.packb(value, use_bin_type=True, strict_types=False)  # type: ignore[no-any-return]


def unpack(data: object, *, max_len: int | None = None) -> Any:
    """Decode one msgpack value with explicit limits; raises only WireFormatError (`data` is
    typed `object`: compiled, a wrong type would otherwise raise TypeError at the call)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WireFormatError(f"expected bytes, not {type(data).__name__}")
    if max_len is not None and len(data) > max_len:
        raise WireFormatError(f"value of {len(data)} bytes exceeds the limit of {max_len}")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=_MAX_BIN,
            max_str_len=_MAX_STR,
            max_array_len=_MAX_ARRAY,
            max_map_len=_MAX_MAP,
            max_ext_len=0,
        )
    except WireFormatError:
        raise
    except Exception as exc:  # msgpack raises a zoo of types on garbage
        raise WireFormatError(f"undecodable msgpack: {type(exc).__name__}: {exc}") from None


def unpack_canonical(data: object, *, max_len: int | None = None) -> Any:
    """Decode and insist that `data` is the canonical encoding of what it decodes to."""
    value = unpack(data, max_len=max_len)
    _refuse_non_wire(value)
    try:
        again = pack(value)
    except Exception as exc:
        raise WireFormatError(f"value cannot be re-encoded: {exc}") from None
    if again != data:
        raise WireFormatError("non-canonical encoding")
    return value


def _refuse_non_wire(value: Any) -> None:
    """Refuse what decodes but is no wire value: floats, and the empty map and the empty
    extension value that the decoder's limits (no map entries, no extension bytes) still let
    through (docs/protocol.md: "no maps")."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, float):
            raise WireFormatError("floats are not part of the wire format")
        elif isinstance(v, dict):
            raise WireFormatError("maps are not part of the wire format")
        elif isinstance(v, msgpack.ExtType):
            raise WireFormatError("extension values are not part of the wire format")


def array_header_bytes(count: int) -> int:
    """The bytes msgpack spends on the header of an array of `count` items (pack's choice)."""
    return 1 if count <= 15 else 3 if count <= 0xFFFF else 5


def bin_header_bytes(length: int) -> int:
    """The bytes msgpack spends on the header of a bin of `length` bytes (pack's choice)."""
    return 2 if length <= 0xFF else 3 if length <= 0xFFFF else 5


def digest_of(value: Any) -> bytes:
    """SHA-256 of the canonical encoding of `value`."""
    return sha256(pack(value))


# --- shape checks used by every decoder -------------------------------------------------------


def as_list(v: Any, n: int | None = None, what: str = "value") -> list[Any]:
    if not isinstance(v, list):
        raise WireFormatError(f"{what}: expected an array")
    if n is not None and len(v) != n:
        raise WireFormatError(f"{what}: expected {n} fields, got {len(v)}")
    return v


def as_int(v: Any, what: str = "value", *, lo: int = 0, hi: int = 2**63 - 1) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise WireFormatError(f"{what}: expected an integer")
    if not lo <= v <= hi:
        raise WireFormatError(f"{what}: {v} outside [{lo}, {hi}]")
    return v


def as_bytes(
    v: Any, what: str = "value", *, size: int | None = None, max_len: int = _MAX_BIN
) -> bytes:
    if not isinstance(v, bytes):
        raise WireFormatError(f"{what}: expected bytes")
    if size is not None and len(v) != size:
        raise WireFormatError(f"{what}: expected {size} bytes, got {len(v)}")
    if len(v) > max_len:
        raise WireFormatError(f"{what}: {len(v)} bytes exceeds {max_len}")
    return v


def as_str(v: Any, what: str = "value", *, max_len: int = 256) -> str:
    if not isinstance(v, str):
        raise WireFormatError(f"{what}: expected a string")
    if len(v) > max_len:
        raise WireFormatError(f"{what}: string longer than {max_len}")
    return v


def as_bool(v: Any, what: str = "value") -> bool:
    if not isinstance(v, bool):
        raise WireFormatError(f"{what}: expected a boolean")
    return v
