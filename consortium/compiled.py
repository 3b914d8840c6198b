"""Which modules are compiled (mypyc), and the switch back to their pure-Python source.

The hot loops of the codec, Merkle trees, table digests, hashing and the client's tally are
plain, strictly typed Python. `pip install` compiles them with mypyc when it can (setup.py):
the same source, as C extension modules next to it. Where it cannot (no C compiler, no
mypyc), nothing fails: the same modules run as Python. Results are identical either way
(tests/test_compiled.py checks them against each other).

A compiled module never runs code other than its source. The build records each compiled
module's SHA-256 and the group's shared library (consortium/_compiled_hashes.json, written by
setup.py only once every part built). At every start, `install` sends the whole group (which
calls itself natively: all or none) back to its source when there is no record, when a source
no longer matches (edited after the build, another checkout), when the shared library is
missing, or with CONSORTIUM_PURE=1 (tests, debugging, profiling); `consortium --version` says
which and why. CONSORTIUM_NO_COMPILE=1 at install compiles nothing.

The compiled modules import, of the rest of the package, only what their types name (tally:
Bundle, OutcomeStatus); the compiled code checks those with isinstance against the classes
as they are now, so an edit there needs no recompiling, except to a Literal's values.

This module is read by setup.py without importing the package: keep it free of imports of
consortium.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

# Dotted names, compiled together (one mypyc group): each is hot per transaction in the
# profile (docs/bench.md, "Where the CPU goes") and imports nothing compiled but these.
COMPILED: tuple[str, ...] = (
    "consortium.crypto.codec",
    "consortium.crypto.hashing",
    "consortium.crypto.merkle",
    "consortium.ledger.digests",
    "consortium.client.tally",
)
PURE_ENV = "CONSORTIUM_PURE"
_ROOT = Path(__file__).resolve().parent.parent  # the directory holding consortium/
# Written by setup.py once every part of the group compiled: {"modules": {module: SHA-256 of
# the source it compiled}, "shared": [the group's shared library]}. Read from beside this file
# (never imported: it must be this tree's, whatever else is on the path).
HASHES_FILE = Path(__file__).resolve().parent / "_compiled_hashes.json"


def source_path(name: str) -> Path:
    return _ROOT.joinpath(*name.split(".")).with_suffix(".py")


def source_hash(name: str) -> str:
    return hashlib.sha256(source_path(name).read_bytes()).hexdigest()


class _SourceFinder:
    """Finds the listed modules' .py source ahead of the compiled extension next to it."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = frozenset(names)

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name not in self.names:
            return None
        return importlib.util.spec_from_file_location(name, source_path(name))


# name -> why it runs from source although the build compiled it (for --version)
from_source: dict[str, str] = {}


def install() -> None:
    """Route compiled modules that must not run compiled to their source (module rules).
    Called once by consortium/__init__.py, before any of them is imported."""
    recorded: dict[str, str] | None = None
    shared: list[str] = []
    try:
        record = json.loads(HASHES_FILE.read_text())
        recorded = {str(k): str(v) for k, v in dict(record["modules"]).items()}
        shared = [str(n) for n in record["shared"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # the last install compiled nothing: an extension left is an older one's
    # (a module listed since that build has no recorded hash: it runs from source, and so,
    # all or none, do the others until the next install)
    hashes = {n: "" if recorded is None else recorded.get(n, "") for n in COMPILED}
    why = ""
    if recorded is None:
        why = "not compiled at install"
    elif os.environ.get(PURE_ENV) == "1":
        why = f"{PURE_ENV}=1"
    elif not all(importlib.util.find_spec(n) is not None for n in shared):
        why = "the compiled group's shared library is missing: reinstall"
    else:
        changed = [
            n for n, d in hashes.items() if not source_path(n).is_file() or source_hash(n) != d
        ]
        if changed:
            # All or none: compiled together, they call each other's compiled code directly.
            short = ", ".join(n.rpartition(".")[2] for n in changed)
            why = f"{short} changed since compiled: reinstall to compile again"
    if why:
        from_source.update(dict.fromkeys(hashes, why))
        sys.meta_path.insert(0, _SourceFinder(list(from_source)))


def running_compiled(name: str) -> bool:
    """Whether module `name` is imported from a compiled extension."""
    module = sys.modules.get(name)
    if module is None:
        module = importlib.import_module(name)
    origin = getattr(module, "__file__", None) or ""
    return origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def describe() -> str:
    """One line for `consortium --version`: what runs compiled, what from source and why."""
    try:
        compiled = [n for n in COMPILED if running_compiled(n)]
    except ImportError as exc:
        return f"cannot import them ({exc}): reinstall"
    short = lambda n: n.rpartition(".")[2]  # noqa: E731
    if len(compiled) == len(COMPILED):
        return f"compiled (mypyc): {', '.join(map(short, compiled))}"
    parts = []
    if compiled:
        parts.append(f"compiled (mypyc): {', '.join(map(short, compiled))}")
    rest = [n for n in COMPILED if n not in compiled]
    reasons = {from_source.get(n, "not compiled at install") for n in rest}
    parts.append(f"pure Python: {', '.join(map(short, rest))} ({'; '.join(sorted(reasons))})")
    return "; ".join(parts)
