"""TLS on the peer and client ports, over real sockets on 127.0.0.1 (port 0 everywhere).

Certificates are derived from genesis keys and pinned by them; dates never matter; a peer or
client on the other side of a TLS/plain mismatch is told why, and so is the operator of the
member it reached.
"""

from __future__ import annotations

import datetime
import hashlib
import secrets
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from consortium.cli.network import init_network, load_client_setup
from consortium.client.client import ConsortiumClient
from consortium.client.errors import ClientError
from consortium.crypto.certs import (
    CertificateError,
    certificate_pem,
    certificate_public_key,
    issue_certificate,
    issuer_certificate,
    issuer_keys,
)
from consortium.crypto.codec import pack
from consortium.crypto.keys import KeyPair
from consortium.crypto.signing import PROTOCOL_VERSION
from consortium.ledger.genesis import Params
from consortium.ledger.tx import Put
from consortium.node.client_port import ClientServer
from consortium.node.config import ConfigError, load_config, load_identity
from consortium.protocol import tls as tls_module
from consortium.protocol.framing import encode_frame
from consortium.protocol.tls import (
    X509_V_FLAG_NO_CHECK_TIME,
    TlsIdentity,
    explain_failure,
    make_context,
    plain_message,
)
from tests.client.fakes import FakeMember, honest
from tests.ledger.chain_fixture import CLIENT, MEMBERS, make_genesis
from tests.node.peers import (
    HOST,
    STRANGER,
    closed_by_peer,
    exchange,
    members,
    until,
)

GENESIS = make_genesis()
CHAIN = GENESIS.chain_id
OTHER = make_genesis(Params(batch_txs_max=100))  # same members, another network
IDS = [TlsIdentity(k, m.name, CHAIN) for k, m in zip(MEMBERS, GENESIS.members, strict=True)]


def expired_certificate(keys: KeyPair, name: str) -> x509.Certificate:
    """A certificate for `keys` from this network's issuer that expired in 2001."""
    issuer = issuer_certificate(CHAIN)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer.subject)
        .public_key(keys.private.public_key())
        .serial_number(7)
        .not_valid_before(datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC))
        .not_valid_after(datetime.datetime(2001, 1, 1, tzinfo=datetime.UTC))
        .sign(issuer_keys(CHAIN).private, None)
    )


async def tls_dial(port: int, keys: KeyPair, name: str) -> trio.SSLStream[trio.SocketStream]:
    stream = await trio.open_tcp_stream(HOST, port)
    conn = trio.SSLStream(stream, make_context(keys, name, CHAIN, server=False))
    await conn.do_handshake()
    return conn


# --- certificates ----------------------------------------------------------------------------


def test_a_certificate_is_derived_from_the_key_alone_and_never_expires() -> None:
    cert = issue_certificate(MEMBERS[1], "n2", CHAIN)
    again = issue_certificate(MEMBERS[1], "n2", CHAIN)
    assert cert.public_bytes(Encoding.DER) == again.public_bytes(Encoding.DER)
    assert certificate_public_key(cert.public_bytes(Encoding.DER)) == MEMBERS[1].public
    assert cert.not_valid_after_utc.year == 9999
    cert.verify_directly_issued_by(issuer_certificate(CHAIN))
    with pytest.raises(ValueError):
        cert.verify_directly_issued_by(issuer_certificate(OTHER.chain_id))


def test_a_certificate_for_a_key_that_is_not_ed25519_is_refused_by_name() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ec")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(CertificateError, match="not Ed25519"):
        certificate_public_key(cert.public_bytes(Encoding.DER))
    with pytest.raises(CertificateError, match="not a readable"):
        certificate_public_key(b"garbage")


def test_our_contexts_speak_tls_1_3_only_and_never_check_dates() -> None:
    for ctx in (IDS[0].server_context, IDS[0].client_context):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        assert ctx.verify_flags & X509_V_FLAG_NO_CHECK_TIME


def test_a_plain_refusal_is_decoded_into_the_sentence_it_carries() -> None:
    refusal = encode_frame(pack(["refused", "n1 does not use TLS on its peer port"]))
    assert plain_message(refusal) == "n1 does not use TLS on its peer port"
    assert plain_message(encode_frame(pack([0, "error", "no TLS here"]))) == "no TLS here"
    assert plain_message(b"\x00\x00") is None
    why = explain_failure(trio.BrokenResourceError(), refusal, "n1")
    assert why == "n1 answered without TLS: n1 does not use TLS on its peer port"
    assert "answered without TLS (first byte 0x48)" in explain_failure(
        trio.BrokenResourceError(), b"HTTP/1.1 400", "n1"
    )


