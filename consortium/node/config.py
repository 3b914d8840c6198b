"""Node configuration: `<home>/config/node.toml`, next to `node_key.pem` and `genesis.json`.

    [node]
    name = "n1"                     # this member's name in genesis.json
    data_dir = "data"               # relative to the home directory
    [listen]
    peer = "127.0.0.1:7101"         # where other members dial us
    client = "127.0.0.1:7201"       # where clients connect
    [peers]                         # optional: member name -> "host:port", overriding genesis
    n2 = "10.0.0.2:7101"
    [log]
    level = "info"                  # debug | info | warning | error
    format = "text"                 # text | json
    [http]                          # optional: health, readiness, status and metrics
    listen = "127.0.0.1:9301"       # GET /healthz /readyz /status /metrics (no TLS, no auth:
                                    # keep it on loopback or a monitoring network)
    explorer = false                # true: the read-only browser explorer at /explorer/ (it
                                    # shows ledger contents to whoever reaches the port)
    [gateway]                       # optional: the HTTP/JSON gateway (docs/gateway.md)
    listen = "127.0.0.1:7301"       # where HTTP clients connect: the client port's requests
                                    # as JSON, through the same handler, limits and budgets
    [limits]                        # optional
    client_connections_per_source = 64  # client connections from one address (1 to 1024):
                                    # raise it for many clients behind one NAT or host
    [tls]                           # optional, docs/tls.md: TLS 1.3, mutual, genesis keys pinned
    peer = true                     # between members: every member must agree
    client = true                   # on the client port: clients set tls = true in client.toml
    gateway = true                  # HTTPS on the gateway, with the client port's pin (clients
                                    # present a certificate for an admitted key)

Unknown sections or keys and bad values are errors that name the file, the key and the fix.

Any setting outside [peers] can be overridden from the environment, for containers and unit
files that template one node.toml: CONSORTIUM_NODE_<SECTION>_<KEY> in capitals (node.toml's
`listen.client` is CONSORTIUM_NODE_LISTEN_CLIENT), applied over the file when the member loads
it (env_overrides). An unknown CONSORTIUM_NODE_* variable is refused, as an unknown key in the
file is: a misspelt override would otherwise be silently ignored. CONSORTIUM_KEY_PASSPHRASE is
no setting and keeps its own name. docs/operations.md has the table.

A node never generates its key: it loads config/node_key.pem and refuses to run unless that key is
the one genesis lists for the configured member.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consortium.crypto.keys import InvalidKeyError, KeyPair
from consortium.ledger.genesis import Genesis, GenesisError, Member, parse_address
from consortium.node.genesis import load_genesis


class ConfigError(ValueError):
    """An operator mistake in the node's files; the message names the file, key and fix."""


LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")

_SCHEMA: dict[str, set[str]] = {
    "node": {"name", "data_dir"},
    "listen": {"peer", "client"},
    "peers": set(),  # free-form: member name -> address
    "log": {"level", "format"},
    "http": {"listen", "explorer"},
    "gateway": {"listen"},
    "tls": {"peer", "client", "gateway"},
    "limits": {"client_connections_per_source"},
}
CLIENT_CONNECTIONS_MAX = 1024  # a member's client connections in all (client_port.py)


@dataclass(frozen=True, slots=True)
class NodeConfig:
    home: Path
    name: str
    data_dir: Path
    peer_listen: tuple[str, int]
    client_listen: tuple[str, int]
    peers: dict[str, tuple[str, int]] = field(default_factory=dict)
    log_level: str = "info"
    log_format: str = "text"
    http_listen: tuple[str, int] | None = None  # None: no HTTP listener
    http_explorer: bool = False  # the browser explorer on the HTTP listener (node/explorer)
    tls_peer: bool = False
    tls_client: bool = False
    client_connections_per_source: int = 64
    gateway_listen: tuple[str, int] | None = None  # None: no gateway (node/gateway)
    tls_gateway: bool = False
    # The settings the environment gave (variable, value), in the order applied: logged once
    # it runs, so the log says what the member runs with that node.toml does not.
    from_env: tuple[tuple[str, str], ...] = ()

    @property
    def config_dir(self) -> Path:
        return self.home / "config"

    @property
    def genesis_path(self) -> Path:
        return self.config_dir / "genesis.json"

    @property
    def key_path(self) -> Path:
        return self.config_dir / "node_key.pem"

    @property
    def store_path(self) -> Path:
        return self.data_dir / "ledger.sqlite"


