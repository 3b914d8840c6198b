"""A live progress bar with its rate, for a person watching a terminal (rich, imported only
when one is drawn: `consortium --help` and piped runs never load it).

Where the output is piped (a log, a CI job, the tests), the commands keep printing their plain
progress lines as before; `live_bar` returns None there and the caller prints those.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any


class LiveBar:
    """One bar: `what` done of `total`, the rate (`unit` per second, from the count given to
    update as `rated`) and the time elapsed, redrawn in place on the terminal `stream`."""

    def __init__(self, total: int, what: str, unit: str, stream: IO[str]) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.unit = unit
        self.started = time.monotonic()
        self._progress = Progress(
            TextColumn("  {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=Console(file=stream),
            redirect_stdout=True,  # lines printed meanwhile go above the bar
            redirect_stderr=False,
        )
        self._task = self._progress.add_task(what, total=max(1, total), rate="")
        self._progress.start()

    def update(self, done: int, rated: int | None = None) -> None:
        """`done` of the total; the rate counts `rated` (default: `done`) per second."""
        elapsed = max(1e-6, time.monotonic() - self.started)
        rate = (done if rated is None else rated) / elapsed
        self._progress.update(self._task, completed=done, rate=f"{rate:,.0f} {self.unit}/s")

    def close(self) -> None:
        self._progress.stop()

    def __enter__(self) -> LiveBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def live_bar(
    total: int, what: str, unit: str, *, enabled: bool = True, stream: IO[str] | None = None
) -> LiveBar | None:
    """A LiveBar on `stream` (default: standard error) if it is a terminal and `enabled`;
    None otherwise (piped: the caller prints its plain lines)."""
    out = sys.stderr if stream is None else stream
    if not enabled or not out.isatty():
        return None
    return LiveBar(total, what, unit, out)
