"""Members on separate hosts: keygen on each, genesis assembled from their public keys and
addresses, init --hosts, node check, node backup; every operator mistake named with its fix."""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from consortium.cli.deployment import assemble_genesis, hosts_addresses, keygen, load_member
from consortium.cli.main import app
from consortium.cli.network import (
    NetworkError,
    free_ports,
    init_network,
    load_client_setup,
    node_homes,
)
from consortium.ledger.audit import audit_ledger
from consortium.ledger.backup import backup_store
from consortium.ledger.genesis import Genesis, GenesisError, parse_address
from consortium.ledger.store import LOST_STATE, RESTORED_BACKUP, BlockStore, StoreError
from consortium.node import preflight
from consortium.node.config import ConfigError, config_path, load_config, load_identity
from consortium.node.preflight import (
    NEW_MARK,
    check_data_dir,
    check_listen,
    open_store,
    recovery_on_start,
)
from tests.ledger.chain_fixture import ChainBuilder

runner = CliRunner()


def _keygen_all(root: Path, count: int = 4) -> list[Path]:
    homes = []
    for i in range(1, count + 1):
        home = root / f"h{i}"
        keygen(
            home,
            name=f"n{i}",
            peer_address=f"10.9.0.{i}:7101",
            client_address=f"10.9.0.{i}:7201",
        )
        homes.append(home)
    return homes


def test_keygen_then_genesis_gives_homes_that_load_once_genesis_is_copied(tmp_path: Path) -> None:
    homes = _keygen_all(tmp_path)
    genesis = assemble_genesis(tmp_path / "net", [h / "config" / "member.json" for h in homes])
    assert [m.name for m in genesis.members] == ["n1", "n2", "n3", "n4"]
    assert genesis.members[2].peer_address == "10.9.0.3:7101"
    assert (genesis.n, genesis.f, genesis.quorum) == (4, 1, 3)
    setup = load_client_setup(tmp_path / "net")
    assert setup.genesis.chain_id == genesis.chain_id and len(setup.keys()) == 3
    for i, home in enumerate(homes):
        key = home / "config" / "node_key.pem"
        assert key.stat().st_mode & 0o777 == 0o600
        member = load_member(home)  # a home directory works as well as its member.json
        assert member.public_key == genesis.members[i].public_key
        config = load_config(home)
        assert config.peer_listen == (f"10.9.0.{i + 1}", 7101)
        with pytest.raises(ConfigError, match="no genesis file; copy the network's genesis"):
            load_identity(home)
        shutil.copy(tmp_path / "net" / "genesis.json", home / "config" / "genesis.json")
        assert load_identity(home).member.index == i


def test_keygen_never_replaces_a_key_and_refuses_bad_names_and_addresses(tmp_path: Path) -> None:
    home = tmp_path / "h1"
    keygen(home, name="n1", peer_address="10.9.0.1:7101", client_address="10.9.0.1:7201")
    key = (home / "config" / "node_key.pem").read_bytes()
    with pytest.raises(NetworkError, match="keygen never replaces it"):
        keygen(home, name="n1", peer_address="10.9.0.1:7101", client_address="10.9.0.1:7201")
    assert (home / "config" / "node_key.pem").read_bytes() == key
    cases = [
        ({"name": "n 1"}, "is not a member name"),
        ({"peer_address": "10.9.0.2"}, "not 'host:port'"),
        ({"peer_address": "0.0.0.0:7101"}, "means 'listen on every interface'"),
        ({"peer_address": "http://10.9.0.2:7101"}, "no scheme or path"),
        ({"client_address": "10.9.0.300:7201"}, "is not an IPv4 address"),
        ({"client_address": "fd00::2:7201"}, r"IPv6 address in brackets, e.g. \[fd00::2\]"),
        ({"client_address": "10.9.0.2:7101"}, "use two ports"),
    ]
    for change, message in cases:
        args = {"name": "n2", "peer_address": "10.9.0.2:7101", "client_address": "10.9.0.2:7201"}
        args.update(change)
        with pytest.raises(NetworkError, match=message):
            keygen(tmp_path / "h2", **args)
        assert not (tmp_path / "h2" / "config" / "node_key.pem").exists()


def test_keygen_can_listen_on_all_interfaces_while_genesis_names_the_host(tmp_path: Path) -> None:
    home = tmp_path / "h1"
    keygen(
        home,
        name="n1",
        peer_address="[fd00::1]:7101",
        client_address="node1.example.org:7201",
        listen_host="0.0.0.0",
    )
    config = load_config(home)
    assert config.peer_listen == ("0.0.0.0", 7101)
    assert config.client_listen == ("0.0.0.0", 7201)
    assert load_member(home).peer_address == "[fd00::1]:7101"
    assert parse_address("[fd00::1]:7101", "x") == ("fd00::1", 7101)


