"""Bad input against real member processes gets a clear error and changes nothing; the
members keep serving everyone else throughout."""

from __future__ import annotations

import secrets
import sqlite3
import struct
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from consortium.cli.demo import wait_same_height
from consortium.cli.network import LocalNetwork, load_client_setup
from consortium.client import ConsortiumClient
from consortium.crypto.codec import pack, unpack, unpack_canonical
from consortium.crypto.keys import KeyPair
from consortium.crypto.signing import PROTOCOL_VERSION, Domain, Ed25519Signer
from consortium.ledger.genesis import Genesis
from consortium.ledger.tx import Put, Transaction
from consortium.protocol.framing import FrameReader, encode_frame
from tests.e2e.procs import cli

pytestmark = pytest.mark.e2e


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def _closed_by_peer(stream: trio.SocketStream) -> bool:
    """True when the member closes the connection (reads EOF or a reset) within 5 s."""
    with trio.fail_after(5):
        try:
            while await stream.receive_some(4096):
                pass
        except trio.BrokenResourceError:
            pass
    return True


async def _send_and_expect_close(addr: tuple[str, int], data: bytes) -> bool:
    async with await trio.open_tcp_stream(*addr) as stream:
        await stream.send_all(data)
        return await _closed_by_peer(stream)


async def _hello(genesis: Genesis, member: int, chain_id: bytes, claimed: int) -> list[object]:
    """Dial a member's peer port with a hello; return what it answers."""
    stream = await trio.open_tcp_stream(*_addr(genesis.members[member].peer_address))
    async with stream:
        await stream.send_all(
            encode_frame(
                pack(["hello", PROTOCOL_VERSION, chain_id, claimed, secrets.token_bytes(32)])
            )
        )
        reader = FrameReader(stream, 4096)
        with trio.fail_after(5):
            frame = await reader.read()
        assert frame is not None
        answer = unpack(frame)
        assert isinstance(answer, list)
        return answer


def test_bad_peer_and_client_input_is_refused_and_changes_nothing(
    network: LocalNetwork, tmp_path: Path
) -> None:
    setup = load_client_setup(network.directory)
    genesis = setup.genesis
    client_keys = setup.keys()[0]

    async def scenario() -> None:
        peer0 = _addr(genesis.members[0].peer_address)
        client0 = _addr(genesis.members[0].client_address)

        # Garbage on the peer port: the connection is closed, nothing else happens.
        assert await _send_and_expect_close(peer0, b"\x00\x00\x00\x05hello garbage")
        # An oversize frame header: refused before any body is read.
        assert await _send_and_expect_close(peer0, struct.pack(">I", 2**31))
        # A member index genesis does not list, and the wrong chain id: refused with a reason.
        answer = await _hello(genesis, 0, genesis.chain_id, 17)
        assert answer[0] == "refused" and "not in genesis" in str(answer[1])
        answer = await _hello(genesis, 0, b"\x01" * 32, 1)
        assert answer[0] == "refused" and "wrong chain id" in str(answer[1])
        # A peer claiming to be member 1 but holding another key cannot finish the handshake.
        stream = await trio.open_tcp_stream(*peer0)
        async with stream:
            nonce = secrets.token_bytes(32)
            await stream.send_all(
                encode_frame(pack(["hello", PROTOCOL_VERSION, genesis.chain_id, 1, nonce]))
            )
            reader = FrameReader(stream, 4096)
            ack = unpack_canonical((await reader.read()) or b"")
            forged = Ed25519Signer(KeyPair.generate()).sign(
                Domain.HANDSHAKE,
                genesis.chain_id,
                pack(["handshake", PROTOCOL_VERSION, ack[4], 1, 0, "dialer"]),
            )
            await stream.send_all(encode_frame(pack(["auth", forged])))
            assert await _closed_by_peer(stream)

        # Garbage and oversize frames on the client port close only that connection.
        assert await _send_and_expect_close(client0, b"\x00\x00\x00\x03\xc1\xc1\xc1")
        assert await _send_and_expect_close(client0, struct.pack(">I", 2**31))
        # An unknown method gets an error reply on a connection that stays open.
        s = await trio.open_tcp_stream(*client0)
        async with s:
            await s.send_all(encode_frame(pack(["frobnicate", 7])))
            reply = unpack((await FrameReader(s, 1 << 20).read()) or b"")
            assert reply[0] == 7 and reply[1] == "error" and "unknown method" in reply[2]

        async with ConsortiumClient(genesis, client_keys) as client:
            good = client.make_tx([Put(b"k", b"v1")])
            [first] = await client.submit_and_wait([good], timeout_s=15)
            assert first.status == "committed"

            # A bad client signature, another chain: rejected by f+1.
            bad_sig = replace(good, signature=bytes(64))
            other_chain = Transaction.create(
                client_keys, b"\x02" * 32, b"n", good.expiry_ms, [Put(b"k", b"x")]
            )
            stranger = Transaction.create(
                KeyPair.generate(), genesis.chain_id, b"n", good.expiry_ms, [Put(b"k", b"x")]
            )
            fresh = client.make_tx([Put(b"k", b"v2")])
            bad_sig_fresh = replace(fresh, signature=bytes(64))
            outcomes = await client.submit_and_wait([bad_sig_fresh, other_chain], timeout_s=15)
            assert [(o.status, o.reason) for o in outcomes] == [
                ("rejected", "bad_signature"),
                ("rejected", "wrong_chain"),
            ]
            # Over the size limit: the members cannot decode it, and say so for its position.
            big = client.make_tx([Put(b"big", b"x" * (genesis.params.tx_bytes_max + 1))])
            [oversize] = await client.submit_and_wait([big], timeout_s=15)
            assert oversize.status == "rejected", oversize
            assert oversize.reason.startswith("malformed: transaction body"), oversize
            assert oversize.confirmations >= genesis.f + 1, oversize
            # unknown_client is never final (a lagging member says it of a key admitted in a
            # block it has not executed yet): pending at the timeout, saying who reports it.
            [unknown] = await client.submit_and_wait([stranger], timeout_s=2)
            assert unknown.status == "pending", unknown
            assert "members report unknown_client" in unknown.reason, unknown
            # A replay of a committed id (even with a mangled signature) gets its FIRST receipt.
            [again] = await client.submit_and_wait([good], timeout_s=15)
            assert again.status == "committed"
            assert (again.height, again.block_hash) == (first.height, first.block_hash)
            [again_bad] = await client.submit_and_wait([bad_sig], timeout_s=15)
            assert (again_bad.status, again_bad.height) == ("committed", first.height)

            # Nothing changed: the key still holds v1 at a quorum, and members keep committing.
            assert await client.get(b"k", timeout_s=10) == b"v1"
            [later] = await client.submit_and_wait([fresh], timeout_s=15)
            assert later.status == "committed" and later.height is not None
            assert later.height > (first.height or 0)
            status = await client.status(0)
            transport = status["transport"]
            assert transport.get("handshake_unknown_member", 0) >= 1
            assert transport.get("handshake_wrong_chain", 0) >= 1
            assert transport.get("handshake_bad_handshake_signature", 0) >= 1
            assert status["metrics"]["rejected_at_submit"]["bad_signature"] >= 1

    trio.run(scenario)
    trio.run(wait_same_height, genesis, [0, 1, 2, 3], 20.0)
    network.stop()
    for home in network.homes:
        result = cli("ledger", "verify", "--home", str(home))
        assert result.returncode == 0, result.stdout + result.stderr


