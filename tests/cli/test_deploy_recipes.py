"""The deployment recipes in deploy/ say what the CLI accepts: the systemd unit's ExecStart and
the Containerfile's ENTRYPOINT parse as `consortium` commands, their paths and ports agree
with each other and with the CLI's defaults, and the unit passes `systemd-analyze verify`; the
Compose file and the Kubernetes manifests pass their schemas offline and fit the homes
`consortium init` writes for them (ports, names, health paths, the pods' key by ordinal)."""

from __future__ import annotations

import base64
import configparser
import inspect
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from consortium.cli.main import app
from consortium.cli.net import init
from consortium.node.config import load_config

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "consortium-node@.service"
CONTAINERFILE = REPO / "deploy" / "Containerfile"


def accepted(argv: list[str]) -> str:
    """Run `consortium ARGV` in-process for a home that does not exist here: the CLI must
    accept every argument and fail only in the command itself, at reading node.toml. Returns
    the output."""
    result = CliRunner().invoke(app, argv)
    assert "No such option" not in result.output and "Usage:" not in result.output, result.output
    assert result.exit_code == 2, result.output
    assert "cannot read node config" in result.output, result.output
    return result.output


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def test_accepted_fails_for_what_the_cli_refuses() -> None:
    for argv in (
        ["node", "start", "--home", "/nonexistent", "--bogus"],
        ["node", "start"],  # --home is required
        ["node", "sart", "--home", "/nonexistent"],
    ):
        with pytest.raises(AssertionError):
            accepted(argv)
    assert "/nonexistent/config/node.toml" in accepted(["node", "start", "--home", "/nonexistent"])


