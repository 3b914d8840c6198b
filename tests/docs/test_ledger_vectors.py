"""docs/ledger-format.md's worked vectors are what the code computes, and mean what the doc says.

As in test_protocol_vectors.py the values are read out of the doc; the checks below also
recompute the documented constructions independently (hashlib, msgpack), and hold the Merkle
code to Certificate Transparency's published RFC 6962 values, which come from outside this
project."""

from __future__ import annotations

import hashlib
import re

import msgpack
import pytest

from consortium.ledger.genesis import Genesis
from tests.docs.vectors import (
    CT_LEAVES,
    DOCS,
    PROPOSED_MS,
    doc_vectors,
    ledger_vectors,
    vector_genesis,
)

DOC = DOCS / "ledger-format.md"


@pytest.fixture(scope="module")
def doc() -> dict[str, bytes]:
    return doc_vectors(DOC.read_text())


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _pack(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def test_every_vector_in_the_doc_is_what_the_code_computes(doc: dict[str, bytes]) -> None:
    computed = ledger_vectors()
    assert sorted(doc) == sorted(computed), (
        "docs/ledger-format.md lists other vectors than the code"
    )
    wrong = {k: v.hex() for k, v in computed.items() if doc[k] != v}
    assert not wrong, f"docs/ledger-format.md disagrees with the code; the code gives {wrong}"


def test_the_genesis_file_shown_is_the_vector_network() -> None:
    match = re.search(r"^```json vector-genesis\n(.*?)^```", DOC.read_text(), re.M | re.S)
    assert match, "docs/ledger-format.md: the ```json vector-genesis block is missing"
    shown = Genesis.from_json(match.group(1), where="docs/ledger-format.md")
    assert shown == vector_genesis()


def test_chain_id_is_the_hash_of_the_canonical_genesis(doc: dict[str, bytes]) -> None:
    canonical = doc["genesis.canonical"]
    assert doc["chain_id"] == _h(canonical)
    fields = msgpack.unpackb(canonical)
    assert fields[:4] == ["consortium-genesis/1", "vectors", "pbft", 1_700_000_000_000]
    assert [m[0] for m in fields[4]] == ["n1", "n2", "n3", "n4"]
    # The parameters in the documented order, every default spelled out.
    assert fields[6] == [512, 4194304, 2, 32, 64, 600000, 65536, 64, 1024, 32768, 30000,
                         16777216, 2000]  # fmt: skip


def test_the_genesis_configuration_as_documented(doc: dict[str, bytes]) -> None:
    """Epoch 0 (docs/design/membership.md 1.1): genesis member i as id i, a voter, with its
    genesis name, key and addresses; its digest is the hash of its encoding."""
    fields = msgpack.unpackb(doc["config.genesis"])
    genesis = msgpack.unpackb(doc["genesis.canonical"])
    assert fields[:4] == ["consortium-config/1", doc["chain_id"], 0, "pbft"]
    assert fields[4] == [[i, *m, "voter"] for i, m in enumerate(genesis[4])]
    assert doc["config.genesis_digest"] == _h(doc["config.genesis"])


def test_genesis_block_as_documented(doc: dict[str, bytes]) -> None:
    chain_id = doc["chain_id"]
    assert doc["genesis.state_root"] == _h(_pack(["state-genesis", chain_id]))
    empty = _h(b"")
    header = [chain_id, 0, bytes(32), 1_700_000_000_000, empty, doc["genesis.state_root"], empty,
              ["genesis"]]  # fmt: skip
    assert _pack(header) == doc["genesis.header"]
    assert _h(doc["genesis.header"]) == doc["genesis.hash"]


def test_block_one_as_documented(doc: dict[str, bytes]) -> None:
    header = msgpack.unpackb(doc["block1.header"])
    assert header[0] == doc["chain_id"]
    assert header[1:4] == [1, doc["genesis.hash"], PROPOSED_MS]
    assert header[4:7] == [
        doc["block1.tx_root"],
        doc["block1.state_root"],
        doc["block1.receipts_root"],
    ]
    assert header[7] == ["pbft", 1, PROPOSED_MS]
    assert _h(doc["block1.header"]) == doc["block1.hash"]
    # The state root: the hash of the documented preimage, which chains the genesis root.
    preimage = msgpack.unpackb(doc["block1.state_preimage"])
    assert preimage[0] == "state"
    assert preimage[1] == doc["genesis.state_root"]
    assert preimage[2] == [[b"colour", b"blue"], [b"greeting", b"hi"]]
    assert len(preimage[3]) == 3
    assert _h(doc["block1.state_preimage"]) == doc["block1.state_root"]
    # The tx root: RFC 6962 over the three ids (((id1, id2), id3)).
    ids = preimage[3]
    leaves = [_h(b"\x00" + i) for i in ids]
    pair = _h(b"\x01" + leaves[0] + leaves[1])
    assert _h(b"\x01" + pair + leaves[2]) == doc["block1.tx_root"]
    # The batch digest and the vote bodies over it.
    assert doc["batch.digest"] == _h(_pack(["batch", PROPOSED_MS, ids]))
    # [kind, epoch, ...fields, sender]: epoch 0 (genesis), view 0, seq 1, member 0
    assert msgpack.unpackb(doc["commit.body"]) == ["commit", 0, 0, 1, doc["batch.digest"], 0]
    assert msgpack.unpackb(doc["checkpoint.body"]) == ["checkpoint", 0, 1, doc["block1.hash"], 0]
    assert msgpack.unpackb(doc["raft_entry.body"]) == ["raft-entry", 3, 7, doc["batch.digest"], 0]


# Certificate Transparency's RFC 6962 test values (merkle_tree_test), independent of this code.
CT_ROOTS = {
    1: "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    2: "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    3: "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    4: "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    5: "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    6: "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    7: "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    8: "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
}


def test_merkle_vectors_are_certificate_transparencys(doc: dict[str, bytes]) -> None:
    from consortium.crypto.merkle import merkle_root, verify_inclusion

    for size, root in CT_ROOTS.items():
        assert merkle_root(CT_LEAVES[:size]).hex() == root, f"tree of {size} leaves"
    assert doc["ct.root8"].hex() == CT_ROOTS[8]
    assert doc["ct.root5"].hex() == CT_ROOTS[5]
    assert doc["ct.leaf_hash0"].hex() == CT_ROOTS[1]
    proof = [doc[f"ct.proof8_5.{i}"] for i in range(3)]
    assert verify_inclusion(CT_LEAVES[5], 5, 8, proof, doc["ct.root8"])
    assert not verify_inclusion(CT_LEAVES[4], 5, 8, proof, doc["ct.root8"])