def config_path(home: Path) -> Path:
    return home / "config" / "node.toml"


ENV_PREFIX = "CONSORTIUM_NODE_"

# The settings whose value is text: an environment value is taken as written ("n1",
# 127.0.0.1:9301). Every other setting's is read as a TOML value (true, 64), so it is typed as
# in node.toml.
_TEXT_SETTINGS = {
    ("node", "name"),
    ("node", "data_dir"),
    ("listen", "peer"),
    ("listen", "client"),
    ("log", "level"),
    ("log", "format"),
    ("http", "listen"),
    ("gateway", "listen"),
}


def env_settings() -> dict[str, tuple[str, str]]:
    """Each environment variable that overrides a setting: name -> (section, key). Every
    fixed key of node.toml has one; [peers] (whose keys are member names) has none."""
    return {
        f"{ENV_PREFIX}{section}_{key}".upper(): (section, key)
        for section, keys in _SCHEMA.items()
        for key in sorted(keys)
    }


def env_overrides(
    path: Path, environ: Mapping[str, str] | None = None
) -> list[tuple[str, str, str, Any]]:
    """The CONSORTIUM_NODE_* variables of `environ` (default: this process's environment) as
    (variable, section, key, value), the value typed as node.toml would type it; ConfigError,
    in one line naming the known variables, for one that names no setting."""
    environ = os.environ if environ is None else environ
    known = env_settings()
    found: list[tuple[str, str, str, Any]] = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        if name not in known:
            raise ConfigError(
                f"environment variable {name} names no setting of {path} "
                f"(known: {', '.join(known)})"
            )
        section, key = known[name]
        found.append(
            (name, section, key, _env_value(environ[name], (section, key) in _TEXT_SETTINGS))
        )
    return found


def _env_value(text: str, is_text: bool) -> Any:
    """A setting's value from the environment: text as written (or a quoted TOML string);
    anything else as a TOML value, or as written if it is none (the check then says what the
    setting takes)."""
    if is_text and not text.startswith('"'):
        return text
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def load_config(home: Path, environ: Mapping[str, str] | None = None) -> NodeConfig:
    """node.toml under `home`, with the environment's overrides (env_overrides) applied."""
    path = config_path(home)
    env = os.environ if environ is None else environ
    overrides = env_overrides(path, env)
    try:
        config = _load_config(home, path, overrides)
    except ConfigError as exc:
        # A bad value that came from the environment: say so, the file does not hold it.
        message = str(exc)
        named = [v for v, section, key, _ in overrides if f"'{section}.{key}'" in message]
        if not named:
            raise
        raise ConfigError(f"{message} (set by {', '.join(named)} in the environment)") from None
    if not overrides:
        return config
    from dataclasses import replace

    return replace(config, from_env=tuple((name, env[name]) for name, *_ in overrides))


