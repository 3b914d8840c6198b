"""Build: the package as pyproject.toml declares it, plus its hot modules compiled with mypyc
where this machine can (consortium/compiled.py says which and why). Nothing here can make an
install fail: without mypyc, or without a C compiler (or Python's headers), the modules stay
pure Python.

All or nothing: mypyc compiles the modules as one group (a shared library and a small stub per
module), so a build that fails for one part keeps none of them, and the record of what was
compiled (consortium/_compiled_hashes.json, which compiled.py checks at every start) is written
only once every part built. Extensions a previous build left in the tree are removed first.
CONSORTIUM_NO_COMPILE=1 builds pure Python on purpose.
"""

from __future__ import annotations

import hashlib
import json
import os
import runpy
import sys
from pathlib import Path
from typing import Any

from setuptools import Extension, setup  # type: ignore[import-untyped]
from setuptools.command.build_ext import build_ext  # type: ignore[import-untyped]

HERE = Path(__file__).resolve().parent
RECORD = HERE / "consortium" / "_compiled_hashes.json"
_COMPILED = runpy.run_path(str(HERE / "consortium" / "compiled.py"))
NAMES: tuple[str, ...] = _COMPILED["COMPILED"]
# Commands that only read metadata (pip asks for them first): no need to run mypyc for those.
_METADATA_ONLY = {"egg_info", "dist_info", "sdist", "--version", "--name"}


def _say(message: str) -> None:
    print(f"consortium: {message}", file=sys.stderr)


def _remove_old_builds() -> None:
    """What an earlier build left in the tree: never trusted after this one."""
    RECORD.unlink(missing_ok=True)
    for path in [*HERE.glob("*__mypyc*.so"), *(HERE / "consortium").rglob("*.so")]:
        path.unlink()


def _extensions() -> list[Extension]:
    if os.environ.get("CONSORTIUM_NO_COMPILE") == "1":
        _say("CONSORTIUM_NO_COMPILE=1: not compiling")
        return []
    try:
        from mypyc.build import mypycify
    except ImportError as exc:
        _say(f"pure Python (no mypyc: {exc})")
        return []
    # The build's own mypy settings, not the project's --strict (that is `make lint`'s): the
    # build environment holds none of our dependencies, and mypyc only needs our own types.
    config = HERE / "build" / "mypyc.ini"
    config.parent.mkdir(exist_ok=True)
    config.write_text("[mypy]\nignore_missing_imports = True\nfollow_imports = silent\n")
    paths = [str(Path(*n.split(".")).with_suffix(".py")) for n in NAMES]
    cwd = os.getcwd()
    os.chdir(HERE)  # (mypycify takes paths relative to where it runs)
    try:
        return list(
            mypycify(["--config-file", str(config), *paths], opt_level="3", strip_asserts=False)
        )
    except (Exception, SystemExit) as exc:  # mypyc refused: the modules stay Python
        _say(f"pure Python (mypyc: {exc!r})")
        return []
    finally:
        os.chdir(cwd)


class AllOrNothing(build_ext):  # type: ignore[misc]
    """Builds every extension of the group or keeps none, then records what it compiled."""

    failed = ""

    def run(self) -> None:
        _remove_old_builds()
        super().run()
        if self.failed:
            _say(f"pure Python (compiling failed: {self.failed})")
            return
        if not self.extensions:
            return
        record = {
            "modules": {n: hashlib.sha256(_source(n).read_bytes()).hexdigest() for n in NAMES},
            "shared": [e.name for e in self.extensions if "__mypyc" in e.name],
        }
        text = json.dumps(record, indent=1) + "\n"
        RECORD.write_text(text)  # the source tree's (an editable install runs from it)
        built = Path(self.build_lib) / "consortium"
        if not (self.inplace or getattr(self, "editable_mode", False)) and built.is_dir():
            (built / RECORD.name).write_text(text)  # and the wheel's
        _say(f"compiled with mypyc: {', '.join(NAMES)}")

    def build_extensions(self) -> None:
        self.check_extensions_list(self.extensions)
        built = []
        for ext in self.extensions:
            try:
                self.build_extension(ext)
            except Exception as exc:  # no compiler, no Python.h, a compiler error
                self.failed = f"{ext.name}: {exc}"
                break
            built.append(ext)
        if self.failed:
            for ext in built:
                Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)

    def copy_extensions_to_source(self) -> None:
        if not self.failed:
            super().copy_extensions_to_source()

    def get_outputs(self) -> list[str]:
        return [] if self.failed else list(super().get_outputs())

    def get_output_mapping(self) -> dict[str, str]:
        return {} if self.failed else dict(super().get_output_mapping())


def _source(name: str) -> Path:
    return HERE.joinpath(*name.split(".")).with_suffix(".py")


metadata_only = bool(_METADATA_ONLY.intersection(sys.argv[1:])) and not {
    "bdist_wheel",
    "build_ext",
    "editable_wheel",
}.intersection(sys.argv[1:])
kwargs: dict[str, Any] = {}
if not metadata_only:
    kwargs = {"ext_modules": _extensions(), "cmdclass": {"build_ext": AllOrNothing}}
setup(**kwargs)
