"""Operator mistakes in a node's files are errors that name the file, the key and the fix."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from consortium.cli.network import (
    NetworkError,
    ephemeral_range,
    free_ports,
    init_network,
    load_client_setup,
    node_homes,
)
from consortium.crypto.keys import KeyPair
from consortium.ledger.genesis import Genesis
from consortium.node.config import ConfigError, config_path, load_config, load_identity


@pytest.fixture
def net(tmp_path: Path) -> Path:
    directory = tmp_path / "net"
    init_network(directory, members=4, clients=2)
    return directory


def test_init_writes_a_network_that_loads(net: Path) -> None:
    setup = load_client_setup(net)
    assert setup.genesis.n == 4 and setup.genesis.f == 1 and setup.genesis.quorum == 3
    assert len(setup.keys()) == 2
    homes = node_homes(net)
    assert [h.name for h in homes] == ["n1", "n2", "n3", "n4"]
    for i, home in enumerate(homes):
        identity = load_identity(home)
        assert identity.member.index == i
        assert (home / "config" / "node_key.pem").stat().st_mode & 0o777 == 0o600
        assert Genesis.load(home / "config" / "genesis.json").chain_id == setup.genesis.chain_id
    ports = [
        int(a.rsplit(":", 1)[1])
        for m in setup.genesis.members
        for a in (m.peer_address, m.client_address)
    ]
    assert len(set(ports)) == len(ports)


def test_init_refuses_to_overwrite_without_force(net: Path) -> None:
    from consortium.cli.network import NetworkError

    with pytest.raises(NetworkError, match="--force"):
        init_network(net, members=4)
    init_network(net, members=4, force=True)


def test_init_force_refuses_while_members_of_the_network_run(net: Path) -> None:
    """A running member holds its data directory's lock (node/datalock.py): `init --force`
    names it and deletes nothing, however broken the other members' node.toml."""
    import os

    from typer.testing import CliRunner

    from consortium.cli.main import app
    from consortium.cli.network import NetworkError
    from consortium.node.datalock import lock_data_dir

    config_path(net / "nodes" / "n3").write_text("not toml [")
    elsewhere = net / "elsewhere"
    n4 = config_path(net / "nodes" / "n4")
    n4.write_text(n4.read_text().replace('data_dir = "data"', f'data_dir = "{elsewhere}"'))
    assert load_config(net / "nodes" / "n4").data_dir == elsewhere
    running = [lock_data_dir(net / "nodes" / "n2" / "data"), lock_data_dir(elsewhere)]
    before = sorted(str(p) for p in net.rglob("*"))
    pid = os.getpid()
    message = (
        f"{net}: members of this network are running: n2 (process {pid}), n4 (process {pid}); "
        "stop them first (Ctrl-C in `consortium up`, or stop each `node start`); nothing was "
        "deleted"
    )
    with pytest.raises(NetworkError) as refused:
        init_network(net, members=4, force=True)
    assert str(refused.value) == message
    result = CliRunner().invoke(app, ["init", "--dir", str(net), "--force"])
    assert result.exit_code != 0
    assert result.output.strip().splitlines() == [f"error: {message}"]
    assert sorted(str(p) for p in net.rglob("*")) == before  # nothing deleted, nothing written
    for lock in running:
        lock.release()
    init_network(net, members=4, force=True)  # stopped: replaced


def test_unknown_key_in_node_toml_is_named(net: Path) -> None:
    home = net / "nodes" / "n1"
    path = config_path(home)
    path.write_text(path.read_text().replace("[listen]", "[listen]\nbogus = 1"))
    with pytest.raises(ConfigError, match=r"node\.toml: unknown key 'listen\.bogus'"):
        load_config(home)


def test_the_client_connections_per_source_limit_is_a_setting_in_range(net: Path) -> None:
    home = net / "nodes" / "n1"
    path = config_path(home)
    original = path.read_text()
    assert load_config(home).client_connections_per_source == 64  # unless set
    path.write_text(original + "\n[limits]\nclient_connections_per_source = 500\n")
    assert load_config(home).client_connections_per_source == 500
    for bad in ("0", "1025", "true", '"64"'):
        path.write_text(original + f"\n[limits]\nclient_connections_per_source = {bad}\n")
        with pytest.raises(ConfigError, match=r"'limits\.client_connections_per_source' must be"):
            load_config(home)
    path.write_text(original)