def _load_config(home: Path, path: Path, overrides: list[tuple[str, str, str, Any]]) -> NodeConfig:
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x}); "
            "node.toml is UTF-8 TOML"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read node config ({exc.strerror}); is --home the node's home "
            "directory (the one holding config/node.toml)?"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    in_file = set(doc)  # (a section only the environment makes: its errors name variables)
    for _, section, key, value in overrides:
        table = doc.setdefault(section, {})
        if isinstance(table, dict):  # (not a table: the check below names the file's mistake)
            table[key] = value
    for section, value in doc.items():
        if section not in _SCHEMA:
            raise ConfigError(
                f"{path}: unknown section [{section}] (known: {', '.join(sorted(_SCHEMA))})"
            )
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: '{section}' must be a [section]")
        allowed = _SCHEMA[section]
        if allowed:
            for key in value:
                if key not in allowed:
                    raise ConfigError(
                        f"{path}: unknown key '{section}.{key}' "
                        f"(known: {', '.join(sorted(allowed))})"
                    )
    node = doc.get("node", {})
    name = node.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{path}: 'node.name' must be this member's name in genesis.json")
    data_dir_text = node.get("data_dir", "data")
    if not isinstance(data_dir_text, str) or not data_dir_text:
        raise ConfigError(f"{path}: 'node.data_dir' must be a path")
    data_dir = Path(data_dir_text)
    if not data_dir.is_absolute():
        data_dir = home / data_dir
    listen = doc.get("listen", {})
    peer_listen = _address(listen, "peer", path, "listen")
    client_listen = _address(listen, "client", path, "listen")
    peers: dict[str, tuple[str, int]] = {}
    for peer_name in doc.get("peers", {}):
        peers[peer_name] = _address(doc["peers"], peer_name, path, "peers")
    log = doc.get("log", {})
    level = log.get("level", "info")
    if level not in LOG_LEVELS:
        raise ConfigError(f"{path}: 'log.level' must be one of {', '.join(LOG_LEVELS)}")
    fmt = log.get("format", "text")
    if fmt not in LOG_FORMATS:
        raise ConfigError(f"{path}: 'log.format' must be one of {', '.join(LOG_FORMATS)}")
    http = doc.get("http")
    http_listen = None
    if http is not None:
        if "listen" not in http and "http" not in in_file:
            # node.toml has no [http]: the environment made it, without a listener.
            named = [name for name, section, _, _ in overrides if section == "http"]
            raise ConfigError(
                f"{path}: {' and '.join(named)} in the environment needs an HTTP listener, "
                "and node.toml has no [http] section: set 'http.listen' there (e.g. "
                'listen = "127.0.0.1:9301") or CONSORTIUM_NODE_HTTP_LISTEN'
            )
        if "listen" not in http:
            raise ConfigError(
                f"{path}: [http] needs 'http.listen' (e.g. listen = \"127.0.0.1:9301\"); "
                "remove the [http] section to run without the HTTP listener"
            )
        http_listen = _address(http, "listen", path, "http")
    explorer = (http or {}).get("explorer", False)
    if not isinstance(explorer, bool):
        raise ConfigError(
            f"{path}: 'http.explorer' must be true or false (the browser explorer on the HTTP "
            f"port), not {explorer!r}"
        )
    gateway = doc.get("gateway")
    gateway_listen = None
    if gateway is not None:
        if "listen" not in gateway:
            raise ConfigError(
                f"{path}: [gateway] needs 'gateway.listen' (e.g. listen = \"127.0.0.1:7301\"); "
                "remove the [gateway] section to run without the HTTP gateway"
            )
        gateway_listen = _address(gateway, "listen", path, "gateway")
    listeners = [("listen.peer", peer_listen), ("listen.client", client_listen)]
    if http_listen is not None:
        listeners.append(("http.listen", http_listen))
    if gateway_listen is not None:
        listeners.append(("gateway.listen", gateway_listen))
    for i, (first, a) in enumerate(listeners):
        for second, b in listeners[i + 1 :]:
            if _same_port(a, b):
                raise ConfigError(
                    f"{path}: '{first}' and '{second}' are both port {a[1]}: each listener "
                    "needs a port of its own"
                )
    tls = doc.get("tls", {})
    tls_on: dict[str, bool] = {}
    if tls.get("gateway") is True and gateway_listen is None:
        raise ConfigError(
            f"{path}: 'tls.gateway' is true but there is no gateway: add [gateway] with "
            'listen = "host:port", or remove tls.gateway'
        )
    for key in ("peer", "client", "gateway"):
        value = tls.get(key, False)
        if not isinstance(value, bool):
            raise ConfigError(
                f"{path}: 'tls.{key}' must be true or false (TLS on the {key} port), not {value!r}"
            )
        tls_on[key] = value
    per_source = doc.get("limits", {}).get("client_connections_per_source", 64)
    if (
        not isinstance(per_source, int)
        or isinstance(per_source, bool)
        or not 1 <= per_source <= CLIENT_CONNECTIONS_MAX
    ):
        raise ConfigError(
            f"{path}: 'limits.client_connections_per_source' must be a whole number from 1 to "
            f"{CLIENT_CONNECTIONS_MAX} (a member's client connections in all), not {per_source!r}"
        )
    return NodeConfig(
        home,
        name,
        data_dir,
        peer_listen,
        client_listen,
        peers,
        level,
        fmt,
        tls_peer=tls_on["peer"],
        tls_client=tls_on["client"],
        http_listen=http_listen,
        http_explorer=explorer,
        client_connections_per_source=per_source,
        gateway_listen=gateway_listen,
        tls_gateway=tls_on["gateway"],
    )


_ANY_HOST = ("", "0.0.0.0", "::")


def _same_port(a: tuple[str, int], b: tuple[str, int]) -> bool:
    """Whether two listen addresses would take the same port (port 0 lets the system choose:
    never a clash; an address on every interface clashes with any other host)."""
    if a[1] != b[1] or a[1] == 0:
        return False
    return a[0] == b[0] or a[0] in _ANY_HOST or b[0] in _ANY_HOST


