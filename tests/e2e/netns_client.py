"""A load client the namespace tests run inside their hub namespace (`ip netns exec HUB
python tests/e2e/netns_client.py NET COUNT`): submits COUNT signed transactions over every
client key of NET/client.toml, waits for f+1 matching receipts each, prints
{"committed": N, "failed": M} as JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio

from consortium.cli.demo import drive
from consortium.cli.network import load_client_setup


def main(net: Path, count: int) -> None:
    setup = load_client_setup(net)
    committed, failed, _ = trio.run(drive, setup.genesis, setup.keys(), count, False)
    print(json.dumps({"committed": committed, "failed": failed}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
