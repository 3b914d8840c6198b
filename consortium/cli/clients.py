"""`consortium client`: admit and revoke client keys while the network runs.

The flow for members of several organisations (docs/clients-admission.md):

    consortium client keygen --out app.pem                  # the new client, on its machine
    consortium client propose-admit --key app.pub --label acme-app --home MEMBER_HOME \\
        --out admit-acme.json                               # anyone with the genesis file
    consortium client sign admit-acme.json --home MEMBER_HOME   # each member, on its machine
    consortium client submit admit-*.json --home MEMBER_HOME    # merges copies, submits
    consortium client list --home MEMBER_HOME               # admitted, pending, effective at

And for clients in other languages that reach HTTPS gateways (mutual TLS, docs/tls.md):

    consortium client tls-files --key app.pem --genesis genesis.json --out tls/

A proposal is a JSON file holding the change body (what members sign) and the approvals
collected so far; it carries no secret, so it can travel by e-mail or a ticket.
"""

# No `from __future__ import annotations` here: typer would evaluate every string
# annotation of every command at each start (main.py).

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from consortium.cli.common import (
    EXIT_FAILED,
    EXIT_PENDING,
    EXIT_UNREACHABLE,
    fail,
    plural,
    run_trio,
)

if TYPE_CHECKING:
    from consortium.crypto.keys import KeyPair
    from consortium.ledger.admission import ChangeKind, Proposal
    from consortium.ledger.genesis import Genesis

# The admission rules, the crypto libraries, the client library and trio are imported inside
# the commands: importing this module (for `consortium --help`) loads typer and nothing heavy.

clients_app = typer.Typer(
    help="Admit and revoke client keys (a change approved by a quorum of members).",
    no_args_is_help=True,
)

NetOpt = Annotated[
    Path | None,
    typer.Option(
        "--net", envvar="CONSORTIUM_NET", help="Network directory written by `consortium init`."
    ),
]
HomeOpt = Annotated[Path | None, typer.Option("--home", help="A member's home directory.")]
GenesisOpt = Annotated[Path | None, typer.Option("--genesis", help="The network's genesis.json.")]


def _genesis(net: Path | None, home: Path | None, genesis_path: Path | None) -> "Genesis":
    """The genesis file from --genesis, else --home's config/genesis.json, else --net."""
    from consortium.cli.network import NetworkError, load_client_setup
    from consortium.ledger.genesis import GenesisError
    from consortium.node.genesis import load_genesis  # (with the frame check)

    try:
        if genesis_path is not None:
            return load_genesis(genesis_path)
        if home is not None:
            return load_genesis(home / "config" / "genesis.json")
        if net is not None:
            return load_client_setup(net).genesis
    except (GenesisError, NetworkError) as exc:
        raise fail(str(exc)) from None
    raise fail("say which network: --home MEMBER_HOME, --net DIR or --genesis FILE")


def _passphrase() -> bytes | None:
    p = os.environ.get("CONSORTIUM_KEY_PASSPHRASE")
    return p.encode() if p else None


def _member_key(home: Path) -> "tuple[Genesis, KeyPair]":
    from consortium.node.config import ConfigError, load_identity

    try:
        identity = load_identity(home, _passphrase())
    except ConfigError as exc:
        raise fail(str(exc)) from None
    return identity.genesis, identity.keys


def parse_public_key(text: str) -> bytes:
    """64 hex characters, a file holding them, or a PEM private key file (its public key);
    the key must be a valid Ed25519 key of prime order."""
    from consortium.crypto.keys import InvalidKeyError, KeyPair, validate_public_key

    raw: bytes | None = None
    candidate = text.strip()
    if len(candidate) == 64:
        try:
            raw = bytes.fromhex(candidate)
        except ValueError:
            raw = None
    if raw is None:
        path = Path(text)
        if not path.is_file():
            raise InvalidKeyError(
                f"--key {text!r}: give 64 hex characters (an Ed25519 public key), a file "
                "holding them, or the client's PEM key file"
            )
        data = path.read_bytes()
        if b"PRIVATE KEY" in data:
            raw = KeyPair.load(path, _passphrase()).public
        else:
            try:
                raw = bytes.fromhex(data.decode(errors="replace").strip())
            except ValueError:
                raw = b""
            if len(raw) != 32:
                raise InvalidKeyError(
                    f"{path}: expected 64 hex characters (an Ed25519 public key) or a PEM key"
                )
    return validate_public_key(raw)


