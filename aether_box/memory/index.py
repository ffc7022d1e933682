"""The in-memory index of one collection: an int8 scan, then exact float32 re-scoring.

SQLite stays the source of truth; this is a copy kept in step with every committed write,
because a scan in RAM is many times faster than sqlite-vec's. A float32 scan reads 1.5 KB a
row (154 MB at 100k x 384) and is bound by memory bandwidth, so large collections are scanned
through an int8 copy instead (a quarter of the bytes; each row scaled by its own largest
component, dot products by numkong's SIMD kernels), and the best `shortlist` rows of that scan
are scored again exactly in float32. The results and distances are therefore exact for every
row that reaches the shortlist; the int8 error (about 1e-3 of a cosine) only decides which
rows reach it, so it is sized at many times k. Small collections and small candidate sets are
scanned in float32 directly.

Rows stay sorted by rowid (new rows always get larger rowids), so a set of rowids from an SQL
filter maps to positions with one `searchsorted`. Deleted rows are tombstoned and compacted
away once they are a quarter of the matrix.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numkong
import numpy as np

__all__ = ["Prepared", "VectorIndex", "prepare_rows", "distances_from_scores", "quantize"]

# Doubling: each growth copies every row, so growing by half copied 100k rows six times.
_GROWTH = 2.0
_MIN_CAPACITY = 1_024
# Below this share of the collection, a filter's rows are gathered rather than masked.
_GATHER_SHARE = 0.25
# Collections below this many rows are scanned in float32: the int8 scan's fixed costs win
# nothing there (a 16k x 384 float32 scan is about 1 ms).
QUANTIZED_MIN_ROWS = 16_384
# Rows re-scored in float32 after the int8 scan: at least this many, and this many per k.
# On 100k random 384-d unit vectors a shortlist of 20 already held the exact top-10 (0.98-1.0).
# Each is a random read of a float32 row (1.5 KB at 384-d): a filtered search's probe of 200
# took twice as long as a top-10 with 8 per k, from these reads alone.
SHORTLIST_MIN = 128
SHORTLIST_PER_K = 2


def prepare_rows(vectors: np.ndarray, metric: str) -> np.ndarray:
    """Rows as the index stores them: unit length for cosine, as given otherwise."""
    rows = np.asarray(vectors, dtype=np.float32)
    if metric == "cosine":
        rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return np.ascontiguousarray(rows, dtype=np.float32)


def quantize(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 codes, float32 step per row): each row scaled so its largest component is 127."""
    rows = np.atleast_2d(rows)
    peak = np.maximum(rows.max(axis=1), -rows.min(axis=1))  # no |rows| temporary
    step = np.where(peak > 0, peak / np.float32(127.0), np.float32(1.0)).astype(np.float32)
    scaled = rows * (1.0 / step)[:, None]
    np.rint(scaled, out=scaled)
    return scaled.astype(np.int8), step


@dataclass(frozen=True)
class Prepared:
    """Rows as an index stores them (see VectorIndex.prepare): made before taking its lock."""

    rows: np.ndarray
    codes: np.ndarray
    steps: np.ndarray


def distances_from_scores(scores: np.ndarray, metric: str, query_sqnorm: float) -> np.ndarray:
    """sqlite-vec's distances (smaller is closer) from the index's scores (larger is closer)."""
    if metric == "cosine":
        return 1.0 - scores
    if metric == "dot":
        return -scores
    return np.sqrt(np.maximum(query_sqnorm - scores, 0.0))


