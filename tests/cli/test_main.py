"""The command line as a whole (cli/main.py): --version, shell completion, and help that
renders as written, with the choices of every option that has them."""

from __future__ import annotations

import os
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
import typer
from typer._click import Context
from typer.testing import CliRunner

import consortium
from consortium.cli.main import COMPLETE_VAR, app

ROOT = Path(__file__).resolve().parent.parent.parent


def commands() -> list[tuple[list[str], Any]]:
    """Every command and group of the command line, with its click command."""
    found: list[tuple[list[str], Any]] = []

    def walk(command: Any, path: list[str]) -> None:
        found.append((path, command))
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


COMMANDS = commands()


def test_version_is_the_installed_one_or_the_packages() -> None:
    result = CliRunner().invoke(app, ["--version"])
    first, second = result.output.splitlines()
    assert result.exit_code == 0 and first == f"consortium {consortium.version()}"
    assert second == f"hot modules: {consortium.compiled.describe()}"
    assert consortium.version() == consortium.__version__  # (this tree: 0.1.0 either way)


def test_version_falls_back_to_the_packages_own_when_not_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.metadata

    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    monkeypatch.setattr(consortium, "__version__", "9.9.9-test")
    result = CliRunner().invoke(app, ["--version"])
    assert result.output.splitlines()[0] == "consortium 9.9.9-test"


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_the_script_for_the_shell(shell: str) -> None:
    result = CliRunner().invoke(app, ["completion", shell])
    assert result.exit_code == 0, result.output
    assert f"{COMPLETE_VAR}=complete_{shell}" in result.output
    assert "consortium" in result.output


def test_completion_refuses_another_shell_in_one_line() -> None:
    result = CliRunner().invoke(app, ["completion", "tcsh"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: Invalid value for 'shell': 'tcsh' is not one of bash, zsh, fish "
        "(see `root completion --help`)"
    ]


@pytest.mark.parametrize(
    ("words", "expected"),
    [("consortium tx su", ["submit"]), ("consortium node start --log-level ", ["debug", "info"])],
)
def test_the_shell_gets_completions_from_the_command(words: str, expected: list[str]) -> None:
    """What the bash script runs when Tab is pressed: the command with the completion
    variable set answers with the candidates (typer's completion, registered on demand)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        COMPLETE_VAR: "complete_bash",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1)),
    }
    done = subprocess.run(
        [sys.executable, "-m", "consortium"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for candidate in expected:
        assert candidate in done.stdout.split(), done.stdout


def _choices(command: Any) -> list[tuple[str, tuple[str, ...]]]:
    out = []
    for param in command.get_params(Context(command)):
        descriptor = getattr(param, "type_descriptor", None)
        annotation = getattr(descriptor, "annotation", None)
        if typing.get_origin(annotation) is typing.Literal:
            out.append((param.name, typing.get_args(annotation)))
    return out


@pytest.mark.parametrize(
    ("path", "command"), COMMANDS, ids=[" ".join(p) or "consortium" for p, _ in COMMANDS]
)
def test_every_help_renders_with_its_choices(path: list[str], command: Any) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    text = result.output
    assert "\b" not in text and "\\b" not in text  # paragraphs kept as written, marks gone
    for name, choices in _choices(command):
        assert f"<{'|'.join(choices)}>" in text, (name, text)


def test_choices_that_matter_are_choices() -> None:
    """--mode and the like list their values in --help (and refuse others in one line)."""
    listed = {(" ".join(p), name) for p, c in COMMANDS for name, _ in _choices(c)}
    for wanted in [
        ("init", "mode"),
        ("genesis", "mode"),
        ("demo", "mode"),
        ("sim", "mode"),
        ("sim", "faults"),
        ("bench", "mode"),
        ("bench compare", "same"),
        ("node start", "log_level"),
        ("completion", "shell"),
    ]:
        assert wanted in listed


def test_exit_statuses_render_one_a_line() -> None:
    """Lists in a docstring keep their lines (click's \\b paragraphs), not run together."""
    text = CliRunner().invoke(app, ["tx", "submit", "--help"], terminal_width=100).output
    assert "\n  Exit status:\n    0  committed" in text, text
    assert "\n    3  pending: it may still commit\n    4  no member reachable\n" in text, text
    text = CliRunner().invoke(app, ["tx", "status", "--help"], terminal_width=100).output
    assert "\n    4  no member reachable\n" in text, text


def test_a_bad_choice_is_refused_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["init", "--dir", str(tmp_path / "x"), "--mode", "bft"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: Invalid value for '--mode': 'bft' is not one of pbft, raft "
        "(see `root init --help`)"  # (CliRunner names it root)
    ]
