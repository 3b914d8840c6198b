"""`consortium node`: run one member (`start`), check its home before starting it (`check`),
show its TLS certificate (`cert`), back up its ledger while it runs (`backup`), set a damaged
ledger aside so the next start re-fetches it from the other members (`refetch`).

The node runtime, trio and the crypto libraries are imported inside the commands: importing
this module (for `consortium --help`) loads typer and nothing heavy.
"""

# No `from __future__ import annotations` here: typer would evaluate every string
# annotation of every command at each start (main.py).

import os
from pathlib import Path
from typing import Annotated, Literal

import typer

from consortium.cli.common import EXIT_FAILED, EXIT_USAGE, fail, plural

node_app = typer.Typer(help="Run one member.", no_args_is_help=True)


@node_app.command("start")
def node_start(
    home: Annotated[Path, typer.Option("--home", help="The member's home directory.")],
    log_level: Annotated[
        Literal["debug", "info", "warning", "error"] | None,
        typer.Option(
            "--log-level",
            help="Log this much and more (default: node.toml's log.level, or info).",
        ),
    ] = None,
) -> None:
    """Run one member from its home directory (config/node.toml, node_key.pem, genesis.json).

    Settings can be overridden from the environment: CONSORTIUM_NODE_<SECTION>_<KEY>, e.g.
    CONSORTIUM_NODE_HTTP_LISTEN=127.0.0.1:9301 (docs/operations.md has the table). An
    encrypted key's passphrase is read from CONSORTIUM_KEY_PASSPHRASE."""
    from dataclasses import replace

    from consortium.cli import explorer_receipts
    from consortium.ledger.store import StoreDamaged, StoreError
    from consortium.node.config import ConfigError
    from consortium.node.process import load_member, run_member
    from consortium.node.refetch import DivergedAgain

    try:
        identity = load_member(home)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    if log_level is not None:  # the command line over node.toml and the environment
        identity = replace(identity, config=replace(identity.config, log_level=log_level))
    try:
        config = identity.config
        gathers = config.http_explorer and not config.tls_client  # (a member has no client key)
        run_member(identity, explorer_receipts.attach if gathers else None)
    except StoreDamaged as exc:  # (the way back, with this home in it)
        # Exit 2: restarting cannot fix it (the systemd unit does not restart on 2), and each
        # start would read every table again.
        raise fail(exc.advice(home), EXIT_USAGE) from None
    except DivergedAgain as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    except (StoreError, ConfigError) as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    except ValueError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"cannot start member {identity.member.name}: {exc}", EXIT_FAILED) from None


@node_app.command("cert")
def node_cert(
    home: Annotated[Path, typer.Option("--home", help="The member's home directory.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the certificate (PEM) to this file.")
    ] = None,
) -> None:
    """Show (or write) the TLS certificate this member presents. It is derived from
    config/node_key.pem and genesis at every start, never read from a file, never expires:
    this is for inspection and for tools such as `openssl s_client` (docs/tls.md)."""
    from consortium.crypto.certs import certificate_fingerprint, certificate_pem, issue_certificate
    from consortium.node.config import ConfigError, load_identity

    passphrase = os.environ.get("CONSORTIUM_KEY_PASSPHRASE")
    try:
        identity = load_identity(home, passphrase.encode() if passphrase else None)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    cert = issue_certificate(identity.keys, identity.member.name, identity.genesis.chain_id)
    config = identity.config
    typer.echo(f"member:       {identity.member.name} (key matches {config.genesis_path})")
    typer.echo(f"public key:   {identity.keys.public.hex()}")
    typer.echo(f"fingerprint:  SHA256 {certificate_fingerprint(cert)}")
    typer.echo(
        f"valid:        {cert.not_valid_before_utc:%Y-%m-%d} to "
        f"{cert.not_valid_after_utc:%Y-%m-%d} (dates are not checked)"
    )
    toml = config.config_dir / "node.toml"
    typer.echo(
        f"tls:          peer port {'on' if config.tls_peer else 'off'}, "
        f"client port {'on' if config.tls_client else 'off'} ({toml} [tls])"
    )
    if out is not None:
        out.write_bytes(certificate_pem(cert))
        typer.echo(f"wrote {out} (for inspection only: the member derives it at start)")


