"""What a member says of itself (node/status.py): its version, in GET /status and in what
`consortium status` shows of it."""

from __future__ import annotations

from pathlib import Path

import pytest

import consortium
from consortium.cli.output import member_report, versions_line
from tests.node.test_node_http import lone_member


async def test_status_carries_the_version_the_member_runs(tmp_path: Path) -> None:
    async with lone_member(tmp_path) as node:
        doc = node.status()
    assert doc["version"] == consortium.version() and doc["version"]


def test_consortium_status_shows_the_versions() -> None:
    same = [{"member": "n1", "version": "0.1.0"}, {"member": "n2", "version": "0.1.0"}]
    assert versions_line(same) == "version 0.1.0 (2 members)"
    assert versions_line(same[:1]) == "version 0.1.0 (1 member)"
    mixed = [*same, {"member": "n3", "version": "0.2.0"}, {"member": "n4", "error": "down"}]
    assert versions_line(mixed) == "versions: n1 0.1.0, n2 0.1.0, n3 0.2.0"
    assert versions_line([{"member": "n1"}]) == ""  # a member older than the field


def test_the_member_report_names_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    member_report(
        {
            "member": "n1",
            "mode": "pbft",
            "index": 0,
            "n": 4,
            "version": "0.1.0",
            "view": 0,
            "primary": "n1",
            "height": 3,
            "head_hash": "ab" * 32,
            "stable_checkpoint": 0,
            "ready": True,
        }
    )
    assert capsys.readouterr().out.startswith("n1 (pbft, member 1 of 4, version 0.1.0): view 0")
