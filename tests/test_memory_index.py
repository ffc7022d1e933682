"""The in-memory exact index returns what brute force over the same vectors returns."""

from __future__ import annotations

import threading

import anyio
import numpy as np
import pytest
from fixtures_memory import clustered_vectors, unit_vectors

from aether_box.memory.core import Memory
from aether_box.memory.filters import compile_filter
from aether_box.memory.index import (
    CALIBRATION_RECALL,
    SCAN_CHUNK_MIN,
    VectorIndex,
    _best,
    _chunks,
)
from aether_box.memory.settings import MemorySettings


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
    index = VectorIndex(32, metric)
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
    index = VectorIndex(16, "cosine")
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
    index = VectorIndex(8, "dot")
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


def test_staged_rows_are_searched_only_once_added_and_survive_a_compaction_between():
    rows = unit_vectors(3_000, 8, seed=5)
    index = VectorIndex(8, "cosine")
    index.add(np.arange(1, 2_001), rows[:2_000])
    staged = index.stage(rows[2_000:2_500])  # as the box does while SQLite writes
    assert len(index) == 2_000 and 2_001 not in index.search(rows[2_000], 10)[0]
    index.add(np.arange(2_001, 2_501), staged)
    assert len(index) == 2_500 and index.search(rows[2_000], 1)[0][0] == 2_001

    # A compaction between stage and add (an upsert's removal) moves the rows: add copies
    # them again rather than publish whatever lies where they were put.
    staged = index.stage(rows[2_500:])
    before = index.nbytes
    index.remove(np.arange(1, 1_201))  # 1,200 of 2,500 dead: compacts
    assert index.nbytes < before  # new, smaller arrays
    index.add(np.arange(2_501, 3_001), staged)
    assert len(index) == 1_800
    for i in (1_500, 2_200, 2_999):
        got, _ = index.search(rows[i], 1)
        assert got[0] == i + 1


def test_k_larger_than_the_collection_returns_everything_alive():
    index = VectorIndex(4, "l2")
    assert len(index.search(np.ones(4, np.float32), 5)[0]) == 0
    index.add(np.array([1, 2, 3]), np.eye(3, 4, dtype=np.float32))
    index.remove(np.array([2]))
    got, _ = index.search(np.ones(4, np.float32), 10)
    assert sorted(got) == [1, 3]


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
def test_int8_scan_with_float_rescoring_finds_the_exact_top_k(metric):
    rows = unit_vectors(20_000, 64, seed=5) * np.float32(1.5)
    rowids = np.arange(1, 20_001)
    index = VectorIndex(64, metric, quantized_min_rows=0)  # every search takes the int8 scan
    index.add(rowids, rows)
    exact = VectorIndex(64, metric, quantized_min_rows=10**9)
    exact.add(rowids, rows)
    queries = unit_vectors(40, 64, seed=6)
    found = 0
    for query in queries:
        got, distances = index.search(query, 10)
        want, want_distances = exact.search(query, 10)
        found += len(set(got) & set(want))
        # Distances come from float32 rows, not from the int8 copy.
        where = np.searchsorted(rowids, got)
        if metric == "l2":
            np.testing.assert_allclose(
                distances, np.linalg.norm(rows[where] - query, axis=1), rtol=1e-4, atol=1e-4
            )
        np.testing.assert_allclose(distances[: len(want)], want_distances, rtol=1e-4, atol=1e-4)
    assert found / (10 * len(queries)) >= 0.99

    # Deleted rows and a broad filter (masked, not gathered) are honoured exactly.
    index.remove(rowids[::2])
    allowed = rowids[rowids % 3 == 0]
    for query in queries[:10]:
        got, _ = index.search(query, 10, candidates=allowed)
        assert len(got) == 10 and all(r % 3 == 0 and r % 2 == 0 for r in got)
        assert all(r % 2 == 0 for r in index.search(query, 10)[0])


