"""The README's quick-start commands, as the first-run test and benchmark run them.

The README's first two ``sh`` blocks are the set-up-and-run command and the test command;
``stock-debian`` reads them the same way.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["readme_blocks"]

ROOT = Path(__file__).resolve().parent.parent


def readme_blocks(readme: Path = ROOT / "README.md") -> list[str]:
    """Every shell block of the README, in order (the first two are the quick start)."""
    text = readme.read_text(encoding="utf-8")
    return [
        block.strip()
        for block in re.findall(r"^```(?:sh|bash|shell|console)\s*\n(.*?)^```", text, re.M | re.S)
    ]
