"""Logging setup: text or JSON lines, every line naming the node; peer misbehaviour rate-limited."""

from __future__ import annotations

import json
import logging
import sys
import time


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            doc.update(extra)
        return json.dumps(doc, default=str)


def setup_logging(node_name: str, level: str = "info", fmt: str = "text") -> logging.Logger:
    root = logging.getLogger("consortium")
    root.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s {node_name} %(levelname)s %(name)s: %(message)s")
        )
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