@clients_app.command("keygen")
def keygen(
    out: Annotated[Path, typer.Option("--out", help="Where to write the new key (PEM, 0600).")],
) -> None:
    """Make a new client key; prints its public key, which members then admit."""
    from consortium.crypto.keys import KeyPair

    if out.exists():
        raise fail(f"{out} exists; choose another --out (a key is never overwritten)")
    keys = KeyPair.generate()
    keys.save(out, _passphrase())
    out.with_name(out.name + ".pub").write_text(keys.public.hex() + "\n")
    typer.echo(keys.public.hex())
    typer.echo(f"wrote {out} (private, mode 0600) and {out}.pub (the public key to admit)")


def _propose(
    kind: "ChangeKind",
    key: str,
    label: str,
    out: Path,
    expires_in_h: float,
    net: Path | None,
    home: Path | None,
    genesis_path: Path | None,
) -> None:
    import secrets

    from consortium.crypto.keys import InvalidKeyError
    from consortium.ledger.admission import (
        CHANGE_TTL_MAX_MS,
        ClientChange,
        Proposal,
        check_client_key,
    )

    genesis = _genesis(net, home, genesis_path)
    try:
        client_key = parse_public_key(key)
    except InvalidKeyError as exc:
        raise fail(str(exc)) from None
    members = [m.public_key for m in genesis.members]
    member = genesis.member_by_key(client_key)
    if member is not None:
        raise fail(
            f"--key {key}: that is a member's key (member {member.name}'s), not a client's; "
            "a client needs a key of its own (`consortium client keygen --out FILE`)"
        )
    refusal = check_client_key(client_key, members)
    if refusal is not None:
        raise fail(f"--key: {refusal.detail}")
    if len(label) > 64:
        raise fail("--label: at most 64 characters")
    ttl_ms = int(expires_in_h * 3600 * 1000)
    if not 0 < ttl_ms <= CHANGE_TTL_MAX_MS:
        raise fail(f"--expires-in-hours must be in (0, {CHANGE_TTL_MAX_MS // 3_600_000}]")
    if out.exists():
        raise fail(f"{out} exists; choose another --out")
    # Created now: it must follow the key's last accepted change (approvals collected before
    # it are stale); members refuse to sign a change created after their clock, and the
    # ledger one created after the block time.
    now_ms = int(time.time() * 1000)
    change = ClientChange.create(
        genesis.chain_id,
        kind,
        client_key,
        label,
        secrets.token_bytes(16),
        now_ms + ttl_ms,
        created_ms=now_ms,
    )
    Proposal(change).save(out)
    typer.echo(f"wrote {out}: {change.describe()}")
    typer.echo(
        f"it needs {genesis.quorum} of {genesis.n} member approvals before "
        f"{_when(change.expiry_ms)}; "
        f"each member runs: consortium client sign {out} --home MEMBER_HOME"
    )


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(ms / 1000))


KeyOpt = Annotated[
    str,
    typer.Option(
        "--key", help="The client's public key: 64 hex characters, a .pub file or its PEM file."
    ),
]
LabelOpt = Annotated[str, typer.Option("--label", help="A name for operators (<= 64 chars).")]
OutOpt = Annotated[Path, typer.Option("--out", help="The proposal file to write.")]
ExpiresOpt = Annotated[
    float, typer.Option("--expires-in-hours", help="How long members have to approve it.")
]


@clients_app.command("propose-admit")
def propose_admit(
    key: KeyOpt,
    out: OutOpt,
    label: LabelOpt = "",
    expires_in_hours: ExpiresOpt = 48.0,
    net: NetOpt = None,
    home: HomeOpt = None,
    genesis: GenesisOpt = None,
) -> None:
    """Write a proposal to admit a client key (no member has approved it yet)."""
    from consortium.ledger.admission import ADMIT

    _propose(ADMIT, key, label, out, expires_in_hours, net, home, genesis)


@clients_app.command("propose-revoke")
def propose_revoke(
    key: KeyOpt,
    out: OutOpt,
    label: LabelOpt = "",
    expires_in_hours: ExpiresOpt = 48.0,
    net: NetOpt = None,
    home: HomeOpt = None,
    genesis: GenesisOpt = None,
) -> None:
    """Write a proposal to revoke a client key."""
    from consortium.ledger.admission import REVOKE

    _propose(REVOKE, key, label, out, expires_in_hours, net, home, genesis)


def _load(path: Path, genesis: "Genesis") -> "Proposal":
    from consortium.ledger.admission import Proposal, ProposalError

    try:
        proposal = Proposal.load(path)
    except ProposalError as exc:
        raise fail(str(exc)) from None
    if proposal.change.chain_id != genesis.chain_id:
        raise fail(
            f"{path}: the change is for network {proposal.change.chain_id.hex()[:12]}…, this "
            f"genesis is {genesis.chain_id.hex()[:12]}…; use that network's genesis"
        )
    return proposal


