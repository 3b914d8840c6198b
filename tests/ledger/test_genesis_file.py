"""genesis.json: round trip, a chain id independent of JSON formatting, errors naming the key."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from consortium.ledger.genesis import Genesis, GenesisError, Params
from tests.ledger.chain_fixture import make_genesis


def _doc() -> dict[str, Any]:
    doc = json.loads(make_genesis().to_json())
    assert isinstance(doc, dict)
    return doc


def _reorder(value: Any) -> Any:
    """The same JSON with every object's keys in reverse order."""
    if isinstance(value, dict):
        return {k: _reorder(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reorder(v) for v in value]
    return value


def test_genesis_round_trips_through_json(tmp_path: Path) -> None:
    genesis = make_genesis()
    assert Genesis.from_json(genesis.to_json()) == genesis
    path = tmp_path / "genesis.json"
    path.write_text(genesis.to_json())
    assert Genesis.load(path) == genesis
    raft = make_genesis(mode="raft")
    assert Genesis.from_json(raft.to_json()) == raft


def test_the_chain_id_ignores_key_order_and_whitespace() -> None:
    genesis = make_genesis()
    doc = _doc()
    for text in (
        json.dumps(_reorder(doc)),
        json.dumps(doc, separators=(",", ":")),
        json.dumps(doc, indent=7, sort_keys=True),
    ):
        assert Genesis.from_json(text).chain_id == genesis.chain_id
    # Missing optional keys mean their defaults: the same network.
    del doc["params"]
    assert Genesis.from_json(json.dumps(doc)).chain_id == genesis.chain_id


def test_the_chain_id_changes_with_any_content() -> None:
    genesis = make_genesis()
    others = [
        replace(genesis, chain_name="other"),
        replace(genesis, mode="raft"),
        replace(genesis, created_ms=genesis.created_ms + 1),
        replace(genesis, members=genesis.members[::-1]),
        replace(genesis, clients=()),
        replace(genesis, params=Params(checkpoint_interval=16)),
    ]
    ids = {g.chain_id for g in others}
    assert len(ids) == len(others) and genesis.chain_id not in ids


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(extra=1), "unknown key 'extra'"),
        (lambda d: d["members"][0].update(port=1), "members\\[0\\]: unknown key 'port'"),
        (lambda d: d["clients"][0].update(role="x"), "clients\\[0\\]: unknown key 'role'"),
        (lambda d: d["params"].update(batch_size=3), "unknown parameter 'params.batch_size'"),
        (lambda d: d.update(format="v0"), "'format' must be"),
        (lambda d: d.update(mode="paxos"), "'mode' must be one of pbft, raft"),
        (lambda d: d.update(chain_name=""), "'chain_name' must be a non-empty string"),
        (lambda d: d.update(created_ms=-1), "'created_ms' must be a non-negative integer"),
        (lambda d: d.update(created_ms=True), "'created_ms' must be a non-negative integer"),
        (lambda d: d.update(members=[]), "'members' must be a non-empty list"),
        (lambda d: d.update(clients={}), "'clients' must be a list"),
        (lambda d: d.update(params=[]), "'params' must be an object"),
        (lambda d: d["params"].update(window=33), "params.window .* multiple of"),
        (lambda d: d["params"].update(window=32), "params.window must be at least twice"),
        (lambda d: d["params"].update(batch_txs_max=0), "params.batch_txs_max must be positive"),
        (lambda d: d["params"].update(tx_ttl_max_ms=-5), "params.tx_ttl_max_ms must be a non-neg"),
        (lambda d: d["params"].update(tx_ttl_max_ms=1.5), "params.tx_ttl_max_ms must be a non-neg"),
        (lambda d: d["params"].update(window=True), "params.window must be a non-negative"),
        (
            lambda d: d["params"].update(timestamp_skew_ms=150_001),
            "params.timestamp_skew_ms \\(150001\\) must be at most params.tx_ttl_max_ms / 4 "
            "\\(150000\\): lower timestamp_skew_ms or raise tx_ttl_max_ms",
        ),
        (
            lambda d: d["params"].update(tx_ttl_max_ms=119_999),
            "params.timestamp_skew_ms \\(30000\\) must be at most params.tx_ttl_max_ms / 4",
        ),
        (lambda d: d["members"][0].update(public_key="00" * 32), "members\\[0\\].*small-order"),
        (lambda d: d["members"][2].update(public_key="abc"), "members\\[2\\]: 'public_key' must"),
        (lambda d: d["clients"][0].update(public_key="zz"), "clients\\[0\\]: 'public_key' must"),
        (lambda d: d["members"][1].update(peer_address="nowhere"), "members\\[1\\].*host:port"),
        (lambda d: d["members"][1].update(client_address="h:0"), "port in 1..65535"),
        (lambda d: d["members"][1].pop("name"), "members\\[1\\]: 'name' must be"),
        (lambda d: d["members"][1].update(name="n1"), "duplicate names \\['n1'\\]"),
        (
            lambda d: d["clients"][0].update(public_key=d["members"][0]["public_key"]),
            "a public key is listed twice",
        ),
        (lambda d: d["members"].pop(), "pbft needs at least 4 members"),
    ],
)
def test_bad_genesis_files_name_the_file_the_key_and_the_fix(edit: Any, message: str) -> None:
    doc = _doc()
    edit(doc)
    with pytest.raises(GenesisError, match=f"^g.json: .*{message}"):
        Genesis.from_json(json.dumps(doc), where="g.json")