def test_the_systemd_unit_runs_node_start_on_the_members_state_directory() -> None:
    service = unit()["Service"]
    argv = shlex.split(service["ExecStart"].replace("%i", "n1"))
    assert argv[0] == "/opt/consortium/bin/consortium"
    assert argv[1:4] == ["node", "start", "--home"]
    assert argv[4] == "/var/lib/consortium/n1"
    assert not Path(argv[4]).exists()
    assert "/var/lib/consortium/n1/config/node.toml" in accepted(argv[1:])
    assert service["StateDirectory"] == "consortium/%i"  # systemd creates that very home
    assert service["WorkingDirectory"] == "/var/lib/consortium/%i"
    assert service["Type"] in ("exec", "simple")
    assert service["User"] == "consortium"
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "2"  # config errors exit 2: no restart loop
    assert int(service["LimitNOFILE"]) >= 4096
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert service[key] == value, key
    help_text = subprocess.run(
        [sys.executable, "-m", "consortium", *argv[1:3], "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert help_text.returncode == 0 and "--home" in help_text.stdout


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze not found: apt-get install systemd"
    # The same unit with ExecStart pointing at this checkout's console script, which exists.
    console = Path(sys.executable).with_name("consortium")
    assert console.exists(), console
    text = UNIT.read_text().replace("/opt/consortium/bin/consortium", str(console))
    (tmp_path / "consortium-node@.service").write_text(text)
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / "consortium-node@n1.service")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # It warns (exit 0) about keys it does not know or values it ignores: none allowed.
    assert "consortium-node@" not in result.stderr, result.stderr


def containerfile() -> dict[str, list[str]]:
    instructions: dict[str, list[str]] = {}
    logical = ""
    for line in CONTAINERFILE.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        logical += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            if logical.strip():
                keyword, _, rest = logical.strip().partition(" ")
                instructions.setdefault(keyword.upper(), []).append(rest.strip())
            logical = ""
    return instructions


def test_the_containerfile_runs_node_start_as_a_non_root_user_on_its_volume() -> None:
    c = containerfile()
    # a build stage with a C compiler (the hot modules compiled), then the slim image it feeds
    assert c["FROM"] == ["python:3.11 AS build", "python:3.11-slim"]
    assert any("setup.py" in copy for copy in c["COPY"]), c["COPY"]  # (the build's mypyc step)
    assert "--from=build /wheels /wheels" in c["COPY"]
    assert c["USER"] and c["USER"][-1] not in ("root", "0")
    entrypoint = json.loads(c["ENTRYPOINT"][-1])
    assert entrypoint[:4] == ["consortium", "node", "start", "--home"]
    assert entrypoint[4:] == c["VOLUME"] == ["/home/consortium"]
    assert not Path(entrypoint[4]).exists()
    accepted(entrypoint[1:])
    for copy in c["COPY"]:
        if copy.startswith("--from="):
            continue  # from the build stage, not the repository
        for source in copy.split()[:-1]:
            assert (REPO / source).exists(), f"COPY {source}: no such path in the repository"
    assert any("pip wheel --no-deps --wheel-dir /wheels /src" in r for r in c["RUN"])
    assert any("pip install /wheels/" in r for r in c["RUN"])
    # The ports it exposes are the CLI's defaults for peers and clients.
    defaults = {n: p.default for n, p in inspect.signature(init).parameters.items()}
    exposed = sorted(int(p) for p in c["EXPOSE"][-1].split())
    assert exposed == sorted([defaults["peer_port"], defaults["client_port"]])


# --- several machines: Compose and Kubernetes, validated offline ------------------------------
#
# No container runtime or cluster runs here: the files are checked against their schemas (the
# Compose specification's JSON schema, vendored in tests/data/compose-spec.json from
# github.com/compose-spec/compose-spec, schema/compose-spec.json, Apache-2.0; Kubernetes' via
# kubernetes-validate), and against what the node needs: the ports, names and health paths of
# the homes `consortium init` writes for them.

COMPOSE = REPO / "deploy" / "compose.yaml"
KUBE = REPO / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"  # one kubernetes-validate bundles; the oldest still widely run
POD_DNS = "consortium-{i}.consortium.ledger.svc.cluster.local"


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    import yaml

    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def member_routes() -> set[str]:
    from consortium.node.status import MemberStatus

    return set(MemberStatus(None).http_routes())  # type: ignore[arg-type]


def init_for(tmp_path: Path, hosts: list[str]) -> Path:
    net = tmp_path / "net"
    result = CliRunner().invoke(
        app,
        ["init", "--dir", str(net), "--hosts", ",".join(hosts), "--listen-host", "0.0.0.0"],
    )
    assert result.exit_code == 0, result.output
    return net


def test_the_compose_file_follows_the_compose_specification() -> None:
    import jsonschema

    schema = json.loads((REPO / "tests" / "data" / "compose-spec.json").read_text())
    # The schema says draft-07 (as https://json-schema.org/draft-07/schema, a spelling
    # jsonschema does not look up): use that draft's validator by name.
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    [compose] = yaml_documents(COMPOSE)
    validator.validate(compose)
    # The schema has teeth: what Compose refuses, it refuses.
    broken = {**compose, "services": {"n1": {**compose["services"]["n1"], "helthcheck": {}}}}
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(broken)


def test_compose_runs_four_members_from_the_containerfile_on_the_homes_init_writes(
    tmp_path: Path,
) -> None:
    [compose] = yaml_documents(COMPOSE)
    services = compose["services"]
    assert sorted(services) == ["n1", "n2", "n3", "n4"]
    net = init_for(tmp_path, sorted(services))
    genesis = json.loads((net / "genesis.json").read_text())
    assert genesis["mode"] == "pbft" and len(genesis["members"]) == 4
    c = containerfile()
    exposed = sorted(int(p) for p in c["EXPOSE"][-1].split())
    routes = member_routes()
    for member, (name, service) in zip(genesis["members"], sorted(services.items()), strict=True):
        build = service["build"]
        assert (COMPOSE.parent / build["context"]).resolve() == REPO
        assert (REPO / build["dockerfile"]).resolve() == CONTAINERFILE
        assert service["hostname"] == name == member["name"]
        [volume] = service["volumes"]
        source, target = volume.split(":")
        assert target == c["VOLUME"][-1]
        home = (COMPOSE.parent / source).resolve()
        assert home == (REPO / "net" / "nodes" / name).resolve()  # init --dir net, from the root
        # Genesis names the member by its service name, on the ports the image exposes.
        for key in ("peer_address", "client_address"):
            host, _, port = member[key].rpartition(":")
            assert host == name and int(port) in exposed
        config = load_config(net / "nodes" / name)
        assert config.peer_listen == ("0.0.0.0", 7101) and config.client_listen == ("0.0.0.0", 7201)
        # The health check asks /readyz on the very listener that member's node.toml sets.
        check = service["healthcheck"]["test"]
        assert check[:3] == ["CMD", "python", "-c"]
        url = re.search(r"http://([\d.]+):(\d+)(/\w+)", check[3])
        assert url is not None, check
        assert (url[1], int(url[2])) == config.http_listen
        assert url[3] == "/readyz" and url[3] in routes


def _serve_once(status: int) -> tuple[Any, int]:
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.handle_request, daemon=True).start()
    return server, server.server_address[1]


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_the_compose_health_check_fails_on_503(status: int, healthy: bool) -> None:
    """The check's own command (run by the image's python) exits non-zero when /readyz
    answers 503, which is what makes Compose call the member unhealthy."""
    [compose] = yaml_documents(COMPOSE)
    command = compose["services"]["n1"]["healthcheck"]["test"][3]
    server, port = _serve_once(status)
    try:
        result = subprocess.run(
            [sys.executable, "-c", re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{port}", command)],
            capture_output=True,
            timeout=30,
            check=False,
        )
    finally:
        server.server_close()
    assert (result.returncode == 0) is healthy, result.stderr


def kube_objects() -> dict[str, dict[str, Any]]:
    objects: dict[str, dict[str, Any]] = {}
    for path in sorted(KUBE.glob("*.yaml")):
        for doc in yaml_documents(path):
            objects[doc["kind"]] = doc
    return objects


def test_every_kubernetes_manifest_validates() -> None:
    import kubernetes_validate

    paths = sorted(KUBE.glob("*.yaml"))
    assert {p.name for p in paths} >= {
        "statefulset.yaml",
        "service.yaml",
        "poddisruptionbudget.yaml",
    }
    for path in paths:
        for doc in yaml_documents(path):
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    # The validator has teeth.
    statefulset = kube_objects()["StatefulSet"]
    wrong = json.loads(json.dumps(statefulset))
    wrong["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pth"] = "/"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, KUBERNETES_VERSION, strict=True)


