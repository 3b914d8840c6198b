"""Progress (cli/progress.py): a live bar with its rate on a terminal, nothing of rich when
piped (the commands' plain lines stay as they were), and rich loaded only to draw."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from consortium.cli.progress import LiveBar, live_bar

ROOT = Path(__file__).resolve().parent.parent.parent


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_piped_or_disabled_there_is_no_bar() -> None:
    assert live_bar(10, "committed", "tx", stream=io.StringIO()) is None
    assert live_bar(10, "committed", "tx", stream=Terminal(), enabled=False) is None


def test_on_a_terminal_the_bar_shows_count_and_rate() -> None:
    screen = Terminal()
    bar = live_bar(10, "committed", "tx", stream=screen)
    assert isinstance(bar, LiveBar)
    with bar:
        bar.update(5, rated=4)
    text = screen.getvalue()
    assert "committed" in text and "5/10" in text and " tx/s" in text, text


def test_the_module_loads_rich_only_to_draw() -> None:
    code = (
        "import sys, io; from consortium.cli import progress; "
        "assert 'rich' not in sys.modules; "
        "progress.live_bar(3, 'x', 'tx', stream=io.StringIO()); "
        "assert 'rich' not in sys.modules; print('ok')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stdout.strip() == "ok", done.stderr


def test_sim_seeds_piped_print_the_table_alone() -> None:
    from consortium.cli.sim import _seeds_bar

    with _seeds_bar(4) as tick:
        assert [tick(x) for x in "abcd"] == list("abcd")  # results pass through
