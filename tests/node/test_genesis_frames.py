"""Message sizes: a genesis is refused, naming the fix, when some frame its members (or a client)
must exchange could not be decoded under its parameters; and every place that loads a genesis
to run or write a network (`consortium init`, `node start`, the audit, the client commands)
loads it with that check (node/genesis.py)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import pytest

from consortium.cli.network import init_network, node_homes
from consortium.crypto.keys import KeyPair
from consortium.ledger.genesis import Genesis, GenesisError, Params
from consortium.node.config import ConfigError, load_identity
from consortium.node.genesis import genesis_from_json, load_genesis
from tests.ledger.chain_fixture import make_genesis

ROOT = Path(__file__).resolve().parents[2]


def _sized(mode: str, n: int, params: Params) -> str:
    """A genesis.json of `mode` with n members and these parameters."""
    doc: dict[str, Any] = json.loads(make_genesis().to_json())
    template = doc["members"][0]
    doc["mode"] = mode
    doc["members"] = [
        {**template, "name": f"m{i}", "public_key": KeyPair.from_seed(bytes([i]) * 32).public.hex()}
        for i in range(n)
    ]
    doc["params"] = {k: getattr(params, k) for k in doc["params"]}
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("mode", "n", "params"),
    [
        *(("pbft", n, Params()) for n in (4, 7, 10, 13, 16, 19, 22, 25)),
        *(("raft", n, Params()) for n in (1, 3, 5, 7)),
        ("pbft", 4, Params(batch_bytes_max=256 * 1024)),
        ("pbft", 7, Params(batch_bytes_max=256 * 1024)),
        ("pbft", 13, Params(window=128)),
        ("pbft", 4, Params(window=1024)),
        ("pbft", 4, Params(frame_bytes_max=8 * 1024 * 1024)),
        ("raft", 3, Params(frame_bytes_max=8 * 1024 * 1024)),
        ("raft", 5, Params(batch_bytes_max=512 * 1024, frame_bytes_max=1024 * 1024)),
    ],
)
def test_the_default_and_common_parameters_fit_every_frame(
    mode: str, n: int, params: Params
) -> None:
    genesis_from_json(_sized(mode, n, params), where="g.json")


REFUSED = [
    # Found in review: every NEW-VIEW too big to decode, members cycling through views.
    (
        "pbft",
        10,
        Params(batch_bytes_max=256 * 1024),
        "with 10 members .* a pbft NEW-VIEW can take .* bytes, more than the 331,776 a "
        "member decodes .*: "
        "lower params.window to 44 or less and params.checkpoint_interval to 22 or less",
    ),
    ("pbft", 22, Params(window=256), ".* NEW-VIEW .*: lower params.window to 128 or less$"),
    # ... and a raft frame limit below one legal batch: the cluster halted for good.
    (
        "raft",
        3,
        Params(frame_bytes_max=1024 * 1024),
        "a raft APPEND carrying an entry of a full batch can take 4,198,547 bytes, more "
        "than params.frame_bytes_max \\(1,048,576\\), .*: raise params.frame_bytes_max to "
        "at least 4,198,547 or lower params.batch_bytes_max",
    ),
    (
        "pbft",
        4,
        Params(frame_bytes_max=1024 * 1024),
        "a pbft PRE-PREPARE carrying a full batch .*: raise params.frame_bytes_max",
    ),
    (
        "pbft",
        4,
        Params(batch_bytes_max=16 * 1024 * 1024, frame_bytes_max=16 * 1024 * 1024),
        "a pbft PRE-PREPARE .* raise params.frame_bytes_max to at least 16,781,",
    ),
]


@pytest.mark.parametrize(("mode", "n", "params", "message"), REFUSED)
def test_parameters_whose_frames_cannot_be_decoded_are_refused_naming_the_fix(
    mode: str, n: int, params: Params, message: str
) -> None:
    with pytest.raises(GenesisError, match=f"^g.json: {message}"):
        genesis_from_json(_sized(mode, n, params), where="g.json")


def test_the_file_alone_is_read_without_the_protocols_encodings() -> None:
    """ledger/genesis.py checks the file and nothing more (the frames need pbft, raft and the
    client protocol, which are above the ledger): what reads it to run a network adds them."""
    mode, n, params, _ = REFUSED[0]
    genesis = Genesis.from_json(_sized(mode, n, params), where="g.json")
    assert genesis.n == 10
    with pytest.raises(GenesisError, match=r"^g\.json: with 10 members "):
        genesis_from_json(_sized(mode, n, params), where="g.json")


def test_init_refuses_parameters_whose_frames_cannot_be_decoded(tmp_path: Path) -> None:
    with pytest.raises(GenesisError, match=r"genesis\.json: a pbft PRE-PREPARE carrying a full"):
        init_network(tmp_path / "net", members=4, params=Params(frame_bytes_max=1024 * 1024))
    with pytest.raises(GenesisError, match=r"genesis\.json: a raft APPEND carrying an entry"):
        init_network(
            tmp_path / "raft", members=3, mode="raft", params=Params(frame_bytes_max=1024 * 1024)
        )


def test_node_start_and_the_commands_refuse_a_genesis_whose_frames_cannot_be_decoded(
    tmp_path: Path,
) -> None:
    """A genesis edited after init (the chain id is a hash of it, so this is another network):
    the member refuses to start on it, and load_genesis (audit, receipt verify, tx ...) too."""
    init_network(tmp_path / "net", members=4, clients=1)
    home = node_homes(tmp_path / "net")[0]
    path = home / "config" / "genesis.json"
    doc = json.loads(path.read_text())
    doc["params"]["frame_bytes_max"] = 1024 * 1024
    path.write_text(json.dumps(doc))
    with pytest.raises(
        ConfigError, match=f"^{re.escape(str(path))}: a pbft PRE-PREPARE carrying a full batch"
    ):
        load_identity(home)
    with pytest.raises(
        GenesisError, match=f"^{re.escape(str(path))}: a pbft PRE-PREPARE carrying a full batch"
    ):
        load_genesis(path)


def _unchecked_loads(source: str) -> list[tuple[int, str]]:
    """The calls in `source` that read a genesis without the frame check: Genesis.load,
    Genesis.from_json, and `<...genesis...>.validate(...)`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner, attr = node.func.value, node.func.attr
        name = owner.id if isinstance(owner, ast.Name) else ""
        name = owner.attr if isinstance(owner, ast.Attribute) else name
        if (name == "Genesis" and attr in ("load", "from_json")) or (
            attr == "validate" and "genesis" in name.lower()
        ):
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_the_checker_of_unchecked_loads_finds_each_kind() -> None:
    source = (
        "g = Genesis.load(p)\n"
        "h = Genesis.from_json(t)\n"
        "genesis.validate('x')\n"
        "self.genesis.validate('y')\n"
        "params.validate('z')\n"
        "load_genesis(p)\n"
    )
    assert [line for line, _ in _unchecked_loads(source)] == [1, 2, 3, 4]


def test_the_node_and_the_cli_load_a_genesis_only_with_the_frame_check() -> None:
    """So `node start`, `consortium init`, the audit and the client commands keep the frame
    check that ledger/genesis.py cannot do: each goes through node/genesis.py."""
    offending = []
    for package in ("cli", "node"):
        for path in sorted((ROOT / "consortium" / package).rglob("*.py")):
            if path == ROOT / "consortium" / "node" / "genesis.py":
                continue
            for line, call in _unchecked_loads(path.read_text()):
                offending.append(f"{path.relative_to(ROOT)}:{line}: {call}")
    assert not offending, (
        "use consortium.node.genesis (load_genesis, validate_genesis, genesis_from_json):\n"
        + "\n".join(offending)
    )