def test_the_statefulset_service_and_budget_fit_a_four_member_pbft_network() -> None:
    objects = kube_objects()
    statefulset, service, budget = (
        objects["StatefulSet"],
        objects["Service"],
        objects["PodDisruptionBudget"],
    )
    spec = statefulset["spec"]
    assert spec["replicas"] == 4
    assert spec["podManagementPolicy"] == "Parallel"  # none is ready before a quorum runs
    assert spec["serviceName"] == service["metadata"]["name"] == "consortium"
    assert statefulset["metadata"]["name"] == "consortium"  # pods consortium-0 ... -3
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"] == labels
    assert service["spec"]["selector"] == labels == budget["spec"]["selector"]["matchLabels"]
    assert budget["spec"]["maxUnavailable"] == 1  # f for n=4
    pod = spec["template"]["spec"]
    [member] = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in member["ports"]}
    assert ports == {"peer": 7101, "client": 7201, "http": 9301}
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == ports
    routes = member_routes()
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = member[probe]["httpGet"]
        assert get == {"path": path, "port": "http"} and path in routes
        assert member[probe]["timeoutSeconds"] >= 2
    assert member["resources"]["requests"] and member["resources"]["limits"]["memory"]
    assert "command" not in member and "args" not in member  # the image's node start
    mounts = {m["name"]: m["mountPath"] for m in member["volumeMounts"]}
    assert mounts == {"home": containerfile()["VOLUME"][-1]}
    assert pod["securityContext"]["runAsUser"] == 10001  # the Containerfile's user
    [claim] = spec["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "home"


MEMBER_FILES = KUBE / "member_files.py"


def run_member_files(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(MEMBER_FILES), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def init_script(tmp_path: Path, ordinal: int, files: dict[str, Any]) -> Path:
    """Run the StatefulSet's init container script here, as pod `ordinal`, with the Secret and
    ConfigMap that member_files.py made mounted where the pod mounts them. Returns the home."""
    root = tmp_path / f"pod-{ordinal}"
    secret, config_map = files["items"]
    for mount, data, decode in (
        ("etc/consortium/keys", secret["data"], True),
        ("etc/consortium/members", config_map["data"], False),
    ):
        (root / mount).mkdir(parents=True, exist_ok=True)
        for key, value in data.items():
            (root / mount / key).write_bytes(base64.b64decode(value) if decode else value.encode())
    [container] = kube_objects()["StatefulSet"]["spec"]["template"]["spec"]["initContainers"]
    assert container["command"][:2] == ["sh", "-c"]
    script = container["command"][2].replace("/home/consortium", f"{root}/home/consortium")
    script = script.replace("/etc/consortium", f"{root}/etc/consortium")
    result = subprocess.run(
        ["sh", "-c", script],
        env={"HOSTNAME": f"consortium-{ordinal}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return root / "home" / "consortium"


def test_member_files_make_the_secret_and_config_map_each_pod_builds_its_home_from(
    tmp_path: Path,
) -> None:
    import kubernetes_validate

    from consortium.node.config import load_identity

    net = init_for(tmp_path, [POD_DNS.format(i=i) for i in range(4)])
    result = run_member_files(str(net), "--namespace", "ledger", "--first-start", "yes")
    assert result.returncode == 0, result.stderr
    assert "--first-start no" in result.stderr  # the reminder to turn it off later
    files = json.loads(result.stdout)
    for item in files["items"]:
        kubernetes_validate.validate(item, KUBERNETES_VERSION, strict=True)
    secret, config_map = files["items"]
    pod = kube_objects()["StatefulSet"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["keys"]["secret"]["secretName"] == secret["metadata"]["name"]
    assert volumes["members"]["configMap"]["name"] == config_map["metadata"]["name"]
    assert sorted(secret["data"]) == ["n1.pem", "n2.pem", "n3.pem", "n4.pem"]
    genesis = json.loads((net / "genesis.json").read_text())
    for ordinal in range(4):
        home = init_script(tmp_path, ordinal, files)
        identity = load_identity(home)  # what node start reads: key, genesis, node.toml agree
        assert identity.config.name == f"n{ordinal + 1}"
        assert identity.genesis.members[ordinal].public_key == identity.keys.public
        assert identity.config.http_listen == ("0.0.0.0", 9301)  # the probes' port
        assert identity.config.peer_listen == ("0.0.0.0", 7101)
        assert (home / "data" / "new-member").exists()  # a first start
        assert genesis["members"][ordinal]["peer_address"] == f"{POD_DNS.format(i=ordinal)}:7101"
    # A pod whose volume holds a member that ran gets no new-member mark back.
    (home / "data" / "new-member").unlink()
    assert not (init_script(tmp_path, 3, files) / "data" / "new-member").exists()
    # Nor does an emptied volume once the operator said the network has run.
    again = run_member_files(str(net), "--namespace", "ledger", "--first-start", "no")
    assert again.returncode == 0 and again.stderr == "", again.stderr
    assert not (init_script(tmp_path / "later", 0, json.loads(again.stdout)) / "data").exists()


def test_member_files_refuse_a_network_not_made_for_the_pods(tmp_path: Path) -> None:
    net = init_for(tmp_path, ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"])
    result = run_member_files(str(net), "--first-start", "yes")
    assert result.returncode == 2 and result.stdout == ""
    assert "not pod 0's name consortium-0.consortium." in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # one line, no traceback
    shutil.rmtree(net)
    net = init_for(tmp_path, [POD_DNS.format(i=i) for i in range(4)])
    assert run_member_files(str(net), "--namespace", "other", "--first-start", "no").returncode == 2
    (net / "nodes" / "n3" / "config" / "node_key.pem").unlink()
    result = run_member_files(str(net), "--namespace", "ledger", "--first-start", "yes")
    assert result.returncode == 2 and "n3/config/node_key.pem" in result.stderr


def test_member_files_make_the_operator_say_whether_the_network_has_run(tmp_path: Path) -> None:
    """No default for --first-start: yes left on after the network ran lets a pbft member that
    lost its volume vote again; no on the first apply is not what a new network wants either."""
    net = init_for(tmp_path, [POD_DNS.format(i=i) for i in range(4)])
    result = run_member_files(str(net), "--namespace", "ledger")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "member_files.py: the following arguments are required: --first-start (see --help)"
    ]
    helped = run_member_files("--help")
    assert helped.returncode == 0
    said = " ".join(helped.stdout.split())
    assert "yes: the network's first apply" in said and "no: every apply after" in said
    for answer in ("yes", "no"):
        result = run_member_files(str(net), "--namespace", "ledger", "--first-start", answer)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["items"][1]["data"]["first-start"] == answer
    # The docs' commands give the answer too (they would fail as written otherwise).
    docs = (REPO / "docs" / "operations.md").read_text().splitlines()
    commands = [line for line in docs if line.startswith("python3 deploy/kubernetes/member_files")]
    assert len(commands) >= 2
    assert all(re.search(r"--first-start (yes|no)\b", line) for line in commands), commands
