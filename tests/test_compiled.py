"""The compiled hot modules (consortium/compiled.py) give the results their source gives, bad
input included; the build compiles them where it can; and a module whose source changed after
the build, or CONSORTIUM_PURE=1, runs from source."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from consortium import compiled
from consortium.client import tally as tally_mod
from consortium.crypto import codec, hashing, merkle
from consortium.ledger import digests
from tests.protocol.fixtures import good_bundle

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


def source_of(name: str) -> ModuleType:
    """Module `name` loaded from its .py under another name (the pure twin of what runs)."""
    spec = importlib.util.spec_from_file_location(
        "pure_" + name.replace(".", "_"), compiled.source_path(name)
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (dataclasses look their module up while it executes)
    spec.loader.exec_module(module)
    return module


PURE = {name: source_of(name) for name in compiled.COMPILED}


def outcome(fn: Any, *args: Any, **kwargs: Any) -> tuple[str, Any]:
    """What a call gives: ("ok", value) or ("raised", exception type name and message)."""
    try:
        return "ok", fn(*args, **kwargs)
    except Exception as exc:
        return "raised", (type(exc).__name__, str(exc))


REQUIRE_ENV = "CONSORTIUM_REQUIRE_COMPILED"  # .ci/run sets it: CI must test compiled code


def test_the_install_compiled_them() -> None:
    """Where the build compiled them, the tests run the compiled modules, not their source;
    CI (REQUIRE_ENV=1) fails unless it did (make test's last pass runs them from source on
    purpose, with CONSORTIUM_PURE=1)."""
    pure = os.environ.get(compiled.PURE_ENV) == "1"
    if os.environ.get(REQUIRE_ENV) == "1" and not pure:
        assert compiled.from_source == {}, compiled.from_source
    if pure:
        assert set(compiled.from_source) == set(compiled.COMPILED), compiled.from_source
    if compiled.from_source:
        # From source here (no compiler, or CONSORTIUM_PURE=1): then every one of them, and
        # --version says why.
        assert not any(compiled.running_compiled(n) for n in compiled.COMPILED)
        assert compiled.describe().startswith("pure Python: "), compiled.describe()
        return
    assert all(compiled.running_compiled(n) for n in compiled.COMPILED), compiled.describe()


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.binary(max_size=40)
    | st.text(max_size=20)
    | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=6),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(values)
def test_codec_gives_what_its_source_gives(value: Any) -> None:
    pure = PURE["consortium.crypto.codec"]
    packed = outcome(codec.pack, value)
    assert packed == outcome(pure.pack, value)
    if packed[0] == "ok":
        data = packed[1]
        assert outcome(codec.unpack_canonical, data) == outcome(pure.unpack_canonical, data)
        assert outcome(codec.unpack, data, max_len=8) == outcome(pure.unpack, data, max_len=8)
        assert outcome(codec.digest_of, value) == outcome(pure.digest_of, value)
    for check in ("as_list", "as_int", "as_bytes", "as_str", "as_bool"):
        assert outcome(getattr(codec, check), value) == outcome(getattr(pure, check), value)


def test_codec_refuses_what_its_source_refuses() -> None:
    """Non-canonical encodings, floats (both widths), maps, garbage: the same refusals."""
    pure = PURE["consortium.crypto.codec"]
    frames = [
        bytes.fromhex(line.split()[0])
        for line in (DATA / "msgpack-noncanonical.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    frames += [
        bytes.fromhex("ca3f800000"),  # float32 1.0
        bytes.fromhex("cb3ff0000000000000"),  # float64 1.0
        bytes.fromhex("9201cb3ff0000000000000"),  # [1, 1.0]
        bytes.fromhex("81a161a162"),  # {"a": "b"}
        bytes.fromhex("c1"),  # never used
        b"",
        bytes.fromhex("dc0003"),  # an array16 cut short
    ]
    # Not bytes at all: refused alike, never a TypeError from the compiled call.
    for odd in (bytearray(b"\x01"), memoryview(b"\x92\x01\x02"), "01", None, 1):
        assert outcome(codec.unpack, odd) == outcome(pure.unpack, odd), odd
        assert outcome(codec.unpack_canonical, odd) == outcome(pure.unpack_canonical, odd)
        assert outcome(codec.unpack, odd)[0] == "ok" or outcome(codec.unpack, odd)[1][0] == (
            "WireFormatError"
        )
    for frame in frames:
        mine = outcome(codec.unpack_canonical, frame)
        assert mine == outcome(pure.unpack_canonical, frame), frame.hex()
        assert mine[0] == "raised" or frame == codec.pack(mine[1]), frame.hex()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=50), min_size=1, max_size=40), st.data())
def test_merkle_and_hashing_give_what_their_source_gives(leaves: list[bytes], data: Any) -> None:
    pure_m, pure_h = PURE["consortium.crypto.merkle"], PURE["consortium.crypto.hashing"]
    assert hashing.sha256(leaves[0]) == pure_h.sha256(leaves[0])
    assert hashing.sha256_concat(*leaves) == pure_h.sha256_concat(*leaves)
    root = merkle.merkle_root(leaves)
    assert root == pure_m.merkle_root(leaves)
    tree, pure_tree = merkle.MerkleTree(leaves), pure_m.MerkleTree(leaves)
    assert tree.root == pure_tree.root == root
    index = data.draw(st.integers(0, len(leaves) - 1))
    proof = tree.proof(index)
    assert proof == pure_tree.proof(index) == merkle.inclusion_proof(leaves, index)
    bad = [bytes([p[0] ^ 1]) + p[1:] for p in proof]
    for args in (
        (leaves[index], index, len(leaves), proof, root),
        (leaves[index], index, len(leaves), bad, root),
        (leaves[index], index + 1, len(leaves), proof, root),
        (leaves[index], index, len(leaves), [*proof, b"x"], root),
        (leaves[index], index, len(leaves), ["x" * 32, *proof[1:]], root),  # never raises
        ("not bytes", index, len(leaves), proof, root),
        (leaves[index], None, len(leaves), proof, root),
        (leaves[index], index, len(leaves), proof, None),
        (leaves[index], 0.0, 1.5, proof, root),
    ):
        assert outcome(merkle.verify_inclusion, *args) == outcome(pure_m.verify_inclusion, *args)
        assert outcome(merkle.verify_inclusion, *args)[0] == "ok"
    assert merkle.verify_inclusion(leaves[index], index, len(leaves), proof, root)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(sorted(digests.DIGESTED)),
    st.lists(
        st.none()
        | st.integers(min_value=-(2**63), max_value=2**63 - 1)
        | st.binary(max_size=40)
        | st.text(max_size=10)
        | st.floats(allow_nan=False),
        max_size=4,
    ),
)
def test_row_digests_give_what_their_source_gives(table: str, row: list[object]) -> None:
    pure = PURE["consortium.ledger.digests"]
    assert outcome(digests.row_digest, table, row) == outcome(pure.row_digest, table, row)


def test_the_tally_gives_what_its_source_gives() -> None:
    pure = PURE["consortium.client.tally"]
    bundles = {b"r1": good_bundle(1), b"r2": good_bundle(2)}
    a, b = (b"r1", b"h1"), (b"r2", b"h1")
    cases: list[tuple[dict[int, tuple[bytes, bytes]], dict[int, str], int]] = [
        ({}, {}, 2),
        ({0: a}, {}, 2),
        ({0: a, 1: a}, {}, 2),
        ({0: a, 1: b}, {2: "bad_signature", 3: "bad_signature"}, 2),
        ({0: a}, {1: "bad_signature", 2: "wrong_chain"}, 2),
        ({0: a, 1: b, 2: a}, {}, 3),
        ({0: a}, {}, 1),
    ]
    for vouched, rejected, needed in cases:
        mine = {m: tally_mod.Vouch(r, h, bundles[r]) for m, (r, h) in vouched.items()}
        theirs = {m: pure.Vouch(r, h, bundles[r]) for m, (r, h) in vouched.items()}
        got, want = tally_mod.tally(mine, rejected, needed), pure.tally(theirs, rejected, needed)
        assert (got.status, got.confirmations, got.reason, got.block_hash, got.bundles) == (
            want.status,
            want.confirmations,
            want.reason,
            want.block_hash,
            want.bundles,
        )
        assert tally_mod.confirmations(mine, *a) == pure.confirmations(theirs, *a)
    for reason in ("bad_signature", "malformed: x", "expired", "unknown_client"):
        assert tally_mod.is_final_rejection(reason) == pure.is_final_rejection(reason)


def _copy_of_the_tree(tmp_path: Path, *, shared: bool = True) -> Path:
    """The package as installed here (extensions and record included), copied: a tree to
    break; with the group's shared library beside it unless `shared` is False."""
    copy = tmp_path / "tree"
    shutil.copytree(ROOT / "consortium", copy / "consortium")
    for library in ROOT.glob("*__mypyc*") if shared else ():
        shutil.copy(library, copy / library.name)
    return copy