# --- configuration ---------------------------------------------------------------------------


def test_init_with_tls_turns_it_on_for_every_member_and_the_clients(tmp_path: Path) -> None:
    init_network(tmp_path / "net", members=4, clients=2, tls=True)
    config = load_config(tmp_path / "net" / "nodes" / "n3")
    assert config.tls_peer and config.tls_client
    setup = load_client_setup(tmp_path / "net")
    assert setup.tls
    assert setup.client_options()["tls_keys"].public == setup.genesis.clients[0].public_key
    init_network(tmp_path / "plain", members=4, clients=2)
    assert not load_config(tmp_path / "plain" / "nodes" / "n1").tls_peer
    assert load_client_setup(tmp_path / "plain").client_options() == {}


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ('[tls]\npeer = "yes"\n', "'tls.peer' must be true or false"),
        ("[tls]\nclient = 1\n", "'tls.client' must be true or false"),
        ('[tls]\ncertificate = "cert.pem"\n', "unknown key 'tls.certificate'"),
    ],
)
def test_a_bad_tls_setting_names_the_file_the_key_and_the_fix(
    tmp_path: Path, section: str, message: str
) -> None:
    init_network(tmp_path / "net", members=4, clients=1)
    home = tmp_path / "net" / "nodes" / "n1"
    toml = home / "config" / "node.toml"
    toml.write_text(toml.read_text() + section)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(home)
    assert str(toml) in str(info.value)


def test_a_tls_member_whose_key_genesis_does_not_list_refuses_to_start(tmp_path: Path) -> None:
    init_network(tmp_path / "net", members=4, clients=1, tls=True)
    home = tmp_path / "net" / "nodes" / "n1"
    key = home / "config" / "node_key.pem"
    key.unlink()
    STRANGER.save(key)
    with pytest.raises(ConfigError, match="key does not match") as info:
        load_identity(home)
    assert str(key) in str(info.value) and "genesis.json" in str(info.value)


# --- peers -----------------------------------------------------------------------------------


async def test_members_with_tls_authenticate_and_exchange_frames() -> None:
    with trio.fail_after(15):
        async with members() as m:
            nets = [await m.start(i, tls=IDS[i]) for i in range(4)]
            await exchange(nets)
            for net in nets:
                assert not any(k.startswith("handshake_") for k in net.counters), net.counters
                assert net.tls_status()["peer"] is True
                assert all(p["tls"] for p in net.peer_status())


async def test_expired_certificates_do_not_take_members_apart() -> None:
    """A member presenting a certificate that expired in 2001 is still accepted (its key is
    what is pinned); the same connection fails once date checks are put back, so the test
    would see it if they were on."""
    old = TlsIdentity(MEMBERS[1], "n2", CHAIN)
    pem = certificate_pem(expired_certificate(MEMBERS[1], "n2"))
    for ctx in (old.server_context, old.client_context):
        tls_module._load_chain(ctx, pem, MEMBERS[1])
    with trio.fail_after(15):
        async with members() as m:
            nets = [await m.start(0, tls=IDS[0]), await m.start(1, tls=old)]
            await exchange(nets)
    strict = TlsIdentity(MEMBERS[0], "n1", CHAIN)
    for ctx in (strict.server_context, strict.client_context):
        ctx.verify_flags = ctx.verify_flags & ~X509_V_FLAG_NO_CHECK_TIME
    with trio.fail_after(15):
        async with members() as m:
            a = await m.start(0, tls=strict)
            await m.start(1, tls=old)
            await until(lambda: "expired" in a.peers[1].last_error)


async def test_a_key_genesis_does_not_list_is_refused_after_the_tls_handshake() -> None:
    with trio.fail_after(10):
        async with members() as m:
            net = await m.start(0, tls=IDS[0])
            conn = await tls_dial(net.listen_port, STRANGER, "mallory")
            got = await closed_by_peer(conn)  # type: ignore[arg-type]
            await trio.aclose_forcefully(conn)
            assert got[0][0] == "refused" and "is not a member" in got[0][1]
            await until(lambda: net.counters["handshake_tls_unknown_key"] == 1)


