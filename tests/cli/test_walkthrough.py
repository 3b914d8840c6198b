"""What the README's and docs' walkthroughs create when followed in a checkout (network
directories, member homes, receipts, plots) is ignored by git, so it is never committed by
mistake: every directory or file the commands there are told to write is checked."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# An option that names something to write (or a network written earlier), then its value.
WRITES = re.compile(
    r"--(?P<opt>dir|net|home|receipt-out|out|plot|json|to)\s+(?P<path>[A-Za-z0-9_.$/-]+)"
)


def written() -> set[str]:
    """Relative paths the walkthroughs write at the top of the checkout (a value under docs/
    is a committed file, and an absolute path or a placeholder is none of the checkout's)."""
    found: set[str] = set()
    commands = [
        line
        for doc in DOCS
        for line in doc.read_text().splitlines()
        if re.search(r"\bconsortium [a-z]", line)
    ]
    for line in commands:
        for m in WRITES.finditer(line):
            path = m["path"].replace("$i", "1").replace("$(date", "")
            if m["opt"] == "to" and "/" not in path:
                continue  # `leader transfer --to n2`: a member, not a file
            if path.startswith(("/", "docs/", "-")) or path.isupper() or "..." in path:
                continue
            if path in ("FILE", "DIR", "HOME", "the") or path.endswith("/"):
                continue
            top, _, rest = path.partition("/")
            # A directory as git matches one: with its slash (a home, a network, or a file in it).
            found.add(top + "/" if rest or m["opt"] in ("dir", "net", "home") else top)
    return found


def test_what_the_walkthroughs_write_is_ignored(tmp_path: Path) -> None:
    # The repository's .gitignore in a repository of its own, so the test needs git but not
    # a checkout with its .git (CI may test an export).
    assert shutil.which("git") is not None, "this test needs git (apt-get install git)"
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copyfile(ROOT / ".gitignore", repo / ".gitignore")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True, timeout=30)
    paths = written()
    assert {"net/", "rnet/", "n1/", "k.json", "bench.png"} <= paths  # (the pattern finds them)
    done = subprocess.run(
        ["git", "check-ignore", "--no-index", "--verbose", "--non-matching", *sorted(paths)],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    not_ignored = [line.split("\t")[-1] for line in done.stdout.splitlines() if line[:2] == "::"]
    assert not_ignored == [], not_ignored
    # The demo's default directory, a member home's log and the browser test's screenshot,
    # though no walkthrough command names them.
    for path in ("demo-net/", "n1.log", "n1-cert.pem", "test-artifacts/explorer.png"):
        assert (
            subprocess.run(
                ["git", "check-ignore", "--no-index", "-q", path], cwd=repo, check=False, timeout=30
            ).returncode
            == 0
        ), path
