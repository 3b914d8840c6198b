"""The configuration and the v2 change (ledger/membership.py): encodings and their round trips,
every decode refusal, digests, n/f/quorum, effective heights, `apply_ops` with each op and
each refusal, possessions and approvals with their domains kept apart."""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consortium.crypto.codec import WireFormatError, digest_of, pack
from consortium.crypto.keys import KeyPair
from consortium.crypto.signing import Domain, Ed25519Signer, Ed25519Verifier
from consortium.ledger.admission import Approval, Refusal
from consortium.ledger.genesis import Genesis, Member, Mode, Params
from consortium.ledger.membership import (
    ADDRESS_CHARS_MAX,
    CHANGE_BODY_BYTES_MAX,
    CONFIGURATION_BYTES_MAX,
    LEARNER,
    MEMBER_IDS,
    MEMBERS_MAX,
    VOTER,
    AddMember,
    AdmitClient,
    ChangeOp,
    ChangeV2,
    Configuration,
    Kind,
    MemberInfo,
    Possession,
    PromoteLearner,
    RemoveMember,
    RevokeClient,
    Role,
    RotateKey,
    SetAddresses,
    apply_ops,
    approval_problem,
    decode_possessions,
    effective_height,
    genesis_configuration,
    next_id,
    possession_problem,
)
from tests.ledger.chain_fixture import MEMBERS, make_genesis