async def test_a_member_at_the_wrong_address_is_refused_by_its_pinned_key() -> None:
    with trio.fail_after(10):
        async with members() as m:
            a = await m.start(0, tls=IDS[0])
            c = await m.start(2, tls=IDS[2])
            a.set_peer_address(1, (HOST, c.listen_port))  # n3 listens where n2 should
            await until(lambda: a.counters["handshake_tls_wrong_key"] >= 1)
            assert "genesis lists" in a.peers[1].last_error


async def test_a_member_of_another_network_is_refused_with_the_reason() -> None:
    with trio.fail_after(10):
        async with members() as m:
            a = await m.start(0, tls=IDS[0])
            other = TlsIdentity(MEMBERS[1], "n2", OTHER.chain_id)
            b = await m.start(1, genesis=OTHER, tls=other)
            await until(lambda: "another genesis.json" in b.peers[0].last_error)
            await until(lambda: "another genesis.json" in a.peers[1].last_error)


async def test_the_handshake_must_name_the_member_whose_key_tls_proved() -> None:
    with trio.fail_after(10):
        async with members() as m:
            net = await m.start(0, tls=IDS[0])
            conn = await tls_dial(net.listen_port, MEMBERS[1], "n2")
            nonce = secrets.token_bytes(32)
            await conn.send_all(encode_frame(pack(["hello", PROTOCOL_VERSION, CHAIN, 2, nonce])))
            got = await closed_by_peer(conn)  # type: ignore[arg-type]
            await trio.aclose_forcefully(conn)
            assert got[0][0] == "refused" and "claims member 2" in got[0][1]
            assert net.counters["handshake_tls_key_mismatch"] == 1


async def test_plain_and_tls_members_tell_each_other_why_on_both_sides() -> None:
    with trio.fail_after(10):
        async with members() as m:
            tls_net = await m.start(0, tls=IDS[0])
            plain = await m.start(1)
            # The plain member dialing the TLS one: refused in plain, the setting named.
            await until(lambda: "requires TLS" in plain.peers[0].last_error)
            assert "[tls] peer = true" in plain.peers[0].last_error
            await until(lambda: tls_net.counters["handshake_tls_required"] >= 1)
            assert "n2 dialed without TLS" in tls_net.peer_status()[0]["inbound_error"]
            assert "n2 dialed without TLS" in str(tls_net.tls_status()["last_mismatch"])
            # The TLS member dialing the plain one: it decodes the plain refusal.
            await until(lambda: "answered without TLS" in tls_net.peers[1].last_error)
            assert "does not use TLS" in tls_net.peers[1].last_error
            await until(lambda: plain.counters["handshake_tls_unexpected"] >= 1)
            assert "dialed with TLS" in plain.tls_mismatch
            assert not tls_net.peers[1].outbound_connected
            assert not plain.peers[0].outbound_connected


async def test_a_stalled_tls_handshake_times_out_and_frees_its_slot() -> None:
    with trio.fail_after(10):
        async with members() as m:
            net = await m.start(0, tls=IDS[0], handshake_timeout_s=0.3, handshakes_max=1)
            stalled = await trio.open_tcp_stream(HOST, net.listen_port)
            await stalled.send_all(b"\x16\x03\x01")  # the start of a TLS record, then nothing
            await until(lambda: net.counters["handshake_timeout"] == 1)
            other = await m.start(1, tls=IDS[1])
            await exchange([net, other])  # the slot is free again
            await stalled.aclose()


# --- clients ---------------------------------------------------------------------------------


class TlsCluster:
    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.ports: dict[int, int] = {}
        self.servers: dict[int, ClientServer] = {}

    async def start(self, member: FakeMember, tls: TlsIdentity | None, **options: Any) -> None:
        server = ClientServer(
            member,
            listen=(HOST, 0),
            frame_bytes_max=1 << 20,
            params=GENESIS.params,
            tls=tls,
            tls_accepts=(lambda key: "c1" if key == CLIENT.public else None) if tls else None,
            **options,
        )
        self.servers[member.index] = server
        self.ports[member.index] = await self._nursery.start(server.run)

    def addresses(self) -> dict[int, tuple[str, int]]:
        return {i: (HOST, p) for i, p in self.ports.items()}


