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