def test_genesis_refuses_duplicate_members_and_unreadable_member_files(tmp_path: Path) -> None:
    homes = _keygen_all(tmp_path)
    out = tmp_path / "net"
    with pytest.raises(NetworkError, match="is given twice"):
        assemble_genesis(out, [homes[0], homes[1], homes[2], homes[0]])
    twin = tmp_path / "twin.json"
    doc = json.loads((homes[0] / "config" / "member.json").read_text())
    twin.write_text(json.dumps({**doc, "name": "n9"}))
    with pytest.raises(NetworkError, match="give the same public key"):
        assemble_genesis(out, [*homes[:3], twin])
    clash = json.loads((homes[3] / "config" / "member.json").read_text())
    twin.write_text(json.dumps({**clash, "peer_address": "10.9.0.1:7101"}))
    with pytest.raises(NetworkError, match=r"the same address 10.9.0.1:7101"):
        assemble_genesis(out, [*homes[:3], twin])
    twin.write_text(json.dumps({**clash, "colour": "red"}))
    with pytest.raises(NetworkError, match=r"twin\.json: unknown key 'colour'"):
        assemble_genesis(out, [*homes[:3], twin])
    with pytest.raises(NetworkError, match=r"cannot read member file .* keygen"):
        assemble_genesis(out, [*homes[:3], tmp_path / "missing.json"])
    with pytest.raises(NetworkError, match="pbft needs at least 4 members"):
        assemble_genesis(out, homes[:3])
    assert not (out / "genesis.json").exists()
    assemble_genesis(out, homes[:3], mode="raft")
    with pytest.raises(NetworkError, match=r"already exists.*--force"):
        assemble_genesis(out, homes)
    assert assemble_genesis(out, homes, force=True).n == 4


def test_a_key_not_in_genesis_and_another_members_key_are_named(tmp_path: Path) -> None:
    homes = _keygen_all(tmp_path)
    assemble_genesis(tmp_path / "net", homes)
    for home in homes:
        shutil.copy(tmp_path / "net" / "genesis.json", home / "config" / "genesis.json")
    # n1 regenerated its home after genesis was assembled: its new key is in no genesis.
    shutil.rmtree(homes[0])
    keygen(homes[0], name="n1", peer_address="10.9.0.1:7101", client_address="10.9.0.1:7201")
    shutil.copy(tmp_path / "net" / "genesis.json", homes[0] / "config" / "genesis.json")
    with pytest.raises(
        ConfigError, match=r"not in this genesis at all.*consortium genesis --member"
    ):
        load_identity(homes[0])
    # n2's key copied into n3's home: named as n2's, with the fix.
    shutil.copy(homes[1] / "config" / "node_key.pem", homes[2] / "config" / "node_key.pem")
    with pytest.raises(ConfigError, match=r"is the key of member 'n2'.*set node\.name = \"n2\""):
        load_identity(homes[2])