@node_app.command("check")
def node_check(
    home: Annotated[Path, typer.Option("--home", help="The member's home directory.")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each peer.")] = 3.0,
) -> None:
    """Check a member's home before starting it (or while it runs): config, key against
    genesis, data directory's network, listen addresses, and whether each peer is reachable.
    Exits 1 on a problem that stops the node from starting; unreachable peers are reported."""
    import trio

    from consortium.node.config import ConfigError, load_identity
    from consortium.node.preflight import check_data_dir, check_listen, probe_peers

    passphrase = os.environ.get("CONSORTIUM_KEY_PASSPHRASE")
    try:
        identity = load_identity(home, passphrase.encode() if passphrase else None)
        genesis = identity.genesis
        typer.echo(
            f"ok   config, key and genesis: member {identity.member.name} "
            f"({identity.member.index + 1} of {genesis.n}) of {genesis.mode} network "
            f"'{genesis.chain_name}' ({genesis.chain_id.hex()[:12]}…)"
        )
        data = check_data_dir(identity.config, genesis, tables=True)
        typer.echo(
            f"ok   data directory {identity.config.data_dir}: "
            + (
                f"this network's ledger, height {data.height}, every table matching its digest"
                if data.exists
                else "empty"
            )
        )
        if data.recovering is not None:
            typer.echo(
                f"note it starts in recovery from {data.recovering}: no vote until it has "
                "learned a view (pbft) or term (raft) above any it can have used "
                "(docs/operations.md, Restoring)"
            )
    except ConfigError as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    try:
        check_listen(identity.config)
        typer.echo("ok   listen addresses can be bound")
    except ConfigError as exc:
        if "already in use" not in str(exc):
            raise fail(str(exc), EXIT_FAILED) from None
        typer.echo(f"note {exc} (fine if this member is running)")
    probes = trio.run(probe_peers, identity.config, genesis, identity.member.index, timeout)
    for p in probes:
        if p.error:
            typer.echo(f"warn peer {p.name} at {p.address}: {p.error}")
        else:
            typer.echo(f"ok   peer {p.name} at {p.address} reachable")
    down = [p.name for p in probes if p.error]
    # A quorum counts this member, unless it starts in recovery: it votes nothing until it
    # has caught up, so then the quorum must come from its peers alone.
    need = genesis.quorum - (0 if data.recovering is not None else 1)
    reachable = len(probes) - len(down)
    recovering = data.recovering is not None
    typer.echo(
        f"{reachable} of {plural(len(probes), 'peer')} reachable; this member needs {need} of "
        f"them for a quorum ({genesis.quorum} of {genesis.n} members, "
        + ("not itself: it votes nothing while it recovers)" if recovering else "itself included)")
        + ("" if reachable >= need else ": start them, or fix the addresses or firewall")
    )


@node_app.command("backup")
def node_backup(
    home: Annotated[Path, typer.Option("--home", help="The member's home directory.")],
    to: Annotated[Path, typer.Option("--to", help="The backup file to write (must be new).")],
) -> None:
    """Copy the member's ledger (blocks, state, certificates, its consensus records) to a
    new file, consistently, while the node runs (SQLite's online backup API), then verify
    the copy. The copy is marked as a restored backup: a member started on it votes nothing
    until it has learned a later view or term. Back up config/ (node_key.pem, node.toml,
    genesis.json) separately."""
    from consortium.ledger.backup import backup_store
    from consortium.ledger.genesis import GenesisError
    from consortium.ledger.store import StoreError
    from consortium.node.config import ConfigError, load_config

    try:
        config = load_config(home)
        from consortium.node.genesis import load_genesis  # (with the frame check)

        genesis = load_genesis(config.genesis_path)
        result = backup_store(config.store_path, to, genesis)
    except (ConfigError, GenesisError, StoreError) as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    typer.echo(
        f"backed up {config.store_path} to {result.path}: height {result.height}, head "
        f"{result.head_hash.hex()[:16]}…, {result.size_bytes:,} bytes; verified; marked as a "
        "restored backup (a member started on it recovers first: docs/operations.md, Restoring)"
    )


@node_app.command("refetch")
def node_refetch(
    home: Annotated[Path, typer.Option("--home", help="The member's home directory.")],
) -> None:
    """Set the member's ledger aside (renamed, in its data directory; never deleted) so that
    its next start re-fetches the whole ledger from the other members, checking every block by
    its certificates, and recovers before it votes (as from lost state). For a store the node
    refuses as damaged. Refuses while the member runs."""
    from consortium.node.config import ConfigError, load_config
    from consortium.node.refetch import set_ledger_aside

    try:
        config = load_config(home)
        moved = set_ledger_aside(config)
    except ConfigError as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    typer.echo(
        f"moved {config.store_path} aside to {moved} (keep it until the member is healthy "
        f"again); `consortium node start --home {home}` now re-fetches the ledger from the "
        "other members and recovers before it votes (docs/operations.md, A damaged store)"
    )
