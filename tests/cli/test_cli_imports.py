"""The command line loads what a command runs, not the whole system: importing cli/main.py
(and with it every command module) loads none of the heavy modules, and `consortium --help`
or `consortium GROUP --help` loads neither rich nor pydantic. Checked by the modules a fresh
interpreter holds, never by a time (these machines are noisy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Heavy, and needed only by the commands that use them (imported inside those commands).
HEAVY = (
    "trio",
    "consortium.node.runtime",
    "consortium.sim",
    "consortium.ledger.audit",
    "consortium.pbft",
    "consortium.crashft",
    "matplotlib",
    "consortium.client",
    "cryptography",
    "nacl",
    "prometheus_client",  # the member's /metrics
    "h11",  # the member's HTTP listener
    "tomli_w",  # writing node.toml (init, keygen)
    "selenium",  # the browser test only
    "rich",  # tables and progress on a terminal
)
# What typer would load for help and option values, were it not told otherwise (main.py).
HELP_EXTRAS = ("rich", "pydantic")


def loaded_after(code: str) -> list[str]:
    """The modules a fresh interpreter holds after running `code` (exit included)."""
    script = (
        "import atexit, json, sys\n"
        "atexit.register(lambda: sys.__stderr__.write('MODULES ' + json.dumps(sorted(sys.modules))"
        " + '\\n'))\n" + code
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    lines = [line for line in result.stderr.splitlines() if line.startswith("MODULES ")]
    assert lines, result.stdout + result.stderr
    modules: list[str] = json.loads(lines[-1].removeprefix("MODULES "))
    return modules


def among(modules: list[str], names: tuple[str, ...]) -> list[str]:
    return [m for m in modules if any(m == n or m.startswith(n + ".") for n in names)]


def test_importing_the_command_line_loads_nothing_heavy() -> None:
    modules = loaded_after("import consortium.cli.main")
    assert "consortium.cli.main" in modules and "consortium.cli.tx" in modules
    assert among(modules, HEAVY) == []


def test_the_check_has_teeth() -> None:
    """The simulator's runs (cli/sim.py) do load the simulator, and the client library trio."""
    modules = loaded_after("import consortium.cli.main\nimport consortium.cli.sim")
    assert among(modules, ("consortium.sim",))
    modules = loaded_after("import consortium.client")
    assert "trio" in among(modules, HEAVY)


@pytest.mark.parametrize("argv", [["--help"], ["tx", "--help"], ["tx", "submit", "--help"]])
def test_help_loads_neither_rich_nor_pydantic(argv: list[str]) -> None:
    modules = loaded_after(
        "import sys\nfrom consortium.cli.main import app\n"
        f"sys.argv = ['consortium', *{argv!r}]\napp(prog_name='consortium')"
    )
    assert among(modules, HEAVY + HELP_EXTRAS) == []


def test_sim_help_names_the_simulators_own_mixes_and_behaviours() -> None:
    """sim_cmd.py repeats the simulator's names so that its help need not import it."""
    from consortium.cli import sim_cmd
    from consortium.sim.byzantine import BEHAVIOURS
    from consortium.sim.clock_scenarios import CLOCK_MIXES
    from consortium.sim.flapping import FLAPPING
    from consortium.sim.raft_scenarios import RAFT_MIXES

    assert tuple(FLAPPING) == sim_cmd.FLAPPING
    assert tuple(RAFT_MIXES) == sim_cmd.RAFT_MIXES
    assert tuple(BEHAVIOURS) == sim_cmd.BEHAVIOURS
    assert {mode: tuple(names) for mode, names in CLOCK_MIXES.items()} == sim_cmd.CLOCK_MIXES
