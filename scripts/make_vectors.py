"""Write tests/vectors/shared.json: the cases every implementation of the client side must decide
exactly as the node does, each with the verdict consortium's own code gives.

    PYTHONPATH=. python scripts/make_vectors.py           # (re)write the file
    PYTHONPATH=. python scripts/make_vectors.py --check   # exit 1 if the file is not what the
                                                         # code produces now

Deterministic: fixed key seeds, nonces and timestamps (Ed25519 signatures are deterministic).
The inputs of the hostile cases (small-order points, non-canonical encodings, S >= L, mixed-order
keys and nonces) are built with the small reference arithmetic below; every VERDICT comes from
the node's code: Ed25519Verifier and validate_public_key (libsodium), codec.pack and
unpack_canonical, Transaction.create, merkle.verify_inclusion, verify_bundle, receipts.loads and
verify_receipt, Genesis.from_json. The TypeScript client (clients/js) and
tests/crypto/test_shared_vectors.py read this one file.

Value descriptors (msgpack cases), JSON arrays so any language can rebuild the value:
    ["nil"] ["bool", b] ["int", "decimal"] ["float", x] ["str", s] ["bin", hex]
    ["array", [value, ...]] ["map"] (an empty map) ["ext", code, hex]
    ["str_repeat", s, count] ["bin_repeat", hex, count] ["array_repeat", value, count]
    ["nest", value, depth] (value inside depth one-element arrays)
Byte descriptors: a hex string, or {"parts": [["hex", h] | ["repeat", hex, count], ...]}
(concatenated), or {"sha256": hex, "length": n} for a large canonical encoding (encode cases).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from consortium.client.receipts import from_bundles
from consortium.crypto.codec import WireFormatError, pack, unpack_canonical
from consortium.crypto.keys import InvalidKeyError, KeyPair, validate_public_key
from consortium.crypto.merkle import inclusion_proof, merkle_root, verify_inclusion
from consortium.crypto.signing import Domain, Ed25519Signer, Ed25519Verifier, signed_message
from consortium.ledger.block import Block
from consortium.ledger.certificates import SignedVote, block_signature_body
from consortium.ledger.genesis import Genesis, GenesisError, Mode
from consortium.ledger.tx import CompareAndSet, Delete, Get, Op, Put, Transaction
from consortium.protocol.receipts import ReceiptFormatError, ReceiptProof, loads, verify_receipt
from consortium.protocol.verify import Bundle, receipt_bundle, verify_bundle
from tests.ledger.chain_fixture import MEMBERS, ChainBuilder, make_genesis

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "vectors" / "shared.json"
FORMAT = "consortium-shared-vectors/1"
VERIFIER = Ed25519Verifier()


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# --- Ed25519 reference arithmetic (inputs for hostile cases only; verdicts are libsodium's) ---

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)
Point = tuple[int, int]
IDENTITY: Point = (0, 1)


def _add(a: Point, b: Point) -> Point:
    (x1, y1), (x2, y2) = a, b
    t = D * x1 * x2 * y1 * y2 % P
    x3 = (x1 * y2 + x2 * y1) * pow(1 + t, P - 2, P) % P
    y3 = (y1 * y2 + x1 * x2) * pow(1 - t, P - 2, P) % P
    return x3, y3


def _mul(k: int, a: Point) -> Point:
    out, add = IDENTITY, a
    while k:
        if k & 1:
            out = _add(out, add)
        add = _add(add, add)
        k >>= 1
    return out


def _x_of(y: int, sign: int) -> int | None:
    """The x with that sign bit for y, or None when y is on no point (y < p)."""
    u, v = (y * y - 1) % P, (D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P
    if v * x * x % P == (-u) % P:
        x = x * SQRT_M1 % P
    if v * x * x % P != u:
        return None
    if x == 0 and sign:
        return None
    return x if x & 1 == sign else P - x


def _encode(a: Point) -> bytes:
    x, y = a
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _decode(raw: bytes) -> Point:
    n = int.from_bytes(raw, "little")
    y, sign = n & ((1 << 255) - 1), n >> 255
    x = _x_of(y % P, sign)
    assert x is not None, raw.hex()
    return x, y % P


BASE = _decode(bytes.fromhex("5866666666666666666666666666666666666666666666666666666666666666"))
T8 = _decode(bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"))


def _hint(*parts: bytes) -> int:
    return int.from_bytes(hashlib.sha512(b"".join(parts)).digest(), "little")


def _secret(seed: bytes) -> tuple[int, bytes]:
    digest = hashlib.sha512(seed).digest()
    a = int.from_bytes(digest[:32], "little")
    a &= (1 << 254) - 8
    a |= 1 << 254
    return a, digest[32:]


def _sign_with(
    a: int, public: bytes, r: int, message: bytes, r_point: Point | None = None
) -> bytes:
    """S = r + H(R || A || M) a, with R = rB unless given: a signature by scalar `a` under
    whatever public key bytes are named (the mixed-order cases name A + T)."""
    big_r = _encode(r_point if r_point is not None else _mul(r, BASE))
    s = (r + _hint(big_r, public, message) * a) % L
    return big_r + s.to_bytes(32, "little")


def small_order_encodings() -> list[tuple[str, bytes]]:
    """The 8 points of order dividing 8, canonical, then the 6 other encodings of them that
    decode at all (sign bit set on x = 0; y + p for y = 0 and y = 1)."""
    points = [_mul(k, T8) for k in range(8)]
    out = [
        (f"small-order point {k}T (order {8 // _gcd8(k)})", _encode(p))
        for k, p in enumerate(points)
    ]
    for name, y, sign in [
        ("identity with the sign bit set", 1, 1),
        ("order-2 point with the sign bit set", P - 1, 1),
        ("y = p (0 + p), sign 0", P, 0),
        ("y = p (0 + p), sign 1", P, 1),
        ("y = p + 1 (1 + p), sign 0", P + 1, 0),
        ("y = p + 1 (1 + p), sign 1", P + 1, 1),
    ]:
        out.append((f"non-canonical {name}", (y | (sign << 255)).to_bytes(32, "little")))
    return out


def _gcd8(k: int) -> int:
    g = 8
    while k % g:
        g //= 2
    return g


def _noncanonical_points() -> list[tuple[int, bytes]]:
    """Encodings with y = k + p (k < 19) of points that exist and are not of small order."""
    out = []
    for k in range(2, 19):
        if _x_of(k, 0) is not None:
            out.append((k, (k + P).to_bytes(32, "little")))
    return out


def _off_curve() -> bytes:
    y = 2
    while _x_of(y, 0) is not None:
        y += 1
    return y.to_bytes(32, "little")


def ed25519_vectors() -> dict[str, Any]:
    chain = _h(b"shared vectors chain")
    other_chain = _h(b"shared vectors other chain")
    seeds = [_h(b"shared vectors key %d" % i) for i in range(3)]
    keys = [KeyPair.from_seed(s) for s in seeds]

    key_cases = [
        {"name": f"key {i}", "seed": s.hex(), "public_key": k.public.hex()}
        for i, (s, k) in enumerate(zip(seeds, keys, strict=True))
    ]
    sign_cases = []
    for i, (name, domain, body) in enumerate(
        [
            ("tx, short body", Domain.TX, b"\x93\x01\x02\x03"),
            ("block, empty body", Domain.BLOCK, b""),
            ("read, 300-byte body", Domain.READ, bytes(range(256)) + b"x" * 44),
        ]
    ):
        k = keys[i % len(keys)]
        sig = Ed25519Signer(k).sign(domain, chain, body)
        a, prefix = _secret(seeds[i % len(keys)])
        message = signed_message(domain, chain, body)
        assert sig == _sign_with(a, k.public, _hint(prefix, message) % L, message), "reference"
        sign_cases.append(
            {
                "name": name,
                "seed": seeds[i % len(keys)].hex(),
                "domain": domain.name,
                "chain_id": chain.hex(),
                "body": body.hex(),
                "signature": sig.hex(),
            }
        )

    verify: list[dict[str, Any]] = []

    def case(
        name: str,
        public: bytes,
        sig: bytes,
        body: bytes,
        domain: Domain = Domain.TX,
        c: bytes = chain,
    ) -> None:
        verify.append(
            {
                "name": name,
                "public_key": public.hex(),
                "domain": domain.name,
                "chain_id": c.hex(),
                "body": body.hex(),
                "signature": sig.hex(),
                "valid": VERIFIER.verify(public, domain, c, body, sig),
            }
        )

    k0, seed0 = keys[0], seeds[0]
    a0, prefix0 = _secret(seed0)
    body = b"shared vectors message"
    message = signed_message(Domain.TX, chain, body)
    good = Ed25519Signer(k0).sign(Domain.TX, chain, body)
    case("valid", k0.public, good, body)
    case("valid, empty body", k0.public, Ed25519Signer(k0).sign(Domain.TX, chain, b""), b"")
    block_sig = Ed25519Signer(keys[1]).sign(Domain.BLOCK, chain, body)
    case("valid, block domain", keys[1].public, block_sig, body, Domain.BLOCK)
    case("wrong message (one bit flipped)", k0.public, good, bytes([body[0] ^ 1]) + body[1:])
    case("wrong message (one byte appended)", k0.public, good, body + b"\x00")
    case("wrong domain (signed as tx, checked as block)", k0.public, good, body, Domain.BLOCK)
    case("wrong chain id", k0.public, good, body, Domain.TX, other_chain)
    case("wrong key", keys[1].public, good, body)
    case("R with one bit flipped", k0.public, bytes([good[0] ^ 4]) + good[1:], body)
    case("S with one bit flipped", k0.public, good[:40] + bytes([good[40] ^ 1]) + good[41:], body)
    s_int = int.from_bytes(good[32:], "little")
    case("S + L (S >= L)", k0.public, good[:32] + (s_int + L).to_bytes(32, "little"), body)
    case("S = L", k0.public, good[:32] + L.to_bytes(32, "little"), body)
    case("S with the top bit set", k0.public, good[:63] + bytes([good[63] | 0x80]), body)
    case("signature of 63 bytes", k0.public, good[:63], body)
    case("public key of 31 bytes", k0.public[:31], good, body)

    trivial = bytes.fromhex("01" + "00" * 63)  # R = identity, S = 0
    for name, enc in small_order_encodings():
        case(f"public key: {name}, trivial signature", enc, trivial, body)
        # R = that point, S = 0: cofactored verification accepts for some of these keys.
        case(f"public key: {name}, R = A, S = 0", enc, enc + b"\x00" * 32, body)
    for name, enc in small_order_encodings():
        # S = H(R||A||M) a: [S]B - [h]A is the identity, so [8](R - ([S]B - [h]A)) = 0: a
        # cofactored check accepts every small-order R that decodes, cofactorless byte
        # comparison accepts R = the canonical identity; libsodium refuses small-order R.
        s = _hint(enc, k0.public, message) * a0 % L
        case(f"R: {name}, S = H(R,A,M)a", k0.public, enc + s.to_bytes(32, "little"), body)
    for y, enc in _noncanonical_points():
        case(f"public key: non-canonical y = {y} + p", enc, good, body)
        s = _hint(enc, k0.public, message) * a0 % L
        case(f"R: non-canonical y = {y} + p", k0.public, enc + s.to_bytes(32, "little"), body)
    case("public key not on the curve", _off_curve(), good, body)
    case("R not on the curve", k0.public, _off_curve() + good[32:], body)

    # Mixed-order public key A + T (T of order 8): the signer knows a for A. [S]B - [h](A + T)
    # = R - [h]T, so cofactorless verification passes exactly when 8 divides h.
    mixed = _encode(_add(_decode(k0.public), T8))
    found = {True: False, False: False}
    for counter in range(256):
        b = b"mixed-order key %d" % counter
        m = signed_message(Domain.TX, chain, b)
        r = _hint(prefix0, m) % L
        sig = _sign_with(a0, mixed, r, m)
        divisible = _hint(sig[:32], mixed, m) % L % 8 == 0
        if not found[divisible]:
            found[divisible] = True
            case(
                f"public key A + T8 (mixed order), h {'=' if divisible else '!='} 0 mod 8",
                mixed,
                sig,
                b,
            )
        if all(found.values()):
            break
    assert all(found.values())
    # Mixed-order R: R' = rB + T; [S]B - [h]A = rB != R': cofactored accepts, cofactorless not.
    for order, t in [(8, T8), (4, _mul(2, T8)), (2, _mul(4, T8))]:
        r = _hint(prefix0, message, b"mixed R") % L
        r_point = _add(_mul(r, BASE), t)
        case(
            f"R = rB + T (T of order {order})",
            k0.public,
            _sign_with(a0, k0.public, r, message, r_point),
            body,
        )

    public_keys = []

    def key_case(name: str, raw: bytes) -> None:
        try:
            validate_public_key(raw)
            valid = True
        except InvalidKeyError:
            valid = False
        public_keys.append({"name": name, "public_key": raw.hex(), "valid": valid})

    for i, k in enumerate(keys):
        key_case(f"key {i}", k.public)
    for name, enc in small_order_encodings():
        key_case(name, enc)
    key_case("A + T8 (mixed order)", mixed)
    key_case("A + T2 (mixed order)", _encode(_add(_decode(k0.public), _mul(4, T8))))
    for y, enc in _noncanonical_points():
        key_case(f"non-canonical y = {y} + p", enc)
        key_case(f"canonical y = {y}, not of prime order", y.to_bytes(32, "little"))
    key_case("not on the curve", _off_curve())
    key_case("key 0 with the sign bit flipped", k0.public[:31] + bytes([k0.public[31] ^ 0x80]))

    # A client key file as `consortium init` writes it (PKCS#8 PEM, unencrypted).
    key_files = [
        {"name": "key 0", "pem": keys[0].to_pem().decode(), "public_key": keys[0].public.hex()}
    ]
    return {
        "keys": key_cases,
        "key_files": key_files,
        "sign": sign_cases,
        "verify": verify,
        "public_keys": public_keys,
    }


# --- msgpack ---------------------------------------------------------------------------------


def build_value(d: list[Any]) -> Any:
    tag = d[0]
    if tag == "nil":
        return None
    if tag in ("bool", "float", "str"):
        return d[1]
    if tag == "int":
        return int(d[1])
    if tag == "bin":
        return bytes.fromhex(d[1])
    if tag == "array":
        return [build_value(x) for x in d[1]]
    if tag == "map":
        return {}
    if tag == "ext":
        import msgpack

        return msgpack.ExtType(d[1], bytes.fromhex(d[2]))
    if tag == "str_repeat":
        return d[1] * d[2]
    if tag == "bin_repeat":
        return bytes.fromhex(d[1]) * d[2]
    if tag == "array_repeat":
        return [build_value(d[1]) for _ in range(d[2])]
    if tag == "nest":
        value = build_value(d[1])
        for _ in range(d[2]):
            value = [value]
        return value
    raise ValueError(f"unknown value tag {tag!r}")


def build_bytes(d: str | dict[str, Any]) -> bytes:
    if isinstance(d, str):
        return bytes.fromhex(d)
    out = bytearray()
    for kind, *args in d["parts"]:
        out += bytes.fromhex(args[0]) * (args[1] if kind == "repeat" else 1)
    return bytes(out)


def _int(n: int) -> list[Any]:
    return ["int", str(n)]


def _bytes_field(raw: bytes) -> str | dict[str, Any]:
    if len(raw) <= 1024:
        return raw.hex()
    return {"sha256": _h(raw).hex(), "length": len(raw)}


def msgpack_vectors() -> dict[str, Any]:
    encode_values: list[tuple[str, list[Any]]] = []
    for n in [
        0,
        1,
        127,
        128,
        255,
        256,
        65535,
        65536,
        2**32 - 1,
        2**32,
        2**53 - 1,
        2**53,
        2**53 + 1,
        2**63 - 1,
        2**63,
        2**64 - 1,
        -1,
        -32,
        -33,
        -128,
        -129,
        -32768,
        -32769,
        -(2**31),
        -(2**31) - 1,
        -(2**53) - 1,
        -(2**63),
    ]:
        encode_values.append((f"int {n}", _int(n)))
    encode_values += [
        ("nil", ["nil"]),
        ("false", ["bool", False]),
        ("true", ["bool", True]),
        ("empty string", ["str", ""]),
        ("string 'a'", ["str", "a"]),
        ("non-ASCII string", ["str", "gr\u00fc\u00df \u2603 \U0001f600"]),
        ("string with a byte-order mark", ["str", "\ufeffa"]),
        ("string of 31 bytes", ["str_repeat", "s", 31]),
        ("string of 32 bytes", ["str_repeat", "s", 32]),
        ("string of 255 bytes", ["str_repeat", "s", 255]),
        ("string of 256 bytes", ["str_repeat", "s", 256]),
        ("string of 65535 bytes", ["str_repeat", "s", 65535]),
        ("string of 65536 bytes", ["str_repeat", "s", 65536]),
        ("string of 1 MiB (the decode limit)", ["str_repeat", "s", 1 << 20]),
        ("empty bin", ["bin", ""]),
        ("bin of 3 bytes", ["bin", "00ff10"]),
        ("bin of 255 bytes", ["bin_repeat", "ab", 255]),
        ("bin of 256 bytes", ["bin_repeat", "ab", 256]),
        ("bin of 65535 bytes", ["bin_repeat", "ab", 65535]),
        ("bin of 65536 bytes", ["bin_repeat", "ab", 65536]),
        ("bin of 16 MiB (the decode limit)", ["bin_repeat", "ab", 1 << 24]),
        ("empty array", ["array", []]),
        ("array of 15", ["array_repeat", ["nil"], 15]),
        ("array of 16", ["array_repeat", ["nil"], 16]),
        ("array of 65535", ["array_repeat", _int(1), 65535]),
        ("array of 65536", ["array_repeat", _int(1), 65536]),
        ("array of 1000000 (the decode limit)", ["array_repeat", ["nil"], 1_000_000]),
        (
            "nested mixed array",
            ["array", [_int(1), ["str", "put"], ["bin", "6b6579"], ["array", [["nil"]]]]],
        ),
    ]
    encode_values.append(
        ("1024 nested arrays (the decoder's depth limit)", ["nest", ["nil"], 1024])
    )

    encode = []
    for name, desc in encode_values:
        raw = pack(build_value(desc))
        unpack_canonical(raw)  # every encode case is also accepted back
        encode.append({"name": name, "value": desc, "bytes": _bytes_field(raw)})

    decode_cases: list[tuple[str, str | dict[str, Any]]] = []
    for line in (ROOT / "tests" / "data" / "msgpack-noncanonical.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            hexed = line.split()[0]
            decode_cases.append((f"tests/data/msgpack-noncanonical.txt: {hexed}", hexed))
    decode_cases += [
        ("int 0 as uint8", "cc00"),
        ("int 127 as uint8", "cc7f"),
        ("int 255 as uint16", "cd00ff"),
        ("int 65535 as uint32", "ce0000ffff"),
        ("int 2^32-1 as uint64", "cf00000000ffffffff"),
        ("int 200 as int16", "d100c8"),
        ("int -1 as int8", "d0ff"),
        ("int -32 as int8", "d0e0"),
        ("int -1 as int64", "d3ffffffffffffffff"),
        ("int -128 as int16", "d1ff80"),
        ("int -33 as int8 (canonical)", "d0df"),
        ("int 2^63 as uint64 (canonical)", "cf8000000000000000"),
        ("int 2^63-1 as int64", "d37fffffffffffffff"),
        ("int 2^64-1 as uint64 (canonical)", "cfffffffffffffffff"),
        ("empty string as str8", "d900"),
        ("empty string as str16", "da0000"),
        ("string of 32 bytes as str16", {"parts": [["hex", "da0020"], ["repeat", "73", 32]]}),
        ("string of 256 bytes as str32", {"parts": [["hex", "db00000100"], ["repeat", "73", 256]]}),
        ("empty bin as bin16", "c50000"),
        ("bin of 3 bytes as bin32", "c60000000300ff10"),
        ("bin of 256 bytes as bin32", {"parts": [["hex", "c600000100"], ["repeat", "ab", 256]]}),
        ("empty array as array16", "dc0000"),
        ("array of 1 as array32", "dd00000001c0"),
        ("array of 16 as array32", {"parts": [["hex", "dd00000010"], ["repeat", "c0", 16]]}),
        ("empty map as map16", "de0000"),
        ("empty map as map32", "df00000000"),
        ("map of one entry", "81a161c0"),
        ("map of one entry with an int key", "8101c0"),
        ("float32 1.0", "ca3f800000"),
        ("float64 1.5", "cb3ff8000000000000"),
        ("float64 0.0", "cb0000000000000000"),
        ("array holding a float64", "91cb3ff8000000000000"),
        ("empty map (refused: no maps on the wire)", "80"),
        ("extension 5 empty, as ext8 (refused: no extensions)", "c70005"),
        ("extension 5 empty, as ext16", "c8000005"),
        ("extension 5 empty, as ext32", "c90000000005"),
        ("extension 127 empty, as ext8 (refused: no extensions)", "c7007f"),
        ("extension -1 (timestamp), empty", "c700ff"),
        ("extension -128, empty", "c70080"),
        ("fixext1", "d40501"),
        ("ext8 of one byte", "c7010501"),
        ("reserved byte 0xc1", "c1"),
        ("nothing", ""),
        ("two values", "c0c0"),
        ("a value and a trailing byte", "9101c0"),
        ("truncated uint16", "cd01"),
        ("truncated string", "a361"),
        ("truncated bin", "c40361"),
        ("truncated array", "930101"),
        ("string: invalid UTF-8 (lone continuation byte)", "a180"),
        ("string: UTF-8 surrogate half", "a3eda080"),
        ("string: overlong UTF-8 encoding of '/'", "a2c0af"),
        ("string: code point above U+10FFFF", "a4f4908080"),
        ("string: byte-order mark (accepted)", "a4efbbbf61"),
        ("string: U+FFFF noncharacter (accepted)", "a3efbfbf"),
        (
            "string over the 1 MiB limit",
            {"parts": [["hex", "db00100001"], ["repeat", "73", (1 << 20) + 1]]},
        ),
        (
            "bin over the 16 MiB limit",
            {"parts": [["hex", "c601000001"], ["repeat", "ab", (1 << 24) + 1]]},
        ),
        (
            "array over the 1000000 limit",
            {"parts": [["hex", "dd000f4241"], ["repeat", "c0", 1_000_001]]},
        ),
        ("array header claiming 2^32-1 items", "ddffffffff"),
        (
            "1025 nested arrays (over the depth limit)",
            {"parts": [["repeat", "91", 1025], ["hex", "c0"]]},
        ),
        (
            "1023 nested arrays around an empty one (1024 containers)",
            {"parts": [["repeat", "91", 1023], ["hex", "90"]]},
        ),
        (
            "1024 nested arrays around an empty one (1025 containers)",
            {"parts": [["repeat", "91", 1024], ["hex", "90"]]},
        ),
        (
            "1023 nested arrays around an empty map (1024 containers)",
            {"parts": [["repeat", "91", 1023], ["hex", "80"]]},
        ),
        (
            "1024 nested arrays around an empty map (1025 containers)",
            {"parts": [["repeat", "91", 1024], ["hex", "80"]]},
        ),
    ]
    decode = []
    for name, bdesc in decode_cases:
        raw = build_bytes(bdesc)
        try:
            unpack_canonical(raw)
            canonical = True
        except WireFormatError:
            canonical = False
        decode.append({"name": name, "bytes": bdesc, "canonical": canonical})
    return {"encode": encode, "decode": decode}


# --- transactions ----------------------------------------------------------------------------


def _op_doc(op: Op) -> list[Any]:
    match op:
        case Put(key=k, value=v):
            return ["put", k.hex(), v.hex()]
        case Delete(key=k):
            return ["del", k.hex()]
        case CompareAndSet(key=k, expected=e, new=n):
            return ["cas", k.hex(), None if e is None else e.hex(), None if n is None else n.hex()]
        case Get(key=k):
            return ["get", k.hex()]
    raise ValueError(op)


EXAMPLE_SEED = _h(b"consortium example client")
EXAMPLE_NONCE = b"example-0001"
EXAMPLE_EXPIRY_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def transaction_vectors(chain_id: bytes) -> list[dict[str, Any]]:
    other_seed = _h(b"shared vectors tx key")
    cases: list[tuple[str, bytes, bytes, bytes, int, list[Op]]] = [
        (
            "example (docs/client.md)",
            EXAMPLE_SEED,
            chain_id,
            EXAMPLE_NONCE,
            EXAMPLE_EXPIRY_MS,
            [Put(b"greeting", b"hello")],
        ),
        ("delete, empty nonce", other_seed, chain_id, b"", 0, [Delete(b"k")]),
        (
            "compare-and-set both ways",
            other_seed,
            chain_id,
            bytes(range(32)),
            2**32,
            [CompareAndSet(b"k", None, b"v1"), CompareAndSet(b"k", b"v1", None)],
        ),
        ("get, maximal expiry", other_seed, chain_id, b"\xff", 2**63 - 1, [Get(b"")]),
        (
            "16 ops, long value",
            EXAMPLE_SEED,
            _h(b"another chain"),
            b"n",
            1_700_000_060_000,
            [Put(b"key %d" % i, b"v" * (300 if i == 0 else i)) for i in range(16)],
        ),
    ]
    out = []
    for name, seed, chain, nonce, expiry, ops in cases:
        keys = KeyPair.from_seed(seed)
        tx = Transaction.create(keys, chain, nonce, expiry, ops)
        assert tx.verify_signature(VERIFIER)
        out.append(
            {
                "name": name,
                "seed": seed.hex(),
                "public_key": keys.public.hex(),
                "chain_id": chain.hex(),
                "nonce": nonce.hex(),
                "expiry_ms": str(expiry),  # decimal: JSON numbers past 2^53 lose digits
                "ops": [_op_doc(o) for o in ops],
                "body": tx.body.hex(),
                "id": tx.id.hex(),
                "signature": tx.signature.hex(),
                "encoded": tx.encode().hex(),
            }
        )
    return out


# --- Merkle ----------------------------------------------------------------------------------


def merkle_vectors() -> dict[str, Any]:
    def leaves(n: int) -> list[bytes]:
        return [b"leaf %d" % i for i in range(n)]

    roots = [
        {"leaves": [x.hex() for x in leaves(n)], "root": merkle_root(leaves(n)).hex()}
        for n in [0, 1, 2, 3, 4, 5, 7, 8, 9, 16, 17]
    ]
    cases: list[dict[str, Any]] = []

    def case(
        name: str, leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes
    ) -> None:
        cases.append(
            {
                "name": name,
                "leaf": leaf.hex(),
                "index": index,
                "tree_size": size,
                "proof": [p.hex() for p in proof],
                "root": root.hex(),
                "valid": verify_inclusion(leaf, index, size, proof, root),
            }
        )

    for n in [1, 2, 3, 5, 7, 8, 9, 17]:
        ls = leaves(n)
        root = merkle_root(ls)
        for i in range(n):
            case(f"size {n}, leaf {i}", ls[i], i, n, inclusion_proof(ls, i), root)
    ls = leaves(7)
    root = merkle_root(ls)
    proof = inclusion_proof(ls, 5)
    case("wrong leaf", b"leaf 4", 5, 7, proof, root)
    case("wrong index", ls[5], 4, 7, proof, root)
    case("index = size", ls[5], 7, 7, proof, root)
    case("size one larger", ls[5], 5, 8, proof, root)
    case("size one smaller", ls[5], 5, 6, proof, root)
    case(
        "proof hash with one bit flipped",
        ls[5],
        5,
        7,
        [bytes([proof[0][0] ^ 1]) + proof[0][1:], *proof[1:]],
        root,
    )
    case("proof missing its last hash", ls[5], 5, 7, proof[:-1], root)
    case("proof with an extra hash", ls[5], 5, 7, [*proof, proof[0]], root)
    case("proof hash of 31 bytes", ls[5], 5, 7, [proof[0][:31], *proof[1:]], root)
    case("proofs swapped", ls[5], 5, 7, proof[::-1], root)
    case("wrong root", ls[5], 5, 7, proof, _h(b"another root"))
    case("single leaf with a spurious proof", b"leaf 0", 0, 1, [root], merkle_root([b"leaf 0"]))
    case("leaf hash given as the leaf", _h(b"\x00" + ls[0]), 0, 7, inclusion_proof(ls, 0), root)
    return {"roots": roots, "inclusion": cases}


# --- genesis, bundles, receipt documents ------------------------------------------------------


def genesis_vectors() -> list[dict[str, Any]]:
    pbft, raft = make_genesis(), make_genesis(mode="raft")
    base = json.loads(pbft.to_json())
    cases: list[tuple[str, str]] = [
        ("pbft, 4 members (tests/ledger/chain_fixture.py)", pbft.to_json()),
        ("raft, 4 members", raft.to_json()),
    ]
    partial = {k: v for k, v in base.items() if k != "clients"}
    partial["params"] = {"batch_txs_max": 64, "request_timeout_ms": 5000}
    cases.append(("clients and most params omitted (defaults)", json.dumps(partial)))
    cases.append(("non-ASCII chain name", json.dumps({**base, "chain_name": "r\u00e9seau \u2603"})))
    small = json.loads(json.dumps(base))
    small["members"][2]["public_key"] = "01" + "00" * 31
    cases.append(("a member key of small order", json.dumps(small)))
    mixed = json.loads(json.dumps(base))
    mixed["members"][1]["public_key"] = _encode(_add(_decode(MEMBERS[1].public), T8)).hex()
    cases.append(("a member key of mixed order", json.dumps(mixed)))
    cases.append(("an unknown key", json.dumps({**base, "extra": 1})))
    cases.append(("pbft with 3 members", json.dumps({**base, "members": base["members"][:3]})))
    cases.append(
        ("format of another version", json.dumps({**base, "format": "consortium-genesis/0"}))
    )
    cases.append(
        (
            "window not a multiple of checkpoint_interval",
            json.dumps({**base, "params": {**base["params"], "window": 65}}),
        )
    )
    cases.append(("negative created_ms", json.dumps({**base, "created_ms": -1})))
    cases.append(("an unknown mode", json.dumps({**base, "mode": "paxos"})))
    cases.append(
        (
            "a member address with a scheme",
            json.dumps(
                {
                    **base,
                    "members": [
                        {**base["members"][0], "client_address": "http://127.0.0.1:9200"},
                        *base["members"][1:],
                    ],
                }
            ),
        )
    )
    cases.append(
        (
            "a member address with an IPv6 host in brackets",
            json.dumps(
                {
                    **base,
                    "members": [
                        {**base["members"][0], "peer_address": "[fd00::1]:7101"},
                        *base["members"][1:],
                    ],
                }
            ),
        )
    )
    cases.append(
        (
            "a public key listed twice",
            json.dumps(
                {
                    **base,
                    "clients": [{"name": "c1", "public_key": base["members"][0]["public_key"]}],
                }
            ),
        )
    )
    out = []
    for name, text in cases:
        try:
            g = Genesis.from_json(text, where="genesis.json")
            out.append(
                {"name": name, "json": text, "chain_id": g.chain_id.hex(), "f": g.f, "error": None}
            )
        except GenesisError as exc:
            out.append({"name": name, "json": text, "chain_id": None, "f": None, "error": str(exc)})
    return out


OUTSIDER = KeyPair.from_seed(_h(b"shared vectors outsider"))


def _vote(
    block: Block, signer: int, chain_id: bytes, key: KeyPair | None = None, **kw: Any
) -> SignedVote:
    body = block_signature_body(
        kw.get("height", block.height), kw.get("block_hash", block.hash), signer
    )
    domain = kw.get("domain", Domain.BLOCK)
    return SignedVote(body, Ed25519Signer(key or MEMBERS[signer]).sign(domain, chain_id, body))


def _chain(mode: Mode) -> tuple[Genesis, ChainBuilder, Block]:
    genesis = make_genesis(mode=mode)
    builder = ChainBuilder(genesis=genesis)
    builder.add([builder.tx(Put(b"a", b"1"))])
    block = builder.add(
        [
            builder.tx(Put(b"k%d" % i, b"v")) if i != 3 else builder.tx(Get(b"a"), Delete(b"k0"))
            for i in range(5)
        ]
    )
    return genesis, builder, block


def bundle_vectors() -> dict[str, Any]:
    genesis, builder, block = _chain("pbft")
    chain_id = genesis.chain_id
    earlier = builder.blocks[0][0]
    cases: list[dict[str, Any]] = []

    def case(name: str, bundle: Bundle, member: int) -> None:
        cases.append(
            {
                "name": name,
                "member": member,
                "bundle": bundle.encode().hex(),
                "problem": verify_bundle(bundle, genesis, VERIFIER),
                "signer": bundle.signer(),
            }
        )

    good = receipt_bundle(block.header, block.receipts, 3, _vote(block, 1, chain_id))
    case("good (n2's bundle for receipt 3)", good, 1)
    case(
        "good (n4's bundle for receipt 0)",
        receipt_bundle(block.header, block.receipts, 0, _vote(block, 3, chain_id)),
        3,
    )
    r = good.receipt
    case(
        "receipt status changed",
        replace(good, receipt=replace(r, status="rejected", reason="cas_mismatch")),
        1,
    )
    case("receipt index changed", replace(good, receipt=replace(r, index=2)), 1)
    case("receipt height changed", replace(good, receipt=replace(r, height=r.height + 1)), 1)
    case("receipt index outside the tree", replace(good, receipt=replace(r, index=9)), 1)
    case("proof hash changed", replace(good, proof=(_h(b"x"), *good.proof[1:])), 1)
    case(
        "tree size 5 -> 6 (same audit path: still valid)",
        replace(good, tree_size=good.tree_size + 1),
        1,
    )
    case("tree size 5 -> 4", replace(good, tree_size=good.tree_size - 1), 1)
    case(
        "header timestamp changed",
        replace(good, header=replace(good.header, timestamp_ms=good.header.timestamp_ms + 1)),
        1,
    )
    case(
        "header of another chain", replace(good, header=replace(good.header, chain_id=_h(b"x"))), 1
    )
    case(
        "signed by an outsider as n2",
        replace(good, signature=_vote(block, 1, chain_id, OUTSIDER)),
        1,
    )
    case(
        "signer index 7 (no such member)",
        replace(good, signature=_vote(block, 7, chain_id, OUTSIDER)),
        1,
    )
    case("signature over another block", replace(good, signature=_vote(earlier, 1, chain_id)), 1)
    case(
        "signature in the read domain",
        replace(good, signature=_vote(block, 1, chain_id, domain=Domain.READ)),
        1,
    )
    case(
        "n3's valid bundle, offered by n2",
        receipt_bundle(block.header, block.receipts, 3, _vote(block, 2, chain_id)),
        1,
    )
    # A header naming raft on this pbft chain, validly signed by n2 over its own hash: only
    # the mode check refuses it (verify_receipt would refuse the document built from it).
    raft_header = replace(good.header, consensus=("raft", 1, good.header.height, 0))
    raft_vote = _vote(block, 1, chain_id, block_hash=raft_header.hash)
    case(
        "header names the other mode (raft), signed by n2",
        replace(good, header=raft_header, signature=raft_vote),
        1,
    )
    return {"genesis": genesis.to_json(), "cases": cases}


def _proof(block: Block, index: int, votes: list[SignedVote]) -> ReceiptProof:
    b = receipt_bundle(block.header, block.receipts, index, votes[0])
    return ReceiptProof(b.receipt, b.proof, b.tree_size, b.header, tuple(votes))


def _flip_hex(text: str, at: int) -> str:
    return text[:at] + format(int(text[at], 16) ^ 1, "x") + text[at + 1 :]


def receipt_vectors() -> dict[str, Any]:
    genesis, builder, block = _chain("pbft")
    raft, _, raft_block = _chain("raft")
    chain_id = genesis.chain_id
    other = replace(genesis, chain_name="elsewhere")
    geneses = {"pbft": genesis, "raft": raft, "other": other}
    votes = [_vote(block, s, chain_id) for s in range(4)]
    proof = _proof(block, 2, [votes[0], votes[2]])
    doc = proof.to_document(genesis)
    cases: list[dict[str, Any]] = []

    def case(name: str, document: str, against: str = "pbft") -> None:
        g = geneses[against]
        try:
            problem = verify_receipt(loads(document), g)
            stage = None if problem is None else "verify"
        except ReceiptFormatError as exc:
            problem, stage = str(exc), "load"
        cases.append(
            {
                "name": name,
                "genesis": against,
                "document": document,
                "valid": problem is None,
                "stage": stage,
                "error": problem,
            }
        )

    def resealed(name: str, changed: dict[str, Any]) -> None:
        """The document with `changed`, its claims rewritten to match (as a forger would), so
        the change reaches verify_receipt."""
        d = {**doc, **changed}
        try:
            p = loads(json.dumps({**d, **_claims_of(d)}))
        except ReceiptFormatError:
            case(name, json.dumps(d, indent=2) + "\n")
            return
        case(
            name,
            json.dumps(
                {**p.to_document(genesis), "block_signatures": d["block_signatures"]}, indent=2
            )
            + "\n",
        )

    case("valid: n1 and n3 signed (f+1 = 2)", proof.dumps(genesis))
    case("valid: all four members signed", _proof(block, 2, votes).dumps(genesis))
    case(
        "valid: a receipt with results (get, del)",
        _proof(block, 3, [votes[3], votes[1]]).dumps(genesis),
    )
    case("valid against another chain's genesis", proof.dumps(genesis), "other")
    case("pbft receipt against the raft genesis", proof.dumps(genesis), "raft")
    raft_votes = [_vote(raft_block, 2, raft.chain_id)]
    case("valid: raft, one signature", _proof(raft_block, 0, raft_votes).dumps(raft), "raft")
    receipt_at = len(doc["receipt"]) - 1  # the index field's last digit
    resealed(
        "one byte changed in the receipt (index)",
        {"receipt": _flip_hex(doc["receipt"], receipt_at)},
    )
    # The receipt's status "ok" -> "ol": still decodes, no longer the leaf.
    status_at = doc["receipt"].index("6f6b") + 3
    resealed(
        "one byte changed in the receipt (status)",
        {"receipt": _flip_hex(doc["receipt"], status_at)},
    )
    header_at = len(doc["header"]) - 1  # the consensus timestamp's last digit
    resealed("one byte changed in the header", {"header": _flip_hex(doc["header"], header_at)})
    root_at = doc["header"].index(block.header.receipts_root.hex()) + 10
    resealed(
        "one byte changed in the header's receipts root",
        {"header": _flip_hex(doc["header"], root_at)},
    )
    resealed(
        "one byte changed in the proof",
        {"proof": [_flip_hex(doc["proof"][0], 7), *doc["proof"][1:]]},
    )
    # RFC 9162 verification binds the index and the root, and the size only through the audit
    # path's shape: size 6 has the same path for leaf 2 as size 5, so this still proves it.
    resealed("tree size 5 -> 6 (same audit path: still valid)", {"tree_size": doc["tree_size"] + 1})
    resealed("tree size 5 -> 9 (another path shape)", {"tree_size": doc["tree_size"] + 4})
    sigs = doc["block_signatures"]
    flipped = {**sigs[1], "signature": _flip_hex(sigs[1]["signature"], 5)}
    case(
        "one byte changed in a signature",
        json.dumps({**doc, "block_signatures": [sigs[0], flipped]}),
    )
    impostor = _vote(block, 1, chain_id, OUTSIDER)
    case(
        "a block signature by a non-member key (as n2)",
        _proof(block, 2, [votes[0], impostor]).dumps(genesis),
    )
    stranger = _vote(block, 7, chain_id, OUTSIDER)
    case("a signer index no member has", _proof(block, 2, [votes[0], stranger]).dumps(genesis))
    case("too few signers (f)", _proof(block, 2, [votes[0]]).dumps(genesis))
    case("no signers", json.dumps({**doc, "block_signatures": []}))
    case("the same member twice", _proof(block, 2, [votes[0], votes[0]]).dumps(genesis))
    earlier = builder.blocks[0][0]
    case(
        "signatures over another block",
        _proof(block, 2, [votes[0], _vote(earlier, 2, chain_id)]).dumps(genesis),
    )
    case(
        "a signature in the read domain",
        _proof(block, 2, [votes[0], _vote(block, 2, chain_id, domain=Domain.READ)]).dumps(genesis),
    )
    case(
        "raft: its one signature zeroed",
        _proof(raft_block, 0, raft_votes)
        .dumps(raft)
        .replace(raft_votes[0].signature.hex(), "00" * 64),
        "raft",
    )
    for key, value in [
        ("status", "rejected"),
        ("height", 99),
        ("index", 0),
        ("tx_id", "00" * 32),
        ("block_hash", "00" * 32),
        ("chain_id", "00" * 32),
        ("reason", "x"),
    ]:
        case(f"claim '{key}' differs from the bytes", json.dumps({**doc, key: value}))
    case("unknown key", json.dumps({**doc, "extra": 1}))
    case("missing header", json.dumps({k: v for k, v in doc.items() if k != "header"}))
    case("format of another version", json.dumps({**doc, "format": "consortium-receipt/0"}))
    case("a proof hash that is not hex", json.dumps({**doc, "proof": ["zz"]}))
    case("a proof hash of 31 bytes", json.dumps({**doc, "proof": [doc["proof"][0][:62]]}))
    case(
        "a signature of 63 bytes",
        json.dumps(
            {
                **doc,
                "block_signatures": [{**sigs[0], "signature": sigs[0]["signature"][:126]}, sigs[1]],
            }
        ),
    )
    case("negative tree size", json.dumps({**doc, "tree_size": -1}))
    case("tree size true", json.dumps({**doc, "tree_size": True}))
    case("not JSON", "{")
    case("a JSON array", "[]")
    # The receipt's index as uint8 (cc02) instead of fixint 02: same value, not canonical.
    case(
        "receipt not canonically encoded",
        json.dumps({**doc, "receipt": doc["receipt"][:-2] + "cc02"}),
    )
    # What a client assembles from f+1 members' bundles for one receipt (n4's, then n2's, as
    # they arrived): consortium.client.receipts.from_bundles, written by ReceiptProof.dumps.
    arrived = [receipt_bundle(block.header, block.receipts, 3, votes[s]) for s in (3, 1)]
    assembled = {
        "bundles": [b.encode().hex() for b in arrived],
        "document": from_bundles(arrived).dumps(genesis),
    }
    return {
        "geneses": {k: g.to_json() for k, g in geneses.items()},
        "from_bundles": assembled,
        "cases": cases,
    }


def _claims_of(d: dict[str, Any]) -> dict[str, Any]:
    """The claims a document with these receipt and header bytes must make."""
    from consortium.ledger.block import BlockHeader, Receipt

    try:
        r = Receipt.from_array(unpack_canonical(bytes.fromhex(d["receipt"])))
        header_bytes = bytes.fromhex(d["header"])
        h = BlockHeader.from_array(unpack_canonical(header_bytes))
    except (WireFormatError, ValueError):
        return {}
    return {
        "chain_id": h.chain_id.hex(),
        "tx_id": r.tx_id.hex(),
        "status": r.status,
        "reason": r.reason,
        "height": r.height,
        "index": r.index,
        "block_hash": _h(header_bytes).hex(),
    }


def vectors() -> dict[str, Any]:
    genesis = make_genesis()
    return {
        "format": FORMAT,
        "about": (
            "Written by scripts/make_vectors.py from the Python node's own code; checked by "
            "tests/crypto/test_shared_vectors.py and clients/js/test/vectors.test.ts."
        ),
        "ed25519": ed25519_vectors(),
        "msgpack": msgpack_vectors(),
        "transactions": transaction_vectors(genesis.chain_id),
        "merkle": merkle_vectors(),
        "genesis": genesis_vectors(),
        "bundles": bundle_vectors(),
        "receipts": receipt_vectors(),
    }


def render() -> str:
    return json.dumps(vectors(), indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(
                f"{args.out} is not what the code produces; run scripts/make_vectors.py",
                file=sys.stderr,
            )
            return 1
        print(f"{args.out} is up to date")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} ({len(text):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