def _describe_in(env: dict[str, str], cwd: Path, path: Path) -> tuple[str, str]:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import consortium.crypto.codec as c; from consortium import compiled; "
            "print(c.__file__); print(compiled.describe())",
        ],
        env={**os.environ, **env, "PYTHONPATH": str(path)},
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    file, described = out.stdout.splitlines()
    return file, described


def test_consortium_pure_runs_them_from_source(tmp_path: Path) -> None:
    file, described = _describe_in({compiled.PURE_ENV: "1"}, tmp_path, ROOT)
    assert file.endswith("codec.py")
    assert described.startswith("pure Python: codec, hashing, merkle, digests, tally")


def test_a_module_changed_after_the_build_runs_from_source_with_the_others(
    tmp_path: Path,
) -> None:
    """Stale compiled code never runs: one changed module sends the whole group (which calls
    itself natively) back to source, and --version says which changed."""
    if not all(compiled.running_compiled(n) for n in compiled.COMPILED):
        return  # nothing compiled here: no stale build to catch (CI requires one: above)
    copy = _copy_of_the_tree(tmp_path)
    file, described = _describe_in({}, tmp_path, copy)
    assert file.endswith(".so") and described.startswith("compiled (mypyc)"), described
    codec_py = copy / "consortium" / "crypto" / "codec.py"
    codec_py.write_text(codec_py.read_text() + "\n# edited after the build\n")
    file, described = _describe_in({}, tmp_path, copy)
    assert file == str(codec_py)
    assert "pure Python: codec, hashing, merkle, digests, tally (codec changed since" in described