def test_saved_arrays_rebuild_the_same_index():
    rows = unit_vectors(30_000, 32, seed=8)
    index = VectorIndex(32, "cosine")
    index.add(np.arange(1, 30_001), rows)
    index.remove(np.array([5, 6, 7]))
    copy = VectorIndex.from_arrays(32, "cosine", index.arrays())
    assert len(copy) == len(index) == 29_997
    for query in unit_vectors(5, 32, seed=9):
        a, da = index.search(query, 10)
        b, db = copy.search(query, 10)
        assert list(a) == list(b)
        np.testing.assert_array_equal(da, db)


def test_best_picks_exactly_the_largest_scores():
    rng = np.random.default_rng(3)
    scores = rng.standard_normal(200_000).astype(np.float32)
    scores[rng.integers(0, len(scores), 50_000)] = -np.inf  # rows a filter masked out
    for size in (1, 128, 3_000):
        got = _best(scores, size)
        assert len(got) == size
        assert set(got.tolist()) == set(np.argsort(-scores, kind="stable")[:size].tolist())


def test_scan_split_across_threads_finds_what_one_thread_finds():
    rows = unit_vectors(2 * SCAN_CHUNK_MIN + 5_000, 32, seed=9)
    rowids = np.arange(1, len(rows) + 1)
    split = VectorIndex(32, "cosine", quantized_min_rows=0, scan_threads=4)
    alone = VectorIndex(32, "cosine", quantized_min_rows=0, scan_threads=1)
    exact = VectorIndex(32, "cosine", quantized_min_rows=10**9)
    for index in (split, alone, exact):
        index.add(rowids, rows)
    assert len(_chunks(len(rows), split.scan_threads)) == 2
    allowed = rowids[rowids % 2 == 1]  # a broad filter: masked in every chunk
    found = 0
    for query in unit_vectors(30, 32, seed=10):
        got, distances = split.search(query, 10)
        assert list(got) == list(alone.search(query, 10)[0])
        found += len(set(got) & set(exact.search(query, 10)[0]))
        assert np.all(np.diff(distances) >= -1e-6)
        assert all(r % 2 == 1 for r in split.search(query, 10, candidates=allowed)[0])
    assert found / 300 >= 0.99


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_bit_scan_is_calibrated_on_and_finds_the_exact_top_k(metric):
    rows = clustered_vectors(40_000, 128, seed=11)
    rowids = np.arange(1, len(rows) + 1) * 2
    index = VectorIndex(128, metric, bit_scan_min_rows=20_000)
    exact = VectorIndex(128, metric, quantized_min_rows=10**9, bit_scan_min_rows=0)
    index.add(rowids[:25_000], rows[:25_000])
    assert index.needs_calibration()
    index.maybe_calibrate()  # calibrated at 25k rows
    index.add(rowids[25_000:], rows[25_000:])
    assert not index.needs_calibration()  # not yet doubled: kept
    exact.add(rowids, rows)
    assert index.calibrated_at == 25_000
    assert index.budget is not None and index.scan == "bits+rescore"
    queries = clustered_vectors(50, 128, seed=12)  # fresh draws of the same topics
    found = 0
    for query in queries:
        got, distances = index.search(query, 10)
        truth, truth_distances = exact.search(query, 10)
        found += len(set(got) & set(truth))
        # Whatever the bit scan returns carries its exact distance, closest first.
        expected = dict(zip(truth.tolist(), truth_distances.tolist(), strict=True))
        for rowid, distance in zip(got.tolist(), distances.tolist(), strict=True):
            if rowid in expected:
                assert distance == pytest.approx(expected[rowid], abs=1e-4)
        assert np.all(np.diff(distances) >= -1e-6)
        # A broad filter (a mask over half the rows) still admits only what it says, and
        # finds what the exact scan finds (it takes the int8 scan, never the bits).
        allowed = rowids[rowids % 4 == 0]
        filtered = index.search(query, 10, candidates=allowed)[0]
        assert all(r % 4 == 0 for r in filtered)
        assert list(filtered) == list(exact.search(query, 10, candidates=allowed)[0])
    assert found / 500 >= 0.99
    # Tombstones (no filter) keep the bit scan, and no removed row comes back.
    gone = rowids[::3]
    index.remove(gone)
    exact.remove(gone)
    found = 0
    for query in queries:
        got = index.search(query, 10)[0]
        assert len(got) == 10 and not set(got) & set(gone)
        found += len(set(got) & set(exact.search(query, 10)[0]))
    assert found / 500 >= 0.99


