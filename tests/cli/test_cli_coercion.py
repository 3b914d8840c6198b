"""Option values converted without pydantic (cli/coercion.py) come out exactly as typer's own
conversion makes them, for every parameter of the command line, and what typer would refuse
is refused with typer's own words."""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Any

import pytest
import typer
from typer._click import Context
from typer._click.exceptions import BadParameter
from typer._coercion import build_runtime_param

from consortium.cli import coercion
from consortium.cli.main import app


def parameters() -> list[tuple[str, Any, Any]]:
    """(command path and name, the parameter, its command) for every parameter, --help too."""
    found = []

    def walk(command: Any, path: list[str]) -> None:
        for param in command.get_params(Context(command)):
            found.append((" ".join([*path, param.name or "?"]), param, command))
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), ["consortium"])
    return found


PARAMETERS = parameters()

SAMPLES: dict[Any, list[Any]] = {
    str: ["x", "", "-", "put", "ünï code", " spaced "],
    int: ["0", "7", "-3", "-0", "007", "+5", " 5", "5_000", "1e3", "1.0", "four", "", 3, 0],
    float: ["1", "1.5", "-0.25", "0.0", "10.", ".5", " 2", "1e3", "nan", "inf", "x", "", 2.0],
    bool: [True, False, "true", "no"],
    Path: ["net", "/tmp", ".", "", " net ", "a b/c", "-", Path("net"), Path("/nonexistent/x")],
}


def samples(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) is typing.Literal:  # choices: each, and some that are not
        return [*typing.get_args(annotation), "bogus", "", "DEBUG", 1, None]
    item = typer._typing.get_args(annotation)[0] if annotation not in SAMPLES else None
    if item is None:
        return [*SAMPLES[annotation], None]
    return [tuple(SAMPLES[item][:3]), (), [SAMPLES[item][0]], None, SAMPLES[item][0]]


def outcome(run: Any) -> tuple[str, Any]:
    try:
        value = run()
    except BadParameter as exc:
        return ("refused", exc.format_message())
    return ("value", (type(value), repr(value)))  # repr: nan is not equal to itself


def test_every_parameter_of_the_command_line_is_converted_without_pydantic() -> None:
    """A new option of a type coercion.py does not know would load pydantic for its command
    again; this says which, so that coercion.py learns it (or the option changes type)."""
    assert len(PARAMETERS) > 150
    plain = coercion._plain_param()
    unconverted = [name for name, p, _ in PARAMETERS if not isinstance(p._runtime_param, plain)]
    assert unconverted == []


@pytest.mark.parametrize(
    ("name", "param", "command"), PARAMETERS, ids=[n for n, _, _ in PARAMETERS]
)
def test_the_conversion_is_typers(name: str, param: Any, command: Any) -> None:
    ctx = Context(command)
    own = build_runtime_param(param.type_descriptor)
    for value in samples(param.type_descriptor.annotation):
        ours = outcome(lambda v=value: param.get_runtime_param().coerce(v, param=param, ctx=ctx))
        theirs = outcome(lambda v=value: own.coerce(v, param=param, ctx=ctx))
        if typing.get_origin(param.type_descriptor.annotation) is typing.Literal and isinstance(
            value, str
        ):
            # Choices: the same values accepted; a refusal in our one line naming them.
            assert ours[0] == theirs[0], (name, value, ours, theirs)
            if ours[0] == "refused":
                choices = ", ".join(typing.get_args(param.type_descriptor.annotation))
                assert ours[1].endswith(f": {value!r} is not one of {choices}"), (name, ours)
            continue
        assert ours == theirs, (name, value)


def test_paths_get_typers_checks(tmp_path: Path) -> None:
    """Paths go through typer's own checks: an existing file that cannot be read is refused
    in typer's words (as root every file can be read: then only the agreement is checked)."""
    name, param, command = next(p for p in PARAMETERS if p[0] == "consortium ledger verify db")
    ctx = Context(command)
    own = build_runtime_param(param.type_descriptor)
    locked = tmp_path / "locked"
    locked.write_text("")
    locked.chmod(0)
    for value in (str(locked), str(tmp_path), str(tmp_path / "absent")):
        ours = outcome(lambda v=value: param.get_runtime_param().coerce(v, param=param, ctx=ctx))
        theirs = outcome(lambda v=value: own.coerce(v, param=param, ctx=ctx))
        if typing.get_origin(param.type_descriptor.annotation) is typing.Literal and isinstance(
            value, str
        ):
            # Choices: the same values accepted; a refusal in our one line naming them.
            assert ours[0] == theirs[0], (name, value, ours, theirs)
            if ours[0] == "refused":
                choices = ", ".join(typing.get_args(param.type_descriptor.annotation))
                assert ours[1].endswith(f": {value!r} is not one of {choices}"), (name, ours)
            continue
        assert ours == theirs, (name, value)
    if os.geteuid() != 0:
        assert outcome(lambda: own.coerce(str(locked), param=param, ctx=ctx))[0] == "refused"


def test_convert_is_sure_only_of_what_it_knows() -> None:
    assert coercion.convert(int, "12") == 12
    assert coercion.convert(int, "1e3") is coercion.UNSURE
    assert coercion.convert(float, "2") == 2.0
    assert coercion.convert(float, 2) is coercion.UNSURE
    assert coercion.convert(list[str], ("a", "b")) == ["a", "b"]
    assert coercion.convert(list[int], ("1", "x")) is coercion.UNSURE
    assert coercion.convert(Path, "") is coercion.UNSURE
    assert coercion.convert(complex, "1") is coercion.UNSURE
    assert not coercion.handled(complex) and coercion.handled(list[Path])