def test_unknown_section_and_bad_values_are_named(net: Path) -> None:
    home = net / "nodes" / "n1"
    path = config_path(home)
    original = path.read_text()
    path.write_text(original + "\n[metricz]\n")
    with pytest.raises(ConfigError, match=r"unknown section \[metricz\]"):
        load_config(home)
    path.write_text(original.replace('level = "info"', 'level = "loud"'))
    with pytest.raises(ConfigError, match=r"'log\.level' must be one of"):
        load_config(home)
    path.write_text(original.replace("127.0.0.1:", "127.0.0.1:x", 1))
    with pytest.raises(ConfigError, match=r"listen\.peer.*host:port"):
        load_config(home)
    path.write_text("not = [toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(home)


def test_init_writes_a_loopback_http_port_per_member_that_collides_with_nothing(
    net: Path,
) -> None:
    setup = load_client_setup(net)
    ports = [
        int(a.rsplit(":", 1)[1])
        for m in setup.genesis.members
        for a in (m.peer_address, m.client_address)
    ]
    for home in node_homes(net):
        http = load_config(home).http_listen
        assert http is not None and http[0] == "127.0.0.1"
        ports.append(http[1])
    assert len(set(ports)) == len(ports) == 12


def test_http_section_mistakes_are_named_with_the_fix(net: Path) -> None:
    home = net / "nodes" / "n1"
    path = config_path(home)
    original = path.read_text()
    assert "[http]" in original
    path.write_text(original.replace("[http]\n", "[http]\nport = 9301\n"))
    with pytest.raises(
        ConfigError, match=r"node\.toml: unknown key 'http\.port' \(known: explorer, listen\)"
    ):
        load_config(home)
    path.write_text(original.replace('listen = "127.0.0.1:', 'listen = "127.0.0.1:99999'))
    with pytest.raises(ConfigError, match=r"'http\.listen'.*port in 1\.\.65535"):
        load_config(home)
    cut = original[: original.index("[http]")]
    path.write_text(cut + "[http]\n")
    with pytest.raises(ConfigError, match=r"\[http\] needs 'http\.listen'.*remove the \[http\]"):
        load_config(home)
    path.write_text(cut)  # no section: no HTTP listener
    assert load_config(home).http_listen is None


def test_the_explorer_is_off_unless_http_explorer_is_true(net: Path) -> None:
    home = net / "nodes" / "n1"
    path = config_path(home)
    original = path.read_text()
    assert load_config(home).http_explorer is False
    path.write_text(original.replace("[http]\n", "[http]\nexplorer = true\n"))
    assert load_config(home).http_explorer is True
    for bad in ('"yes"', "1", '"true"'):
        path.write_text(original.replace("[http]\n", f"[http]\nexplorer = {bad}\n"))
        with pytest.raises(ConfigError) as caught:
            load_config(home)
        message = str(caught.value)
        assert "'http.explorer' must be true or false" in message and bad.strip('"') in message
        assert "\n" not in message


def test_a_key_that_is_not_the_members_key_is_refused(net: Path) -> None:
    home = net / "nodes" / "n1"
    key = home / "config" / "node_key.pem"
    key.unlink()
    KeyPair.generate().save(key)
    with pytest.raises(ConfigError, match=r"member 'n1' key does not match .*node_key\.pem"):
        load_identity(home)


def test_a_missing_key_is_never_generated(net: Path) -> None:
    home = net / "nodes" / "n2"
    (home / "config" / "node_key.pem").unlink()
    with pytest.raises(ConfigError, match="never generates its key"):
        load_identity(home)
    assert not (home / "config" / "node_key.pem").exists()


def test_a_name_not_in_genesis_is_refused(net: Path) -> None:
    home = net / "nodes" / "n3"
    path = config_path(home)
    path.write_text(path.read_text().replace('name = "n3"', 'name = "n9"'))
    with pytest.raises(ConfigError, match=r"'n9' is not a member"):
        load_identity(home)


def test_free_ports_are_distinct() -> None:
    ports = free_ports(16)
    assert len(set(ports)) == 16


def test_init_chooses_loopback_ports_outside_the_kernels_ephemeral_range(net: Path) -> None:
    first, last = ephemeral_range()
    genesis = load_client_setup(net).genesis
    addresses = [a for m in genesis.members for a in (m.peer_address, m.client_address)]
    addresses += [
        "{}:{}".format(*load_config(home).http_listen or ("", 0)) for home in node_homes(net)
    ]
    assert len(addresses) == 12
    for address in addresses:
        host, _, port = address.rpartition(":")
        assert host == "127.0.0.1"
        assert 10000 <= int(port) <= 65535 and not first <= int(port) <= last, address
    # Whatever the range says, and never a port in use: with 65526-65535 left, one held busy.
    window = range(65526, 65536)
    with socket.socket() as busy:
        for candidate in window:
            try:
                busy.bind(("127.0.0.1", candidate))
                break
            except OSError:
                continue
        taken = busy.getsockname()[1]
        assert taken in window
        for _ in range(10):
            chosen = free_ports(4, ephemeral=(10000, 65525))
            assert all(p in window for p in chosen) and taken not in chosen, (taken, chosen)


def test_the_ephemeral_range_is_read_from_the_kernel_file_or_defaults(tmp_path: Path) -> None:
    path = tmp_path / "ip_local_port_range"
    path.write_text("20000\t40000\n")
    assert ephemeral_range(path) == (20000, 40000)
    for text in ("garbage\n", "40000 20000\n", "1 70000\n"):
        path.write_text(text)
        assert ephemeral_range(path) == (32768, 60999)
    assert ephemeral_range(tmp_path / "missing") == (32768, 60999)
    with pytest.raises(NetworkError, match="ephemeral port range 1024-65535"):
        free_ports(1, ephemeral=(1024, 65535))


def test_init_writes_a_raft_network_of_three_by_default(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from consortium.cli.main import app

    runner = CliRunner()
    result = runner.invoke(app, ["init", "--dir", str(tmp_path / "r"), "--mode", "raft"])
    assert result.exit_code == 0, result.output
    genesis = load_client_setup(tmp_path / "r").genesis
    assert genesis.mode == "raft" and genesis.n == 3 and genesis.f == 1 and genesis.quorum == 2
    assert "raft network of 3 members (f=1, quorum 2)" in result.output
    bad = runner.invoke(app, ["init", "--dir", str(tmp_path / "x"), "--mode", "paxos"])
    assert bad.exit_code == 2 and "'--mode': 'paxos' is not one of pbft, raft" in bad.output


def test_leader_transfer_is_refused_in_pbft_with_the_reason(net: Path) -> None:
    from typer.testing import CliRunner

    from consortium.cli.main import app

    result = CliRunner().invoke(app, ["leader", "transfer", "--to", "n2", "--net", str(net)])
    assert result.exit_code == 2
    assert "leadership transfer is a raft operation" in result.output


def test_leader_transfer_signs_with_a_member_key_and_refuses_client_keys_in_one_line(
    tmp_path: Path,
) -> None:
    """A transfer stops the leader's proposals until it completes: members refuse one signed
    by a client key, and the CLI signs with a member's key (--home), saying in one line why
    it will not sign with a client's."""
    from typer.testing import CliRunner

    from consortium.cli.main import app

    directory = tmp_path / "r"
    init_network(directory, members=3, clients=1, mode="raft")
    runner = CliRunner()
    clients_only = tmp_path / "clients-only"
    clients_only.mkdir()
    for name in ("client.toml", "genesis.json"):
        (clients_only / name).write_bytes((directory / name).read_bytes())
    home = directory / "nodes" / "n1"
    client_key = load_client_setup(directory).key_paths[0]
    (home / "config" / "node_key.pem").write_bytes(client_key.read_bytes())
    for where in (["--net", str(clients_only)], ["--home", str(home)]):
        result = runner.invoke(app, ["leader", "transfer", "--to", "n2", *where])
        assert result.exit_code == 2, result.output
        assert result.output.startswith("error: ") and result.output.count("\n") == 1
        assert "never a client's" in result.output


# --- issue 16: node settings from the environment; files written by a TOML writer ---------


def test_environment_overrides_node_toml_typed_as_in_the_file(net: Path) -> None:
    home = net / "nodes" / "n1"
    before = load_config(home)
    env = {
        "CONSORTIUM_NODE_HTTP_LISTEN": "127.0.0.1:9399",
        "CONSORTIUM_NODE_LIMITS_CLIENT_CONNECTIONS_PER_SOURCE": "200",
        "CONSORTIUM_NODE_TLS_PEER": "true",
        "CONSORTIUM_NODE_LOG_LEVEL": "debug",
        "CONSORTIUM_NODE_NODE_DATA_DIR": "elsewhere",
        "CONSORTIUM_KEY_PASSPHRASE": "not a setting",  # its own name, left alone
        "PATH": "/bin",
    }
    config = load_config(home, env)
    assert config.http_listen == ("127.0.0.1", 9399)
    assert config.client_connections_per_source == 200
    assert config.tls_peer is True and config.tls_client is False
    assert config.log_level == "debug"
    assert config.data_dir == home / "elsewhere"
    assert config.peer_listen == before.peer_listen  # the rest as node.toml says
    assert dict(config.from_env) == {k: v for k, v in env.items() if "_NODE_" in k}
    assert load_config(home, {}).from_env == ()


def test_an_environment_override_turns_on_a_section_the_file_lacks(tmp_path: Path) -> None:
    init_network(tmp_path / "n", members=4, clients=1)
    home = tmp_path / "n" / "nodes" / "n2"
    text = config_path(home).read_text()
    config_path(home).write_text(text[: text.index("# GET /healthz")])  # no [http]
    assert load_config(home, {}).http_listen is None
    config = load_config(home, {"CONSORTIUM_NODE_HTTP_LISTEN": '"127.0.0.1:9400"'})
    assert config.http_listen == ("127.0.0.1", 9400)


def test_an_http_setting_from_the_environment_without_a_listener_names_its_variable(
    tmp_path: Path,
) -> None:
    """node.toml has no [http]: the error names the variable that made one, and what it needs,
    not a section the file does not have."""
    init_network(tmp_path / "n", members=4, clients=1)
    home = tmp_path / "n" / "nodes" / "n2"
    text = config_path(home).read_text()
    config_path(home).write_text(text[: text.index("# GET /healthz")])  # no [http]
    with pytest.raises(ConfigError) as err:
        load_config(home, {"CONSORTIUM_NODE_HTTP_EXPLORER": "true"})
    message = str(err.value)
    assert "\n" not in message
    assert "CONSORTIUM_NODE_HTTP_EXPLORER in the environment needs an HTTP listener" in message
    assert "'http.listen'" in message and "CONSORTIUM_NODE_HTTP_LISTEN" in message
    assert "remove the [http] section" not in message
    config = load_config(
        home,
        {"CONSORTIUM_NODE_HTTP_EXPLORER": "true", "CONSORTIUM_NODE_HTTP_LISTEN": "127.0.0.1:9400"},
    )
    assert config.http_explorer is True and config.http_listen == ("127.0.0.1", 9400)
    # An [http] without a listener in the file is the file's mistake, said as before.
    config_path(home).write_text(text[: text.index("# GET /healthz")] + "[http]\nexplorer = true\n")
    with pytest.raises(ConfigError, match=r"remove the \[http\] section") as err:
        load_config(home, {"CONSORTIUM_NODE_HTTP_EXPLORER": "true"})
    assert "in the environment" not in str(err.value)


def test_an_unknown_environment_setting_is_refused_naming_the_known_ones(net: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(net / "nodes" / "n1", {"CONSORTIUM_NODE_HTTP_LISTN": "127.0.0.1:1"})
    message = str(err.value)
    assert "\n" not in message
    assert "CONSORTIUM_NODE_HTTP_LISTN names no setting" in message
    assert "CONSORTIUM_NODE_HTTP_LISTEN" in message and "CONSORTIUM_NODE_LISTEN_CLIENT" in message
    assert "CONSORTIUM_KEY_PASSPHRASE" not in message


def test_a_bad_value_from_the_environment_names_the_variable(net: Path) -> None:
    home = net / "nodes" / "n1"
    with pytest.raises(ConfigError, match=r"\(set by CONSORTIUM_NODE_TLS_CLIENT in the env"):
        load_config(home, {"CONSORTIUM_NODE_TLS_CLIENT": "yes"})
    with pytest.raises(ConfigError, match=r"from 1 to 1024.*CONSORTIUM_NODE_LIMITS_CLIENT_CONN"):
        load_config(home, {"CONSORTIUM_NODE_LIMITS_CLIENT_CONNECTIONS_PER_SOURCE": "0"})
    with pytest.raises(ConfigError) as err:  # a mistake in the file is the file's
        config_path(home).write_text(config_path(home).read_text().replace("info", "loud"))
        load_config(home, {"CONSORTIUM_NODE_TLS_CLIENT": "true"})
    assert "log.level" in str(err.value) and "set by" not in str(err.value)


def test_every_setting_has_its_variable_and_the_docs_table_lists_them() -> None:
    from consortium.node.config import _SCHEMA, env_settings

    variables = env_settings()
    fixed = {(s, k) for s, keys in _SCHEMA.items() for k in keys}
    assert set(variables.values()) == fixed
    assert variables["CONSORTIUM_NODE_LIMITS_CLIENT_CONNECTIONS_PER_SOURCE"] == (
        "limits",
        "client_connections_per_source",
    )
    docs = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    for name, (section, key) in variables.items():
        assert f"| `{name}` | `{section}.{key}` |" in docs, name


def test_node_toml_is_written_commented_and_reads_back_the_same(tmp_path: Path) -> None:
    import tomllib

    from consortium.node.config import write_config

    home = tmp_path / 'h "quoted" \\ home'
    write_config(
        home,
        name='n"1',  # quotes and backslashes: written escaped, read back as given
        peer_listen="127.0.0.1:7101",
        client_listen="127.0.0.1:7201",
        data_dir='C:\\data "x"',
        log_level="warning",
        http_listen="127.0.0.1:9301",
        tls=True,
    )
    text = config_path(home).read_text()
    assert text.startswith("# Consortium node configuration")
    assert "Any setting\n# outside [peers] can be overridden" in text  # [peers] cannot be
    assert "# GET /healthz /readyz /status /metrics" in text and "# TLS 1.3, mutual" in text
    assert text.index("# GET /healthz") < text.index("[http]") < text.index("# TLS 1.3")
    assert tomllib.loads(text) == {
        "node": {"name": 'n"1', "data_dir": 'C:\\data "x"'},
        "listen": {"peer": "127.0.0.1:7101", "client": "127.0.0.1:7201"},
        "log": {"level": "warning", "format": "text"},
        "http": {"listen": "127.0.0.1:9301"},
        "tls": {"peer": True, "client": True},
    }
    config = load_config(home, {})
    assert (config.name, config.log_level, config.tls_peer, config.tls_client) == (
        'n"1',
        "warning",
        True,
        True,
    )
    assert config.data_dir == home / 'C:\\data "x"'


def test_client_toml_is_written_commented_and_reads_back_the_same(tmp_path: Path) -> None:
    import tomllib

    init_network(tmp_path / "t", members=4, clients=2, tls=True)
    text = (tmp_path / "t" / "client.toml").read_text()
    assert text.startswith("# Read by `consortium tx`")
    assert tomllib.loads(text) == {
        "genesis": "genesis.json",
        "keys": ["clients/c1.pem", "clients/c2.pem"],
        "tls": True,
    }
    setup = load_client_setup(tmp_path / "t")
    assert setup.tls and [p.name for p in setup.key_paths] == ["c1.pem", "c2.pem"]


def test_one_missing_client_key_breaks_only_what_uses_it(net: Path) -> None:
    (net / "clients" / "c1.pem").unlink()
    setup = load_client_setup(net)
    assert setup.key(2).public  # the other key still loads
    with pytest.raises(NetworkError, match=r"c1.pem: no such key file \(client key 1 of"):
        setup.key(1)
    with pytest.raises(NetworkError, match="no client key 3; 'keys' lists 2"):
        setup.key(3)
