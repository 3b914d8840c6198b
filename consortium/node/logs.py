"""Logging setup: text or JSON lines, every line naming the node; peer misbehaviour rate-limited.

Every line a member logs carries its protocol position: a `NodeContext` filter on the member's
logger stamps each record with `fields` (node, mode, view or term, seq or commit index,
height), read from the running core at the moment of logging. The JSON formatter puts them at
the top level of the line; the text formatter shows them in brackets:

    {"ts": 1764165600.123, "level": "warning", "logger": "consortium.node.n2",
     "msg": "view change to 1: ...", "node": "n2", "mode": "pbft", "view": 1, "seq": 40,
     "height": 40}
    2026-11-26 13:40:00,123 n2 WARNING consortium.node.n2 [view 1 seq 40]: view change to 1: ...
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable


class _JsonFormatter(logging.Formatter):
    def __init__(self, node_name: str) -> None:
        super().__init__()
        self._node = node_name

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "node": self._node,
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            doc.update(extra)
        return json.dumps(doc, default=str)


class _TextFormatter(logging.Formatter):
    def __init__(self, node_name: str) -> None:
        super().__init__(f"%(asctime)s {node_name} %(levelname)s %(name)s%(position)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        extra = getattr(record, "fields", None)
        position = ""
        if isinstance(extra, dict):
            shown = [f"{k} {extra[k]}" for k in ("view", "term", "seq", "index") if k in extra]
            position = f" [{' '.join(shown)}]" if shown else ""
        record.position = position
        return super().format(record)


class NodeContext(logging.Filter):
    """Stamps every record of a member's logger with the member's current protocol position
    (`fields()`), under any fields the call site gave (`extra={"fields": {...}}`)."""

    def __init__(self, fields: Callable[[], dict[str, object]]) -> None:
        super().__init__()
        self._fields = fields

    def filter(self, record: logging.LogRecord) -> bool:
        own = getattr(record, "fields", None)
        try:
            context = self._fields()
        except Exception:  # never lose a log line to a context bug
            context = {}
        record.fields = {**context, **own} if isinstance(own, dict) else context
        return True


def attach_context(log: logging.Logger, fields: Callable[[], dict[str, object]]) -> None:
    """Give `log` one NodeContext (replacing an earlier member's, e.g. after a restart in
    the same process)."""
    for old in [f for f in log.filters if isinstance(f, NodeContext)]:
        log.removeFilter(old)
    log.addFilter(NodeContext(fields))


def setup_logging(node_name: str, level: str = "info", fmt: str = "text") -> logging.Logger:
    root = logging.getLogger("consortium")
    root.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter(node_name))
    else:
        handler.setFormatter(_TextFormatter(node_name))
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
    return logging.getLogger(f"consortium.node.{node_name}")


class RateLimitedLog:
    """At most one line per key per interval, with a count of what was suppressed."""

    def __init__(self, log: logging.Logger, interval_s: float = 10.0, keys_max: int = 1024) -> None:
        self._log = log
        self._interval_s = interval_s
        self._keys_max = keys_max
        self._last: dict[str, tuple[float, int]] = {}

    def warning(self, key: str, msg: str) -> None:
        now = time.monotonic()
        last, suppressed = self._last.get(key, (0.0, 0))
        if now - last < self._interval_s:
            self._last[key] = (last, suppressed + 1)
            return
        if len(self._last) >= self._keys_max:
            self._last.clear()
        self._last[key] = (now, 0)
        more = f" ({suppressed} similar suppressed)" if suppressed else ""
        self._log.warning("%s%s", msg, more)