@asynccontextmanager
async def tls_cluster(tls: bool = True, **options: Any) -> AsyncIterator[TlsCluster]:
    async with trio.open_nursery() as nursery:
        c = TlsCluster(nursery)
        for member in honest():
            await c.start(member, IDS[member.index] if tls else None, **options)
        yield c
        nursery.cancel_scope.cancel()


async def test_a_tls_client_submits_and_gets_verified_receipts() -> None:
    with trio.fail_after(15):
        async with (
            tls_cluster() as c,
            ConsortiumClient(
                GENESIS, CLIENT, addresses=c.addresses(), tls_keys=CLIENT, connect_timeout_s=5
            ) as client,
        ):
            assert client.connected_members() == [0, 1, 2, 3]
            [outcome] = await client.submit_and_wait([client.make_tx([Put(b"k", b"v")])], 5)
            assert outcome.status == "committed" and outcome.confirmations >= 2
            assert all(s.counters["request_SubmitRequest"] == 1 for s in c.servers.values())


async def test_a_client_key_genesis_does_not_list_is_refused_with_the_reason() -> None:
    with trio.fail_after(15):
        async with (
            tls_cluster() as c,
            ConsortiumClient(
                GENESIS, addresses=c.addresses(), tls_keys=STRANGER, connect_timeout_s=0.5
            ) as client,
        ):
            with pytest.raises(ClientError, match="not an admitted client"):
                await client.status(0, timeout_s=2)
            await until(lambda: c.servers[0].counters["tls_unknown_client"] >= 1)


async def test_a_plain_client_of_a_tls_member_is_told_to_turn_tls_on() -> None:
    with trio.fail_after(15):
        async with (
            tls_cluster(handshake_timeout_s=0.5) as c,
            ConsortiumClient(GENESIS, addresses=c.addresses(), connect_timeout_s=0.5) as client,
        ):
            with pytest.raises(ClientError, match="requires TLS on its client port"):
                await client.status(0, timeout_s=2)
            await until(lambda: c.servers[0].counters["tls_required"] >= 1)
            assert "connected without TLS" in str(c.servers[0].tls_status()["last_client_mismatch"])


async def test_a_tls_client_of_a_plain_member_is_told_to_turn_tls_off() -> None:
    with trio.fail_after(15):
        async with (
            tls_cluster(tls=False) as c,
            ConsortiumClient(
                GENESIS, addresses=c.addresses(), tls_keys=CLIENT, connect_timeout_s=0.5
            ) as client,
        ):
            await until(lambda: "does not use TLS" in client.member_errors()[0])
            assert "answered without TLS" in client.member_errors()[0]
            assert client.connected_members() == []
            await until(lambda: c.servers[0].counters["tls_unexpected"] >= 1)


async def test_a_client_pins_the_key_genesis_lists_for_the_member_it_dialed() -> None:
    with trio.fail_after(15):
        async with tls_cluster() as c:
            swapped = {0: (HOST, c.ports[1]), 1: (HOST, c.ports[0])}
            async with ConsortiumClient(
                GENESIS, addresses=swapped, tls_keys=CLIENT, connect_timeout_s=0.5
            ) as client:
                await until(lambda: "genesis lists" in client.member_errors()[0])
                assert client.connected_members() == []


# (Review 1 of issue 6: TLS pinning on the client port as merged in 4e25b3b.)
async def test_a_revoked_client_loses_its_open_tls_connection() -> None:
    """The client port pins the TLS key against the clients admitted now, but only at the
    handshake (service.py _tls_name). With [tls] client = true the pin is the only gate on
    reads, follow streams, blocks and receipts; a revoked client that keeps its connection
    open (SyncClient and follow hold one for hours) keeps reading every committed block
    after its revocation takes effect. Expect the member to drop (or refuse requests on)
    connections whose key is no longer admitted."""
    admitted = {CLIENT.public}
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            member = honest(1)[0]
            server = ClientServer(
                member,
                listen=(HOST, 0),
                frame_bytes_max=1 << 20,
                params=GENESIS.params,
                tls=IDS[0],
                tls_accepts=lambda key: "c1" if key in admitted else None,
            )
            port = await nursery.start(server.run)
            async with ConsortiumClient(
                GENESIS, CLIENT, addresses={0: (HOST, port)}, tls_keys=CLIENT, connect_timeout_s=5
            ) as client:
                assert (await client.status(0))["member"] == 0
                admitted.clear()  # the revocation takes effect at this member
                try:
                    await client.status(0)
                    served_after_revocation = True
                except ClientError:
                    served_after_revocation = False
            nursery.cancel_scope.cancel()
    assert not served_after_revocation, "a revoked client is still served on its open connection"


