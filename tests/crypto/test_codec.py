"""The canonical codec: one encoding per value, garbage raises only WireFormatError."""

from __future__ import annotations

import contextlib
from pathlib import Path

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from consortium.crypto.codec import (
    WireFormatError,
    as_bytes,
    as_int,
    as_list,
    as_str,
    digest_of,
    pack,
    unpack,
    unpack_canonical,
)

DATA = Path(__file__).parents[1] / "data"


def noncanonical_groups() -> list[list[bytes]]:
    """The file's groups: each starts after a comment, its first line is the canonical form."""
    groups: list[list[bytes]] = []
    current: list[bytes] = []
    for line in (DATA / "msgpack-noncanonical.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            if current:
                groups.append(current)
            current = []
            continue
        current.append(bytes.fromhex(line.split()[0]))
    if current:
        groups.append(current)
    return groups


def test_the_test_vectors_are_there() -> None:
    groups = noncanonical_groups()
    assert [len(g) for g in groups] == [9, 4]


@pytest.mark.parametrize("group", noncanonical_groups(), ids=["int 1", "str a"])
def test_every_noncanonical_encoding_is_refused_and_the_canonical_one_decodes(
    group: list[bytes],
) -> None:
    canonical, *others = group
    value = unpack_canonical(canonical)
    assert pack(value) == canonical
    for data in others:
        assert unpack(data) == value  # msgpack itself accepts it...
        with pytest.raises(WireFormatError, match="non-canonical"):
            unpack_canonical(data)  # ...the canonical decoder does not


def test_noncanonical_encodings_nested_in_arrays_are_refused() -> None:
    for group in noncanonical_groups():
        canonical, *others = group
        for data in others:
            with pytest.raises(WireFormatError, match="non-canonical"):
                unpack_canonical(b"\x92" + canonical + data)
    # An array header in a longer form than needed.
    with pytest.raises(WireFormatError, match="non-canonical"):
        unpack_canonical(b"\xdc\x00\x01\x01")


def test_floats_maps_and_extensions_are_not_part_of_the_wire_format() -> None:
    with pytest.raises(WireFormatError, match="float"):
        unpack_canonical(pack([1, [1.5]]))
    with pytest.raises(WireFormatError):
        unpack(pack({"a": 1}))
    with pytest.raises(WireFormatError):
        unpack(msgpack.packb(msgpack.ExtType(1, b"x")))


def test_trailing_bytes_and_oversize_values_are_refused() -> None:
    with pytest.raises(WireFormatError):
        unpack(pack(1) + b"\x01")
    with pytest.raises(WireFormatError, match="exceeds the limit"):
        unpack(pack(b"x" * 100), max_len=50)
    with pytest.raises(WireFormatError, match="exceeds the limit"):
        unpack_canonical(pack(b"x" * 100), max_len=50)


def test_shape_checks_name_what_is_wrong() -> None:
    with pytest.raises(WireFormatError, match="header: expected 2 fields, got 1"):
        as_list([1], 2, "header")
    with pytest.raises(WireFormatError, match="expected an array"):
        as_list(b"x")
    with pytest.raises(WireFormatError, match="expected an integer"):
        as_int(True)
    with pytest.raises(WireFormatError, match="outside"):
        as_int(-1)
    with pytest.raises(WireFormatError, match="expected 32 bytes"):
        as_bytes(b"x", size=32)
    with pytest.raises(WireFormatError, match="exceeds"):
        as_bytes(b"xx", max_len=1)
    with pytest.raises(WireFormatError, match="expected a string"):
        as_str(b"x")
    with pytest.raises(WireFormatError, match="longer than"):
        as_str("xx", max_len=1)


def test_digest_of_is_the_hash_of_the_canonical_encoding() -> None:
    import hashlib

    assert digest_of([1, b"a", "b"]) == hashlib.sha256(pack([1, b"a", "b"])).digest()
    assert digest_of([1]) != digest_of([b"\x01"])


@given(st.binary(max_size=300))
def test_garbage_raises_only_wire_format_error(data: bytes) -> None:
    with contextlib.suppress(WireFormatError):
        unpack(data)
    with contextlib.suppress(WireFormatError):
        unpack_canonical(data)


@given(st.sampled_from([b"\x91", b"\x92", b"\xdc\x00\x03", b"\xc4\x05", b"\xd9\x02"]), st.binary())
def test_truncated_and_mangled_frames_raise_only_wire_format_error(
    prefix: bytes, rest: bytes
) -> None:
    with contextlib.suppress(WireFormatError):
        unpack_canonical(prefix + rest)


def test_deeply_nested_arrays_raise_only_wire_format_error() -> None:
    with contextlib.suppress(WireFormatError):
        unpack_canonical(b"\x91" * 100_000 + b"\x01")


values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.binary() | st.text(),
    lambda inner: st.lists(inner, max_size=5),
    max_leaves=20,
)


@given(values)
def test_every_value_round_trips_through_its_canonical_encoding(value: object) -> None:
    data = pack(value)
    assert unpack_canonical(data) == value
    assert pack(unpack(data)) == data
