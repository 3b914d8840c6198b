"""`consortium tx`: what the commands say when no member can be reached, and when no member
holds an id (verdicts that say what happened, not "pending" for everything)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from consortium.cli.common import EXIT_PENDING, EXIT_UNREACHABLE
from consortium.cli.main import app
from consortium.cli.network import init_network
from consortium.cli.tx import _finish
from consortium.client.outcome import TxOutcome


@pytest.fixture
def net(tmp_path: Path) -> Path:
    directory = tmp_path / "net"
    init_network(directory, members=4, clients=1)
    return directory  # no member runs: every client port refuses


def test_submit_with_no_member_reachable_says_so_at_once(net: Path) -> None:
    result = CliRunner().invoke(app, ["tx", "submit", "put", "k", "v", "--net", str(net)])
    assert result.exit_code == EXIT_UNREACHABLE, result.output
    assert "status    unreachable (no member reachable: n1: " in result.output, result.output
    assert "may still commit" not in result.output
    assert "submitted " not in result.output  # it was handed to no one


def test_status_with_no_member_reachable_says_so(net: Path) -> None:
    result = CliRunner().invoke(app, ["tx", "status", "ab" * 32, "--net", str(net)])
    assert result.exit_code == EXIT_UNREACHABLE, result.output
    assert "status    unreachable (no member reachable: n1: " in result.output, result.output


def test_an_id_unknown_to_every_member_is_said_so(
    net: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = TxOutcome(b"\xab" * 32, "unknown", reason="unknown to all 4 members: none holds")
    with pytest.raises(typer.Exit) as exit_:
        _finish(outcome, net, as_json=False)
    assert exit_.value.exit_code == EXIT_PENDING
    out = capsys.readouterr().out
    assert "status    unknown (unknown to all 4 members" in out, out
    assert "may still commit; check" not in out


def test_submit_refuses_a_members_key_offered_as_a_client_key(net: Path) -> None:
    member_key = net / "nodes" / "n2" / "config" / "node_key.pem"
    result = CliRunner().invoke(
        app, ["tx", "submit", "put", "k", "v", "--net", str(net), "--key", str(member_key)]
    )
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {member_key} is a member's key (member n2's), not a client's: they sign "
        "blocks and approvals; sign transactions with a client key (client.toml's, or one "
        "made by `consortium client keygen` and admitted)"
    ]


def test_submit_signs_with_the_key_given(net: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--key FILE: that key signs, not client.toml's first; and client.toml's own keys need
    not be there (a missing one breaks no command that does not use it)."""
    from consortium.crypto.keys import KeyPair

    other = KeyPair.generate()
    other.save(net / "other.pem")
    (net / "clients" / "c1.pem").unlink()
    seen: list[bytes] = []

    def fake_run(main: object) -> TxOutcome:
        return TxOutcome(b"\x01" * 32, "unreachable", reason="no member reachable: test")

    from consortium.cli import common

    real = common.client_keys

    def spy(net_: Path, client: int, key_file: Path | None = None) -> object:
        setup, keys, options = real(net_, client, key_file)
        seen.append(keys.public)
        return setup, keys, options

    monkeypatch.setattr("consortium.cli.tx.client_keys", spy)
    monkeypatch.setattr("consortium.cli.tx.run_trio", fake_run)
    result = CliRunner().invoke(
        app, ["tx", "submit", "put", "k", "v", "--net", str(net), "--key", str(net / "other.pem")]
    )
    assert result.exit_code == EXIT_UNREACHABLE, result.output
    assert seen == [other.public]
    result = CliRunner().invoke(app, ["tx", "submit", "put", "k", "v", "--net", str(net)])
    assert result.exit_code == 2
    assert "c1.pem: no such key file (client key 1 of" in result.output
    result = CliRunner().invoke(app, ["tx", "status", "ab" * 32, "--net", str(net)])
    assert result.exit_code == EXIT_UNREACHABLE, result.output  # needs no key: unaffected


def test_receipt_out_refuses_to_overwrite_without_force(net: Path) -> None:
    out = net / "receipt.json"
    out.write_text("the only copy")
    for args in (
        ["tx", "receipt", "ab" * 32, "--out", str(out)],
        ["tx", "status", "ab" * 32, "--receipt-out", str(out)],
        ["tx", "submit", "put", "k", "v", "--receipt-out", str(out)],
    ):
        result = CliRunner().invoke(app, [*args, "--net", str(net)])
        assert result.exit_code == 2, result.output
        assert result.output == f"error: {out} exists; pass --force to replace it\n"
        assert out.read_text() == "the only copy"
    forced = CliRunner().invoke(
        app, ["tx", "receipt", "ab" * 32, "--out", str(out), "--force", "--net", str(net)]
    )
    assert forced.exit_code == EXIT_UNREACHABLE  # it went on to ask (no member runs here)


def test_write_receipt_refuses_a_file_that_appeared_meanwhile(tmp_path: Path) -> None:
    from consortium.cli.tx import _write_receipt

    out = tmp_path / "r.json"
    out.write_text("someone else's")

    class Outcome:
        def receipt_document(self, genesis: object) -> str:
            return "new"

    with pytest.raises(typer.Exit):
        _write_receipt(Outcome(), None, tmp_path, out, force=False)  # type: ignore[arg-type]
    assert out.read_text() == "someone else's"


@pytest.mark.parametrize(
    ("value", "shown"),
    [(None, "absent: 'k' has no value\n"), (b"", "\n"), (b"(absent)", "(absent)\n")],
)
def test_read_says_absent_unambiguously(
    net: Path, monkeypatch: pytest.MonkeyPatch, value: bytes | None, shown: str
) -> None:
    monkeypatch.setattr("consortium.cli.tx.run_trio", lambda main: value)
    result = CliRunner().invoke(app, ["read", "k", "--net", str(net)])
    assert result.exit_code == 0 and result.output == shown
    result = CliRunner().invoke(app, ["read", "k", "--net", str(net), "--json"])
    doc = json.loads(result.output)
    assert doc == {
        "key": "k",
        "present": value is not None,
        "value": None if value is None else value.decode(),
    }


def test_an_outcome_says_absent_and_agrees_in_number(
    net: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from consortium.ledger.block import Receipt

    receipt = Receipt(b"\x02" * 32, "ok", "", (None, b"", True), 5, 0)
    outcome = TxOutcome(b"\x02" * 32, "committed", height=5, confirmations=1, receipt=receipt)
    _finish(outcome, net, as_json=False)
    out = capsys.readouterr().out
    assert "confirmed by 1 member's signed receipt\n" in out, out
    assert 'results [absent, "", true]' in out, out
