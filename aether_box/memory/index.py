"""The in-memory index of one collection: a quantised scan, then exact float32 re-scoring.

SQLite stays the source of truth; this is a copy kept in step with every committed write,
because a scan in RAM is many times faster than sqlite-vec's. A float32 scan reads 1.5 KB a
row (154 MB at 100k x 384) and is bound by memory bandwidth, so large collections are scanned
through an int8 copy instead (a quarter of the bytes; each row scaled by its own largest
component, dot products by numkong's SIMD kernels), and the best `shortlist` rows of that scan
are scored again exactly in float32. The results and distances are therefore exact for every
row that reaches the shortlist; the int8 error (about 1e-3 of a cosine) only decides which
rows reach it, so it is sized at many times k. Small collections and small candidate sets are
scanned in float32 directly.

Even int8 reads 384 MB a query at 1M x 384. Large collections therefore also keep one sign
bit per component (48 bytes a row at 384-d) and, where their own rows show it is safe, scan
those instead: Hamming distances (faiss's popcount kernels) pick `budget` candidates, which
are re-scored exactly in float32. Whether sign bits keep the true neighbours depends on the
data: on text embeddings (clustered, low intrinsic dimension) a budget of a few hundred holds
the exact top-10; on uniformly random unit vectors, where every row is about as far as any
other, no small budget does. So `calibrate` measures it on the collection itself (its own
rows' nearest neighbours, by the exact path against the bit path) and turns the bit scan on
only at the smallest budget whose recall@10 reaches CALIBRATION_RECALL; otherwise searches
keep the int8 scan. Calibration runs again each time the collection doubles.

Rows stay sorted by rowid (new rows always get larger rowids), so a set of rowids from an SQL
filter maps to positions with one `searchsorted`. Deleted rows are tombstoned and compacted
away once they are a quarter of the matrix.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import faiss  # type: ignore[import-untyped]
import numkong
import numpy as np

# One Hamming scan per search is one query: faiss's OpenMP threads only add hand-off cost
# there (a 1M-row scan took 3 ms on one thread, 34 ms on two).
faiss.omp_set_num_threads(1)

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
# Collections of at least this many rows may scan sign bits first (see the module doc).
BINARY_MIN_ROWS = 65_536
# Candidates a bit scan may keep for re-scoring, smallest first: calibration takes the first
# that reaches CALIBRATION_RECALL. Each costs a random read of its float32 row (1.5 KB).
BINARY_BUDGETS = (256, 512, 1024, 2048, 4096)
# Above the 0.99 wanted: 100 sample rows measure 1,000 neighbours, and on the benchmark's
# clustered data a budget that reached 0.995 on 32 rows gave 0.989 on fresh queries.
CALIBRATION_RECALL = 0.997
CALIBRATION_QUERIES = 100
K_CALIBRATION = 10
# Rows a step of the exact pass of a calibration: about 20 ms on one core (100 queries).
_CALIBRATION_BLOCK = 32_768
# A filter that keeps few rows would need the budget scaled past this: int8 scan instead.
BINARY_BUDGET_MAX = 16_384


def prepare_rows(vectors: np.ndarray, metric: str) -> np.ndarray:
    """Rows as the index stores them: unit length for cosine, as given otherwise."""
    rows = np.asarray(vectors, dtype=np.float32)
    if metric == "cosine":
        rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return np.ascontiguousarray(rows, dtype=np.float32)


def sign_bits(rows: np.ndarray) -> np.ndarray:
    """One bit per component (set where it is positive), packed 8 to a byte."""
    return np.packbits(np.atleast_2d(rows) > 0, axis=1)


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
    bits: np.ndarray
    # Where `stage` copied them: the index's (rows, codes, steps, bits) arrays and the position.
    staged: tuple[tuple[np.ndarray, ...], int] | None = None


def distances_from_scores(scores: np.ndarray, metric: str, query_sqnorm: float) -> np.ndarray:
    """sqlite-vec's distances (smaller is closer) from the index's scores (larger is closer)."""
    if metric == "cosine":
        return 1.0 - scores
    if metric == "dot":
        return -scores
    return np.sqrt(np.maximum(query_sqnorm - scores, 0.0))


class VectorIndex:
    """Top-k search over float32 rows, for the cosine, dot or l2 metric (see the module doc)."""

    def __init__(
        self,
        dim: int,
        metric: str,
        *,
        quantized_min_rows: int = QUANTIZED_MIN_ROWS,
        scan_threads: int = 0,
        bit_scan_min_rows: int = BINARY_MIN_ROWS,
    ):
        self.dim = dim
        self.metric = metric
        self.quantized_min_rows = quantized_min_rows
        # 0: never scan sign bits (calibration never runs).
        self.bit_scan_min_rows = bit_scan_min_rows
        # Threads one int8 scan is split across (0: one per core): memory bandwidth, not
        # arithmetic, bounds a scan, and one core alone does not draw all of it.
        self.scan_threads = scan_threads or (os.cpu_count() or 1)
        self._rows = np.empty((0, dim), np.float32)
        self._codes = np.empty((0, dim), np.int8)
        self._steps = np.empty(0, np.float32)
        self._bits = np.empty((0, _bit_bytes(dim)), np.uint8)
        self._rowids = np.empty(0, np.int64)
        self._alive = np.empty(0, bool)
        self._sqnorms = np.empty(0, np.float32)  # l2 only: |x|^2 per row
        self._n = 0
        self._dead = 0
        # The bit scan's candidate budget (None: scan int8), and the size it was chosen at.
        self.budget: int | None = None
        self.calibrated_at = 0
        # Searches by the first stage that served them (see `scan`), for status and metrics.
        self.searches: dict[str, int] = {}
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
                self._bits,
                self._rowids,
                self._alive,
                self._sqnorms,
            )
        )

    @property
    def quantized(self) -> bool:
        """Whether searches scan the int8 copy (else the float32 rows alone)."""
        return self._n >= self.quantized_min_rows

    @property
    def scan(self) -> str:
        """The first stage searches use: "float32", "int8+rescore" or "bits+rescore"."""
        if self.budget is not None:
            return "bits+rescore"
        return "int8+rescore" if self.quantized else "float32"

    def arrays(self) -> dict[str, np.ndarray]:
        """The live rows as saved beside the database (see snapshot.py): copies, by rowid."""
        with self._lock:
            keep = np.flatnonzero(self._alive[: self._n])
            return {
                "rowids": self._rowids[keep],
                "rows": self._rows[keep],
                "codes": self._codes[keep],
                "steps": self._steps[keep],
                "bits": self._bits[keep],
                "calibration": np.array([self.budget or 0, self.calibrated_at], np.int64),
            }

    @classmethod
    def from_arrays(cls, dim: int, metric: str, arrays: dict[str, np.ndarray]) -> VectorIndex:
        """An index over rows already prepared and quantised (as `arrays` returned them)."""
        index = cls(dim, metric)
        index.load_arrays(arrays)
        return index

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Take over rows already prepared and quantised (as `arrays` returned them)."""
        n = len(arrays["rowids"])
        rows = np.ascontiguousarray(arrays["rows"], np.float32)
        codes = np.ascontiguousarray(arrays["codes"], np.int8)
        if rows.shape != (n, self.dim) or codes.shape != (n, self.dim):
            raise ValueError("saved index arrays do not match the collection's dimension")
        with self._lock:
            self._rowids = np.ascontiguousarray(arrays["rowids"], np.int64)
            self._rows = rows
            self._codes = codes
            self._steps = np.ascontiguousarray(arrays["steps"], np.float32)
            self._bits = (
                np.ascontiguousarray(arrays["bits"], np.uint8)
                if "bits" in arrays
                else sign_bits(rows)
            )
            budget, calibrated_at = arrays.get("calibration", np.zeros(2, np.int64)).tolist()
            self.budget = (budget or None) if self.bit_scan_min_rows else None
            self.calibrated_at = int(calibrated_at)
            self._alive = np.ones(n, bool)
            self._sqnorms = (
                np.einsum("ij,ij->i", rows, rows)
                if self.metric == "l2"
                else np.empty(n, np.float32)
            )
            self._n = n
            self._dead = 0

    def prepare(self, vectors: np.ndarray) -> Prepared:
        """Normalise and quantise rows for `add`: the CPU work, free to overlap other work."""
        rows = prepare_rows(vectors, self.metric)
        return Prepared(rows, *quantize(rows), sign_bits(rows))

    def stage(self, vectors: np.ndarray) -> Prepared:
        """Prepare rows for `add` and copy them into room after the last row, so that `add`
        only has to publish them: all the CPU and memory work of an append (a 20 MB copy at
        10,000 x 384), free to overlap other work, as the box's SQLite write.

        For the one writer, which changes nothing else in the index before its `add` (if
        something moved the rows meanwhile, `add` copies them again). Searches read rows up
        to the last published one only, so the copy needs no lock.
        """
        prepared = self.prepare(vectors)
        m = len(prepared.rows)
        with self._lock:
            if self._n + m > len(self._rows):
                self._grow(self._n + m)
            start = self._n
            arrays = (self._rows, self._codes, self._steps, self._bits)
        parts = (prepared.rows, prepared.codes, prepared.steps, prepared.bits)
        for array, part in zip(arrays, parts, strict=True):
            array[start : start + m] = part
        return replace(prepared, staged=(arrays, start))

    def add(self, rowids: np.ndarray, vectors: np.ndarray | Prepared) -> None:
        """Append rows; their rowids must be increasing and larger than any already here."""
        rowids = np.asarray(rowids, np.int64)
        if not len(rowids):
            return
        prepared = vectors if isinstance(vectors, Prepared) else self.prepare(vectors)
        rows, codes, steps, bits = prepared.rows, prepared.codes, prepared.steps, prepared.bits
        if len(rows) != len(rowids):
            raise ValueError("add: as many rowids as rows, please")
        with self._lock:
            if self._n and rowids[0] <= self._rowids[self._n - 1]:
                raise ValueError("rowids must grow: new rows always come after existing ones")
            end = self._n + len(rowids)
            if not self._in_place(prepared):
                if end > len(self._rows):
                    self._grow(end)
                self._rows[self._n : end] = rows
                self._codes[self._n : end] = codes
                self._steps[self._n : end] = steps
                self._bits[self._n : end] = bits
            self._rowids[self._n : end] = rowids
            self._alive[self._n : end] = True
            if self.metric == "l2":
                self._sqnorms[self._n : end] = np.einsum("ij,ij->i", rows, rows)
            self._n = end

    def _in_place(self, prepared: Prepared) -> bool:
        """Whether `stage` copied these rows right after the last row, and they are still there
        (no growth or compaction has replaced the arrays since)."""
        if prepared.staged is None:
            return False
        arrays, start = prepared.staged
        current = (self._rows, self._codes, self._steps, self._bits)
        return start == self._n and all(a is b for a, b in zip(arrays, current, strict=True))

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
            self._bits[positions] = sign_bits(rows)
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
                    self._count("float32")
                    scores = self._score(self._rows[positions], q, positions)
                    return self._top(scores, positions, k, query_sqnorm)
                keep = np.zeros(n, bool)
                keep[positions] = True
            else:
                keep = self._alive[:n] if self._dead else None
            # Not for a filter's rows: a filter that the nearest rows fail (or the search would
            # not have come here, see Memory._exact_search) keeps rows away from the query,
            # where sign bits tell neighbours apart poorly (recall 0.86 on a test's far half).
            if self.budget is not None and candidates is None:
                found = self._bit_shortlisted(q, k, keep, query_sqnorm)
                if found is not None:
                    self._count("bits+rescore")
                    return found
            if self.quantized:
                self._count("int8+rescore")
                return self._shortlisted(q, k, keep, query_sqnorm)
            self._count("float32")
            scores = self._score(self._rows[:n], q, slice(0, n))
            if keep is not None:
                scores[~keep] = -np.inf
            return self._top(
                scores, None, min(k, int(keep.sum()) if keep is not None else n), query_sqnorm
            )

    def _count(self, scan: str) -> None:
        self.searches[scan] = self.searches.get(scan, 0) + 1  # under the lock

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
        size = min(max(SHORTLIST_MIN, SHORTLIST_PER_K * k), alive)
        bounds = _chunks(n, self.scan_threads)
        # Each chunk is scanned and cut to its own best `size` on its own core (numkong and
        # numpy release the GIL); the union of the chunks' shortlists holds the overall one.
        parts = _scan_pool().map(
            lambda span: self._scan_chunk(span, q_codes, float(q_step[0]), keep, size),
            bounds[1:],
        )
        first = self._scan_chunk(bounds[0], q_codes, float(q_step[0]), keep, size)
        found = [first, *parts]
        positions = np.concatenate([p for p, _ in found])
        approx = np.concatenate([a for _, a in found])
        if len(positions) > size:
            positions = positions[_best(approx, size)]
        if keep is not None:
            positions = positions[keep[positions]]
        shortlist = np.sort(positions)  # gathers in memory order
        scores = self._score(self._rows[shortlist], q, shortlist)
        return self._top(scores, shortlist, k, query_sqnorm)

    def _bit_shortlisted(
        self, q: np.ndarray, k: int, keep: np.ndarray | None, query_sqnorm: float
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Top-k by Hamming distance of sign bits, then exact float32 scores of the budget.

        `keep` masks out tombstoned rows. None (the caller scans int8 instead) when so few
        rows are alive that the budget would grow past its limit, or when fewer candidates
        are alive than expected.
        """
        n = self._n
        # Calibrated for the top 10: more results want proportionally more candidates, and
        # rows a filter drops still take places among the nearest.
        wanted = (self.budget or BINARY_BUDGETS[-1]) * math.ceil(k / K_CALIBRATION)
        budget = wanted
        if keep is not None:
            budget = math.ceil(wanted * n / max(int(np.count_nonzero(keep)), 1))
            if budget > BINARY_BUDGET_MAX:
                return None
        found, _ = _hamming_top(self._bits[:n], sign_bits(q), max(min(budget, n), 1))
        if keep is not None:
            found = found[keep[found]]
            if len(found) < min(wanted, int(np.count_nonzero(keep))):
                return None
        found = np.sort(found)  # gathers in memory order
        size = max(SHORTLIST_MIN, SHORTLIST_PER_K * k)
        if len(found) > size:
            # The candidates' int8 codes are a quarter of their float32 rows' bytes: they cut
            # the candidates to the shortlist, as in the int8 scan, before the exact scores.
            q_codes, q_step = quantize(q)
            approx = np.empty(len(found), np.float32)
            numkong.cdist(
                self._codes[found],
                q_codes,
                metric="dot",
                out_dtype="float32",
                out=approx.reshape(-1, 1),
            )
            approx *= self._steps[found]
            if self.metric == "l2":
                approx *= 2.0 * float(q_step[0])
                approx -= self._sqnorms[found]
            found = np.sort(found[_best(approx, size)])
        shortlist = found
        scores = self._score(self._rows[shortlist], q, shortlist)
        return self._top(scores, shortlist, k, query_sqnorm)

    def needs_calibration(self) -> bool:
        """Whether `calibrate` is due: the collection is large enough and has doubled since."""
        n = len(self)
        return bool(self.bit_scan_min_rows) and n >= max(
            self.bit_scan_min_rows, 2 * self.calibrated_at
        )

    def maybe_calibrate(self) -> None:
        """Calibrate (see `calibrate`) if it is due."""
        if self.needs_calibration():
            self.calibrate()

    def calibrate(
        self,
        queries: int = CALIBRATION_QUERIES,
        seed: int = 0,
        pause: Callable[[], object] | None = None,
    ) -> dict[int, float]:
        """Choose the bit scan's budget from the collection's own rows; returns recall by budget.

        Each sample row's nearest other rows by an exact float32 scan (one matrix product for
        all the sample) are the truth; the bit scan's candidates, taken nearest first in
        Hamming distance and re-scored exactly, are measured against it at every budget.
        The work reads the arrays as they were when it began, outside the lock, so searches
        and writes go on meanwhile (the box runs it on a thread of its own, off the write
        path: a second to a few at 1M rows); the budget is swapped in at the end. `pause` is
        called between steps of a few tens of milliseconds each: the box's returns once no
        write is in progress, so calibrating never takes a core from a write.
        """
        pause = pause or _go_on
        want = K_CALIBRATION + 1  # the row itself and its nearest others
        with self._lock:
            n = self._n
            # Writes replace these arrays (growth, compaction) rather than shrink them, and a
            # vector replaced in place meanwhile only shifts the estimate a little.
            view = _View(self._rows, self._bits, self._alive[:n].copy(), self._sqnorms, n)
        live = np.flatnonzero(view.alive)
        if not self.bit_scan_min_rows or len(live) < self.bit_scan_min_rows:
            return {}
        sample = np.random.default_rng(seed).choice(live, min(queries, len(live)), False)
        qs = view.rows[sample]
        largest = min(BINARY_BUDGETS[-1], n)
        # Each sample row's bit-scan candidates, nearest first in Hamming distance (-1 pads
        # a row with fewer live ones); the exact pass scores them as it goes, so no candidate
        # row is gathered again (100 x 4,096 random reads of 1.5 KB).
        candidates = np.full((len(qs), largest), -1, np.int64)
        for i, q in enumerate(qs):
            pause()
            found, hamming = _hamming_top(view.bits[:n], sign_bits(q), largest)
            alive = view.alive[found]
            found, hamming = found[alive], hamming[alive]
            candidates[i, : len(found)] = found[np.argsort(hamming, kind="stable")]
        truth, scored = _exact_tops(view, qs, want, self.metric, pause, candidates)
        hits = dict.fromkeys(BINARY_BUDGETS, 0)
        for position, true, found, scores in zip(sample, truth, candidates, scored, strict=True):
            kept = found >= 0
            found, scores = found[kept], scores[kept]
            others = set(true.tolist()) - {int(position)}
            for budget in BINARY_BUDGETS:
                top = found[:budget][np.argsort(-scores[:budget], kind="stable")[:want]]
                hits[budget] += len(others & set(top.tolist()))
        total = max(len(sample) * K_CALIBRATION, 1)
        recalls = {b: hits[b] / total for b in BINARY_BUDGETS}
        # A budget past an eighth of the rows saves too little of the int8 scan to pay.
        budget = next(
            (b for b in BINARY_BUDGETS if recalls[b] >= CALIBRATION_RECALL and b <= len(live) // 8),
            None,
        )
        with self._lock:
            self.budget, self.calibrated_at = budget, len(live)
        return recalls

    def _scan_chunk(
        self,
        span: tuple[int, int],
        q_codes: np.ndarray,
        q_step: float,
        keep: np.ndarray | None,
        size: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(positions, approximate scores) of the best `size` rows of rows [start, end)."""
        start, end = span
        approx = np.empty(end - start, np.float32)
        numkong.cdist(
            self._codes[start:end],
            q_codes,
            metric="dot",
            out_dtype="float32",
            out=approx.reshape(-1, 1),
        )
        approx *= self._steps[start:end]  # back to float dot products, about
        approx *= np.float32(q_step)
        if self.metric == "l2":
            approx *= 2.0
            approx -= self._sqnorms[start:end]
        if keep is not None:
            approx[~keep[start:end]] = -np.inf
        if end - start <= size:
            return np.arange(start, end), approx
        best = _best(approx, size)
        return best + start, approx[best]

    def _score(self, rows: np.ndarray, q: np.ndarray, where: np.ndarray | slice) -> np.ndarray:
        scores = _dots(rows, q)
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
            ("_bits", (capacity, _bit_bytes(self.dim))),
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
        self._bits = np.ascontiguousarray(self._bits[keep])
        self._rowids = self._rowids[keep]
        self._sqnorms = self._sqnorms[keep]
        self._alive = np.ones(len(keep), bool)
        self._n = len(keep)
        self._dead = 0