GENESIS = make_genesis()
RAFT_GENESIS = make_genesis(mode="raft")
CONFIG = genesis_configuration(GENESIS)  # pbft, ids 0..3
VERIFIER = Ed25519Verifier()
SPARES = [KeyPair.from_seed(hashlib.sha256(b"spare %d" % i).digest()) for i in range(8)]
DATA = Path(__file__).parent.parent / "data"
SMALL_ORDER = bytes.fromhex(
    next(
        line.strip()
        for line in (DATA / "ed25519-small-order-keys.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
)
EXPIRY_MS = 1_700_000_600_000
CREATED_MS = 1_700_000_000_000


def keys(count: int) -> list[bytes]:
    return [KeyPair.from_seed(hashlib.sha256(b"key %d" % i).digest()).public for i in range(count)]


def member(i: int, key: bytes, role: Role = VOTER) -> MemberInfo:
    return MemberInfo(i, f"m{i}", key, f"10.0.0.{i % 250 + 1}:7101", f"10.0.1.1:{7200 + i}", role)


def config_of(mode: Mode, voters: int, learners: int = 0, epoch: int = 0) -> Configuration:
    ks = keys(voters + learners)
    return Configuration(
        GENESIS.chain_id,
        epoch,
        mode,
        tuple(member(i, ks[i], VOTER if i < voters else LEARNER) for i in range(voters + learners)),
    )


def change(config: Configuration, *ops: ChangeOp, kind: Kind = "members") -> ChangeV2:
    return ChangeV2.create(config, kind, ops, b"nonce", EXPIRY_MS, created_ms=CREATED_MS)


def apply(
    config: Configuration,
    *ops: ChangeOp,
    highest_id: int | None = None,
    used_keys: frozenset[bytes] = frozenset(),
    used_names: frozenset[str] = frozenset(),
) -> Configuration | Refusal:
    return apply_ops(
        config,
        change(config, *ops),
        highest_id=config.members[-1].id if highest_id is None else highest_id,
        used_keys=used_keys | {m.public_key for m in config.members},
        used_names=used_names | {m.name for m in config.members},
    )


def refused(result: Configuration | Refusal) -> str:
    assert isinstance(result, Refusal), result
    return result.reason


def add(i: int, **kw: Any) -> AddMember:
    fields = {
        "name": f"new{i}",
        "public_key": SPARES[i].public,
        "peer_address": f"10.0.2.{i + 1}:7101",
        "client_address": f"10.0.2.{i + 1}:7201",
    }
    return AddMember(**{**fields, **kw})


# --- the configuration ---------------------------------------------------------------------


@pytest.mark.parametrize("genesis", [GENESIS, RAFT_GENESIS], ids=["pbft", "raft"])
def test_the_genesis_configuration_is_epoch_0_with_genesis_members_as_voters(
    genesis: Genesis,
) -> None:
    config = genesis_configuration(genesis)
    assert (config.chain_id, config.epoch, config.mode) == (genesis.chain_id, 0, genesis.mode)
    assert [m.id for m in config.members] == [0, 1, 2, 3]
    for m, g in zip(config.members, genesis.members, strict=True):
        assert (m.name, m.public_key, m.peer_address, m.client_address, m.role) == (
            g.name,
            g.public_key,
            g.peer_address,
            g.client_address,
            VOTER,
        )
        assert config.member(m.id) == m and config.by_key(g.public_key) == m
        assert config.key_of(m.id) == g.public_key
    assert config.voters == config.members
    assert (config.n, config.f, config.quorum) == (genesis.n, genesis.f, genesis.quorum)
    assert [config.primary(v) for v in range(6)] == [0, 1, 2, 3, 0, 1]
    assert config.member(4) is None and config.key_of(4) is None
    assert config.by_key(SPARES[0].public) is None
    assert Configuration.decode(config.encode()) == config


def test_learners_are_members_but_not_voters() -> None:
    config = config_of("raft", 3, learners=2)
    assert [m.id for m in config.voters] == [0, 1, 2]
    assert (config.n, config.f, config.quorum) == (3, 1, 2)
    assert config.by_key(config.members[4].public_key) == config.members[4]
    assert [config.primary(v) for v in range(4)] == [0, 1, 2, 0]  # voters only


@pytest.mark.parametrize("mode", ["pbft", "raft"])
@pytest.mark.parametrize("n", range(1, 11))
def test_f_and_quorum_are_genesis_formulas_over_the_voters(mode: Mode, n: int) -> None:
    members = tuple(Member(i, f"n{i}", k, "h:1", "h:2") for i, k in enumerate(keys(n)))
    genesis = Genesis("f", mode, 0, members, ())
    learners = 2 if mode == "raft" else 0
    config = config_of(mode, n, learners=learners)
    assert (config.n, config.f, config.quorum) == (genesis.n, genesis.f, genesis.quorum)


def test_round_trips_keep_every_field_and_byte() -> None:
    for config in (CONFIG, config_of("raft", 1, learners=3, epoch=7), config_of("pbft", 10)):
        again = Configuration.decode(config.encode())
        assert again == config and again.encode() == config.encode()
        assert again.digest == config.digest


def test_the_largest_configuration_fits_its_bound() -> None:
    # MEMBERS_MAX members with 64-character names and 259-character addresses of 4-byte
    # characters (a scoped IPv6 address is the only address with room for them).
    address = "[fe80::1%" + "\U0001f600" * (ADDRESS_CHARS_MAX - 16) + "]:65535"
    assert len(address) == ADDRESS_CHARS_MAX
    config = Configuration(
        GENESIS.chain_id,
        MEMBER_IDS,
        "pbft",
        tuple(
            MemberInfo(
                MEMBER_IDS - MEMBERS_MAX + i,
                "\U0001f600" * 63 + chr(0x1F300 + i),
                key,
                address,
                address,
            )
            for i, key in enumerate(keys(MEMBERS_MAX))
        ),
    )
    assert 290_000 < len(config.encode()) <= CONFIGURATION_BYTES_MAX
    assert Configuration.decode(config.encode()) == config


def _config_array(**kw: Any) -> list[Any]:
    ks = keys(4)
    rows = [member(i, ks[i]).to_array() for i in range(4)]
    fields = {
        "format": "consortium-config/1",
        "chain_id": GENESIS.chain_id,
        "epoch": 3,
        "mode": "pbft",
        "members": rows,
    }
    fields.update(kw)
    return list(fields.values())


def _rows(edit: dict[int, dict[int, Any]], count: int = 4, mode: str = "pbft") -> list[Any]:
    """Members rows with field `f` of row `r` replaced by edit[r][f]."""
    ks = keys(count)
    rows = [member(i, ks[i]).to_array() for i in range(count)]
    for r, fields in edit.items():
        for f, value in fields.items():
            rows[r][f] = value
    return rows


GOOD = pack(_config_array())
BAD_CONFIGURATIONS: dict[str, tuple[bytes, str]] = {  # name: (bytes, what the error says)
    "not msgpack": (b"\xc1", "undecodable msgpack"),
    "not an array": (pack("configuration"), "expected an array"),
    "non-canonical": (b"\xdc\x00\x05" + GOOD[1:], "non-canonical"),  # array16 header, 5 items
    "oversize": (
        pack(_config_array(chain_id=b"\x00" * (CONFIGURATION_BYTES_MAX + 1))),
        "exceeds the limit",
    ),
    "four fields": (pack(_config_array()[:4]), "expected 5 fields, got 4"),
    "six fields": (pack([*_config_array(), 0]), "expected 5 fields, got 6"),
    "format": (pack(_config_array(format="consortium-config/2")), "format 'consortium-config/2'"),
    "short chain id": (pack(_config_array(chain_id=b"\x00" * 31)), "chain_id: expected 32 bytes"),
    "negative epoch": (pack(_config_array(epoch=-1)), "epoch: -1 outside"),
    "boolean epoch": (pack(_config_array(epoch=True)), "epoch: expected an integer"),
    "mode": (pack(_config_array(mode="paxos")), "'paxos' is not pbft or raft"),
    "members not a list": (pack(_config_array(members=b"")), "members: expected an array"),
    "member of five fields": (
        pack(_config_array(members=[r[:5] for r in _rows({})])),
        "member: expected 6 fields",
    ),
    "id 65536": (pack(_config_array(members=_rows({3: {0: MEMBER_IDS}}))), "id: 65536 outside"),
    "negative id": (pack(_config_array(members=_rows({0: {0: -1}}))), "id: -1 outside"),
    "empty name": (pack(_config_array(members=_rows({1: {1: ""}}))), "name: empty"),
    "name of 65 characters": (
        pack(_config_array(members=_rows({1: {1: "x" * 65}}))),
        "name: string longer than 64",
    ),
    "short key": (
        pack(_config_array(members=_rows({2: {2: b"\x01" * 31}}))),
        "public_key: expected 32 bytes",
    ),
    "small-order key": (
        pack(_config_array(members=_rows({2: {2: SMALL_ORDER}}))),
        "not a valid Ed25519 point",
    ),
    "key off the curve": (
        pack(_config_array(members=_rows({2: {2: b"\xff" * 32}}))),
        "not a valid Ed25519 point",
    ),
    "address without port": (
        pack(_config_array(members=_rows({0: {3: "10.0.0.1"}}))),
        "peer_address: '10.0.0.1' is not 'host:port'",
    ),
    "wildcard address": (
        pack(_config_array(members=_rows({0: {4: "0.0.0.0:7101"}}))),
        "'listen on every interface'",
    ),
    "address too long": (
        pack(_config_array(members=_rows({0: {3: "a" * (ADDRESS_CHARS_MAX - 4) + ":7101"}}))),
        "string longer than 259",
    ),
    "address not a string": (
        pack(_config_array(members=_rows({0: {3: b"10.0.0.1:1"}}))),
        "peer_address: expected a string",
    ),
    "role": (pack(_config_array(members=_rows({3: {5: "observer"}}))), "not voter or learner"),
    "unsorted ids": (
        pack(_config_array(members=_rows({0: {0: 5}}))),
        "ids are not sorted and distinct",
    ),
    "duplicate ids": (
        pack(_config_array(members=_rows({1: {0: 0}}))),
        "ids are not sorted and distinct",
    ),
    "duplicate names": (
        pack(_config_array(members=_rows({1: {1: "m0"}}))),
        "a name is listed twice",
    ),
    "duplicate keys": (
        pack(_config_array(members=_rows({1: {2: keys(1)[0]}}))),
        "a public key is listed twice",
    ),
    "learner in pbft": (
        pack(_config_array(members=_rows({4: {5: LEARNER}}, count=5))),
        "learners exist only in raft",
    ),
    "too many members": (
        pack(_config_array(members=_rows({}, count=MEMBERS_MAX + 1))),
        "129 members, at most 128",
    ),
    "three pbft voters": (
        pack(_config_array(members=_rows({}, count=3))),
        "3 voters, pbft needs 4",
    ),
    "raft without a voter": (
        pack(_config_array(mode="raft", members=_rows({0: {5: LEARNER}}, count=1))),
        "0 voters, raft needs 1",
    ),
}


def test_the_bad_configurations_differ_from_a_good_one_only_where_named() -> None:
    assert Configuration.decode(GOOD).epoch == 3
    assert Configuration.decode(pack(_config_array(members=_rows({}, count=MEMBERS_MAX))))
    raft = Configuration.decode(
        pack(_config_array(mode="raft", members=_rows({4: {5: LEARNER}}, count=5)))
    )
    assert raft.members[4].role == LEARNER  # (what pbft refuses)


@pytest.mark.parametrize("name", list(BAD_CONFIGURATIONS))
def test_decode_refuses_with_wire_format_error_only(name: str) -> None:
    data, why = BAD_CONFIGURATIONS[name]
    with pytest.raises(WireFormatError, match=re.escape(why)):
        Configuration.decode(data)


def test_decode_refuses_what_is_not_bytes() -> None:
    with pytest.raises(WireFormatError):
        Configuration.decode("not bytes")  # type: ignore[arg-type]


@settings(max_examples=200)
@given(st.data())
def test_a_damaged_encoding_is_refused_or_is_itself_canonical(data: st.DataObject) -> None:
    encoded = bytearray(CONFIG.encode())
    at = data.draw(st.integers(0, len(encoded) - 1))
    encoded[at] = data.draw(st.integers(0, 255))
    try:
        config = Configuration.decode(bytes(encoded))
    except WireFormatError:
        return
    assert config.encode() == bytes(encoded)


# --- digests -------------------------------------------------------------------------------

PINNED = Configuration(
    hashlib.sha256(b"pinned chain").digest(),
    1,
    "raft",
    (
        MemberInfo(0, "n1", MEMBERS[0].public, "10.0.0.1:7101", "10.0.0.1:7201", VOTER),
        MemberInfo(4, "n5", MEMBERS[1].public, "[fd00::5]:7101", "n5.example.org:7201", LEARNER),
    ),
)


def test_the_digest_is_pinned() -> None:
    # The configuration format: SHA-256 of pack(["consortium-config/1", chain_id, epoch,
    # mode, [[id, name, public_key, peer_address, client_address, role], ...]]). Headers from
    # epoch 1 on commit this digest, and receipts and chain files carry it; if this changes,
    # every such ledger and receipt stops verifying. Change it only with a format version.
    assert PINNED.encode() == pack(
        [
            "consortium-config/1",
            PINNED.chain_id,
            1,
            "raft",
            [
                [0, "n1", MEMBERS[0].public, "10.0.0.1:7101", "10.0.0.1:7201", "voter"],
                [4, "n5", MEMBERS[1].public, "[fd00::5]:7101", "n5.example.org:7201", "learner"],
            ],
        ]
    )
    assert PINNED.digest == hashlib.sha256(PINNED.encode()).digest()
    assert PINNED.digest.hex() == (
        "e1ec302518c586752d86f9dfafbcba828e05a8e58807b819618de715ad9e964c"
    )


def _variants() -> dict[str, Configuration]:
    m0, m4 = PINNED.members
    return {
        "chain_id": replace(PINNED, chain_id=hashlib.sha256(b"other").digest()),
        "epoch": replace(PINNED, epoch=2),
        "mode": replace(PINNED, mode="pbft"),
        "id": replace(PINNED, members=(m0, replace(m4, id=5))),
        "name": replace(PINNED, members=(m0, replace(m4, name="n6"))),
        "public_key": replace(PINNED, members=(m0, replace(m4, public_key=MEMBERS[2].public))),
        "peer_address": replace(PINNED, members=(m0, replace(m4, peer_address="[fd00::6]:7101"))),
        "client_address": replace(PINNED, members=(m0, replace(m4, client_address="n5:7201"))),
        "role": replace(PINNED, members=(m0, replace(m4, role=VOTER))),
        "order": replace(PINNED, members=(m4, m0)),
        "one member fewer": replace(PINNED, members=(m0,)),
    }


def test_the_digest_differs_when_any_field_differs() -> None:
    variants = _variants()
    digests = {PINNED.digest} | {v.digest for v in variants.values()}
    assert len(digests) == len(variants) + 1
    # And equal configurations have equal digests, however they were built.
    assert replace(PINNED, epoch=1).digest == PINNED.digest
    assert Configuration.decode(PINNED.encode()).digest == PINNED.digest


# --- effective heights and ids -------------------------------------------------------------


@pytest.mark.parametrize(("accepted", "effective"), [(45, 128), (64, 128), (65, 160), (1, 96)])
def test_pbft_changes_take_effect_at_the_checkpoint_at_least_a_window_later(
    accepted: int, effective: int
) -> None:
    params = Params(checkpoint_interval=32, window=64)
    assert effective_height("pbft", accepted, params) == effective
    assert effective_height("raft", accepted, params) == accepted


def test_the_effective_height_is_the_first_boundary_a_window_on() -> None:
    params = Params(checkpoint_interval=4, window=16)
    for c in range(1, 200):
        e = effective_height("pbft", c, params)
        assert e % 4 == 0 and c + 16 <= e < c + 16 + 4


def test_ids_are_never_reused() -> None:
    assert next_id(CONFIG, 3) == 4
    assert next_id(CONFIG, 9) == 10  # members 4..9 were added and removed since
    assert next_id(CONFIG, 0) == 4  # (the configuration's own ids count)


# --- the change ----------------------------------------------------------------------------

ALL_OPS: dict[str, tuple[Kind, ChangeOp]] = {
    "admit": ("clients", AdmitClient(SPARES[0].public, "a client")),
    "revoke": ("clients", RevokeClient(SPARES[0].public)),
    "add": ("members", add(0)),
    "remove": ("members", RemoveMember(2)),
    "rotate": ("members", RotateKey(1, SPARES[1].public)),
    "address": ("members", SetAddresses(3, "h3:1", "h3:2")),
    "promote": ("members", PromoteLearner(4)),
}


@pytest.mark.parametrize("name", list(ALL_OPS))
def test_every_op_round_trips(name: str) -> None:
    kind, op = ALL_OPS[name]
    c = change(CONFIG, op, kind=kind)
    body = c.encode()
    assert ChangeV2.decode(body) == c
    assert ChangeV2.decode(body).encode() == body
    assert (c.chain_id, c.epoch, c.config_digest) == (CONFIG.chain_id, 0, CONFIG.digest)
    assert op.to_array()[0] == name


def test_the_body_and_id_are_the_designs() -> None:
    ops = (RemoveMember(0), add(0), RotateKey(1, SPARES[1].public), SetAddresses(2, "a:1", "b:2"))
    c = change(CONFIG, *ops)
    body = c.encode()
    assert body == pack(
        [
            "consortium-change/2",
            CONFIG.chain_id,
            0,
            CONFIG.digest,
            "members",
            [op.to_array() for op in ops],
            b"nonce",
            EXPIRY_MS,
            CREATED_MS,
        ]
    )
    assert c.id == digest_of(["config-change", body])
    assert c.id != digest_of(["client-change", body])  # v1's change id of the same bytes
    assert c.new_keys == (SPARES[0].public, SPARES[1].public)


def _change_array(**kw: Any) -> list[Any]:
    fields = {
        "format": "consortium-change/2",
        "chain_id": CONFIG.chain_id,
        "epoch": 0,
        "digest": CONFIG.digest,
        "kind": "members",
        "ops": [["remove", 1]],
        "nonce": b"n",
        "expiry_ms": EXPIRY_MS,
        "created_ms": CREATED_MS,
    }
    fields.update(kw)
    return list(fields.values())


GOOD_CHANGE = pack(_change_array())
KEY = SPARES[0].public
BIG_ADD = ["add", "x" * 64, KEY, "a" * 250 + ":7101", "b" * 250 + ":7101"]
BAD_CHANGES: dict[str, tuple[bytes, str]] = {  # name: (bytes, what the error says)
    "not msgpack": (b"\xc1", "undecodable msgpack"),
    "non-canonical": (b"\xdc\x00\x09" + GOOD_CHANGE[1:], "non-canonical"),
    "oversize": (pack(_change_array(ops=[BIG_ADD] * 4)), "exceeds the limit of 2048"),
    "eight fields": (pack(_change_array()[:8]), "expected 9 fields, got 8"),
    "format": (pack(_change_array(format="consortium-change/1")), "format 'consortium-change/1'"),
    "short chain id": (pack(_change_array(chain_id=b"\x00" * 31)), "chain_id: expected 32 bytes"),
    "negative epoch": (pack(_change_array(epoch=-1)), "epoch: -1 outside"),
    "short digest": (pack(_change_array(digest=b"\x00" * 31)), "config_digest: expected 32"),
    "kind": (pack(_change_array(kind="servers")), "'servers' is not clients or members"),
    "no ops": (pack(_change_array(ops=[])), "1 to 4 ops, not 0"),
    "five member ops": (pack(_change_array(ops=[["remove", i] for i in range(5)])), "not 5"),
    "two client ops": (
        pack(_change_array(kind="clients", ops=[["revoke", KEY]] * 2)),
        "a clients change has one op, not 2",
    ),
    "no client op": (pack(_change_array(kind="clients", ops=[])), "has one op, not 0"),
    "member op in a clients change": (
        pack(_change_array(kind="clients", ops=[["remove", 1]])),
        "'remove' with 2 fields is not an op of a clients change",
    ),
    "client op in a members change": (
        pack(_change_array(ops=[["revoke", KEY]])),
        "'revoke' with 2 fields is not an op of a members change",
    ),
    "unknown op": (pack(_change_array(ops=[["demote", 1]])), "'demote' with 2 fields"),
    "empty op": (pack(_change_array(ops=[[]])), "'' with 0 fields"),
    "op not a list": (pack(_change_array(ops=["remove"])), "change op: expected an array"),
    "op name not a string": (pack(_change_array(ops=[[b"remove", 1]])), "expected a string"),
    "remove with two ids": (pack(_change_array(ops=[["remove", 1, 2]])), "'remove' with 3"),
    "id 65536": (pack(_change_array(ops=[["remove", MEMBER_IDS]])), "id: 65536 outside"),
    "negative id": (pack(_change_array(ops=[["promote", -1]])), "id: -1 outside"),
    "short rotate key": (
        pack(_change_array(ops=[["rotate", 1, KEY[:31]]])),
        "public key: expected 32 bytes",
    ),
    "short admit key": (
        pack(_change_array(kind="clients", ops=[["admit", KEY[:31], ""]])),
        "public key: expected 32 bytes",
    ),
    "label of 65": (
        pack(_change_array(kind="clients", ops=[["admit", KEY, "x" * 65]])),
        "label: string longer than 64",
    ),
    "empty name": (pack(_change_array(ops=[["add", "", KEY, "a:1", "b:2"]])), "name: empty"),
    "name of 65": (
        pack(_change_array(ops=[["add", "x" * 65, KEY, "a:1", "b:2"]])),
        "name: string longer than 64",
    ),
    "address too long": (
        pack(_change_array(ops=[["address", 1, "a" * (ADDRESS_CHARS_MAX + 1), "b:2"]])),
        "address: string longer than 259",
    ),
    "nonce of 33": (pack(_change_array(nonce=b"\x00" * 33)), "nonce: 33 bytes exceeds 32"),
    "negative expiry": (pack(_change_array(expiry_ms=-1)), "expiry_ms: -1 outside"),
    "created_ms a string": (pack(_change_array(created_ms="now")), "created_ms: expected an int"),
}


def test_the_bad_changes_differ_from_a_good_one_only_where_named() -> None:
    assert ChangeV2.decode(GOOD_CHANGE).ops == (RemoveMember(1),)
    assert len(pack(_change_array(ops=[BIG_ADD]))) < CHANGE_BODY_BYTES_MAX
    assert len(BAD_CHANGES["oversize"][0]) > CHANGE_BODY_BYTES_MAX
    assert ChangeV2.decode(pack(_change_array(ops=[["remove", i] for i in range(4)])))
    # Bounds are checked at decode, validity at execution: these decode.
    ChangeV2.decode(pack(_change_array(ops=[["rotate", 1, SMALL_ORDER]])))
    ChangeV2.decode(pack(_change_array(ops=[["address", 1, "0.0.0.0:1", "not an address"]])))


@pytest.mark.parametrize("name", list(BAD_CHANGES))
def test_change_decode_refuses_with_wire_format_error_only(name: str) -> None:
    data, why = BAD_CHANGES[name]
    with pytest.raises(WireFormatError, match=re.escape(why)):
        ChangeV2.decode(data)


def test_create_refuses_what_decode_refuses() -> None:
    with pytest.raises(WireFormatError, match="one op"):
        change(CONFIG, RevokeClient(KEY), RevokeClient(KEY), kind="clients")
    with pytest.raises(WireFormatError, match="not an op of a clients change"):
        change(CONFIG, RemoveMember(1), kind="clients")


def test_possessions_decode_within_their_bounds() -> None:
    sig = b"\x00" * 64
    assert decode_possessions([[KEY, sig]] * 4) == ((KEY, sig),) * 4
    for bad in ([[KEY, sig]] * 5, [[KEY[:31], sig]], [[KEY, sig[:63]]], [[KEY]], b""):
        with pytest.raises(WireFormatError):
            decode_possessions(bad)


# --- apply_ops -----------------------------------------------------------------------------


def test_a_pbft_add_is_a_voter_with_the_next_id() -> None:
    result = apply(CONFIG, add(0))
    assert isinstance(result, Configuration)
    assert result.epoch == 1 and result.mode == "pbft" and result.chain_id == CONFIG.chain_id
    assert result.members[:4] == CONFIG.members
    assert result.members[4] == MemberInfo(
        4, "new0", SPARES[0].public, "10.0.2.1:7101", "10.0.2.1:7201", VOTER
    )
    assert (result.n, result.f, result.quorum) == (5, 1, 4)
    assert CONFIG.epoch == 0 and len(CONFIG.members) == 4  # (pure)
    later = apply(result, RemoveMember(4), add(1), add(2), highest_id=4)
    assert isinstance(later, Configuration)
    assert [m.id for m in later.members] == [0, 1, 2, 3, 5, 6]  # 4 is never given again
    assert later.epoch == 2


def test_a_raft_add_is_a_learner_and_a_promote_makes_it_a_voter() -> None:
    raft = genesis_configuration(RAFT_GENESIS)
    added = apply(raft, add(0))
    assert isinstance(added, Configuration)
    assert added.members[4].role == LEARNER and added.n == 4 and len(added.members) == 5
    promoted = apply(added, PromoteLearner(4))
    assert isinstance(promoted, Configuration)
    assert promoted.members[4].role == VOTER and promoted.n == 5 and promoted.epoch == 2


def test_remove_rotate_and_address() -> None:
    five = apply(CONFIG, add(0))
    assert isinstance(five, Configuration)
    removed = apply(five, RemoveMember(0))
    assert isinstance(removed, Configuration)
    assert [m.id for m in removed.members] == [1, 2, 3, 4] and removed.primary(0) == 1
    rotated = apply(CONFIG, RotateKey(1, SPARES[1].public))
    assert isinstance(rotated, Configuration)
    assert rotated.key_of(1) == SPARES[1].public and rotated.by_key(MEMBERS[1].public) is None
    moved = apply(CONFIG, SetAddresses(2, "[fd00::2]:7102", "n3.example.org:7202"))
    assert isinstance(moved, Configuration)
    assert moved.member(2) == replace(
        CONFIG.members[2], peer_address="[fd00::2]:7102", client_address="n3.example.org:7202"
    )


def test_a_pbft_replacement_is_one_change() -> None:
    result = apply(CONFIG, RemoveMember(3), add(0))
    assert isinstance(result, Configuration)
    assert [m.id for m in result.members] == [0, 1, 2, 4] and result.n == 4


REFUSALS: dict[str, tuple[Configuration, tuple[ChangeOp, ...], str]] = {
    "remove an unknown id": (CONFIG, (RemoveMember(9),), "config_unknown_member"),
    "rotate a removed id": (
        config_of("pbft", 5),
        (RemoveMember(4), RotateKey(4, KEY)),
        "config_unknown_member",
    ),
    "rotate and address one id": (
        CONFIG,
        (RotateKey(1, KEY), SetAddresses(1, "a:1", "b:2")),
        "config_conflicting_ops",
    ),
    "address the added id": (
        CONFIG,
        (add(0), SetAddresses(4, "a:1", "b:2")),
        "config_conflicting_ops",
    ),
    "add a small-order key": (CONFIG, (add(0, public_key=SMALL_ORDER),), "config_invalid_key"),
    "rotate to a key off the curve": (CONFIG, (RotateKey(1, b"\xff" * 32),), "config_invalid_key"),
    "add a member's key": (CONFIG, (add(0, public_key=MEMBERS[2].public),), "config_key_used"),
    "rotate to a member's key": (CONFIG, (RotateKey(0, MEMBERS[1].public),), "config_key_used"),
    "one new key twice": (CONFIG, (add(0), RotateKey(1, SPARES[0].public)), "config_key_used"),
    "rotate to the key rotated away": (
        CONFIG,
        (RotateKey(0, KEY), RotateKey(1, MEMBERS[0].public)),
        "config_key_used",
    ),
    "add a member's name": (CONFIG, (add(0, name="n2"),), "config_name_used"),
    "one new name twice": (CONFIG, (add(0), add(1, name="new0")), "config_name_used"),
    "add a bad address": (CONFIG, (add(0, peer_address="10.0.0.300:1"),), "config_invalid_address"),
    "add a wildcard": (CONFIG, (add(0, client_address="0.0.0.0:7201"),), "config_invalid_address"),
    "address without a port": (
        CONFIG,
        (SetAddresses(1, "10.0.0.2:7101", "10.0.0.2"),),
        "config_invalid_address",
    ),
    "promote a voter": (
        config_of("raft", 3, learners=1),
        (PromoteLearner(1),),
        "config_not_learner",
    ),
    "promote in pbft": (config_of("pbft", 4), (PromoteLearner(1),), "config_mode"),
    "two raft ops": (
        config_of("raft", 3, learners=1),
        (PromoteLearner(3), RemoveMember(0)),
        "config_not_single_server",
    ),
    "remove from 4 in pbft": (CONFIG, (RemoveMember(0),), "config_too_few_members"),
    "remove the last raft voter": (
        config_of("raft", 1, learners=1),
        (RemoveMember(0),),
        "config_too_few_members",
    ),
    "add a 129th member": (config_of("pbft", MEMBERS_MAX), (add(0),), "config_too_many_members"),
}


@pytest.mark.parametrize("name", list(REFUSALS))
def test_apply_ops_refuses_with_the_designs_reason(name: str) -> None:
    config, ops, reason = REFUSALS[name]
    assert refused(apply(config, *ops)) == reason


def test_keys_and_names_ever_used_are_refused_and_ids_run_out() -> None:
    assert refused(apply(CONFIG, add(0), used_keys=frozenset({KEY}))) == "config_key_used"
    assert refused(apply(CONFIG, RotateKey(0, KEY), used_keys=frozenset({KEY}))) == (
        "config_key_used"
    )
    assert refused(apply(CONFIG, add(0), used_names=frozenset({"new0"}))) == "config_name_used"
    last = apply(CONFIG, add(0), highest_id=MEMBER_IDS - 2)
    assert isinstance(last, Configuration) and last.members[-1].id == MEMBER_IDS - 1
    assert refused(apply(CONFIG, add(0), highest_id=MEMBER_IDS - 1)) == "config_too_many_members"


def test_the_first_failing_check_names_the_refusal() -> None:
    # The whole change before its ops, an op's id before its key, the ops before the result.
    raft = config_of("raft", 3, learners=1)
    assert refused(apply(raft, add(0, public_key=SMALL_ORDER), RemoveMember(9))) == (
        "config_not_single_server"
    )
    assert refused(apply(CONFIG, RotateKey(9, SMALL_ORDER))) == "config_unknown_member"
    assert refused(apply(CONFIG, add(0, name="n1", public_key=MEMBERS[0].public))) == (
        "config_key_used"
    )
    assert refused(apply(CONFIG, RemoveMember(0), add(0, name="n1"))) == "config_name_used"


def test_a_clients_change_is_not_applied_to_the_configuration() -> None:
    c = change(CONFIG, AdmitClient(KEY, ""), kind="clients")
    with pytest.raises(ValueError, match="members change"):
        apply_ops(CONFIG, c, highest_id=3, used_keys=(), used_names=())


# --- possessions and approvals -------------------------------------------------------------


def signer(keys: KeyPair) -> Ed25519Signer:
    return Ed25519Signer(keys)


def approvals(c: ChangeV2, who: tuple[int, ...] = (0, 1, 2)) -> list[Approval]:
    return [c.approve(signer(MEMBERS[i])) for i in who]


ADD_AND_ROTATE = change(CONFIG, add(0), RotateKey(1, SPARES[1].public))


def possessions(c: ChangeV2, who: tuple[int, ...] = (0, 1)) -> list[Possession]:
    return [c.prove_possession(signer(SPARES[i])) for i in who]


def test_each_new_key_proves_possession_once() -> None:
    c = ADD_AND_ROTATE
    assert possession_problem(c, possessions(c), VERIFIER) is None
    assert possession_problem(c, possessions(c, (1, 0))) is None  # (any order)
    bad = {
        "missing": possessions(c, (0,)),
        "none": [],
        "twice": possessions(c, (0, 1, 1)),
        "not new": [*possessions(c), c.prove_possession(signer(SPARES[2]))],
        "a member's": [*possessions(c), c.prove_possession(signer(MEMBERS[0]))],
        "another change's": [*possessions(c, (0,)), *possessions(change(CONFIG, add(1)), (1,))],
        "another key's signature": [possessions(c)[0], (SPARES[1].public, possessions(c)[0][1])],
    }
    for name, offered in bad.items():
        refusal = possession_problem(c, offered, VERIFIER)
        assert refusal is not None and refusal.reason == "config_bad_possession", name
    # A change that brings in no key takes no possession.
    remove = change(CONFIG, RemoveMember(0))
    assert possession_problem(remove, []) is None
    assert possession_problem(remove, possessions(remove, (0,))) is not None


def test_a_quorum_of_distinct_voters_approves() -> None:
    c = ADD_AND_ROTATE
    body = c.encode()
    assert CONFIG.quorum == 3
    assert approval_problem(CONFIG, body, approvals(c), VERIFIER) is None
    assert approval_problem(CONFIG, body, approvals(c, (3, 2, 1, 0))) is None
    cases = {
        "short": (approvals(c, (0, 1)), "config_no_quorum"),
        "none": ([], "config_no_quorum"),
        "duplicate": (approvals(c, (0, 1, 1, 2)), "config_duplicate_signer"),
        "non-member": ([*approvals(c), c.approve(signer(SPARES[0]))], "config_non_member_signer"),
        "other change": (
            [*approvals(c, (0, 1)), *approvals(change(CONFIG, RemoveMember(0)), (2,))],
            "config_bad_signature",
        ),
        "other chain": (
            [
                *approvals(c, (0, 1)),
                (
                    MEMBERS[2].public,
                    signer(MEMBERS[2]).sign(Domain.CONFIG, b"\x07" * 32, body),
                ),
            ],
            "config_bad_signature",
        ),
        "v1 domain": (
            [
                (MEMBERS[i].public, signer(MEMBERS[i]).sign(Domain.CLIENT_CHANGE, c.chain_id, body))
                for i in (0, 1, 2)
            ],
            "config_bad_signature",
        ),
    }
    for name, (offered, reason) in cases.items():
        refusal = approval_problem(CONFIG, body, offered, VERIFIER)
        assert refusal is not None and refusal.reason == reason, name
    short = approval_problem(CONFIG, body, approvals(c, (0, 1)))
    assert short is not None and "3 needed" in short.detail


def test_approvals_count_the_voters_of_the_configuration_given() -> None:
    # A raft learner never approves; after a rotation only the new key counts.
    raft = genesis_configuration(RAFT_GENESIS)
    with_learner = apply(raft, add(0))
    assert isinstance(with_learner, Configuration)
    c = change(with_learner, RemoveMember(0))
    body = c.encode()
    learner = c.approve(signer(SPARES[0]))
    refusal = approval_problem(with_learner, body, [*approvals(c), learner])
    assert refusal is not None and refusal.reason == "config_non_member_signer"
    assert "learner" in refusal.detail
    assert with_learner.quorum == 3  # (of the 4 voters, not 5 members)
    rotated = apply(CONFIG, RotateKey(1, SPARES[1].public))
    assert isinstance(rotated, Configuration)
    c = change(rotated, RemoveMember(3))
    body = c.encode()
    refusal = approval_problem(rotated, body, approvals(c))
    assert refusal is not None and refusal.reason == "config_non_member_signer"
    new_key = c.approve(signer(SPARES[1]))
    assert approval_problem(rotated, body, [*approvals(c, (0, 2)), new_key]) is None


def test_the_domain_can_be_v1s_for_a_v1_body() -> None:
    body = b"a v1 client change body"
    v1 = [
        (MEMBERS[i].public, signer(MEMBERS[i]).sign(Domain.CLIENT_CHANGE, CONFIG.chain_id, body))
        for i in (0, 1, 2)
    ]
    assert approval_problem(CONFIG, body, v1, domain=Domain.CLIENT_CHANGE) is None
    refusal = approval_problem(CONFIG, body, v1)
    assert refusal is not None and refusal.reason == "config_bad_signature"


def test_an_approval_is_never_a_possession_nor_the_reverse() -> None:
    c = change(CONFIG, RotateKey(1, SPARES[1].public))
    body = c.encode()
    # The new key's holder signs an approval instead of a possession: refused.
    as_possession = c.approve(signer(SPARES[1]))
    refusal = possession_problem(c, [as_possession])
    assert refusal is not None and refusal.reason == "config_bad_possession"
    assert possession_problem(c, [c.prove_possession(signer(SPARES[1]))]) is None
    # Voters sign possessions instead of approvals: refused.
    as_approvals = [c.prove_possession(signer(MEMBERS[i])) for i in (0, 1, 2)]
    refusal = approval_problem(CONFIG, body, as_approvals)
    assert refusal is not None and refusal.reason == "config_bad_signature"
    assert Domain.POSSESSION.value == b"consortium/v1/possession\x00"
