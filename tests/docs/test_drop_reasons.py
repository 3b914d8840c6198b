"""Drop reasons are one table per core (consortium/pbft/reasons.py, consortium/crashft/reasons.py),
and everything that names a reason reads it:

- the cores count only names from their table: every `rejected[...]` key in their source is
  `drop.NAME` (or a variable a helper typed `drop.Reason` filled), and no reason is spelled as a
  string there, so a typo cannot invent a reason and a new one cannot be counted unclassed;
- the shells (node/pbft_mode.py, node/raft_mode.py) count only reasons of the table;
- docs/operations-metrics.md, "Dropped messages", lists exactly each table: every reason with its
  class and meaning, word for word, and no other.

(The shell's summary reads the class from the same table: tests/node/test_node_http.py.)
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from types import ModuleType

import pytest

from consortium.crashft import reasons as raft_reasons
from consortium.pbft import reasons as pbft_reasons

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "operations-metrics.md"
SECTION = "### Dropped messages (`rejected`)"
MODES: dict[str, tuple[ModuleType, Path, Path]] = {
    # mode: (its table, the core's package, the shell that counts for it)
    "pbft": (pbft_reasons, ROOT / "consortium" / "pbft", ROOT / "consortium/node/pbft_mode.py"),
    "raft": (
        raft_reasons,
        ROOT / "consortium" / "crashft",
        ROOT / "consortium/node/raft_mode.py",
    ),
}
_ROW = re.compile(r"\| `([a-z_]+)` \| (\w+) \| (.*) \|")


def _documented(mode: str) -> dict[str, tuple[str, str]]:
    """The guide's table for `mode`: reason -> (class, meaning)."""
    text = GUIDE.read_text()
    assert SECTION in text, f"docs/operations-metrics.md has no section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    assert f"#### {mode}\n" in section, f"no '#### {mode}' table under {SECTION!r}"
    table = section.split(f"#### {mode}\n", 1)[1].split("\n#### ", 1)[0]
    rows: dict[str, tuple[str, str]] = {}
    for line in table.splitlines():
        match = _ROW.fullmatch(line)
        if match is not None:
            name, kind, meaning = match.groups()
            assert name not in rows, f"{mode}: `{name}` is documented twice"
            rows[name] = (kind, meaning)
    return rows


def _rejected_keys(path: Path) -> list[tuple[int, ast.expr]]:
    """(line, key) of every `<something>.rejected[key]` in a source file."""
    return [
        (node.lineno, node.slice)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "rejected"
    ]


def _leaves(key: ast.expr) -> list[ast.expr]:
    """The values a key can take: both branches of `a if c else b`."""
    if isinstance(key, ast.IfExp):
        return _leaves(key.body) + _leaves(key.orelse)
    return [key]


def _constants(table: ModuleType) -> dict[str, str]:
    """The table module's reason constants: NAME -> "name"."""
    return {
        name: value
        for name, value in vars(table).items()
        if name.isupper() and isinstance(value, str) and value in table.TABLE
    }


@pytest.mark.parametrize("mode", sorted(MODES))
def test_the_guide_lists_exactly_the_table(mode: str) -> None:
    table = MODES[mode][0].TABLE
    documented = _documented(mode)
    wrong = [
        f"| `{name}` | {kind} | {meaning} |"
        for name, (kind, meaning) in table.items()
        if documented.get(name) != (kind, meaning)
    ]
    assert not wrong, (
        f"docs/operations-metrics.md ({SECTION}, #### {mode}) lacks or words otherwise these "
        "rows of the core's table:\n" + "\n".join(wrong)
    )
    extra = sorted(set(documented) - set(table))
    assert not extra, f"documented for {mode} but in no table: {extra}"


@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_reason_has_a_class_and_one_constant_named_after_it(mode: str) -> None:
    table = MODES[mode][0]
    assert table.TABLE, "an empty table"
    for name, (kind, meaning) in table.TABLE.items():
        assert kind in (table.BENIGN, table.MISBEHAVIOUR), (name, kind)
        assert meaning and "\n" not in meaning and "|" not in meaning, name
    assert _constants(table) == {name.upper(): name for name in table.TABLE}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_the_core_counts_only_reasons_of_its_table_by_name(mode: str) -> None:
    table, package, _ = MODES[mode]
    constants = _constants(table)
    counted = 0
    for path in sorted(package.glob("*.py")):
        if path.name == "reasons.py":
            continue
        where = path.relative_to(ROOT)
        source = path.read_text()
        keys = _rejected_keys(path)
        for line, key in keys:
            for leaf in _leaves(key):
                counted += 1
                if isinstance(leaf, ast.Attribute) and isinstance(leaf.value, ast.Name):
                    assert leaf.value.id == "drop" and leaf.attr in constants, (
                        f"{where}:{line}: {ast.unparse(leaf)} is not a reason of "
                        f"{table.__name__}: add it there, with its class and meaning"
                    )
                else:
                    # A variable: filled by a helper typed drop.Reason (mypy holds it to names
                    # of the table); anything else is a free string.
                    assert isinstance(leaf, ast.Name), (
                        f"{where}:{line}: rejected[{ast.unparse(leaf)}]: count a reason by its "
                        f"name in {table.__name__} (drop.NAME)"
                    )
        if "drop." in source:
            own = table.__name__.rsplit(".", 1)[0]
            assert f"from {own} import reasons as drop" in source, (
                f"{where}: `drop` must be {table.__name__}"
            )
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value not in table.TABLE, (
                    f"{where}:{node.lineno}: the reason {node.value!r} spelled as a string: "
                    f"use drop.{node.value.upper()}"
                )
    assert counted >= len(table.TABLE) // 2  # (the scan sees the counting)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_the_shell_counts_only_reasons_of_the_table(mode: str) -> None:
    table, _, shell = MODES[mode]
    keys = _rejected_keys(shell)
    assert keys, f"{shell.name} counts nothing any more: update this test"
    for line, key in keys:
        for leaf in _leaves(key):
            if isinstance(leaf, ast.Constant):
                value = leaf.value
            else:
                assert isinstance(leaf, ast.Attribute), f"{shell.name}:{line}"
                value = _constants(table).get(leaf.attr)
            assert value in table.TABLE, (
                f"{shell.name}:{line}: {ast.unparse(leaf)} is not a reason of {table.__name__}"
            )