def test_bit_scan_is_declined_where_sign_bits_lose_neighbours():
    # Uniformly random vectors: no budget of a few thousand holds the true neighbours.
    rows = unit_vectors(70_000, 128, seed=13)
    index = VectorIndex(128, "cosine", bit_scan_min_rows=20_000)
    index.add(np.arange(1, len(rows) + 1), rows)
    recalls = index.calibrate()
    assert max(recalls.values()) < CALIBRATION_RECALL
    assert index.budget is None and index.scan == "int8+rescore"
    # and searches stay exact through the int8 scan
    exact = VectorIndex(128, "cosine", quantized_min_rows=10**9, bit_scan_min_rows=0)
    exact.add(np.arange(1, len(rows) + 1), rows)
    for query in unit_vectors(10, 128, seed=14):
        assert list(index.search(query, 10)[0]) == list(exact.search(query, 10)[0])


def test_saved_arrays_keep_the_calibration_and_the_bits():
    rows = clustered_vectors(30_000, 64, seed=15)
    index = VectorIndex(64, "cosine", bit_scan_min_rows=20_000)
    index.add(np.arange(1, len(rows) + 1), rows)
    index.maybe_calibrate()
    assert index.budget is not None
    copy = VectorIndex(64, "cosine", bit_scan_min_rows=20_000)
    copy.load_arrays(index.arrays())
    assert (copy.budget, copy.calibrated_at) == (index.budget, index.calibrated_at)
    off = VectorIndex(64, "cosine", bit_scan_min_rows=0)  # the setting turned it off since
    off.load_arrays(index.arrays())
    assert off.budget is None
    for query in clustered_vectors(5, 64, seed=16):
        assert list(copy.search(query, 10)[0]) == list(index.search(query, 10)[0])


def test_a_calibration_goes_no_further_than_its_pause_lets_it():
    index = VectorIndex(128, "cosine", bit_scan_min_rows=20_000)
    index.add(np.arange(1, 25_001), clustered_vectors(25_000, 128, seed=11))
    paused, go = threading.Event(), threading.Event()
    steps = []

    def pause() -> None:  # as the box's: held while a write is in progress
        steps.append(1)
        paused.set()
        go.wait()

    worker = threading.Thread(target=index.calibrate, kwargs={"pause": pause})
    worker.start()
    assert paused.wait(30)
    assert worker.is_alive() and index.budget is None and index.calibrated_at == 0
    go.set()
    worker.join()
    assert index.budget is not None and index.calibrated_at == 25_000
    assert len(steps) > 100  # a step per block of the exact pass and per sample query


def test_the_box_calibrates_between_writes_and_then_searches_scan_sign_bits(tmp_path):
    memory = Memory(MemorySettings(db=str(tmp_path / "memory.db"), bit_scan_min_rows=20_000))
    rows = clustered_vectors(30_000, 128, seed=11)
    keys = [str(i) for i in range(len(rows))]

    async def ingest_then_search() -> None:
        await memory.open()
        try:
            await memory.create("docs", "m", 128, "cosine")
            # While a write runs, a calibration's steps wait (and resume once it is done).
            assert await memory._write(memory._writes_idle.is_set) is False
            assert memory._writes_idle.is_set()
            for start in range(0, len(rows), 10_000):  # due at 20k, during the last add
                part = slice(start, start + 10_000)
                await memory.add("docs", keys[part], [None] * 10_000, ["{}"] * 10_000, rows[part])
            index = next(iter(memory.indexes.values()))
            # The calibrating thread runs one job at a time: this one runs after it.
            await anyio.to_thread.run_sync(lambda: memory._calibrator.submit(int).result())
            assert not memory.calibrating(index)
            assert index.calibrated_at >= 20_000 and index.scan == "bits+rescore"
            hits = await memory.search("docs", rows[7], 10, where=compile_filter(None))
            assert hits[0].record.id == "7"
            assert index.searches == {"bits+rescore": 1}
        finally:
            await memory.close()

    anyio.run(ingest_then_search)
