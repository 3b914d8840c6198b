"""Build: the package as pyproject.toml declares it, plus its hot modules compiled with mypyc
where this machine can (consortium/compiled.py says which and why). Nothing here can make an
install fail: without mypyc, or without a C compiler, the modules stay pure Python."""

from __future__ import annotations

import hashlib
import json
import os
import runpy
import sys
from pathlib import Path

from setuptools import setup  # type: ignore[import-untyped]

HERE = Path(__file__).resolve().parent
HASHES = HERE / "consortium" / "_compiled_hashes.json"


def _extensions() -> list[object]:
    names = runpy.run_path(str(HERE / "consortium" / "compiled.py"))["COMPILED"]
    if os.environ.get("CONSORTIUM_PURE") == "1":
        print("consortium: CONSORTIUM_PURE=1: not compiling", file=sys.stderr)
        HASHES.unlink(missing_ok=True)
        return []
    try:
        from mypyc.build import mypycify
    except ImportError as exc:
        print(f"consortium: pure Python (no mypyc: {exc})", file=sys.stderr)
        HASHES.unlink(missing_ok=True)
        return []
    paths = [str(Path(*n.split(".")).with_suffix(".py")) for n in names]
    hashes = {
        n: hashlib.sha256((HERE / p).read_bytes()).hexdigest()
        for n, p in zip(names, paths, strict=True)
    }
    HASHES.write_text(json.dumps(hashes, indent=1) + "\n")
    # The build's own mypy settings, not the project's --strict (that is `make lint`'s): the
    # build environment holds none of our dependencies, and mypyc only needs our own types.
    config = HERE / "build" / "mypyc.ini"
    config.parent.mkdir(exist_ok=True)
    config.write_text("[mypy]\nignore_missing_imports = True\nfollow_imports = silent\n")
    try:
        extensions = mypycify(
            ["--config-file", str(config), *paths], opt_level="3", strip_asserts=False
        )
    except (Exception, SystemExit) as exc:  # mypyc refused: the modules stay Python
        print(f"consortium: pure Python (mypyc: {exc!r})", file=sys.stderr)
        HASHES.unlink(missing_ok=True)
        return []
    for ext in extensions:
        ext.optional = True  # no C compiler: the build goes on, the module stays Python
    return list(extensions)


setup(ext_modules=_extensions())