def test_init_hosts_writes_each_member_at_its_host_with_fixed_ports(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "init",
            "--dir",
            str(tmp_path / "net"),
            "--hosts",
            "10.9.0.1,10.9.0.2,10.9.0.3",
            "--mode",
            "raft",
            "--peer-port",
            "8101",
            "--client-port",
            "8201",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "copy" in result.output and "node start --home" in result.output
    genesis = Genesis.load(tmp_path / "net" / "genesis.json")
    assert [m.peer_address for m in genesis.members] == [
        "10.9.0.1:8101",
        "10.9.0.2:8101",
        "10.9.0.3:8101",
    ]
    assert [m.client_address for m in genesis.members][2] == "10.9.0.3:8201"
    config = load_config(tmp_path / "net" / "nodes" / "n2")
    assert config.peer_listen == ("10.9.0.2", 8101)
    assert load_identity(tmp_path / "net" / "nodes" / "n3").member.index == 2


def test_init_hosts_errors_and_shared_hosts(tmp_path: Path) -> None:
    assert hosts_addresses(["a.example", "a.example"], 7101, 7201) == [
        ("a.example:7101", "a.example:7201"),
        ("a.example:7102", "a.example:7202"),
    ]
    with pytest.raises(NetworkError, match="too close"):
        hosts_addresses(["h"] * 4, 7101, 7103)
    bad = runner.invoke(app, ["init", "--dir", str(tmp_path / "x"), "--hosts", "10.9.0.1,10.9.0"])
    assert bad.exit_code == 2 and "'10.9.0' is not an IPv4 address" in bad.output
    bad = runner.invoke(
        app,
        ["init", "--dir", str(tmp_path / "x"), "--hosts", "a,b,c,d", "--members", "7"],
    )
    assert bad.exit_code == 2 and "--members 7 but --hosts names 4 hosts" in bad.output
    bad = runner.invoke(app, ["init", "--dir", str(tmp_path / "x"), "--listen-host", "0.0.0.0"])
    assert bad.exit_code == 2 and "--listen-host goes with --hosts" in bad.output
    ok = runner.invoke(
        app,
        [
            "init",
            "--dir",
            str(tmp_path / "y"),
            "--hosts",
            "10.9.0.1,10.9.0.2,10.9.0.3,10.9.0.4",
            "--listen-host",
            "0.0.0.0",
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert load_config(tmp_path / "y" / "nodes" / "n4").client_listen == ("0.0.0.0", 7201)


def test_the_cli_flow_on_one_machine_ends_in_homes_that_pass_node_check(tmp_path: Path) -> None:
    ports = free_ports(8)
    homes = []
    for i in range(4):
        home = tmp_path / f"n{i + 1}"
        result = runner.invoke(
            app,
            [
                "keygen",
                "--home",
                str(home),
                "--name",
                f"n{i + 1}",
                "--peer",
                f"127.0.0.1:{ports[2 * i]}",
                "--client",
                f"127.0.0.1:{ports[2 * i + 1]}",
            ],
        )
        assert result.exit_code == 0, result.output
        assert "send this file to whoever assembles genesis" in result.output
        homes.append(home)
    args = ["genesis", "--dir", str(tmp_path / "net")]
    for home in homes:
        args += ["--member", str(home / "config" / "member.json")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "pbft network 'consortium' of 4 members (f=1, quorum 3)" in result.output
    check = runner.invoke(app, ["node", "check", "--home", str(homes[0]), "--timeout", "2"])
    assert check.exit_code == 1 and "no genesis file" in check.output
    for home in homes:
        shutil.copy(tmp_path / "net" / "genesis.json", home / "config" / "genesis.json")
    check = runner.invoke(app, ["node", "check", "--home", str(homes[0]), "--timeout", "2"])
    assert check.exit_code == 0, check.output
    assert "ok   config, key and genesis: member n1 (1 of 4)" in check.output
    assert "ok   data directory" in check.output and "empty" in check.output
    assert "ok   listen addresses can be bound" in check.output
    assert f"warn peer n2 at 127.0.0.1:{ports[2]}: connection refused" in check.output
    assert "0 of 3 peers reachable; this member needs 2 of them" in check.output


def test_listen_preflight_names_the_key_and_the_fix(tmp_path: Path) -> None:
    home = tmp_path / "h1"
    port = free_ports(1)[0]
    keygen(home, name="n1", peer_address="127.0.0.1:7101", client_address=f"127.0.0.1:{port}")
    path = config_path(home)
    # An address that is on no interface of this host (TEST-NET-3, never routed).
    path.write_text(path.read_text().replace("127.0.0.1:7101", "203.0.113.7:7101"))
    with pytest.raises(ConfigError, match=r"'listen\.peer' 203\.0\.113\.7:7101: not an address of"):
        check_listen(load_config(home))
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        busy = taken.getsockname()[1]
        path.write_text(path.read_text().replace("203.0.113.7:7101", f"127.0.0.1:{busy}"))
        with pytest.raises(ConfigError, match=r"'listen\.peer' .*port already in use"):
            check_listen(load_config(home))
    finally:
        taken.close()


# Review 2 of issue 6: the [http] listener is not preflighted (failing test).
def test_an_http_listen_port_in_use_is_named_like_the_other_listen_addresses(
    tmp_path: Path,
) -> None:
    """preflight.check_listen checks listen.peer and listen.client only. With [http] listen
    on a port another program holds, `node check` prints 'ok   listen addresses can be bound'
    and `node start` dies with a trio ExceptionGroup traceback (exit 1, which the systemd
    unit restarts every 2 s) instead of "'http.listen' ...: port already in use" (exit 2)."""
    home = tmp_path / "h1"
    peer, client = free_ports(2)
    keygen(home, name="n1", peer_address=f"127.0.0.1:{peer}", client_address=f"127.0.0.1:{client}")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        busy = taken.getsockname()[1]
        path = config_path(home)
        path.write_text(path.read_text() + f'\n[http]\nlisten = "127.0.0.1:{busy}"\n')
        with pytest.raises(ConfigError, match=r"'http\.listen' .*port already in use"):
            check_listen(load_config(home))
    finally:
        taken.close()


def test_a_data_dir_of_another_network_is_refused_before_start(tmp_path: Path) -> None:
    homes = _keygen_all(tmp_path)
    first = assemble_genesis(tmp_path / "a", homes)
    second = assemble_genesis(tmp_path / "b", homes, chain_name="other")
    config = load_config(homes[0])
    assert not check_data_dir(config, first).exists
    BlockStore.open(config.store_path, first).close()
    assert check_data_dir(config, first).height == 0
    with pytest.raises(ConfigError, match=r"belongs to network .*move the old data directory"):
        check_data_dir(config, second)
    shutil.copy(tmp_path / "b" / "genesis.json", homes[0] / "config" / "genesis.json")
    result = runner.invoke(app, ["node", "start", "--home", str(homes[0])])
    assert result.exit_code == 2 and "data directory belongs to network" in result.output


def test_node_check_names_a_store_format_newer_than_it_reads(tmp_path: Path) -> None:
    """(not "damaged, refetch": a newer release wrote it, and an older one is running)"""
    homes = _keygen_all(tmp_path)
    genesis = assemble_genesis(tmp_path / "a", homes)
    config = load_config(homes[0])
    BlockStore.open(config.store_path, genesis).close()
    check_data_dir(config, genesis, tables=True)  # clean
    db = sqlite3.connect(config.store_path)
    db.execute("UPDATE meta SET value = value + 1 WHERE key = 'schema'")
    db.commit()
    db.close()
    with pytest.raises(ConfigError, match=r"of format \d+, newer than this release reads"):
        check_data_dir(config, genesis, tables=True)


def test_backup_of_an_open_store_includes_commits_still_in_the_wal(tmp_path: Path) -> None:
    chain = ChainBuilder()
    for _ in range(6):
        chain.add_puts(3)
    live = tmp_path / "ledger.sqlite"
    store = BlockStore.open(live, chain.genesis)
    try:
        store.append_blocks(chain.blocks[:4])
        wal = tmp_path / "ledger.sqlite-wal"
        assert wal.stat().st_size > 0  # the last commits are in the WAL, not the main file
        naive = tmp_path / "naive.sqlite"
        shutil.copy(live, naive)  # what `cp ledger.sqlite` gets while the node runs
        copied = BlockStore.open(naive, chain.genesis)
        naive_height = copied.height
        copied.close()
        assert naive_height < 4

        result = backup_store(live, tmp_path / "backup.sqlite", chain.genesis)
        assert result.height == 4 and result.head_hash == store.head.hash
        store.append_blocks(chain.blocks[4:])  # the node keeps committing
        assert store.height == 6
        with pytest.raises(StoreError, match="already exists; back up to a new file"):
            backup_store(live, tmp_path / "backup.sqlite", chain.genesis)
    finally:
        store.close()
    report = audit_ledger(tmp_path / "backup.sqlite", chain.genesis)
    assert report.ok, report
    assert not (tmp_path / "backup.sqlite.partial").exists()
    with pytest.raises(StoreError, match="no block store to back up"):
        backup_store(tmp_path / "none.sqlite", tmp_path / "b2.sqlite", chain.genesis)


def test_node_backup_cli_copies_a_members_ledger(tmp_path: Path) -> None:
    homes = _keygen_all(tmp_path)
    genesis = assemble_genesis(tmp_path / "net", homes)
    shutil.copy(tmp_path / "net" / "genesis.json", homes[0] / "config" / "genesis.json")
    config = load_config(homes[0])
    BlockStore.open(config.store_path, genesis).close()
    out = tmp_path / "n1-backup.sqlite"
    result = runner.invoke(app, ["node", "backup", "--home", str(homes[0]), "--to", str(out)])
    assert result.exit_code == 0, result.output
    assert "height 0" in result.output and "verified" in result.output
    again = runner.invoke(app, ["node", "backup", "--home", str(homes[0]), "--to", str(out)])
    assert again.exit_code == 1 and "already exists" in again.output


def test_genesis_addresses_are_checked_on_load(tmp_path: Path) -> None:
    homes = _keygen_all(tmp_path)
    assemble_genesis(tmp_path / "net", homes)
    path = tmp_path / "net" / "genesis.json"
    doc = json.loads(path.read_text())
    doc["members"][1]["peer_address"] = "0.0.0.0:7101"
    path.write_text(json.dumps(doc))
    with pytest.raises(GenesisError, match=r"members\[1\]: 'peer_address'.*every interface"):
        Genesis.load(path)


def test_a_backup_is_marked_as_restored_and_the_mark_survives_the_restore_procedure(
    tmp_path: Path,
) -> None:
    homes = _keygen_all(tmp_path)
    genesis = assemble_genesis(tmp_path / "net", homes)
    shutil.copy(tmp_path / "net" / "genesis.json", homes[0] / "config" / "genesis.json")
    config = load_config(homes[0])
    BlockStore.open(config.store_path, genesis).close()
    backup = tmp_path / "n1-backup.sqlite"
    made = runner.invoke(app, ["node", "backup", "--home", str(homes[0]), "--to", str(backup)])
    assert made.exit_code == 0 and "marked as a restored backup" in made.output, made.output
    live = BlockStore.open(config.store_path, genesis)
    assert live.recovery_mark() is None  # only the copy is marked
    live.close()
    assert check_data_dir(config, genesis).recovering is None
    # docs/operations.md, Restoring: move data/ away, make an empty one, copy the backup in.
    shutil.move(config.data_dir, tmp_path / "data.broken")
    config.data_dir.mkdir()
    shutil.copy(backup, config.store_path)
    assert check_data_dir(config, genesis).recovering == RESTORED_BACKUP
    checked = runner.invoke(app, ["node", "check", "--home", str(homes[0]), "--timeout", "0.1"])
    assert f"note it starts in recovery from {RESTORED_BACKUP}" in checked.output
    restored = BlockStore.open(config.store_path, genesis)
    try:
        assert recovery_on_start(config.data_dir, restored) == RESTORED_BACKUP
    finally:
        restored.close()


def test_init_and_keygen_mark_a_new_data_directory_and_an_unmarked_empty_one_has_lost_state(
    tmp_path: Path,
) -> None:
    homes = _keygen_all(tmp_path)
    genesis = assemble_genesis(tmp_path / "net", homes)
    config = load_config(homes[0])
    assert (config.data_dir / NEW_MARK).exists()
    assert check_data_dir(config, genesis).recovering is None
    store, recovering = open_store(config, genesis)
    try:
        # The first start: no recovery, and the new-member mark goes once the store exists.
        assert recovering is None and store.recovery_mark() is None
        assert not (config.data_dir / NEW_MARK).exists()
    finally:
        store.close()
    # The same member later loses its data directory: an empty one has no mark any more.
    shutil.rmtree(config.data_dir)
    config.data_dir.mkdir()
    assert check_data_dir(config, genesis).recovering == LOST_STATE
    store, recovering = open_store(config, genesis)
    try:
        assert recovering == LOST_STATE
    finally:
        store.close()
    # The mark is in the store, durably: a crash now restarts in recovery too.
    assert check_data_dir(config, genesis).recovering == LOST_STATE
    net = tmp_path / "init"
    init_network(net, members=4, clients=1)
    assert all((home / "data" / NEW_MARK).exists() for home in node_homes(net))


def test_a_member_that_lost_its_state_and_died_before_marking_its_new_store_still_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lost-state mark goes into the store in a write after BlockStore.open created it,
    and whether to write it is decided by whether the store file existed before the start. A
    process killed between the two (kill -9, power loss: an unlucky operator's second try)
    leaves a store with no mark in a data directory with no new-member mark, and the next
    start is a normal one: the member votes again with none of its old records."""
    homes = _keygen_all(tmp_path)
    genesis = assemble_genesis(tmp_path / "net", homes)
    config = load_config(homes[0])
    BlockStore.open(config.store_path, genesis).close()
    (config.data_dir / NEW_MARK).unlink()  # it ran once ...
    shutil.rmtree(config.data_dir)  # ... and lost its data directory
    config.data_dir.mkdir()

    # The first start after the loss creates its store (as a start does: open_store) and is
    # killed as soon as the store is open, before the rest of the start runs.
    def killed(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(preflight, "recovery_on_start", killed)
    with pytest.raises(KeyboardInterrupt):
        open_store(config, genesis)
    monkeypatch.undo()
    assert check_data_dir(config, genesis).recovering == LOST_STATE
    store = BlockStore.open(config.store_path, genesis)
    try:
        assert recovery_on_start(config.data_dir, store) == LOST_STATE
    finally:
        store.close()
