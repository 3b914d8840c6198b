#!/usr/bin/env python3
"""The Secret and ConfigMap the StatefulSet (statefulset.yaml) reads, from the directory
`consortium init` wrote for the pods' DNS names:

    consortium init --dir net --listen-host 0.0.0.0 --hosts \\
        consortium-0.consortium.NS.svc.cluster.local,...,consortium-3.consortium.NS.svc.cluster.local
    python3 deploy/kubernetes/member_files.py net --namespace NS --first-start yes \
        | kubectl apply -n NS -f -

and, once the network has committed its first blocks, the same with --first-start no.

Secret consortium-keys: n<i>.pem, each member's private key (so whoever can read it, or runs
any of the pods, holds every member's key: one trust domain, see docs/operations.md). ConfigMap
consortium-members: genesis.json, n<i>.toml (each member's node.toml, its [http] listener moved
from loopback to 0.0.0.0:9301 so the kubelet's probes reach it), new-member (the mark a member
that has never run starts with) and first-start (--first-start's yes or no: see
statefulset.yaml).

It checks what the pods need before writing anything: every file present, member i of genesis
at consortium-<i-1>.consortium.<namespace>... on ports 7101 and 7201, each node.toml listening
on 0.0.0.0 on those ports. The output is JSON (a Kubernetes List), which kubectl reads as YAML.
Standard library only (Python 3.11 or later), so it runs wherever kubectl does.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import sys
import tomllib
from pathlib import Path
from typing import Any, NoReturn

SERVICE = "consortium"  # the headless Service and the StatefulSet (service.yaml)
PEER_PORT, CLIENT_PORT, HTTP_PORT = 7101, 7201, 9301  # statefulset.yaml's container ports
HTTP_LISTEN = f"0.0.0.0:{HTTP_PORT}"


class Refused(Exception):
    """What is wrong with the init directory, in one line."""


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise Refused(f"cannot read {path}: {exc.strerror or exc}") from None


def _http_on_all_interfaces(text: str, where: Path) -> str:
    """node.toml with [http] listen set to HTTP_LISTEN (added when there is no [http]),
    checked by reading the result back."""
    section = re.search(r"(?ms)^\[http\][^\n]*\n(.*?)(?=^\[|\Z)", text)
    if section is None:
        out = text.rstrip("\n") + f'\n\n[http]\nlisten = "{HTTP_LISTEN}"\n'
    else:
        body = re.sub(r'(?m)^listen\s*=\s*"[^"]*"', f'listen = "{HTTP_LISTEN}"', section.group(1))
        out = text[: section.start(1)] + body + text[section.end(1) :]
    before, after = tomllib.loads(text), tomllib.loads(out)
    if after.get("http", {}).get("listen") != HTTP_LISTEN:
        raise Refused(f"{where}: could not set [http] listen to {HTTP_LISTEN}")
    after["http"].pop("listen")
    before.get("http", {}).pop("listen", None)
    if {k: v for k, v in after.items() if v} != {k: v for k, v in before.items() if v}:
        raise Refused(f"{where}: changing [http] listen changed other settings")
    return out


def member_files(net: Path, namespace: str | None, *, first_start: bool) -> dict[str, Any]:
    genesis_bytes = _read(net / "genesis.json")
    try:
        genesis = json.loads(genesis_bytes)
        members = genesis["members"]
    except (ValueError, KeyError, TypeError):
        raise Refused(f"{net / 'genesis.json'}: not a genesis file") from None
    keys: dict[str, str] = {}
    configs: dict[str, str] = {}
    new_mark = ""
    for i, member in enumerate(members):
        name = member["name"]
        if name != f"n{i + 1}":
            raise Refused(f"genesis member {i} is {name!r}: the pods expect n1, n2, ... in order")
        pod = f"{SERVICE}-{i}.{SERVICE}."
        for key, port in (("peer_address", PEER_PORT), ("client_address", CLIENT_PORT)):
            host, got = _split(str(member[key]))
            full = f"{pod}{namespace}.svc.cluster.local" if namespace else None
            if not host.startswith(pod) or (full is not None and host != full) or got != port:
                want = f"{full or pod + '<namespace>.svc.cluster.local'}:{port}"
                raise Refused(
                    f"genesis {key} of {name} is {member[key]}, not pod {i}'s name {want}: "
                    "run consortium init with --hosts set to the pods' names"
                )
        home = net / "nodes" / name
        toml_path = home / "config" / "node.toml"
        text = _read(toml_path).decode()
        config = tomllib.loads(text)
        listen = config.get("listen", {})
        if config.get("node", {}).get("name") != name or config["node"].get("data_dir") != "data":
            raise Refused(f"{toml_path}: expected name = {name!r} and data_dir = 'data'")
        for key, port in (("peer", PEER_PORT), ("client", CLIENT_PORT)):
            if listen.get(key) != f"0.0.0.0:{port}":
                raise Refused(
                    f"{toml_path}: listen.{key} is {listen.get(key)}, not 0.0.0.0:{port}: "
                    "run consortium init with --listen-host 0.0.0.0"
                )
        if _read(home / "config" / "genesis.json") != genesis_bytes:
            raise Refused(f"{home / 'config' / 'genesis.json'} differs from {net / 'genesis.json'}")
        configs[f"{name}.toml"] = _http_on_all_interfaces(text, toml_path)
        keys[f"{name}.pem"] = base64.b64encode(_read(home / "config" / "node_key.pem")).decode()
        mark = home / "data" / "new-member"
        if first_start:
            new_mark = _read(mark).decode()  # init wrote it: this member has never run
    labels = {"app.kubernetes.io/name": SERVICE}
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"{SERVICE}-keys", "labels": labels},
        "type": "Opaque",
        "data": keys,
    }
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{SERVICE}-members", "labels": labels},
        "data": {
            "genesis.json": genesis_bytes.decode(),
            **configs,
            "new-member": new_mark,
            "first-start": "yes" if first_start else "no",
        },
    }
    return {"apiVersion": "v1", "kind": "List", "items": [secret, config_map]}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line, like the tool's other errors."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"member_files.py: {message} (see --help)\n")


FIRST_START_HELP = (
    "yes or no, required: the safe answer changes once the network runs. yes: the network's "
    "first apply, no member has run yet; a pod whose volume is empty starts as a new member. "
    "no: every apply after the network has committed blocks; a pod whose volume is empty (lost) "
    "starts as a recovering member and learns from the others what it did. Apply no as soon as "
    "the network has run: with yes left in place, a pbft member that loses its volume votes "
    "again without the votes it already cast."
)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("net", type=Path, help="the directory consortium init wrote")
    parser.add_argument("--namespace", help="check genesis names the pods in this namespace")
    parser.add_argument(
        "--first-start", choices=("yes", "no"), required=True, help=FIRST_START_HELP
    )
    args = parser.parse_args(argv)
    try:
        out = member_files(args.net, args.namespace, first_start=args.first_start == "yes")
    except Refused as exc:
        print(f"member_files.py: {exc}", file=sys.stderr)
        return 2
    if args.first_start == "yes":
        print(
            "member_files.py: first-start is yes: apply this again with --first-start no "
            "once the network has committed its first blocks",
            file=sys.stderr,
        )
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
