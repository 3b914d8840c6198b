"""Option values converted without pydantic, where typer's own conversion would load it.

Typer (0.2x) converts every parameter's value with a pydantic TypeAdapter that it builds when
the parameter is first processed, even a value it then leaves alone (the top-level --help
flag, unset, on every subcommand). Importing pydantic and building the adapters costs more
CPU than everything else `consortium GROUP --help` does, and a third of a `tx submit`.

Our options take plain types: str, int, float, bool, Path, lists of them, and choices of
strings (Literal, which --help lists). For those,
`install` gives each parameter a conversion that does what typer's does, without pydantic;
a value it is not sure of (a malformed number, an unexpected type) goes to typer's own
conversion, so every error message stays typer's. Paths go through typer's own path checks.
tests/cli/test_cli_coercion.py checks the results against typer's, value by value.

This reaches into typer's private conversion layer (typer._coercion): a typer without that
module leaves `install` doing nothing (typer converts as it does), but one whose layer has
changed shape could break it, which is why pyproject.toml pins typer to the release this was
built and tested against (0.29.x); raise the pin only with tests/cli/test_cli_coercion.py
passing.
"""

from __future__ import annotations

import functools
import re
import typing
from pathlib import Path
from typing import Any

_INT = re.compile(r"-?(?:0|[1-9][0-9]{0,17})")
_FLOAT = re.compile(r"-?(?:0|[1-9][0-9]{0,17})(?:\.[0-9]{1,17})?")
_PLAIN = (str, int, float, bool, Path)


class _Unsure:
    """What a conversion returns when typer's own must decide (and word any error)."""


UNSURE = _Unsure()


def convert(annotation: Any, value: Any, path: Any = None) -> Any:
    """`value` as typer converts it for a parameter of type `annotation`, or UNSURE. `path`
    turns a Path into the checked result (typer's path checks); without it, the Path."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:  # choices: one of them as given, else typer's error
        return value if type(value) is str and value in typing.get_args(annotation) else UNSURE
    if origin is list:
        (item,) = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            return UNSURE
        items = [convert(item, v, path) for v in value]
        return UNSURE if any(i is UNSURE for i in items) else items
    kind = type(value)
    if annotation is str:
        return value if kind is str else UNSURE
    if annotation is bool:
        return value if kind is bool else UNSURE
    if annotation is int:
        if kind is int:
            return value
        return int(value) if kind is str and _INT.fullmatch(value) else UNSURE
    if annotation is float:
        if kind is float:
            return value
        return float(value) if kind is str and _FLOAT.fullmatch(value) else UNSURE
    if annotation is Path:
        if isinstance(value, Path):
            p = value
        elif kind is str and value and "\x00" not in value:
            p = Path(value)
        else:
            return UNSURE
        return p if path is None else path(p)
    return UNSURE


def handled(annotation: Any) -> bool:
    """Whether `convert` knows this parameter type (a list of a plain type, or one)."""
    origin = typing.get_origin(annotation)
    if origin is list:
        args = typing.get_args(annotation)
        return len(args) == 1 and args[0] in _PLAIN
    if origin is typing.Literal:
        return all(type(a) is str for a in typing.get_args(annotation))
    return annotation in _PLAIN


@functools.cache
def _plain_param() -> Any:
    """The RuntimeParam class for the plain conversion, or None if this typer has none."""
    try:
        from dataclasses import dataclass

        from typer._click import Context
        from typer._click.exceptions import BadParameter
        from typer._coercion import RuntimeParam, build_runtime_param
        from typer._param_types import coerce_cli_path
        from typer.core import _TyperParameter
    except ImportError:
        return None

    @dataclass(frozen=True)
    class PlainParam(RuntimeParam):
        def _coerce_value(self, value: Any, param: _TyperParameter, ctx: Context) -> Any:
            info = self.parameter_info

            def checked(p: Path) -> Any:
                return coerce_cli_path(
                    p, info, path_type=info.path_type or Path, param=param, ctx=ctx
                )

            annotation: Any = self.annotation
            choices = typing.get_args(annotation)
            literal = typing.get_origin(annotation) is typing.Literal
            if literal and type(value) is str and value not in choices:
                # One line naming the choices, not pydantic's "Value error, ...".
                raise BadParameter(
                    f"{value!r} is not one of {', '.join(choices)}", ctx=ctx, param=param
                )
            out = convert(self.annotation, value, checked)
            if out is UNSURE:
                own = build_runtime_param(param.type_descriptor)
                return own._coerce_value(value, param=param, ctx=ctx)
            return out

    return PlainParam


def install(command: Any) -> None:
    """Give every parameter of `command` and of its subcommands, their --help included, the
    plain conversion, where its type and options allow it (no parser, no bounds)."""
    plain = _plain_param()
    if plain is None:
        return
    from typer._click import Context
    from typer.core import _TyperParameter

    # The --help option is made on first use, with the context's names: make it now (a
    # context of our own has the default names, as every context of this CLI does).
    for param in command.get_params(Context(command)):
        if not isinstance(param, _TyperParameter) or param._runtime_param is not None:
            continue
        descriptor = param.type_descriptor
        info = descriptor.parameter_info
        simple = (
            descriptor.file_annotation is None
            and info.parser is None
            and info.min is None
            and info.max is None
            and not info.resolve_path
        )
        if simple and handled(descriptor.annotation):
            param._runtime_param = plain(parameter_info=info, annotation=descriptor.annotation)
    for sub in getattr(command, "commands", {}).values():
        install(sub)
