"""What the first-run test and benchmark share: the README's quick-start commands, a clean
copy of the checkout, and whether a data dir's box answers.

The README's first two ``sh`` blocks are the set-up-and-run command and the test command;
``stock-debian`` reads them the same way.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from aether_box.client import Client, ServiceUnavailable, Timeout

__all__ = ["copy_checkout", "readme_blocks", "status_of"]

ROOT = Path(__file__).resolve().parent.parent


def readme_blocks(readme: Path = ROOT / "README.md") -> list[str]:
    """Every shell block of the README, in order (the first two are the quick start)."""
    text = readme.read_text(encoding="utf-8")
    return [
        block.strip()
        for block in re.findall(r"^```(?:sh|bash|shell|console)\s*\n(.*?)^```", text, re.M | re.S)
    ]


# What a checkout holds that a fresh clone does not (used where git cannot say: a copy).
NOT_IN_A_CLONE = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"}


def copy_checkout(target: Path) -> Path:
    """The checkout's files as a fresh clone has them (tracked and not ignored), no .venv."""
    for name in _clone_files():
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def _clone_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
    )
    if listed.returncode == 0:
        return [name for name in listed.stdout.decode().split("\0") if name]
    # Not a git checkout (itself a copy): every file but environments, caches and builds.
    return [
        str(path.relative_to(ROOT))
        for path in ROOT.rglob("*")
        if not NOT_IN_A_CLONE & set(path.relative_to(ROOT).parts)
        and not path.relative_to(ROOT).as_posix().startswith(("build/dist", "build/work"))
        and ".egg-info" not in path.as_posix()
    ]


def status_of(data_dir: Path) -> dict | None:
    """The status report of the data dir's box once every component has started, else None."""
    try:
        with Client(data_dir=data_dir, timeout=2) as client:
            report = client.status()
    except (ServiceUnavailable, Timeout):  # NoBox is one: nothing listens yet
        return None
    return report if report.get("ready") else None
