"""tests/vectors/shared.json, the vectors the TypeScript client is held to, is what the Python
code produces now, and every verdict in it is the node's: read back out of the file (not from the
generator's memory) and decided again by consortium's own verifier, codec, Merkle check, bundle
check, genesis loader and receipt reader."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from consortium.client.receipts import from_bundles
from consortium.crypto.codec import WireFormatError, pack, unpack_canonical
from consortium.crypto.keys import InvalidKeyError, KeyPair, validate_public_key
from consortium.crypto.merkle import merkle_root, verify_inclusion
from consortium.crypto.signing import Domain, Ed25519Signer, Ed25519Verifier
from consortium.ledger.genesis import Genesis, GenesisError
from consortium.ledger.tx import CompareAndSet, Delete, Get, Op, Put, Transaction
from consortium.protocol.receipts import ReceiptFormatError, loads, verify_receipt
from consortium.protocol.verify import Bundle, verify_bundle
from scripts.make_vectors import OUT, build_bytes, build_value, render

VECTORS: dict[str, Any] = json.loads(OUT.read_text(encoding="utf-8"))
VERIFIER = Ed25519Verifier()
DATA = Path(__file__).parents[1] / "data"


def _ids(cases: list[dict[str, Any]]) -> list[str]:
    return [c["name"] for c in cases]


def test_the_file_is_what_the_code_produces() -> None:
    assert OUT.read_text(encoding="utf-8") == render(), (
        "tests/vectors/shared.json is stale: run "
        "`PYTHONPATH=. python scripts/make_vectors.py` and commit the result"
    )


# --- Ed25519 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case", VECTORS["ed25519"]["verify"], ids=_ids(VECTORS["ed25519"]["verify"])
)
def test_ed25519_verdicts_are_the_verifiers(case: dict[str, Any]) -> None:
    verdict = VERIFIER.verify(
        bytes.fromhex(case["public_key"]),
        Domain[case["domain"]],
        bytes.fromhex(case["chain_id"]),
        bytes.fromhex(case["body"]),
        bytes.fromhex(case["signature"]),
    )
    assert verdict is case["valid"]


def test_the_ed25519_cases_cover_what_they_claim() -> None:
    verify = VECTORS["ed25519"]["verify"]
    small = {
        line.strip()
        for line in (DATA / "ed25519-small-order-keys.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    keys = {c["public_key"] for c in verify if c["name"].startswith("public key: small-order")}
    assert keys == small  # all 8 small-order points, canonically encoded
    noncanonical = {
        c["public_key"] for c in verify if c["name"].startswith("public key: non-canonical")
    }
    assert len(noncanonical) >= 6 + 5
    rs = {c["signature"][:64] for c in verify if c["name"].startswith("R: ")}
    assert small <= rs
    names = " | ".join(_ids(verify))
    for needed in ("S + L", "wrong message", "mixed order", "R = rB + T", "not on the curve"):
        assert needed in names
    # Both verdicts are present, and the valid ones really are the node's accepts.
    assert {c["valid"] for c in verify} == {True, False}
    # The case a cofactored (RFC 8032 "permissive") check would accept and libsodium refuses:
    identity_r = next(
        c for c in verify if c["name"] == "R: small-order point 0T (order 1), S = H(R,A,M)a"
    )
    assert identity_r["valid"] is False


@pytest.mark.parametrize("case", VECTORS["ed25519"]["sign"], ids=_ids(VECTORS["ed25519"]["sign"]))
def test_ed25519_signatures_are_the_signers(case: dict[str, Any]) -> None:
    signer = Ed25519Signer(KeyPair.from_seed(bytes.fromhex(case["seed"])))
    sig = signer.sign(
        Domain[case["domain"]], bytes.fromhex(case["chain_id"]), bytes.fromhex(case["body"])
    )
    assert sig.hex() == case["signature"]


def test_key_files_are_the_keys(tmp_path: Path) -> None:
    for case in VECTORS["ed25519"]["key_files"]:
        path = tmp_path / "key.pem"
        path.write_text(case["pem"])
        path.chmod(0o600)
        assert KeyPair.load(path).public.hex() == case["public_key"]


def test_seeds_give_the_listed_public_keys() -> None:
    for case in VECTORS["ed25519"]["keys"]:
        assert KeyPair.from_seed(bytes.fromhex(case["seed"])).public.hex() == case["public_key"]


@pytest.mark.parametrize(
    "case", VECTORS["ed25519"]["public_keys"], ids=_ids(VECTORS["ed25519"]["public_keys"])
)
def test_public_key_verdicts_are_enrolments(case: dict[str, Any]) -> None:
    try:
        validate_public_key(bytes.fromhex(case["public_key"]))
        valid = True
    except InvalidKeyError:
        valid = False
    assert valid is case["valid"]


# --- msgpack ---------------------------------------------------------------------------------


def _expected_bytes(field: str | dict[str, Any], raw: bytes) -> bool:
    if isinstance(field, str):
        return raw.hex() == field
    return hashlib.sha256(raw).hexdigest() == field["sha256"] and len(raw) == field["length"]


@pytest.mark.parametrize(
    "case", VECTORS["msgpack"]["encode"], ids=_ids(VECTORS["msgpack"]["encode"])
)
def test_msgpack_encodings_are_packs_and_decode_back(case: dict[str, Any]) -> None:
    value = build_value(case["value"])
    raw = pack(value)
    assert _expected_bytes(case["bytes"], raw)
    decoded = unpack_canonical(raw)
    assert pack(decoded) == raw
    if case["value"][0] != "nest":  # (== on 1024 nested lists exceeds Python's recursion limit)
        assert decoded == value


@pytest.mark.parametrize(
    "case", VECTORS["msgpack"]["decode"], ids=_ids(VECTORS["msgpack"]["decode"])
)
def test_msgpack_decode_verdicts_are_unpack_canonicals(case: dict[str, Any]) -> None:
    raw = build_bytes(case["bytes"])
    try:
        unpack_canonical(raw)
        accepted = True
    except WireFormatError:
        accepted = False
    assert accepted is case["canonical"]


def test_the_msgpack_cases_include_refusals_of_every_kind() -> None:
    refused = {c["name"] for c in VECTORS["msgpack"]["decode"] if not c["canonical"]}
    for word in ("uint8", "str8", "bin32", "array16", "map16", "float64", "truncated", "UTF-8"):
        assert any(word in name for name in refused), word


# --- transactions, Merkle --------------------------------------------------------------------


def _op(doc: list[Any]) -> Op:
    def b(x: str | None) -> bytes | None:
        return None if x is None else bytes.fromhex(x)

    kind = doc[0]
    if kind == "put":
        return Put(bytes.fromhex(doc[1]), bytes.fromhex(doc[2]))
    if kind == "del":
        return Delete(bytes.fromhex(doc[1]))
    if kind == "cas":
        return CompareAndSet(bytes.fromhex(doc[1]), b(doc[2]), b(doc[3]))
    assert kind == "get"
    return Get(bytes.fromhex(doc[1]))


@pytest.mark.parametrize("case", VECTORS["transactions"], ids=_ids(VECTORS["transactions"]))
def test_transactions_are_transaction_create(case: dict[str, Any]) -> None:
    keys = KeyPair.from_seed(bytes.fromhex(case["seed"]))
    tx = Transaction.create(
        keys,
        bytes.fromhex(case["chain_id"]),
        bytes.fromhex(case["nonce"]),
        int(case["expiry_ms"]),
        [_op(o) for o in case["ops"]],
    )
    assert keys.public.hex() == case["public_key"]
    assert tx.body.hex() == case["body"]
    assert tx.id.hex() == case["id"] == hashlib.sha256(tx.body).hexdigest()
    assert tx.signature.hex() == case["signature"]
    assert tx.encode().hex() == case["encoded"]
    assert tx.verify_signature(VERIFIER)


def test_merkle_roots() -> None:
    for tree in VECTORS["merkle"]["roots"]:
        assert merkle_root([bytes.fromhex(x) for x in tree["leaves"]]).hex() == tree["root"]


@pytest.mark.parametrize(
    "case", VECTORS["merkle"]["inclusion"], ids=_ids(VECTORS["merkle"]["inclusion"])
)
def test_merkle_inclusion_verdicts(case: dict[str, Any]) -> None:
    verdict = verify_inclusion(
        bytes.fromhex(case["leaf"]),
        case["index"],
        case["tree_size"],
        [bytes.fromhex(p) for p in case["proof"]],
        bytes.fromhex(case["root"]),
    )
    assert verdict is case["valid"]


# --- genesis, bundles, receipt documents ------------------------------------------------------


@pytest.mark.parametrize("case", VECTORS["genesis"], ids=_ids(VECTORS["genesis"]))
def test_genesis_verdicts(case: dict[str, Any]) -> None:
    try:
        genesis = Genesis.from_json(case["json"], where="genesis.json")
    except GenesisError as exc:
        assert str(exc) == case["error"]
        return
    assert case["error"] is None
    assert genesis.chain_id.hex() == case["chain_id"]
    assert genesis.f == case["f"]


@pytest.mark.parametrize("case", VECTORS["bundles"]["cases"], ids=_ids(VECTORS["bundles"]["cases"]))
def test_bundle_verdicts(case: dict[str, Any]) -> None:
    genesis = Genesis.from_json(VECTORS["bundles"]["genesis"])
    bundle = Bundle.from_array(unpack_canonical(bytes.fromhex(case["bundle"])))
    assert verify_bundle(bundle, genesis, VERIFIER) == case["problem"]
    assert bundle.signer() == case["signer"]


@pytest.mark.parametrize(
    "case", VECTORS["receipts"]["cases"], ids=_ids(VECTORS["receipts"]["cases"])
)
def test_receipt_document_verdicts(case: dict[str, Any]) -> None:
    genesis = Genesis.from_json(VECTORS["receipts"]["geneses"][case["genesis"]])
    try:
        proof = loads(case["document"])
    except ReceiptFormatError as exc:
        assert (case["stage"], case["error"]) == ("load", str(exc))
        return
    problem = verify_receipt(proof, genesis)
    assert problem == case["error"]
    assert case["valid"] is (problem is None)


def test_a_document_from_bundles_is_the_clients() -> None:
    genesis = Genesis.from_json(VECTORS["receipts"]["geneses"]["pbft"])
    assembled = VECTORS["receipts"]["from_bundles"]
    bundles = [Bundle.from_array(unpack_canonical(bytes.fromhex(b))) for b in assembled["bundles"]]
    assert all(verify_bundle(b, genesis, VERIFIER) is None for b in bundles)
    assert len({b.signer() for b in bundles}) == genesis.f + 1
    proof = from_bundles(bundles)
    assert proof.dumps(genesis) == assembled["document"]
    assert verify_receipt(loads(assembled["document"]), genesis) is None


def test_the_receipt_cases_include_the_tampering_the_client_must_catch() -> None:
    cases = {c["name"]: c for c in VECTORS["receipts"]["cases"]}
    assert cases["valid: n1 and n3 signed (f+1 = 2)"]["valid"]
    for name in (
        "one byte changed in the receipt (index)",
        "one byte changed in the header",
        "one byte changed in the proof",
        "a block signature by a non-member key (as n2)",
        "too few signers (f)",
    ):
        assert not cases[name]["valid"], name
        assert cases[name]["stage"] == "verify", name  # reached the check, not refused at read
