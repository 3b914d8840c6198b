"""`consortium client`: operator mistakes are clear errors, and nothing is signed or submitted
that the network would refuse."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from consortium.cli.main import app
from consortium.cli.network import init_network
from consortium.crypto.keys import KeyPair
from consortium.ledger.admission import ADMIT, CHANGE_TTL_MAX_MS, ClientChange, Proposal
from consortium.ledger.genesis import Genesis

NEW = KeyPair.from_seed(hashlib.sha256(b"review1 new client").digest())
SMALL_ORDER = "0100000000000000000000000000000000000000000000000000000000000000"


@pytest.fixture
def net(tmp_path: Path) -> Path:
    directory = tmp_path / "net"
    init_network(directory, members=4, clients=1)
    return directory


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_a_small_order_or_malformed_key_is_refused_when_proposed(net: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    code, text = run(
        "client", "propose-admit", "--key", SMALL_ORDER, "--net", str(net), "--out", str(out)
    )
    assert code == 2 and "small-order" in text and not out.exists()
    code, text = run("client", "propose-admit", "--key", "zz", "--net", str(net), "--out", str(out))
    assert code == 2 and "64 hex characters" in text
    member = (net / "nodes" / "n1" / "config" / "genesis.json").read_text()
    member_key = json.loads(member)["members"][0]["public_key"]
    code, text = run(
        "client", "propose-admit", "--key", member_key, "--net", str(net), "--out", str(out)
    )
    assert code == 2 and "a member's key" in text


def test_sign_and_submit_refuse_what_the_network_would(net: Path, tmp_path: Path) -> None:
    key = KeyPair.generate().public.hex()
    proposal = tmp_path / "p.json"
    code, text = run(
        "client",
        "propose-admit",
        "--key",
        key,
        "--label",
        "x",
        "--net",
        str(net),
        "--out",
        str(proposal),
    )
    assert code == 0 and "needs 3 of 4 member approvals" in text, text
    code, text = run("client", "sign", str(proposal), "--home", str(net / "nodes" / "n1"), "--yes")
    assert code == 0 and "1 of 3 needed approvals" in text, text
    assert ", proposed " in text and ", expires " in text, text  # what is signed, and until when
    code, text = run("client", "sign", str(proposal), "--home", str(net / "nodes" / "n1"), "--yes")
    assert code == 0 and "1 of 3 needed approvals" in text  # signing twice counts once
    code, text = run("client", "submit", str(proposal), "--net", str(net))
    assert (
        code == 1 and "1 member signature, 3 needed (genesis quorum); nothing submitted" in text
    ), text

    edited = tmp_path / "edited.json"
    edited.write_text(proposal.read_text().replace('"label": "x"', '"label": "y"'))
    code, text = run("client", "sign", str(edited), "--home", str(net / "nodes" / "n2"))
    assert code == 2 and "the file was edited" in text

    other = tmp_path / "other"
    init_network(other, members=4, clients=1)
    code, text = run("client", "sign", str(proposal), "--home", str(other / "nodes" / "n2"))
    assert code == 2 and "use that network's genesis" in text

    code, text = run("client", "submit", str(proposal))
    assert code == 2 and "--home MEMBER_HOME" in text


# Review 1 (issue 6): client admission as merged (69217cf); this test failed on main then.
def test_sign_refuses_a_proposal_expiring_beyond_the_change_ttl(tmp_path: Path) -> None:
    """`consortium client sign` refuses expired proposals but signs one expiring years ahead
    (and does not show the expiry). Execution refuses it as config_expiry_too_far until the
    last week before that expiry, so it looks dead to the members; then anyone holding the
    file can submit it, e.g. re-admitting a key revoked in the meantime. The replay set cannot
    help: the change never executed."""
    net = tmp_path / "net"
    init_network(net, members=4, clients=1)
    home = net / "nodes" / "n1"
    chain_id = Genesis.load(home / "config" / "genesis.json").chain_id
    far = int(time.time() * 1000) + 365 * 24 * 3600 * 1000
    assert far - time.time() * 1000 > CHANGE_TTL_MAX_MS
    change = ClientChange.create(
        chain_id, ADMIT, NEW.public, "later", b"bomb", far, created_ms=int(time.time() * 1000)
    )
    path = tmp_path / "p.json"
    Proposal(change).save(path)
    result = CliRunner().invoke(app, ["client", "sign", str(path), "--home", str(home)])
    approvals = json.loads(path.read_text())["approvals"]
    assert result.exit_code != 0 and not approvals, (
        f"signed a change that expires in a year: {result.output}"
    )


def _proposal(net: Path, tmp_path: Path) -> Path:
    proposal = tmp_path / "admit.json"
    code, text = run(
        "client",
        "propose-admit",
        "--key",
        NEW.public.hex(),
        "--label",
        "acme-app",
        "--net",
        str(net),
        "--out",
        str(proposal),
    )
    assert code == 0, text
    return proposal


def test_sign_shows_the_change_and_without_a_terminal_needs_yes(net: Path, tmp_path: Path) -> None:
    proposal = _proposal(net, tmp_path)
    code, text = run("client", "sign", str(proposal), "--home", str(net / "nodes" / "n1"))
    assert code == 2
    assert f"admit the client key {NEW.public.hex()} labelled 'acme-app'" in text, text
    assert "approved so far by no member; 3 of 4 members must approve" in text
    assert text.splitlines()[-1] == (
        "error: no terminal to ask for confirmation: read the change above and pass --yes"
    )
    assert not json.loads(proposal.read_text())["approvals"]  # nothing signed


@pytest.mark.parametrize(("answer", "signed"), [("y\n", True), ("n\n", False), ("\n", False)])
def test_sign_asks_on_a_terminal(
    net: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: str, signed: bool
) -> None:
    proposal = _proposal(net, tmp_path)
    monkeypatch.setattr("consortium.cli.clients._on_terminal", lambda: True)
    result = CliRunner().invoke(
        app, ["client", "sign", str(proposal), "--home", str(net / "nodes" / "n2")], input=answer
    )
    assert "as member n2 of network 'local'" in result.output
    assert "Sign with n2's key? [y/N]" in result.output
    approvals = json.loads(proposal.read_text())["approvals"]
    if signed:
        assert result.exit_code == 0 and "n2 approved" in result.output and approvals
    else:
        assert result.exit_code == 1 and "error: not signed" in result.output
        assert not approvals


def test_sign_with_yes_asks_nothing(net: Path, tmp_path: Path) -> None:
    proposal = _proposal(net, tmp_path)
    code, text = run("client", "sign", str(proposal), "--home", str(net / "nodes" / "n3"), "--yes")
    assert code == 0 and "n3 approved" in text and "Sign with" not in text


def test_proposing_a_members_key_as_a_client_says_whose(net: Path, tmp_path: Path) -> None:
    code, text = run(
        "client",
        "propose-admit",
        "--key",
        str(net / "nodes" / "n3" / "config" / "node_key.pem"),
        "--net",
        str(net),
        "--out",
        str(tmp_path / "p.json"),
    )
    assert code == 2 and "that is a member's key (member n3's), not a client's" in text
    assert not (tmp_path / "p.json").exists()


def test_client_list_counts_agree_in_number(net: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from consortium.protocol.messages import ClientList

    answer = ClientList(7, ((NEW.public, "x"),), (), 1)
    answers = {0: answer, 1: "n2: down", 2: "n3: down", 3: "n4: down"}
    monkeypatch.setattr("consortium.cli.clients.run_trio", lambda main: answers)
    code, text = run("client", "list", "--net", str(net))
    assert code == 1
    assert "admitted clients: 1 (agreed by 1 of 4 members, at heights 7..7)" in text, text
    assert "warning: only 1 member agrees (2 needed to trust the answer)" in text, text