def _names(genesis: "Genesis") -> dict[bytes, str]:
    return {m.public_key: m.name for m in genesis.members}


@clients_app.command("sign")
def sign(
    proposal_path: Annotated[Path, typer.Argument(help="The proposal file.")],
    home: Annotated[Path, typer.Option("--home", help="Your member's home (its key signs).")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Write here instead of updating the file.")
    ] = None,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes", help="Sign without asking (needed where there is no terminal to ask on)."
        ),
    ] = False,
) -> None:
    """Approve a proposal with your member key (run it on your own machine). It shows the
    change in words and asks before signing; --yes signs without asking, and without a
    terminal it signs only with --yes."""
    from consortium.crypto.signing import Ed25519Signer
    from consortium.ledger.admission import CHANGE_TTL_MAX_MS, check_client_key

    genesis, keys = _member_key(home)
    proposal = _load(proposal_path, genesis)
    change = proposal.change
    now_ms = int(time.time() * 1000)
    if change.expiry_ms < now_ms:
        raise fail(f"{proposal_path}: the proposal expired; ask for a new one")
    if change.expiry_ms - now_ms > CHANGE_TTL_MAX_MS or (
        change.expiry_ms - change.created_ms > CHANGE_TTL_MAX_MS
    ):
        raise fail(
            f"{proposal_path}: the proposal expires {_when(change.expiry_ms)}, more than "
            f"{CHANGE_TTL_MAX_MS // 86_400_000} days after now or after its creation; a change "
            "approved that far ahead would outlive later changes of the key: do not sign it, "
            "ask for a new one (`consortium client propose-*`)"
        )
    if change.created_ms > now_ms:
        raise fail(
            f"{proposal_path}: the proposal says it was created {_when(change.created_ms)}, "
            "after your clock (approvals must not predate what they approve); check the "
            "clocks, or sign it again in a moment"
        )
    refusal = check_client_key(change.client_key, [m.public_key for m in genesis.members])
    if refusal is not None:
        raise fail(f"{proposal_path}: {refusal.detail}; do not sign it")
    name = _names(genesis)[keys.public]
    if not yes:
        _confirm(proposal, genesis, name)
    proposal.add(change.approve(Ed25519Signer(keys)))
    target = out or proposal_path
    proposal.save(target, _names(genesis))
    typer.echo(
        f"{name} approved: {change.describe()}, proposed {_when(change.created_ms)}, "
        f"expires {_when(change.expiry_ms)}"
    )
    typer.echo(
        f"{target}: {len(proposal.approvals)} of {genesis.quorum} needed approvals "
        f"(change id {change.id.hex()[:16]}…)"
    )


def _confirm(proposal: "Proposal", genesis: "Genesis", name: str) -> None:
    """Say what signing approves, in words, and ask on the terminal; without one, refuse (a
    script must say --yes: an approval is not to be given by a pipe left open)."""
    change = proposal.change
    names = _names(genesis)
    approved = [names.get(key, key.hex()[:8]) for key, _ in proposal.approval_list()]
    verb = "admit" if change.kind == "admit" else "revoke"
    label = f" labelled {change.label!r}" if change.label else ""
    typer.echo(
        f"You are about to approve, as member {name} of network '{genesis.chain_name}' "
        f"({genesis.chain_id.hex()[:12]}…):\n"
        f"  {verb} the client key {change.client_key.hex()}{label}: "
        + (
            "it may then sign transactions on this network"
            if verb == "admit"
            else "its transactions are then refused"
        )
        + "\n"
        f"  proposed {_when(change.created_ms)}, valid until {_when(change.expiry_ms)}\n"
        f"  approved so far by {', '.join(approved) or 'no member'}; "
        f"{genesis.quorum} of {genesis.n} members must approve"
    )
    if not _on_terminal():
        raise fail("no terminal to ask for confirmation: read the change above and pass --yes")
    if not typer.confirm(f"Sign with {name}'s key?", default=False):
        raise fail("not signed", EXIT_FAILED)


def _on_terminal() -> bool:
    import sys

    return sys.stdin.isatty()


