"""`consortium`: run a network, submit signed transactions, watch it, audit its ledger.

This module only assembles the command line; each command group is a module of its own:

    net.py        init, keygen, genesis, up, status, demo (the network as a whole)
    node.py       node start, check, cert, backup (one member)
    tx.py         tx submit, status, receipt, verify-receipt; read
    ledger.py     ledger follow, verify
    leader.py     leader transfer (raft)
    clients.py    client keygen, propose-admit, propose-revoke, sign, submit, list
    bench_cmd.py  bench, bench compare (the benchmark itself is bench.py)
    sim_cmd.py    sim (the simulator runs are sim.py)

Importing any of them loads typer and nothing heavy: trio, the node runtime, the client
library, the simulator, the audit, matplotlib and the crypto libraries are imported inside the
commands that use them (tests/cli/test_cli_imports.py), so `consortium --help` and a
transaction submitted from a script do not pay for what they do not run.

Typer builds every command (its options, from the function's signature) each time the
command line starts, so the rest is kept cheap too: help is plain text (click's formatter),
as rich's would cost more than the rest of `--help`; option values are converted without
pydantic where typer would load it (coercion.py); and the command modules leave out
`from __future__ import annotations`, whose string annotations typer would evaluate one by
one at every start.

Here too is the one place that turns an error a member's nursery wrapped in an exception
group back into the operator's one-line message.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NoReturn

import typer
from typer.core import TyperGroup

from consortium.cli import coercion
from consortium.cli.bench_cmd import bench_app
from consortium.cli.clients import clients_app
from consortium.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, expected_errors
from consortium.cli.leader import leader_app
from consortium.cli.ledger import ledger_app
from consortium.cli.net import demo, genesis_command, init, keygen, status, up
from consortium.cli.node import node_app
from consortium.cli.sim_cmd import sim
from consortium.cli.tx import read, tx_app


class _Commands(TyperGroup):
    """The top-level group. Typer builds it, with every command under it, each time the
    command line runs; it then gives every option coercion.py's conversion (no pydantic). It
    runs the command, and shows an expected error (common.expected_errors: a member down, a
    failed write, a broken config), bare or wrapped by trio in an exception group (a task's
    error, wrapped by its nursery), as its one-line message, exit 1; Ctrl-C ends it quietly
    with exit 130; any other error keeps its traceback (it is a bug)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        coercion.install(self)

    def _main_shell_completion(self, *args: Any, **kwargs: Any) -> None:
        # Typer registers its shells' completion only with its --install-completion option,
        # which this CLI leaves out (`consortium completion SHELL` prints the script): when
        # the shell asks for completions, register them first.
        import os

        if os.environ.get(COMPLETE_VAR):
            from typer._completion_classes import completion_init

            completion_init()
        super()._main_shell_completion(*args, **kwargs)

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().make_context(*args, **kwargs)
        except _UsageError as exc:
            _usage_error(exc)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except _UsageError as exc:  # a subcommand's arguments, parsed as it is invoked
            _usage_error(exc)
        except KeyboardInterrupt:
            raise typer.Exit(EXIT_INTERRUPTED) from None  # Ctrl-C: quietly, as shells expect
        except BaseExceptionGroup as group:
            from consortium.node.errors import first_leaf

            if first_leaf(group, (KeyboardInterrupt,)) is not group:
                raise typer.Exit(EXIT_INTERRUPTED) from None
            found = first_leaf(group, expected_errors())
            if found is group:
                raise
            typer.echo(f"error: {found}", err=True)
            raise typer.Exit(EXIT_FAILED) from None
        except Exception as exc:
            # typer's own exits, help and usage errors are Exceptions too: those go on, and
            # without importing what expected_errors names (`--help` stays light).
            if not type(exc).__module__.startswith("consortium.") or not isinstance(
                exc, expected_errors()
            ):
                raise
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_FAILED) from None


COMPLETE_VAR = "_CONSORTIUM_COMPLETE"  # set by the completion script when the shell asks


# click's usage error (typer vendors click and exports only its subclass BadParameter).
_UsageError: type[Exception] = typer.BadParameter.__mro__[1]


def _usage_error(exc: Any) -> NoReturn:
    """A usage error as one line naming the command's help, exit 2 (click prints the usage,
    a hint and the error on four)."""
    if type(exc).__name__ == "NoArgsIsHelpError":  # `consortium tx`: the help, as asked
        exc.show()
        raise typer.Exit(2)
    ctx = getattr(exc, "ctx", None)
    where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    typer.echo(f"error: {exc.format_message()}{where}", err=True)
    raise typer.Exit(2)


app = typer.Typer(
    cls=_Commands,
    help="Consortium: a permissioned ledger node ordering client-signed transactions "
    "with PBFT (Byzantine faults) or Raft (crash faults).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _show_version(value: bool) -> None:
    if value:
        from consortium import compiled, version

        typer.echo(f"consortium {version()}\nhot modules: {compiled.describe()}")
        raise typer.Exit(0)


@app.callback()
def _options(
    version: bool = typer.Option(
        False,
        "--version",
        help="Print the version and exit.",
        is_eager=True,
        callback=_show_version,
    ),
) -> None:
    """Consortium: a permissioned ledger node ordering client-signed transactions with PBFT
    (Byzantine faults) or Raft (crash faults)."""


def completion(
    shell: Annotated[Literal["bash", "zsh", "fish"], typer.Argument(help="Your shell.")],
) -> None:
    """Print the shell completion script for consortium's commands and options.

    \b
    Load it in the current shell:   eval "$(consortium completion bash)"
    or for every new one (bash):    consortium completion bash >> ~/.bashrc
    zsh: add the eval line to ~/.zshrc; fish: consortium completion fish >
    ~/.config/fish/completions/consortium.fish"""
    from typer._completion_shared import get_completion_script

    typer.echo(
        get_completion_script(prog_name="consortium", complete_var=COMPLETE_VAR, shell=shell)
    )


# In this order in `consortium --help`: the commands, then the groups.
app.command("sim")(sim)
app.command()(init)
app.command()(keygen)
app.command("genesis")(genesis_command)
app.command()(up)
app.command()(read)
app.command()(status)
app.command()(demo)
app.add_typer(leader_app, name="leader")
app.add_typer(bench_app, name="bench")
app.add_typer(node_app, name="node")
app.add_typer(tx_app, name="tx")
app.add_typer(ledger_app, name="ledger")
app.add_typer(clients_app, name="client")
app.command()(completion)


if __name__ == "__main__":  # pragma: no cover
    app(prog_name="consortium")