def test_files_that_are_not_genesis_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(GenesisError, match="not valid JSON"):
        Genesis.from_json("{")
    with pytest.raises(GenesisError, match="expected a JSON object"):
        Genesis.from_json("[]")
    with pytest.raises(GenesisError, match=f"{tmp_path}.*cannot read genesis file"):
        Genesis.load(tmp_path / "missing.json")


@pytest.mark.parametrize("n", range(4, 14))
def test_pbft_quorums_of_any_two_intersect_in_an_honest_member(n: int) -> None:
    doc = _doc()
    template = doc["members"][0]
    from consortium.crypto.keys import KeyPair

    doc["members"] = [
        {**template, "name": f"m{i}", "public_key": KeyPair.from_seed(bytes([i]) * 32).public.hex()}
        for i in range(n)
    ]
    genesis = Genesis.from_json(json.dumps(doc))
    assert genesis.n == n and genesis.f == (n - 1) // 3
    assert genesis.quorum <= n - genesis.f  # live with f silent
    assert 2 * genesis.quorum - n >= genesis.f + 1  # two quorums share an honest member
    if n == 3 * genesis.f + 1:
        assert genesis.quorum == 2 * genesis.f + 1


# --- message sizes: every frame members must exchange fits what they decode ---------------


def _sized(mode: str, n: int, params: Params) -> str:
    """A genesis.json of `mode` with n members and these parameters."""
    from consortium.crypto.keys import KeyPair

    doc = _doc()
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
    Genesis.from_json(_sized(mode, n, params), where="g.json")


@pytest.mark.parametrize(
    ("mode", "n", "params", "message"),
    [
        # Found in review: every NEW-VIEW too big to decode, members cycling through views.
        (
            "pbft",
            10,
            Params(batch_bytes_max=256 * 1024),
            "with 10 members .* a pbft NEW-VIEW can take .* bytes, more than the 331,776 a "
            "member decodes .*: "
            "lower params.window to 48 or less and params.checkpoint_interval to 24 or less",
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
    ],
)
def test_parameters_whose_frames_cannot_be_decoded_are_refused_naming_the_fix(
    mode: str, n: int, params: Params, message: str
) -> None:
    with pytest.raises(GenesisError, match=f"^g.json: {message}"):
        Genesis.from_json(_sized(mode, n, params), where="g.json")