# Rows per chunk of a parallel scan, at least: below this a thread's hand-off costs more than
# the scan it saves (a 32k-row int8 scan is about a quarter of a millisecond).
SCAN_CHUNK_MIN = 32_768
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _scan_pool() -> ThreadPoolExecutor:
    """The threads that scan chunks beside the searching thread (one per extra core)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max(1, (os.cpu_count() or 1) - 1), thread_name_prefix="memory-scan"
            )
        return _pool


def _chunks(n: int, threads: int) -> list[tuple[int, int]]:
    """[start, end) spans splitting n rows among up to `threads` scanners."""
    parts = max(1, min(threads, n // SCAN_CHUNK_MIN))
    edges = np.linspace(0, n, parts + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def _best(scores: np.ndarray, size: int) -> np.ndarray:
    """Positions of the `size` largest scores, in no order.

    argpartition over a million scores costs as much as the int8 scan itself, so large arrays
    are first cut at a threshold read off a strided sample (with a margin that keeps well over
    `size` above it), and only the survivors are partitioned.
    """
    n = len(scores)
    if size >= n:
        return np.arange(n)
    if n >= 32 * size and n >= 32_768:
        stride = max(1, n // 16_384)
        sample = scores[::stride]
        rank = min(len(sample) - 1, int(2 * size * len(sample) / n) + 16)
        threshold = np.partition(sample, len(sample) - 1 - rank)[len(sample) - 1 - rank]
        survivors = np.flatnonzero(scores >= threshold)
        if len(survivors) >= size:
            return survivors[np.argpartition(scores[survivors], len(survivors) - size)[-size:]]
    return np.argpartition(scores, n - size)[n - size :]


@dataclass(frozen=True)
class _View:
    """An index's arrays as one calibration reads them (see VectorIndex.calibrate)."""

    rows: np.ndarray
    bits: np.ndarray
    alive: np.ndarray
    sqnorms: np.ndarray
    n: int