class VectorIndex:
    """Top-k search over float32 rows, for the cosine, dot or l2 metric (see the module doc)."""

    def __init__(self, dim: int, metric: str, *, quantized_min_rows: int = QUANTIZED_MIN_ROWS):
        self.dim = dim
        self.metric = metric
        self.quantized_min_rows = quantized_min_rows
        self._rows = np.empty((0, dim), np.float32)
        self._codes = np.empty((0, dim), np.int8)
        self._steps = np.empty(0, np.float32)
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
        return sum(
            a.nbytes
            for a in (
                self._rows,
                self._codes,
                self._steps,
                self._rowids,
                self._alive,
                self._sqnorms,
            )
        )

    @property
    def quantized(self) -> bool:
        """Whether searches scan the int8 copy (else the float32 rows alone)."""
        return self._n >= self.quantized_min_rows

    def arrays(self) -> dict[str, np.ndarray]:
        """The live rows as saved beside the database (see snapshot.py): copies, by rowid."""
        with self._lock:
            keep = np.flatnonzero(self._alive[: self._n])
            return {
                "rowids": self._rowids[keep],
                "rows": self._rows[keep],
                "codes": self._codes[keep],
                "steps": self._steps[keep],
            }

    @classmethod
    def from_arrays(cls, dim: int, metric: str, arrays: dict[str, np.ndarray]) -> VectorIndex:
        """An index over rows already prepared and quantised (as `arrays` returned them)."""
        index = cls(dim, metric)
        n = len(arrays["rowids"])
        index._rowids = np.ascontiguousarray(arrays["rowids"], np.int64)
        index._rows = np.ascontiguousarray(arrays["rows"], np.float32)
        index._codes = np.ascontiguousarray(arrays["codes"], np.int8)
        index._steps = np.ascontiguousarray(arrays["steps"], np.float32)
        index._alive = np.ones(n, bool)
        index._sqnorms = (
            np.einsum("ij,ij->i", index._rows, index._rows)
            if metric == "l2"
            else np.empty(n, np.float32)
        )
        index._n = n
        if index._rows.shape != (n, dim) or index._codes.shape != (n, dim):
            raise ValueError("saved index arrays do not match the collection's dimension")
        return index

    def prepare(self, vectors: np.ndarray) -> Prepared:
        """Normalise and quantise rows for `add`: the CPU work, free to overlap other work."""
        rows = prepare_rows(vectors, self.metric)
        return Prepared(rows, *quantize(rows))

    def reserve(self, extra: int) -> None:
        """Make room for `extra` more rows now, so a later `add` only copies them in."""
        with self._lock:
            if self._n + extra > len(self._rows):
                self._grow(self._n + extra)

    def add(self, rowids: np.ndarray, vectors: np.ndarray | Prepared) -> None:
        """Append rows; their rowids must be increasing and larger than any already here."""
        rowids = np.asarray(rowids, np.int64)
        if not len(rowids):
            return
        prepared = vectors if isinstance(vectors, Prepared) else self.prepare(vectors)
        rows, codes, steps = prepared.rows, prepared.codes, prepared.steps
        if len(rows) != len(rowids):
            raise ValueError("add: as many rowids as rows, please")
        with self._lock:
            if self._n and rowids[0] <= self._rowids[self._n - 1]:
                raise ValueError("rowids must grow: new rows always come after existing ones")
            end = self._n + len(rowids)
            if end > len(self._rows):
                self._grow(end)
            self._rows[self._n : end] = rows
            self._codes[self._n : end] = codes
            self._steps[self._n : end] = steps
            self._rowids[self._n : end] = rowids
            self._alive[self._n : end] = True
            if self.metric == "l2":
                self._sqnorms[self._n : end] = np.einsum("ij,ij->i", rows, rows)
            self._n = end

    def replace(self, rowids: np.ndarray, vectors: np.ndarray) -> None:
        """Overwrite the vectors of rows already in the index."""
        rows = prepare_rows(vectors, self.metric)
        codes, steps = quantize(rows)
        with self._lock:
            positions, found = self._lookup(np.asarray(rowids, np.int64))
            if not found.all() or not self._alive[positions].all():
                raise KeyError("replace: some rowids are not in the index")
            self._rows[positions] = rows
            self._codes[positions] = codes
            self._steps[positions] = steps
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
            if self.quantized:
                return self._shortlisted(q, k, keep, query_sqnorm)
            scores = self._score(self._rows[:n], q, slice(0, n))
            if keep is not None:
                scores[~keep] = -np.inf
            return self._top(
                scores, None, min(k, int(keep.sum()) if keep is not None else n), query_sqnorm
            )

    def _shortlisted(
        self, q: np.ndarray, k: int, keep: np.ndarray | None, query_sqnorm: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by an int8 scan of every row, then exact float32 scores of its shortlist."""
        n = self._n
        alive = int(keep.sum()) if keep is not None else n
        k = min(k, alive)
        if k <= 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        q_codes, q_step = quantize(q)
        approx = np.asarray(
            numkong.cdist(self._codes[:n], q_codes, metric="dot", out_dtype="float32")
        ).reshape(n)
        approx *= self._steps[:n] * q_step[0]  # back to float dot products, about
        if self.metric == "l2":
            approx = 2.0 * approx - self._sqnorms[:n]
        if keep is not None:
            approx[~keep] = -np.inf
        size = min(max(SHORTLIST_MIN, SHORTLIST_PER_K * k), alive)
        if size < n:
            shortlist = np.argpartition(approx, n - size)[n - size :]
        else:
            shortlist = np.arange(n)
        if keep is not None:
            shortlist = shortlist[keep[shortlist]]
        shortlist.sort()  # gathers in memory order
        scores = self._score(self._rows[shortlist], q, shortlist)
        return self._top(scores, shortlist, k, query_sqnorm)

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
            ("_codes", (capacity, self.dim)),
            ("_steps", (capacity,)),
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
        self._codes = np.ascontiguousarray(self._codes[keep])
        self._steps = self._steps[keep]
        self._rowids = self._rowids[keep]
        self._sqnorms = self._sqnorms[keep]
        self._alive = np.ones(len(keep), bool)
        self._n = len(keep)
        self._dead = 0