async def test_a_revocation_taking_effect_closes_the_revoked_key_s_connections() -> None:
    """Without a request (a follow stream, an idle SyncClient), the member closes the
    connection when the revocation applies (service.py calls recheck_tls_keys at checkpoint
    boundaries)."""
    admitted = {CLIENT.public}
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            member = honest(1)[0]
            server = ClientServer(
                member,
                listen=(HOST, 0),
                frame_bytes_max=1 << 20,
                params=GENESIS.params,
                tls=IDS[0],
                tls_accepts=lambda key: "c1" if key in admitted else None,
            )
            port = await nursery.start(server.run)
            async with ConsortiumClient(
                GENESIS, CLIENT, addresses={0: (HOST, port)}, tls_keys=CLIENT, connect_timeout_s=5
            ) as client:
                assert (await client.status(0))["member"] == 0
                assert server.recheck_tls_keys() == 0 and len(server.connections) == 1
                admitted.clear()
                assert server.recheck_tls_keys() == 1
                while server.connections:  # noqa: ASYNC110
                    await trio.sleep(0.01)
                assert server.counters["tls_revoked_disconnected"] == 1
            nursery.cancel_scope.cancel()


async def test_a_client_closed_during_a_tls_handshake_closes_its_socket() -> None:
    """A member that accepts and never answers the TLS handshake: the client, closed while it
    waits, must close that socket itself (it was left to the garbage collector, whose
    ResourceWarning then failed whatever test ran at that moment)."""
    import gc
    import warnings
    from functools import partial

    async def mute(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(partial(trio.serve_tcp, mute, 0, host=HOST))
                port = listeners[0].socket.getsockname()[1]
                async with ConsortiumClient(
                    GENESIS, CLIENT, addresses={0: (HOST, port)}, tls_keys=CLIENT
                ):
                    await trio.sleep(0.3)  # connected; the handshake waits for the member
                nursery.cancel_scope.cancel()
        gc.collect()
    leaked = [w for w in seen if issubclass(w.category, ResourceWarning)]
    assert not leaked, [str(w.message) for w in leaked]


def test_a_stranger_certificate_is_issued_by_the_public_issuer_like_any_other() -> None:
    """The issuer key is public by design (derived from the chain id): what keeps a stranger
    out is the pin, which the refusal tests above exercise."""
    seed = hashlib.sha256(b"consortium/tls-issuer/1" + CHAIN).digest()
    assert issuer_keys(CHAIN).seed() == seed


def test_node_cert_shows_the_certificate_the_member_derives(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from consortium.cli.main import app

    init_network(tmp_path / "net", members=4, clients=1, tls=True)
    home = tmp_path / "net" / "nodes" / "n2"
    out = tmp_path / "n2.pem"
    result = CliRunner().invoke(app, ["node", "cert", "--home", str(home), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "9999-12-31" in result.output and "peer port on, client port on" in result.output
    cert = x509.load_pem_x509_certificate(out.read_bytes())
    genesis = load_client_setup(tmp_path / "net").genesis
    assert certificate_public_key(cert.public_bytes(Encoding.DER)) == genesis.members[1].public_key
    # A home whose key is not the member's: the same error as at start, not a certificate.
    key = home / "config" / "node_key.pem"
    key.unlink()
    STRANGER.save(key)
    result = CliRunner().invoke(app, ["node", "cert", "--home", str(home)])
    assert result.exit_code == 2 and "key does not match" in result.output


def test_a_bad_tls_value_in_client_toml_is_named(tmp_path: Path) -> None:
    from consortium.cli.network import NetworkError

    init_network(tmp_path / "net", members=4, clients=1)
    toml = tmp_path / "net" / "client.toml"
    toml.write_text(toml.read_text() + 'tls = "on"\n')
    with pytest.raises(NetworkError, match="'tls' must be true or false") as info:
        load_client_setup(tmp_path / "net")
    assert str(toml) in str(info.value)