def _address(table: dict[str, Any], key: str, path: Path, section: str) -> tuple[str, int]:
    value = table.get(key)
    if not isinstance(value, str):
        raise ConfigError(f"{path}: '{section}.{key}' must be a 'host:port' string")
    try:
        return parse_address(value, f"{path}: '{section}.{key}'")
    except GenesisError as exc:
        raise ConfigError(str(exc)) from None


def write_config(
    home: Path,
    *,
    name: str,
    peer_listen: str,
    client_listen: str,
    data_dir: str = "data",
    log_level: str = "info",
    http_listen: str | None = None,
    gateway_listen: str | None = None,
    tls: bool = False,
) -> Path:
    """Write `home`/config/node.toml. Each section is written by tomli_w (any name or path
    quoted and escaped as TOML needs), under the comment that explains it, as a person would
    lay the file out (tomli_w writes no comments)."""
    import tomli_w

    sections: list[tuple[str, dict[str, Any]]] = [
        (
            "# Consortium node configuration (see `consortium node start --help`). Any setting\n"
            "# outside [peers] can be overridden by CONSORTIUM_NODE_<SECTION>_<KEY> in the\n"
            "# environment.\n",
            {
                "node": {"name": name, "data_dir": data_dir},
                "listen": {"peer": peer_listen, "client": client_listen},
                "log": {"level": log_level, "format": "text"},
            },
        )
    ]
    if http_listen is not None:
        sections.append(
            (
                "# GET /healthz /readyz /status /metrics (plain HTTP: keep it on loopback or a\n"
                "# monitoring network; remove the section to turn it off)\n",
                {"http": {"listen": http_listen}},
            )
        )
    if gateway_listen is not None:
        sections.append(
            (
                "# The HTTP/JSON gateway: the client port's requests as JSON (docs/gateway.md;\n"
                "# remove the section to turn it off)\n",
                {"gateway": {"listen": gateway_listen}},
            )
        )
    if tls:
        ports = {"peer": True, "client": True}
        if gateway_listen is not None:
            ports["gateway"] = True
        sections.append(
            ("# TLS 1.3, mutual, keys pinned by genesis (docs/tls.md)\n", {"tls": ports})
        )
    path = config_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(comment + tomli_w.dumps(body) for comment, body in sections))
    return path


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    config: NodeConfig
    genesis: Genesis
    keys: KeyPair
    member: Member


def load_identity(home: Path, passphrase: bytes | None = None) -> NodeIdentity:
    """Config, genesis and key, cross-checked: the key must be the member's key in genesis."""
    config = load_config(home)
    if not config.genesis_path.exists():
        raise ConfigError(
            f"{config.genesis_path}: no genesis file; copy the network's genesis.json here "
            "(`consortium genesis` or `consortium init` wrote it)"
        )
    try:
        genesis = load_genesis(config.genesis_path)
    except GenesisError as exc:
        raise ConfigError(str(exc)) from None
    member = genesis.member_by_name(config.name)
    if member is None:
        names = ", ".join(m.name for m in genesis.members)
        raise ConfigError(
            f"{config_path(home)}: node.name '{config.name}' is not a member in "
            f"{config.genesis_path} (members: {names})"
        )
    if not config.key_path.exists():
        raise ConfigError(
            f"{config.key_path}: no key file. A node never generates its key at start: "
            "copy the member's key here (consortium init writes one per member)"
        )
    try:
        keys = KeyPair.load(config.key_path, passphrase)
    except InvalidKeyError as exc:
        raise ConfigError(str(exc)) from None
    if keys.public != member.public_key:
        owner = genesis.member_by_key(keys.public)
        if owner is not None:
            raise ConfigError(
                f"{config.key_path} is the key of member '{owner.name}' in "
                f"{config.genesis_path}, but {config_path(home)} says node.name = "
                f"'{config.name}'; set node.name = \"{owner.name}\" or use {config.name}'s key"
            )
        raise ConfigError(
            f"{config.genesis_path}: member '{member.name}' key does not match "
            f"{config.key_path} (genesis lists {member.public_key.hex()[:8]}…, "
            f"the key file holds {keys.public.hex()[:8]}…, a key that is not in this genesis "
            "at all): this genesis.json was not assembled from this home's member.json, or "
            "belongs to another network; get the network's genesis.json again, or have it "
            "assembled again with `consortium genesis --member HOME/config/member.json`"
        )
    return NodeIdentity(config, genesis, keys, member)