@clients_app.command("submit")
def submit(
    proposals: Annotated[
        list[Path], typer.Argument(help="The proposal file, or several signed copies of it.")
    ],
    net: NetOpt = None,
    client: Annotated[
        int, typer.Option(help="With --net: which client key of client.toml submits (1-based).")
    ] = 1,
    home: Annotated[
        Path | None, typer.Option("--home", help="Submit with this member's key instead.")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the receipt.")] = 20.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Merge the approvals of the given copies, check them, and submit the change; prints the
    height at which it takes effect (the first checkpoint after its block)."""

    from consortium.cli.network import NetworkError, load_client_setup
    from consortium.client import ConsortiumClient
    from consortium.crypto.keys import InvalidKeyError
    from consortium.ledger.admission import (
        ProposalError,
        check_approvals,
        check_client_key,
        effective_height,
    )
    from consortium.ledger.genesis import GenesisError
    from consortium.ledger.tx import ConfigChange

    if home is not None:
        genesis, keys = _member_key(home)
    elif net is not None:
        try:
            setup = load_client_setup(net)
            genesis, keys = setup.genesis, setup.key(client)
        except (NetworkError, GenesisError, InvalidKeyError) as exc:
            raise fail(str(exc)) from None
    else:
        raise fail("submit with a member key (--home MEMBER_HOME) or a client key (--net DIR)")
    proposal = _load(proposals[0], genesis)
    for path in proposals[1:]:
        try:
            proposal.merge(_load(path, genesis), str(path))
        except ProposalError as exc:
            raise fail(str(exc)) from None
    members = [m.public_key for m in genesis.members]
    change = proposal.change
    refusal = check_client_key(change.client_key, members) or check_approvals(
        change, proposal.approval_list(), members, genesis.quorum
    )
    if refusal is not None:
        raise fail(f"{refusal.detail}; nothing submitted", EXIT_FAILED)
    op = ConfigChange(change, proposal.approval_list())

    async def main() -> Any:
        async with ConsortiumClient(genesis, keys) as c:
            tx = c.make_tx([op])
            (outcome,) = await c.submit_and_wait([tx], timeout_s=timeout)
            return outcome

    outcome = run_trio(main)
    receipt = outcome.receipt
    doc: dict[str, Any] = {
        "change_id": change.id.hex(),
        "change": change.describe(),
        "tx_id": outcome.tx_id.hex(),
        "status": outcome.status,
        "reason": outcome.reason,
        "height": outcome.height,
        "receipt": None
        if receipt is None
        else {"status": receipt.status, "reason": receipt.reason},
        "effective_height": None,
    }
    if receipt is not None and receipt.status == "ok" and outcome.height is not None:
        doc["effective_height"] = effective_height(
            outcome.height, genesis.params.checkpoint_interval
        )
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
    elif outcome.status == "pending":
        typer.echo(f"pending: {outcome.reason}; submitting the same files again is safe")
    elif outcome.status == "rejected":
        typer.echo(f"refused at submit: {outcome.reason}")
    elif outcome.status == "unreachable":
        typer.echo(f"not submitted: {outcome.reason}")
    elif receipt is not None and receipt.status != "ok":
        typer.echo(f"committed at height {outcome.height} but refused: {receipt.reason}")
    else:
        typer.echo(
            f"accepted at height {outcome.height}: {change.describe()}; takes effect at height "
            f"{doc['effective_height']} (the first checkpoint after it)"
        )
    if outcome.status == "pending":
        raise typer.Exit(EXIT_PENDING)
    if outcome.status == "unreachable":
        raise typer.Exit(EXIT_UNREACHABLE)
    if doc["effective_height"] is None:
        raise typer.Exit(EXIT_FAILED)


@clients_app.command("list")
def list_clients(
    net: NetOpt = None,
    home: HomeOpt = None,
    genesis_path: GenesisOpt = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each member.")] = 2.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The admitted clients and the pending changes with their effective height, as the
    members report them (pbft: the answer f+1 members agree on)."""
    from collections import Counter

    import trio

    from consortium.client import ClientError, ConsortiumClient
    from consortium.protocol.messages import ClientList

    genesis = _genesis(net, home, genesis_path)

    async def main() -> dict[int, ClientList | str]:
        answers: dict[int, ClientList | str] = {}
        async with ConsortiumClient(genesis) as c:

            async def one(i: int) -> None:
                try:
                    answers[i] = await c.clients(i, timeout_s=timeout)
                except ClientError as exc:
                    answers[i] = str(exc)

            async with trio.open_nursery() as nursery:
                for i in range(genesis.n):
                    nursery.start_soon(one, i)
        return answers

    answers = run_trio(main)
    lists = {i: a for i, a in answers.items() if isinstance(a, ClientList)}
    groups = Counter((a.admitted, a.pending, a.admitted_count) for a in lists.values())
    needed = genesis.f + 1 if genesis.mode == "pbft" else 1
    if not groups:
        raise fail(
            "no member answered: " + "; ".join(str(a) for a in answers.values()), EXIT_FAILED
        )
    (admitted, pending, count), agreeing = groups.most_common(1)[0]
    heights = sorted(
        a.height for a in lists.values() if (a.admitted, a.pending) == (admitted, pending)
    )
    doc = {
        "agreed_by": agreeing,
        "members": genesis.n,
        "heights": [heights[0], heights[-1]],
        "checkpoint_interval": genesis.params.checkpoint_interval,
        "admitted_count": count,
        "admitted": [{"public_key": k.hex(), "label": label} for k, label in admitted],
        "pending": [
            {
                "kind": p.kind,
                "public_key": p.client_key.hex(),
                "label": p.label,
                "effective_height": p.effective_height,
                "change_id": p.change_id.hex(),
            }
            for p in pending
        ],
        "unreachable": {
            genesis.members[i].name: a for i, a in answers.items() if isinstance(a, str)
        },
    }
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
    else:
        typer.echo(
            f"admitted clients: {count} (agreed by {agreeing} of {genesis.n} members, at heights "
            f"{heights[0]}..{heights[-1]})"
        )
        for k, label in admitted:
            typer.echo(f"  {k.hex()}  {label}")
        if count > len(admitted):
            typer.echo(f"  … and {count - len(admitted)} more")
        typer.echo(f"pending changes: {len(pending) or 'none'}")
        for p in pending:
            typer.echo(
                f"  {p.kind:<6} {p.client_key.hex()}  {p.label}  effective at height "
                f"{p.effective_height} (ledger at {heights[-1]})"
            )
        for name, why in doc["unreachable"].items():  # type: ignore[attr-defined]
            typer.echo(f"  {name}: {why}", err=True)
    if agreeing < needed:
        typer.echo(
            f"warning: only {plural(agreeing, 'member')} agree{'s' if agreeing == 1 else ''} "
            f"({needed} needed to trust the answer); "
            "members may be at different heights, try again",
            err=True,
        )
        raise typer.Exit(EXIT_FAILED)


@clients_app.command("tls-files")
def tls_files(
    key: Annotated[
        Path, typer.Option("--key", help="The client's key file (PEM, as `client keygen` wrote).")
    ],
    out: Annotated[Path, typer.Option("--out", help="The directory to write the files into.")],
    net: NetOpt = None,
    home: HomeOpt = None,
    genesis_path: GenesisOpt = None,
) -> None:
    """Write what a client in another language needs for HTTPS gateways and the TLS client
    port (mutual TLS 1.3, docs/tls.md): cert.pem (the certificate for the key, issued by the
    network's public issuer), ca.pem (that issuer's certificate: the one anchor to trust) and
    key.pem (the private key, PKCS#8 PEM, mode 0600; encrypted with the same passphrase when
    the key file is, CONSORTIUM_KEY_PASSPHRASE). Pin each member's certificate key to the
    key genesis lists for it: the issuer is public, it proves nothing by itself."""
    from consortium.crypto.certs import certificate_pem, issue_certificate, issuer_certificate
    from consortium.crypto.keys import InvalidKeyError, KeyPair

    genesis = _genesis(net, home, genesis_path)
    passphrase = _passphrase()
    try:
        keys = KeyPair.load(key, passphrase)
    except InvalidKeyError as exc:
        raise fail(str(exc)) from None
    names = [c.name for c in genesis.clients if c.public_key == keys.public]
    names += [m.name for m in genesis.members if m.public_key == keys.public]
    name = names[0] if names else "client"
    files = {
        "cert.pem": certificate_pem(issue_certificate(keys, name, genesis.chain_id)),
        "ca.pem": certificate_pem(issuer_certificate(genesis.chain_id)),
        "key.pem": keys.to_pem(passphrase),
    }
    existing = [out / f for f in files if (out / f).exists()]
    if existing:
        raise fail(f"{existing[0]} exists; choose another --out (nothing is overwritten)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        for filename, data in files.items():
            # (created 0600: the key never world-readable, even briefly; the rest are public)
            mode = 0o600 if filename == "key.pem" else 0o644
            fd = os.open(out / filename, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
    except OSError as exc:
        raise fail(f"cannot write {out}: {exc.strerror or exc}", EXIT_FAILED) from None
    typer.echo(
        f"wrote {out / 'cert.pem'} (key {keys.public.hex()[:16]}…, as {name!r}), "
        f"{out / 'ca.pem'} (network {genesis.chain_id.hex()[:12]}…'s issuer) and "
        f"{out / 'key.pem'} (mode 0600{', encrypted' if passphrase else ''})"
    )
    if not names:
        typer.echo(
            "note: genesis does not list this key; the gateways accept it once it is admitted "
            "(consortium client list)",
            err=True,
        )
