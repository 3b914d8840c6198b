"""Review 2 of issue 6: the [http] listener is not preflighted (failing test)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from consortium.cli.deployment import keygen
from consortium.cli.network import free_ports
from consortium.node.config import ConfigError, config_path, load_config
from consortium.node.preflight import check_listen


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
