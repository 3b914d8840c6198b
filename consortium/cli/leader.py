"""`consortium leader`: raft maintenance, handing leadership to another member (`transfer`).

The client library, trio and the crypto libraries are imported inside the command: importing
this module (for `consortium --help`) loads typer and nothing heavy.
"""

# No `from __future__ import annotations` here: typer would evaluate every string
# annotation of every command at each start (main.py).

import contextlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from consortium.cli.common import EXIT_FAILED, fail, run_trio

if TYPE_CHECKING:
    from consortium.crypto.keys import KeyPair
    from consortium.ledger.genesis import Genesis

leader_app = typer.Typer(help="Raft leadership (maintenance).", no_args_is_help=True)


@leader_app.command("transfer")
def leader_transfer(
    to: Annotated[str, typer.Option("--to", help="The member to hand leadership to (name).")],
    home: Annotated[
        Path | None,
        typer.Option("--home", help="A member's home: its key (config/node_key.pem) signs."),
    ] = None,
    net: Annotated[
        Path | None,
        typer.Option(
            "--net",
            envvar="CONSORTIUM_NET",
            help="Instead of --home: a network directory `consortium init` wrote, whose "
            "first member home (nodes/) signs.",
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the new leader.")] = 10.0,
) -> None:
    """Raft maintenance: hand leadership to another member (TimeoutNow), e.g. before taking
    the current leader down. Signed with a member's key (CONSORTIUM_KEY_PASSPHRASE if it is
    encrypted) for the leader's current term; a client key cannot move leadership. The leader
    answers when it accepts the transfer (a target that acknowledged nothing for an election
    timeout, or a transfer under way, is refused); this then waits until the target leads."""
    import trio

    from consortium.client import ClientError, ConsortiumClient

    genesis, keys, tls = _member_signer(home, net)
    if genesis.mode != "raft":
        raise fail(
            "leadership transfer is a raft operation; in pbft the primary changes by "
            "view change only"
        )
    target = genesis.member_by_name(to)
    if target is None:
        raise fail(
            f"--to: no member named {to!r} (members: {', '.join(m.name for m in genesis.members)})"
        )

    async def main() -> str:
        async with ConsortiumClient(genesis, keys, tls_keys=keys if tls else None) as c:
            await c.wait_connected(timeout_s=min(timeout, 5.0))
            with trio.fail_after(timeout):
                while True:
                    leader = await c.find_leader(timeout_s=timeout)
                    if leader == target.index:
                        return f"{to} already leads"
                    term = (await c.status(leader)).get("term")
                    if not isinstance(term, int):
                        continue
                    try:
                        await c.transfer_leadership(leader, target.index, term, timeout_s=timeout)
                        break
                    except ClientError as exc:
                        # Leadership moved between our status request and the transfer
                        # request: sign again for the new leader's term. A leader accepts
                        # one transfer per election timeout, counting from its election: it
                        # says when to ask again, and that is within our --timeout.
                        wait = _retry_after_s(str(exc))
                        if wait is not None:
                            await trio.sleep(wait)
                            continue
                        if "sign it again" not in str(exc) and "not the leader" not in str(exc):
                            raise
                    await trio.sleep(0.05)
                while True:
                    s = await c.status(target.index)
                    if s.get("role") == "leader":
                        return (
                            f"{to} leads term {s.get('term')} (was {genesis.members[leader].name})"
                        )
                    await trio.sleep(0.05)

    try:
        typer.echo(run_trio(main))
    except ClientError as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    except trio.TooSlowError:
        raise fail(f"{to} did not become leader within {timeout:g} s", EXIT_FAILED) from None


_TRY_AGAIN = re.compile(r"try again in (\d+) ms")


def _retry_after_s(refusal: str) -> float | None:
    """Seconds until the leader takes a transfer again, from its refusal (one transfer per
    election timeout), with a margin for the trip; None for any other refusal."""
    found = _TRY_AGAIN.search(refusal)
    return None if found is None else int(found.group(1)) / 1000 + 0.02


def _member_signer(home: Path | None, net: Path | None) -> "tuple[Genesis, KeyPair, bool]":
    """(genesis, a member's keys, whether its client port uses TLS) from --home, or from the
    first member home of a network directory `consortium init` wrote; a one-line error for
    anything else (a client key never signs a leadership transfer)."""
    from consortium.cli.deployment import key_passphrase
    from consortium.cli.network import NetworkError, node_homes
    from consortium.crypto.keys import InvalidKeyError, KeyPair
    from consortium.ledger.genesis import GenesisError
    from consortium.node.config import ConfigError, load_config, load_identity

    if home is None and net is not None:
        try:
            homes = node_homes(net)
        except NetworkError:
            homes = []
        if not homes:
            raise fail(
                f"{net} holds no member home (nodes/): a leadership transfer is signed by a "
                "member's key, never a client's; run it with --home MEMBER_HOME"
            )
        home = homes[0]
    if home is None:
        raise fail("sign it with a member's key: --home MEMBER_HOME")
    passphrase = key_passphrase()
    try:
        identity = load_identity(home, passphrase)
    except ConfigError as exc:
        with contextlib.suppress(ConfigError, GenesisError, InvalidKeyError, OSError):
            config = load_config(home)
            public = KeyPair.load(config.key_path, passphrase).public
            from consortium.node.genesis import load_genesis  # (with the frame check)

            clients = {c.public_key: c.name for c in load_genesis(config.genesis_path).clients}
            if public in clients:
                raise fail(
                    f"{config.key_path} is client {clients[public]!r}'s key: a leadership "
                    "transfer is signed by a member's key, never a client's"
                ) from None
        raise fail(str(exc)) from None
    return identity.genesis, identity.keys, identity.config.tls_client
