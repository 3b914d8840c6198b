"""One member as a process: load its identity from its home, check its data directory and
ports, set up logging, run it until SIGTERM or SIGINT. `consortium node start` runs this; the
test entry point (consortium/testing/member.py) runs the same with faults composed in."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

import trio

from consortium.ledger.store import StoreError
from consortium.node import runtime
from consortium.node.config import ConfigError, NodeIdentity, load_identity
from consortium.node.datalock import check_free
from consortium.node.errors import MemberDiverged, first_leaf
from consortium.node.logs import setup_logging
from consortium.node.preflight import check_data_dir, check_listen
from consortium.node.refetch import DivergedAgain, diverged_before, start_over
from consortium.node.runtime import Node

# Given the member before it runs and the nursery it runs in: compose parts around it (the
# test entry point's faults), start tasks beside it.
Compose = Callable[[Node, trio.Nursery], None]


def load_member(home: Path) -> NodeIdentity:
    """The member at `home`, checked before anything runs (its config, key, genesis, data
    directory: not in use by another process, and of this network; ports). Raises
    ConfigError: the operator's to fix. The data directory's lock is taken when the store
    opens (runtime.Node), held until the process ends."""
    passphrase = os.environ.get("CONSORTIUM_KEY_PASSPHRASE")
    identity = load_identity(home, passphrase.encode() if passphrase else None)
    # Before the ports: a running member holds them too, and this names it (datalock.py).
    check_free(identity.config.data_dir, identity.member.name)
    check_data_dir(identity.config, identity.genesis)
    check_listen(identity.config)
    return identity


def run_member(identity: NodeIdentity, compose: Compose | None = None) -> None:
    """Run the member until a signal stops it. Raises StoreError (a failed write) and
    ConfigError as themselves, never wrapped in an exception group. A member whose store a
    quorum proves wrong (MemberDiverged) has it set aside (kept, renamed) and runs again from
    an empty store in recovery, re-fetching the ledger from peers; once: a second divergence
    after a fresh copy, in this process or a later one (refetch.REFETCHED_MARK), is no damaged
    store but a bug to look at, and raises DivergedAgain."""
    log = setup_logging(identity.member.name, identity.config.log_level, identity.config.log_format)
    while True:
        try:
            _run(identity, compose, log)
            return
        except MemberDiverged as exc:
            before = diverged_before(identity.config.data_dir)
            if before is not None:
                raise DivergedAgain(
                    f"diverged from the network again ({exc}) after re-fetching the ledger "
                    f"({before.splitlines()[0]}); stopping: not a damaged disk but a bug or "
                    "code that executes differently from the others': report it with both "
                    "kept ledgers"
                ) from None
            kept = start_over(identity.config, identity.genesis, "diverged")
            log.error(
                "store set aside as %s; starting again from an empty store, re-fetching the "
                "ledger from peers",
                kept,
            )


def running_line(identity: NodeIdentity) -> str:
    """Logged once the member runs (its store opened and checked, its ports bound: a start
    that fails says only why, in one line): which release runs, and which settings came from
    the environment rather than node.toml (config.ENV_PREFIX), so a log explains its member."""
    from consortium import version

    overridden = ", ".join(f"{k}={v}" for k, v in identity.config.from_env)
    return f"consortium {version()} running member {identity.member.name}" + (
        f"; from the environment: {overridden}" if overridden else ""
    )


def _run(identity: NodeIdentity, compose: Compose | None, log: logging.Logger) -> None:
    async def main() -> None:
        node = runtime.make_node(identity.config, identity.genesis, identity.keys, log=log)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                if compose is not None:
                    compose(node, nursery)
                await nursery.start(node.run)
                log.info("%s", running_line(identity))
                async for signum in signals:
                    log.info("signal %d: stopping", signum)
                    nursery.cancel_scope.cancel()
                    break

    try:
        trio.run(main)
    except BaseExceptionGroup as group:  # a task's error, wrapped by its nursery
        # Only the errors that say what the operator must fix (a failed write, a broken
        # config) or what the process acts on (a diverged store) are shown alone; anything
        # else keeps its traceback (it is a bug).
        found = first_leaf(group, (StoreError, ConfigError, MemberDiverged))
        if found is group:
            raise
        raise found from None
