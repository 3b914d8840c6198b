"""TESTS ONLY: run one member with faults composed around it (faults.py), for the end-to-end
tests and `consortium bench --byzantine`:

    python -m consortium.testing.member --home HOME [--byzantine silent-primary]
        [--lying-receipts] [--partition-file FILE] [--clock-offset-file FILE] [--rot-file FILE]
        [--duplicate-shown-s SECONDS]

Otherwise exactly `consortium node start --home HOME` (node/process.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trio

from consortium.ledger.store import StoreError
from consortium.node import transport
from consortium.node.config import ConfigError
from consortium.node.process import load_member, run_member
from consortium.node.runtime import Node
from consortium.testing.faults import (
    BYZANTINE_BEHAVIOURS,
    OffsetClock,
    byzantine_outbound,
    corrupt_state,
    lying_receipts,
    partition,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m consortium.testing.member")
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--byzantine", choices=BYZANTINE_BEHAVIOURS)
    parser.add_argument("--lying-receipts", action="store_true")
    parser.add_argument("--partition-file", type=Path)
    parser.add_argument("--clock-offset-file", type=Path)
    parser.add_argument("--rot-file", type=Path)
    # How long status shows "two processes claim n2" after the last sighting (30 s otherwise):
    # shorter, so a test sees the reason go without waiting half a minute.
    parser.add_argument("--duplicate-shown-s", type=float)
    args = parser.parse_args(argv)
    if args.duplicate_shown_s is not None:
        transport.DUPLICATE_SHOWN_S = args.duplicate_shown_s

    def compose(node: Node, nursery: trio.Nursery) -> None:
        if args.byzantine is not None:
            node.outbound = byzantine_outbound(node, args.byzantine)
            node.log.warning("TEST MODE: this member misbehaves as primary (%s)", args.byzantine)
        if args.lying_receipts:
            lying_receipts(node)
            node.log.warning("TEST MODE: this member lies to clients in every receipt it pushes")
        if args.partition_file is not None:
            nursery.start_soon(partition(node, args.partition_file))
        if args.clock_offset_file is not None:
            clock = OffsetClock(args.clock_offset_file, node.log.warning)
            node.wall_clock = clock
            nursery.start_soon(clock.follow)
        if args.rot_file is not None:
            nursery.start_soon(corrupt_state(node, args.rot_file))

    try:
        identity = load_member(args.home)
        run_member(identity, compose)
    except (ConfigError, StoreError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
