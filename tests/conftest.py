"""Shared test set-up: fixture modules live in tests/fixtures_*.py, one per capability.

Every test runs under blockbuster: a blocking call (file or socket I/O, time.sleep, ...) made
by aether_box code on a thread that runs an event loop fails the test. The few deliberate
exceptions are allowed by name in blockbuster_rules.py, each with its reason; the box
processes the tests start run under the same rules (blockbuster_site/sitecustomize.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import blockbuster_rules
import pytest
from blockbuster import BlockBuster

pytest_plugins = [
    "fixtures_box",
    "fixtures_models",
    "fixtures_memory",
    "fixtures_engines",
    "fixtures_align",
    "fixtures_gateway",
    "fixtures_adapters",
]


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[BlockBuster]:
    """Fail any test in which aether_box code blocks an event loop."""
    bb = blockbuster_rules.start()
    try:
        yield bb
    finally:
        bb.deactivate()