def test_the_makefile_recompiles_what_the_build_compiles() -> None:
    """`make check` reinstalls when a compiled module's source changed (its COMPILED_SRC)."""
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    line = next(x for x in text.splitlines() if x.startswith("COMPILED_SRC :="))
    listed = line.split(":=", 1)[1].split()
    assert listed == [str(compiled.source_path(n).relative_to(ROOT)) for n in compiled.COMPILED]


def test_an_extension_the_last_install_did_not_record_never_runs(tmp_path: Path) -> None:
    """An install that compiled nothing (no compiler) writes no hashes; extensions an older
    install left behind are then not trusted."""
    copy = _copy_of_the_tree(tmp_path)
    (copy / "consortium" / "_compiled_hashes.json").unlink(missing_ok=True)
    file, described = _describe_in({}, tmp_path, copy)
    assert file == str(copy / "consortium" / "crypto" / "codec.py")
    assert described == (
        "pure Python: codec, hashing, merkle, digests, tally (not compiled at install)"
    )


def test_a_missing_shared_library_sends_the_group_to_source(tmp_path: Path) -> None:
    """The stubs import the group's shared library: without it they cannot load, so the
    modules run from source instead of failing every import."""
    if not all(compiled.running_compiled(n) for n in compiled.COMPILED):
        return  # nothing compiled here: no shared library to lose (CI requires one: above)
    copy = _copy_of_the_tree(tmp_path, shared=False)
    env = {"PYTHONNOUSERSITE": "1"}
    out = subprocess.run(
        [
            sys.executable,
            "-S",  # no site-packages: nothing but the copy (and the stdlib) to import from
            "-c",
            "import sys; sys.path.insert(0, sys.argv[1]); import consortium.crypto.hashing as h; "
            "from consortium import compiled; print(h.__file__); print(compiled.from_source)",
            str(copy),
        ],
        env={**os.environ, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    file, why = out.stdout.splitlines()
    assert file == str(copy / "consortium" / "crypto" / "hashing.py")
    assert "shared library is missing" in why
