"""What the command modules share: exit codes, the one-line error, the --net option, and
reading a network's client configuration.

Light on purpose: every command module imports this at import time, and `consortium --help`
must not pay for trio, the client library or the crypto libraries (tests/cli/
test_cli_imports.py), so whatever needs them is imported inside the function that uses it.
"""

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

if TYPE_CHECKING:
    from consortium.cli.network import ClientSetup
    from consortium.crypto.keys import KeyPair

EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_PENDING = 3  # not decided within the wait: it may still commit (never "failed")
EXIT_UNREACHABLE = 4  # no member could be reached: nothing was submitted or asked
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it

T = TypeVar("T")

NetOpt = Annotated[
    Path,
    typer.Option(
        "--net",
        envvar="CONSORTIUM_NET",
        help="Network directory written by `consortium init` (holds client.toml).",
    ),
]


def plural(count: int, noun: str) -> str:
    """'1 member', '2 members': a count with its noun agreeing (nouns of this CLI take -s)."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def client_setup(net: Path) -> "tuple[ClientSetup, dict[str, Any]]":
    """The network's client configuration and the ConsortiumClient options it needs (TLS),
    or a one-line error (exit 2)."""
    from consortium.cli.network import NetworkError, load_client_setup
    from consortium.crypto.keys import InvalidKeyError
    from consortium.ledger.genesis import GenesisError

    try:
        setup = load_client_setup(net)
        return setup, setup.client_options()
    except (NetworkError, GenesisError, InvalidKeyError) as exc:
        raise fail(str(exc)) from None


def client_keys(
    net: Path, client: int, key_file: Path | None = None
) -> "tuple[ClientSetup, KeyPair, dict[str, Any]]":
    """As client_setup, with the key of client number `client` (1-based) of client.toml, or
    the key in `key_file` (tx submit --key). Only that key is read; one that is a member's
    key is refused, plainly (members' keys sign blocks, not clients' transactions)."""
    from consortium.cli.network import NetworkError, load_client_setup
    from consortium.crypto.keys import InvalidKeyError, KeyPair
    from consortium.ledger.genesis import GenesisError

    try:
        setup = load_client_setup(net)
        if key_file is not None:
            keys = KeyPair.load(key_file, key_passphrase())
            where = str(key_file)
        else:
            keys = setup.key(client)
            where = str(setup.key_paths[client - 1])
        member = setup.genesis.member_by_key(keys.public)
        if member is not None:
            raise fail(
                f"{where} is a member's key (member {member.name}'s), not a client's: they sign "
                "blocks and approvals; sign transactions with a client key (client.toml's, or "
                "one made by `consortium client keygen` and admitted)"
            )
        return setup, keys, setup.client_options(keys)
    except (NetworkError, GenesisError, InvalidKeyError) as exc:
        raise fail(str(exc)) from None


def key_passphrase() -> bytes | None:
    """CONSORTIUM_KEY_PASSPHRASE, for a key file that is encrypted."""
    import os

    passphrase = os.environ.get("CONSORTIUM_KEY_PASSPHRASE")
    return passphrase.encode() if passphrase else None


def expected_errors() -> tuple[type[BaseException], ...]:
    """The errors that say what the user or operator must fix (a member down, a refused
    request, a broken file): shown as one line, never as a traceback. Any other exception is
    a bug and keeps its traceback."""
    from consortium.cli.network import NetworkError
    from consortium.client.errors import ClientError
    from consortium.ledger.genesis import GenesisError
    from consortium.ledger.store import StoreError
    from consortium.node.config import ConfigError

    return (ClientError, ConfigError, GenesisError, NetworkError, StoreError)


def run_trio(main: Callable[[], Awaitable[T]]) -> T:
    """trio.run(main), with an expected error (or Ctrl-C, or a trio timeout) that a nursery
    wrapped in an exception group raised as itself, so the command's own `except` sees it."""
    import trio

    from consortium.node.errors import first_leaf

    try:
        return trio.run(main)
    except BaseExceptionGroup as group:
        found = first_leaf(group, (KeyboardInterrupt, trio.TooSlowError, *expected_errors()))
        if found is group:
            raise
        raise found from None
