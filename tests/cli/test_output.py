"""What `consortium status --net` makes of the members' answers (cli/output.py): a member far
below the others is not ok whatever it says of itself, and a diverged or recovering member is
no part of the fault budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from consortium.cli.network import init_network
from consortium.cli.output import network_doc, status_table
from consortium.ledger.genesis import Genesis


@pytest.fixture(scope="module")
def genesis(tmp_path_factory: pytest.TempPathFactory) -> Genesis:
    directory: Path = tmp_path_factory.mktemp("net")
    return init_network(directory / "net", members=4, clients=1)


def member(name: str, height: int, **extra: Any) -> dict[str, Any]:
    return {
        "member": name,
        "height": height,
        "ready": True,
        "not_progressing_because": [],
        "core": {"diverged": None, "recovering": None},
        "peers": [],
        **extra,
    }


def test_a_member_far_below_the_others_is_not_ok(
    genesis: Genesis, capsys: pytest.CaptureFixture[str]
) -> None:
    lag_max = 2 * genesis.params.checkpoint_interval
    statuses = [
        member("n1", 1_000 + lag_max + 1),
        member("n2", 1_000 + lag_max + 1),
        member("n3", 1_000),  # says it is fine: it heard of nothing later
        member("n4", 1_001),  # within the margin: a write or two behind is normal
    ]
    doc = network_doc(genesis, statuses)
    assert doc["not_ready"] == {
        "n3": [f"behind by {lag_max + 1:,} blocks (height 1,000; n1 has {1_001 + lag_max:,})"]
    }
    status_table(genesis, statuses)
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert rows["n3"].endswith(f"behind by {lag_max + 1:,} blocks (height 1,000; n1 has 1,065)")
    assert rows["n4"].endswith(" ok")


def test_a_member_that_says_it_is_behind_is_not_told_twice(genesis: Genesis) -> None:
    statuses = [
        member("n1", 500),
        member("n2", 100, ready=False, not_progressing_because=["behind by 400 blocks, x"]),
    ]
    assert network_doc(genesis, statuses)["not_ready"] == {"n2": ["behind by 400 blocks, x"]}


def test_diverged_and_recovering_members_are_not_counted_up(genesis: Genesis) -> None:
    statuses = [
        member("n1", 10),
        member("n2", 10),
        member("n3", 10, core={"diverged": {"seq": 8}, "recovering": None}),
        member("n4", 10, core={"diverged": None, "recovering": {"from": "lost state"}}),
    ]
    doc = network_doc(genesis, statuses)
    assert doc["up"] == 2
    assert doc["fault_budget"].startswith("n=4 f=1: 2 of 4 up, no quorum")
