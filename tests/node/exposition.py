"""A strict reader of the Prometheus text format, for tests: it refuses what a scraper would
refuse (samples before their TYPE, unknown types, bad label syntax, duplicate families)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


@dataclass
class Family:
    name: str
    help: str = ""
    type: str = ""
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)


def _labels(text: str) -> tuple[dict[str, str], str]:
    """Parse '{a="x",b="y"}' at the start of text; return the labels and the rest."""
    assert text.startswith("{")
    labels: dict[str, str] = {}
    i = 1
    while text[i] != "}":
        m = LABEL_NAME.match(text, i)
        assert m, f"bad label name at {text[i:]!r}"
        name = m.group(0)
        i = m.end()
        assert text[i : i + 2] == '="', f'expected =" after {name}'
        i += 2
        value = []
        while True:
            assert i < len(text), "unterminated label value"
            if text[i] == '"':
                break
            if text[i] == "\\":
                nxt = text[i + 1]
                assert nxt in '\\"n', f"bad escape \\{nxt}"
                value.append("\n" if nxt == "n" else nxt)
                i += 2
            else:
                assert text[i] != "\n"
                value.append(text[i])
                i += 1
        i += 1
        assert name not in labels, f"label {name} twice"
        labels[name] = "".join(value)
        if text[i] == ",":
            i += 1
    return labels, text[i + 1 :]


def parse(text: str) -> dict[str, Family]:
    assert text.endswith("\n"), "the exposition ends with a newline"
    families: dict[str, Family] = {}
    current: Family | None = None
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert NAME.fullmatch(name), name
            assert name not in families, f"family {name} declared twice"
            current = families[name] = Family(name, help_text)
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert current is not None and current.name == name, f"TYPE {name} without HELP"
            assert kind in TYPES, kind
            assert not current.samples, "TYPE after samples"
            current.type = kind
        else:
            assert not line.startswith("#"), line
            m = NAME.match(line)
            assert m, f"bad sample line {line!r}"
            name, rest = m.group(0), line[m.end() :]
            labels: dict[str, str] = {}
            if rest.startswith("{"):
                labels, rest = _labels(rest)
            assert rest.startswith(" "), line
            value = float(rest[1:])
            assert current is not None and current.type, f"sample {name} before its TYPE"
            allowed = {current.name}
            if current.type == "histogram":
                allowed = {f"{current.name}_{s}" for s in ("bucket", "sum", "count")}
            assert name in allowed, f"sample {name} outside its family {current.name}"
            current.samples.append((name, labels, value))
    for family in families.values():
        if family.type == "counter":
            assert family.name.endswith("_total"), family.name
        if family.type == "histogram":
            _check_histogram(family)
    return families


def _check_histogram(family: Family) -> None:
    series: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
    counts: dict[tuple[tuple[str, str], ...], float] = {}
    for name, labels, value in family.samples:
        key = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        if name.endswith("_bucket"):
            le = labels["le"]
            series.setdefault(key, []).append((float("inf") if le == "+Inf" else float(le), value))
        elif name.endswith("_count"):
            counts[key] = value
    for key, buckets in series.items():
        bounds = [b for b, _ in buckets]
        assert bounds == sorted(bounds) and bounds[-1] == float("inf"), family.name
        values = [v for _, v in buckets]
        assert values == sorted(values), f"{family.name}: buckets are cumulative"
        assert values[-1] == counts[key], f"{family.name}: +Inf bucket equals _count"
