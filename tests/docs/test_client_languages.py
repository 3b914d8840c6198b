"""docs/client.md's "One transaction in Python and in TypeScript": both examples build the
vectors' `example (docs/client.md)` transaction (tests/vectors/shared.json, from the Python
code), the figures shown are its body, id and signature, and the Python example prints them.
(clients/js/test/docs.test.ts runs the TypeScript example and compares its output too.)"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "client.md"
VECTORS = ROOT / "tests" / "vectors" / "shared.json"
TITLE = "## One transaction in Python and in TypeScript"


def _section() -> str:
    text = DOC.read_text()
    assert TITLE in text, f"docs/client.md lost its section {TITLE!r}"
    return text.split(TITLE, 1)[1].split("\n## ", 1)[0]


def _block(section: str, language: str) -> str:
    match = re.search(rf"^```{language}\n(.*?)^```$", section, re.M | re.S)
    assert match, f"no ```{language} block in {TITLE!r}"
    return match.group(1)


@pytest.fixture(scope="module")
def example() -> dict[str, Any]:
    cases = json.loads(VECTORS.read_text())["transactions"]
    return next(c for c in cases if c["name"] == "example (docs/client.md)")


def _shown(section: str) -> dict[str, str]:
    lines = _block(section, "text").strip().splitlines()
    return dict(line.split(" ", 1) for line in lines)


def test_the_figures_shown_are_the_vectors(example: dict[str, Any]) -> None:
    shown = _shown(_section())
    assert shown == {
        "body": example["body"],
        "id": example["id"],
        "signature": example["signature"],
    }


@pytest.mark.parametrize("language", ["python", "ts"])
def test_both_examples_build_the_vectors_transaction(
    language: str, example: dict[str, Any]
) -> None:
    code = _block(_section(), language)
    seed_phrase = re.search(r'sha256\((?:b|utf8\()"([^"]+)"', code)
    assert seed_phrase, "the key seed is sha256 of a phrase"
    assert hashlib.sha256(seed_phrase.group(1).encode()).hexdigest() == example["seed"]
    chain = re.search(r'fromhex\("([0-9a-f]{64})"\)|fromHex\("([0-9a-f]{64})"\)', code)
    assert chain and (chain.group(1) or chain.group(2)) == example["chain_id"]
    nonce = re.search(r'(?:b|utf8\()"(example-[^"]*)"', code)
    assert nonce and nonce.group(1).encode().hex() == example["nonce"]
    expiry = re.search(r"^\s*([0-9_]+),\s*(?:#|//) expiry_ms", code, re.M)
    assert expiry and int(expiry.group(1).replace("_", "")) == int(example["expiry_ms"])
    ops = re.findall(r'(?:Put|put)\((?:b|utf8\()"([^"]*)"\)?, (?:b|utf8\()"([^"]*)"', code)
    assert [["put", k.encode().hex(), v.encode().hex()] for k, v in ops] == example["ops"]


def test_the_python_example_prints_the_figures() -> None:
    section = _section()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(_block(section, "python"), "docs/client.md", "exec"), {})
    assert out.getvalue().strip().splitlines() == _block(section, "text").strip().splitlines()