def _exact_tops(
    view: _View,
    qs: np.ndarray,
    want: int,
    metric: str,
    pause: Callable[[], object],
    candidates: np.ndarray,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Positions of each query's `want` best live rows by exact float32 scores, and the
    scores of each query's `candidates` (positions, -1 for none: -inf) on the way."""
    best = np.full((len(qs), want), -np.inf, np.float32)
    where = np.zeros((len(qs), want), np.int64)
    picked = np.full(candidates.shape, -np.inf, np.float32)
    # numkong's packed product on this thread, not `rows @ qs.T`: OpenBLAS would spread it
    # over its own threads, on every core, beside whatever else runs (searches, a write);
    # and not numkong's cdist, a dot product a pair: 3x the time (59 against 185 ms, 32k x
    # 100 x 384). The queries are packed once; it accumulates in float64.
    packed = numkong.dots_pack(np.ascontiguousarray(qs, np.float32), dtype="f32")
    for start in range(0, view.n, _CALIBRATION_BLOCK):
        pause()
        end = min(view.n, start + _CALIBRATION_BLOCK)
        block = np.asarray(numkong.dots_packed(np.ascontiguousarray(view.rows[start:end]), packed))
        # One row a query (C order), so each partition below runs over contiguous memory.
        scores = np.ascontiguousarray(block.T, np.float32)
        if metric == "l2":
            scores = 2.0 * scores - view.sqnorms[start:end]
        scores[:, ~view.alive[start:end]] = -np.inf
        q, c = np.nonzero((candidates >= start) & (candidates < end))
        picked[q, c] = scores[q, candidates[q, c] - start]
        scores = np.concatenate([best, scores], axis=1)
        positions = np.concatenate(
            [where, np.broadcast_to(np.arange(start, end), (len(qs), end - start))], axis=1
        )
        top = np.argpartition(-scores, want - 1, axis=1)[:, :want]
        best = np.take_along_axis(scores, top, axis=1)
        where = np.take_along_axis(positions, top, axis=1)
    return list(where), picked


def _go_on() -> None:
    """A calibration's `pause` that never waits."""


def _dots(rows: np.ndarray, q: np.ndarray) -> np.ndarray:
    """rows @ q by numkong's SIMD kernel on this thread.

    Not `rows @ q`: OpenBLAS splits a matrix-vector product across its own threads, and on a
    busy host waking them cost 20 ms where the product itself takes 0.03 ms (2,048 rows).
    """
    scores = np.empty(len(rows), np.float32)
    if len(rows):
        numkong.cdist(
            np.ascontiguousarray(rows, np.float32),
            np.ascontiguousarray(q, np.float32).reshape(1, -1),
            metric="dot",
            out_dtype="float32",
            out=scores.reshape(-1, 1),
        )
    return scores


def _bit_bytes(dim: int) -> int:
    return (dim + 7) // 8


def _hamming_top(
    bits: np.ndarray, query_bits: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(positions, distances) of the `size` rows of `bits` nearest to `query_bits` (Hamming).

    faiss's counting variant ("mc"): one pass that buckets rows by distance, so its cost does
    not grow with `size` as a heap's does (4,096 of 100k: 0.8 ms against 4.0).
    """
    distances = np.empty((1, size), np.int32)
    labels = np.empty((1, size), np.int64)
    query_bits = np.ascontiguousarray(query_bits, np.uint8)
    faiss.hammings_knn_mc(
        faiss.swig_ptr(query_bits),
        faiss.swig_ptr(bits),
        1,
        len(bits),
        size,
        bits.shape[1],
        faiss.swig_ptr(distances),
        faiss.swig_ptr(labels),
    )
    found = labels[0] >= 0
    return labels[0][found], distances[0][found]
