"""Fixtures for memory tests: a box with the memory service, and vectors to store in it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fixtures_box import BoxInThread, wait_for


def unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """n random float32 vectors of length 1."""
    rows = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def clustered_vectors(n: int, dim: int, seed: int, topics: int = 500) -> np.ndarray:
    """Rows around `topics` random centres (the same for every seed), as text embeddings
    group by topic."""
    centres = np.random.default_rng(dim).standard_normal((topics, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    rows = centres[rng.integers(0, topics, n)] + 0.6 * rng.standard_normal((n, dim)).astype(
        np.float32
    )
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def wait_for_memory(box: Any, timeout: float = 30.0) -> None:
    """Wait until a box process serves `memory` (its bus answers before every component runs)."""
    with box.client(timeout=5) as client:
        wait_for(lambda: "memory" in client.status()["services"], timeout, "the memory service")


@pytest.fixture
def memory_box(data_dir: Path) -> Iterator[BoxInThread]:
    """A running box (its memory database in the test's data dir)."""
    running = BoxInThread(data_dir)
    yield running
    running.stop()


@pytest.fixture
def sqlite_vec_box(data_dir: Path) -> Iterator[BoxInThread]:
    """A running box whose memory searches sqlite-vec directly (no in-memory index)."""
    running = BoxInThread(data_dir, overrides={"memory": {"index": "sqlite-vec"}})
    yield running
    running.stop()