def _copy_ledger(home: Path, dest: Path) -> Path:
    src = sqlite3.connect(home / "data" / "ledger.sqlite")
    out = sqlite3.connect(dest)
    src.backup(out)
    src.close()
    out.close()
    return dest


def test_tampering_with_a_block_or_a_certificate_makes_verify_name_the_height(
    network: LocalNetwork, tmp_path: Path
) -> None:
    from consortium.cli.demo import drive

    setup = load_client_setup(network.directory)
    committed, _, _ = trio.run(drive, setup.genesis, setup.keys(), 200, False)
    assert committed == 200
    trio.run(wait_same_height, setup.genesis, [0, 1, 2, 3], 20.0)
    network.stop()
    home = network.homes[1]
    genesis_file = str(home / "config" / "genesis.json")

    clean = _copy_ledger(home, tmp_path / "clean.sqlite")
    ok = cli("ledger", "verify", "--db", str(clean), "--genesis", genesis_file)
    assert ok.returncode == 0, ok.stdout + ok.stderr

    # One byte of a stored transaction (its value) changed.
    body_tampered = _copy_ledger(home, tmp_path / "body.sqlite")
    db = sqlite3.connect(body_tampered)
    (body,) = db.execute("SELECT body FROM blocks WHERE height = 2").fetchone()
    body = bytearray(body)
    at = bytes(body).index(b"value")
    body[at] ^= 0x01
    db.execute("UPDATE blocks SET body = ? WHERE height = 2", (bytes(body),))
    db.commit()
    db.close()
    bad = cli("ledger", "verify", "--db", str(body_tampered), "--genesis", genesis_file)
    assert bad.returncode == 1
    assert "FAILED at height 2" in bad.stderr
    assert "Merkle root" in bad.stderr or "signature" in bad.stderr

    # One signature of a commit certificate changed.
    cert_tampered = _copy_ledger(home, tmp_path / "cert.sqlite")
    db = sqlite3.connect(cert_tampered)
    (cert,) = db.execute("SELECT certificate FROM blocks WHERE height = 3").fetchone()
    decoded = unpack(bytes(cert))
    sig = bytearray(decoded[4][1][1])
    sig[10] ^= 0x01
    decoded[4][1][1] = bytes(sig)
    db.execute("UPDATE blocks SET certificate = ? WHERE height = 3", (pack(decoded),))
    db.commit()
    db.close()
    bad = cli("ledger", "verify", "--db", str(cert_tampered), "--genesis", genesis_file)
    assert bad.returncode == 1
    assert "FAILED at height 3" in bad.stderr
    assert "bad signature" in bad.stderr


def test_a_committed_transaction_resubmitted_after_it_expired_gets_its_first_receipt(
    network: LocalNetwork,
) -> None:
    setup = load_client_setup(network.directory)

    async def scenario() -> None:
        async with ConsortiumClient(setup.genesis, setup.keys()[0]) as client:
            tx = client.make_tx([Put(b"short-lived", b"1")], expiry_s=1.0)
            [first] = await client.submit_and_wait([tx], timeout_s=15)
            assert first.status == "committed"
            await trio.sleep(1.5)  # now past its expiry on every member's clock
            [again] = await client.submit_and_wait([tx], timeout_s=15)
            assert again.status == "committed"
            assert (again.height, again.block_hash) == (first.height, first.block_hash)

    trio.run(scenario)
