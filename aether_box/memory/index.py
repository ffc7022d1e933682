"""An exact in-memory float32 index of one collection: brute-force top-k with numpy.

SQLite stays the source of truth; this is a copy kept in step with every committed write,
because one matrix-vector product over the whole collection is several times faster than
sqlite-vec's scan. Rows stay sorted by rowid (new rows always get larger rowids), so a set of
rowids from an SQL filter maps to positions with one `searchsorted`. Deleted rows are
tombstoned and compacted away once they are a quarter of the matrix.
"""

from __future__ import annotations

import math
import threading

import numpy as np

__all__ = ["ExactIndex", "prepare_rows", "distances_from_scores"]

_GROWTH = 1.5
_MIN_CAPACITY = 1_024
# Below this share of the collection, a filter's rows are gathered rather than masked.
_GATHER_SHARE = 0.25


def prepare_rows(vectors: np.ndarray, metric: str) -> np.ndarray:
    """Rows as the index stores them: unit length for cosine, as given otherwise."""
    rows = np.asarray(vectors, dtype=np.float32)
    if metric == "cosine":
        rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return np.ascontiguousarray(rows, dtype=np.float32)


def distances_from_scores(scores: np.ndarray, metric: str, query_sqnorm: float) -> np.ndarray:
    """sqlite-vec's distances (smaller is closer) from the index's scores (larger is closer)."""
    if metric == "cosine":
        return 1.0 - scores
    if metric == "dot":
        return -scores
    return np.sqrt(np.maximum(query_sqnorm - scores, 0.0))


class ExactIndex:
    """Exact top-k search over float32 rows, for the cosine, dot or l2 metric."""

    def __init__(self, dim: int, metric: str) -> None:
        self.dim = dim
        self.metric = metric
        self._rows = np.empty((0, dim), np.float32)
        self._rowids = np.empty(0, np.int64)
        self._alive = np.empty(0, bool)
        self._sqnorms = np.empty(0, np.float32)  # l2 only: |x|^2 per row
        self._n = 0
        self._dead = 0
        # Searches read while writes append, replace and tombstone rows: one lock keeps them apart.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._n - self._dead

    @property
    def nbytes(self) -> int:
        return self._rows.nbytes + self._rowids.nbytes + self._alive.nbytes + self._sqnorms.nbytes

    def add(self, rowids: np.ndarray, vectors: np.ndarray) -> None:
        """Append rows; their rowids must be increasing and larger than any already here."""
        rowids = np.asarray(rowids, np.int64)
        if not len(rowids):
            return
        rows = prepare_rows(vectors, self.metric)
        with self._lock:
            if self._n and rowids[0] <= self._rowids[self._n - 1]:
                raise ValueError("rowids must grow: new rows always come after existing ones")
            end = self._n + len(rowids)
            if end > len(self._rows):
                self._grow(end)
            self._rows[self._n : end] = rows
            self._rowids[self._n : end] = rowids
            self._alive[self._n : end] = True
            if self.metric == "l2":
                self._sqnorms[self._n : end] = np.einsum("ij,ij->i", rows, rows)
            self._n = end

    def replace(self, rowids: np.ndarray, vectors: np.ndarray) -> None:
        """Overwrite the vectors of rows already in the index."""
        rows = prepare_rows(vectors, self.metric)
        with self._lock:
            positions, found = self._lookup(np.asarray(rowids, np.int64))
            if not found.all() or not self._alive[positions].all():
                raise KeyError("replace: some rowids are not in the index")
            self._rows[positions] = rows
            if self.metric == "l2":
                self._sqnorms[positions] = np.einsum("ij,ij->i", rows, rows)

    def remove(self, rowids: np.ndarray) -> None:
        """Tombstone rows (absent rowids are ignored); compacts when a quarter are dead."""
        with self._lock:
            positions = self._positions(np.asarray(rowids, np.int64))
            self._alive[positions] = False
            self._dead = int(self._n - np.count_nonzero(self._alive[: self._n]))
            if self._dead and self._dead >= max(_MIN_CAPACITY, self._n // 4):
                self._compact()

    def search(
        self, query: np.ndarray, k: int, candidates: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(rowids, distances) of the k closest rows, closest first, among `candidates` if given."""
        q = np.asarray(query, np.float32).reshape(-1)
        query_sqnorm = float(q @ q)
        if self.metric == "cosine":
            # A Python float keeps q float32 (a numpy float64 would upcast the whole scan).
            q = q / math.sqrt(query_sqnorm)
        with self._lock:
            n = self._n
            if candidates is not None:
                positions = self._positions(np.asarray(candidates, np.int64))
                if len(positions) < _GATHER_SHARE * n:
                    scores = self._score(self._rows[positions], q, positions)
                    return self._top(scores, positions, k, query_sqnorm)
                keep = np.zeros(n, bool)
                keep[positions] = True
            else:
                keep = self._alive[:n] if self._dead else None
            scores = self._score(self._rows[:n], q, slice(0, n))
            if keep is not None:
                scores[~keep] = -np.inf
            return self._top(
                scores, None, min(k, int(keep.sum()) if keep is not None else n), query_sqnorm
            )

    def _score(self, rows: np.ndarray, q: np.ndarray, where: np.ndarray | slice) -> np.ndarray:
        scores = rows @ q
        if self.metric == "l2":
            # |x - q|^2 = |x|^2 - 2 x.q + |q|^2; the last term is the same for every row.
            scores = 2.0 * scores - self._sqnorms[where]
        return scores

    def _top(
        self, scores: np.ndarray, positions: np.ndarray | None, k: int, query_sqnorm: float
    ) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, len(scores))
        if k <= 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        if k < len(scores):
            top = np.argpartition(-scores, k - 1)[:k]
        else:
            top = np.arange(len(scores))
        top = top[np.argsort(-scores[top], kind="stable")]
        chosen = top if positions is None else positions[top]
        distances = distances_from_scores(scores[top], self.metric, query_sqnorm)
        return self._rowids[chosen].copy(), distances.astype(np.float32)

    def _lookup(self, rowids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions, found) for `rowids`, in their order; `found` marks the ones present."""
        n = self._n
        if not n:
            return np.zeros(len(rowids), np.int64), np.zeros(len(rowids), bool)
        positions = np.minimum(np.searchsorted(self._rowids[:n], rowids), n - 1)
        return positions, self._rowids[positions] == rowids

    def _positions(self, rowids: np.ndarray) -> np.ndarray:
        """Sorted positions of the live rows among `rowids` (others are skipped)."""
        positions, found = self._lookup(rowids)
        positions = positions[found]
        return np.unique(positions[self._alive[positions]])

    def _grow(self, needed: int) -> None:
        capacity = max(_MIN_CAPACITY, int(needed * _GROWTH))
        n = self._n
        for name, shape in (
            ("_rows", (capacity, self.dim)),
            ("_rowids", (capacity,)),
            ("_alive", (capacity,)),
            ("_sqnorms", (capacity,)),
        ):
            old = getattr(self, name)
            new = np.empty(shape, old.dtype)
            new[:n] = old[:n]
            setattr(self, name, new)

    def _compact(self) -> None:
        keep = np.flatnonzero(self._alive[: self._n])
        self._rows = np.ascontiguousarray(self._rows[keep])
        self._rowids = self._rowids[keep]
        self._sqnorms = self._sqnorms[keep]
        self._alive = np.ones(len(keep), bool)
        self._n = len(keep)
        self._dead = 0
