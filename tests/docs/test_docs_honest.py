"""The docs stay true to the CLI and to each other.

- Every `consortium …` command line in a code block of docs/*.md and README.md parses: its
  subcommands exist, every option it uses is one the command declares, option values convert
  to their types, required options and arguments are present, and there are no extra
  arguments. The check builds the real typer/click context for the command (the same parse a
  user's shell line gets) without running it.
- Every relative link in docs/*.md and README.md points at a file that exists, and a link
  with a `#fragment` at a heading that exists in that file (GitHub's anchor rules).
- docs/index.md mentions every document in docs/.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer._click as click
import typer.core
import typer.main

from consortium.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]

_FENCE = re.compile(r"^[ \t]*(```+|~~~+)[^\n]*\n(.*?)^[ \t]*\1[ \t]*$", re.M | re.S)
# How the docs spell the command: installed, from the venv, or under /opt.
_PROGRAM = re.compile(r"^(?:\S*/)?consortium$")


@dataclass(frozen=True)
class CommandLine:
    page: str
    line: str  # as written (continuations joined)
    args: tuple[str, ...]  # after the program name

    def __str__(self) -> str:
        return f"{self.page}: {self.line}"


def _code_blocks(text: str) -> list[str]:
    return [m.group(2) for m in _FENCE.finditer(text)]


def _logical_lines(block: str) -> list[str]:
    """Lines with backslash continuations joined."""
    out: list[str] = []
    pending = ""
    for raw in block.splitlines():
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        out.append(pending + raw)
        pending = ""
    if pending:
        out.append(pending)
    return out


def _segments(line: str) -> list[list[str]]:
    """The simple commands of one shell line: split at ; && || | &, `for … do`/`done`
    stripped, redirections dropped, $(…) and <PLACEHOLDER> replaced by a plain word."""
    line = re.sub(r"\$\([^()]*\)", "X", line)
    line = re.sub(r"<[A-Za-z][^<>]*>", "PLACEHOLDER", line)
    line = re.sub(r"(^|\s)\d?(>>?|<)(&\d+|\s*[^\s;&|]+)", " ", line)  # > f, 2>&1, < f
    try:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        tokens = list(lexer)
    except ValueError:
        return []
    segments: list[list[str]] = [[]]
    for tok in tokens:
        if tok in (";", "&&", "||", "|", "&", ";;"):
            segments.append([])
        else:
            segments[-1].append(tok)
    cleaned = []
    for seg in segments:
        while seg and seg[0] in ("do", "then", "else", "sudo", "exec"):
            seg = seg[1:]
            if seg and seg[0] == "-u":  # sudo -u USER
                seg = seg[2:]
        if seg:
            cleaned.append(seg)
    return cleaned


def command_lines() -> list[CommandLine]:
    found = []
    for page in PAGES:
        for block in _code_blocks(page.read_text()):
            for line in _logical_lines(block):
                for seg in _segments(line):
                    if _PROGRAM.match(seg[0]):
                        found.append(
                            CommandLine(str(page.relative_to(ROOT)), line.strip(), tuple(seg[1:]))
                        )
    return found


def check_command(args: tuple[str, ...]) -> str | None:
    """Why `consortium ARGS` would not parse, or None. Builds the command's context (option
    lookup, type conversion, required options and arguments, extra arguments) without
    invoking it."""
    cmd: Any = typer.main.get_command(app)
    rest = list(args)
    path = ["consortium"]
    while isinstance(cmd, typer.core.TyperGroup):
        if not rest or rest[0].startswith("-"):
            if rest in (["--help"], []):
                return None
            if cmd.invoke_without_command:
                break  # the group runs by itself (`consortium bench --mode raft`)
            return f"'{' '.join(path)}' needs a subcommand before {rest[0]!r}"
        ctx = click.Context(cmd, info_name=path[-1])  # typer vendors click
        sub = cmd.get_command(ctx, rest[0])
        if sub is None:
            return f"'{' '.join(path)}' has no subcommand {rest[0]!r}"
        path.append(rest.pop(0))
        cmd = sub
    if "--help" in rest:
        return None
    try:
        cmd.make_context(" ".join(path), rest)
    except click.ClickException as exc:
        return f"'{' '.join(path)}': {exc.format_message()}"
    return None


COMMANDS = command_lines()


def test_the_docs_show_commands() -> None:
    # The extraction itself has teeth: the operator guide alone shows dozens.
    assert len([c for c in COMMANDS if c.page == "docs/operations.md"]) >= 15
    assert any(c.args[:2] == ("node", "start") for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=[f"{c.page}:{i}" for i, c in enumerate(COMMANDS)])
def test_every_documented_command_parses(command: CommandLine) -> None:
    problem = check_command(command.args)
    assert problem is None, f"{command}\n  -> {problem}"


def test_the_command_check_has_teeth() -> None:
    assert check_command(("node", "start", "--home", "n1")) is None
    assert check_command(("status", "--net", "net", "--watch", "--every", "2")) is None
    assert "no subcommand" in str(check_command(("node", "stat", "--home", "n1")))
    assert "--hme" in str(check_command(("node", "start", "--hme", "n1")))
    assert "--home" in str(check_command(("node", "backup", "--to", "f.sqlite")))  # required
    assert "valid integer" in str(check_command(("init", "--members", "four")))
    assert "unexpected extra argument" in str(check_command(("read", "a", "b")))
    segs = _segments("for i in 1 2; do consortium node start --home n$i > n$i.log 2>&1 & done")
    assert ["consortium", "node", "start", "--home", "n$i"] in segs
    segs = _segments("consortium node backup --home n1 --to /b/n1-$(date +%F).sqlite  # note")
    assert segs == [["consortium", "node", "backup", "--home", "n1", "--to", "/b/n1-X.sqlite"]]
    assert _segments("consortium init --members 4 2>/dev/null  # four") == [
        ["consortium", "init", "--members", "4"]
    ]


# --- links -------------------------------------------------------------------------------------

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_INLINE_CODE = re.compile(r"`[^`\n]*`")


def _prose(text: str) -> str:
    """`text` without code blocks and inline code (links there are not links)."""
    return _INLINE_CODE.sub("", _FENCE.sub("", text))


def github_anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown page."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for m in re.finditer(r"^#{1,6}\s+(.*?)\s*#*\s*$", _FENCE.sub("", text), re.M):
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1))  # link text only
        slug = re.sub(r"[^\w\- ]", "", title.replace("`", "").lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def relative_links() -> list[tuple[Path, str]]:
    links = []
    for page in PAGES:
        for target in _LINK.findall(_prose(page.read_text())):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            links.append((page, target))
    return links


LINKS = relative_links()


def test_the_docs_link_to_each_other() -> None:
    assert len(LINKS) >= 20


@pytest.mark.parametrize(
    "page,target", LINKS, ids=[f"{p.relative_to(ROOT)}->{t}" for p, t in LINKS]
)
def test_every_relative_link_resolves(page: Path, target: str) -> None:
    path_part, _, fragment = target.partition("#")
    dest = (page.parent / path_part).resolve() if path_part else page
    assert dest.exists(), f"{page.relative_to(ROOT)}: link to {target}: no such file"
    if fragment and dest.suffix == ".md":
        anchors = github_anchors(dest.read_text())
        assert fragment in anchors, (
            f"{page.relative_to(ROOT)}: link to {target}: no heading with that anchor in "
            f"{dest.relative_to(ROOT)}"
        )


def test_anchor_rules() -> None:
    text = "# A b\n## 7. Receipt bundles, and how\n### `waiting for` (detail)\n## A b\n"
    assert github_anchors(text) == {
        "a-b",
        "7-receipt-bundles-and-how",
        "waiting-for-detail",
        "a-b-1",
    }


def test_the_index_lists_every_document() -> None:
    index = (DOCS / "index.md").read_text()
    missing = [p.name for p in DOCS.glob("*.md") if p.name != "index.md" and p.name not in index]
    assert not missing, f"docs/index.md does not mention {missing}"
