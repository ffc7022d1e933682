"""The in-memory exact index returns what brute force over the same vectors returns."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures_memory import unit_vectors

from aether_box.memory.index import ExactIndex


def brute_force(rows: np.ndarray, query: np.ndarray, k: int, metric: str) -> np.ndarray:
    """Positions of the k closest rows, computed the plain way."""
    if metric == "cosine":
        unit_rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        scores = unit_rows @ (query / np.linalg.norm(query))
    elif metric == "dot":
        scores = rows @ query
    else:
        scores = -np.linalg.norm(rows - query, axis=1)
    return np.argsort(-scores, kind="stable")[:k]


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
def test_top_k_matches_brute_force(metric):
    rng = np.random.default_rng(1)
    rows = rng.standard_normal((3_000, 32)).astype(np.float32)
    rowids = np.arange(10, 10 + len(rows)) * 3  # rowids need not be dense
    index = ExactIndex(32, metric)
    index.add(rowids[:1_000], rows[:1_000])
    index.add(rowids[1_000:], rows[1_000:])  # grows past its first capacity
    for query in rng.standard_normal((20, 32)).astype(np.float32):
        got, distances = index.search(query, 10)
        assert list(got) == list(rowids[brute_force(rows, query, 10, metric)])
        assert np.all(np.diff(distances) >= -1e-6)  # closest first
    if metric == "l2":
        expected = np.linalg.norm(rows[np.searchsorted(rowids, got)] - query, axis=1)
        np.testing.assert_allclose(distances, expected, rtol=1e-3, atol=1e-3)


def test_remove_replace_and_candidates():
    rows = unit_vectors(5_000, 16)
    rowids = np.arange(1, 5_001)
    index = ExactIndex(16, "cosine")
    index.add(rowids, rows)
    query = rows[42]
    assert index.search(query, 1)[0][0] == 43

    index.remove(np.array([43, 99_999]))  # an absent rowid is ignored
    assert 43 not in index.search(query, 50)[0]
    assert len(index) == 4_999

    index.replace(np.array([7]), -query[None, :] * 3)
    index.replace(np.array([8]), query[None, :] * 3)  # cosine: length does not matter
    top, distances = index.search(query, 1)
    assert top[0] == 8 and distances[0] == pytest.approx(0.0, abs=1e-6)
    assert index.search(-query, 1)[0][0] == 7

    few = np.array([100, 200, 300, 43])  # a selective filter: 43 is deleted
    got, _ = index.search(query, 10, candidates=few)
    assert sorted(got) == [100, 200, 300]
    many = np.arange(1, 4_000)  # a broad filter takes the masked path
    got, _ = index.search(query, 5, candidates=many)
    assert 8 in got and all(r < 4_000 and r != 43 for r in got)

    with pytest.raises(ValueError, match="rowids must grow"):
        index.add(np.array([5]), rows[:1])
    with pytest.raises(KeyError):
        index.replace(np.array([43]), rows[:1])


def test_compaction_keeps_results_right():
    rows = unit_vectors(8_000, 8, seed=3)
    rowids = np.arange(1, 8_001)
    index = ExactIndex(8, "dot")
    index.add(rowids, rows)
    gone = rowids[:4_000]
    index.remove(gone)  # half dead: compacts
    assert len(index) == 4_000 and index.nbytes < 8_000 * 8 * 4
    query = rows[6_000]
    got, _ = index.search(query, 10)
    expected = rowids[4_000:][brute_force(rows[4_000:], query, 10, "dot")]
    assert list(got) == list(expected)
    index.add(np.array([9_000]), query[None, :])
    assert index.search(query, 1)[0][0] in (6_001, 9_000)


def test_k_larger_than_the_collection_returns_everything_alive():
    index = ExactIndex(4, "l2")
    assert len(index.search(np.ones(4, np.float32), 5)[0]) == 0
    index.add(np.array([1, 2, 3]), np.eye(3, 4, dtype=np.float32))
    index.remove(np.array([2]))
    got, _ = index.search(np.ones(4, np.float32), 10)
    assert sorted(got) == [1, 3]
