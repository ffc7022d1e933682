"""The memory's async core: the store, the in-memory indexes, and who may touch them when.

Writes are serialised by one lock and run in one worker thread at a time on the store's
writer connection; each commits before it returns, and only then does the service
acknowledge it. The in-memory index of a collection is updated in the same thread right
after the commit, and its saved copy beside the database (snapshot.py) is deleted before the
first write to it commits. Reads run in worker threads (at most `readers` at once), each on its own
read-only connection. The event loop never touches SQLite or large numpy work.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import apsw
import numpy as np

from aether_box.errors import BadRequest, NotFound
from aether_box.memory.filters import Compiled
from aether_box.memory.fusion import reciprocal_rank_fusion
from aether_box.memory.index import Prepared, VectorIndex
from aether_box.memory.settings import MemorySettings
from aether_box.memory.snapshot import Snapshots
from aether_box.memory.store import Collection, MemoryStore, Record

__all__ = ["Memory", "SearchHit"]

log = logging.getLogger(__name__)
T = TypeVar("T")
# How many candidates each side brings to hybrid fusion, at least.
HYBRID_CANDIDATES = 50
# A filtered search first checks the filter on this many of the nearest records.
FILTER_PROBE_FACTOR = 20
FILTER_PROBE_MIN = 200
# The WAL is copied into the database (a checkpoint) once it holds this many pages (8 MB
# of 4 KB pages); SQLite's own autocheckpoint, turned off, ran at 1,000 inside the commit.
CHECKPOINT_WAL_PAGES = 2_048


@dataclass
class SearchHit:
    """One search result."""

    record: Record
    score: float
    distance: float | None
    ranks: dict[str, int | None] | None = None
    vector: np.ndarray | None = field(default=None, repr=False)

    def to_wire(self) -> dict[str, Any]:
        out = {
            "id": self.record.id,
            "score": self.score,
            "distance": self.distance,
            "text": self.record.text,
            "metadata": self.record.metadata,
        }
        if self.ranks is not None:
            out["ranks"] = self.ranks
        return out


class Memory:
    """Collections of records with vectors, text and metadata, durable in one SQLite file."""

    def __init__(self, settings: MemorySettings) -> None:
        self.settings = settings
        self.store: MemoryStore | None = None
        self.catalog: dict[str, Collection] = {}
        self.counts: dict[int, int] = {}
        self.indexes: dict[int, VectorIndex] = {}
        self.snapshots = Snapshots(settings.db_path)
        self.db_bytes = 0
        # One thread beside the writer's, made by open(): prepares index rows while SQLite writes.
        self._helper: ThreadPoolExecutor
        # And one that calibrates indexes' bit scans (see VectorIndex.calibrate), off the
        # write path: a write is acknowledged without waiting for it, and the calibration
        # steps only while no write is in progress (set: none is), so a write never shares
        # the CPU with it. At normal priority: at the lowest, a busy host starved it and
        # searches after an ingest stayed on the slower int8 scan (p50 3.46 ms, not 2.9).
        self._calibrator: ThreadPoolExecutor
        self._calibrating: set[int] = set()
        self._writes_idle = threading.Event()
        self._writes_idle.set()
        # Checkpoints copy the WAL into the database on this thread, beside the writer.
        self._checkpointer: ThreadPoolExecutor
        self._checkpoint_due = False
        self._write_lock = anyio.Lock()
        self._writer = anyio.CapacityLimiter(1)
        self._readers = anyio.CapacityLimiter(settings.readers)

    # ----------------------------------------------------------------- lifecycle

    async def open(self) -> None:
        """Open (or create) the database and read its catalog."""
        self._helper = ThreadPoolExecutor(1, thread_name_prefix="memory-index")
        self._calibrator = ThreadPoolExecutor(1, thread_name_prefix="memory-calibrate")
        self._checkpointer = ThreadPoolExecutor(1, thread_name_prefix="memory-checkpoint")

        def work() -> None:
            store = MemoryStore(
                self.settings.db_path,
                synchronous=self.settings.synchronous,
                vec0_chunk=self.settings.vec0_chunk,
            )
            self.store = store
            self.snapshots.clean()
            self.catalog, counts = store.catalog()
            self.counts = {c.id: counts.get(c.id, 0) for c in self.catalog.values()}
            self.db_bytes = store.db_bytes()

        await anyio.to_thread.run_sync(work, limiter=self._writer)

    async def close(self) -> None:
        """Save the indexes, then close the database after the write in progress has committed."""
        async with self._write_lock:
            if self.store is not None:
                # A checkpoint in progress finishes before its connection closes.
                await anyio.to_thread.run_sync(self._checkpointer.shutdown)
                await anyio.to_thread.run_sync(self._save_indexes, limiter=self._writer)
                await anyio.to_thread.run_sync(self.store.close, limiter=self._writer)
                self.store = None
        self._helper.shutdown(wait=False)
        self._writes_idle.set()  # a calibration waiting for a write goes on, and ends
        self._calibrator.shutdown(wait=False, cancel_futures=True)

    def _save_indexes(self) -> None:
        # A failed save costs only the next start's rebuild from SQLite: log it and go on.
        for collection in self.catalog.values():
            index = self.indexes.get(collection.id)
            if (
                index is None
                or len(index) < self.settings.snapshot_min_rows
                or self.snapshots.has(collection.id)
            ):
                continue
            started = time.perf_counter()
            try:
                self.snapshots.save(collection, index)
            except OSError:
                log.exception("memory: could not save the index of %r", collection.name)
                continue
            log.info(
                "memory: saved the index of %r (%d vectors) in %.2f s",
                collection.name,
                len(index),
                time.perf_counter() - started,
            )

    async def warm(self) -> None:
        """Load the in-memory index of every collection (searches would load them lazily)."""
        for collection in list(self.catalog.values()):
            await self.index_for(collection)

    # ----------------------------------------------------------------- catalog

    def collection(self, name: str) -> Collection:
        """The collection called `name`, or NotFound listing the ones there are."""
        found = self.catalog.get(name)
        if found is None:
            raise NotFound(
                f"no collection {name!r}; collections: {sorted(self.catalog)}; "
                "create it first (op 'create', or `aether-box memory create`)"
            )
        return found

    def info(self, collection: Collection) -> dict[str, Any]:
        return collection.info(self.counts.get(collection.id, 0))

    async def create(
        self, name: str, model: str, dim: int, metric: str, recipe: dict[str, Any] | None = None
    ) -> Collection:
        """Create a collection (BadRequest if the name is taken); `recipe`: the `embed`
        options its vectors are made with (None: plain)."""
        async with self._write_lock:
            if name in self.catalog:
                raise BadRequest(
                    f"collection {name!r} already exists; drop it first, or pass exist_ok=true "
                    "(`--exist-ok` on the command line)"
                )
            collection = await self._write(
                self._store.create_collection, name, model, dim, metric, recipe
            )
            self.catalog = {**self.catalog, name: collection}
            self.counts[collection.id] = 0
            if self.settings.index == "memory":
                self.indexes[collection.id] = self._new_index(dim, metric)
        return collection

    async def drop(self, name: str) -> int:
        """Delete a collection and all its records; returns how many records went."""
        async with self._write_lock:
            collection = self.collection(name)

            def work() -> int:
                self.snapshots.invalidate(collection.id)
                return self._store.drop_collection(collection)

            deleted = await self._write(work)
            self.catalog = {k: v for k, v in self.catalog.items() if k != name}
            self.counts.pop(collection.id, None)
            self.indexes.pop(collection.id, None)
        return deleted

    # ----------------------------------------------------------------- writes

    async def add(
        self,
        name: str,
        ids: Sequence[str],
        texts: Sequence[str | None],
        metadata: Sequence[str],
        vectors: np.ndarray,
        *,
        upsert: bool = False,
        check_ids: bool = True,
    ) -> int:
        """Store records in one transaction; returns how many already existed (upsert)."""
        async with self._write_lock:
            collection = self.collection(name)

            def work() -> int:
                self.snapshots.invalidate(collection.id)
                index = self.indexes.get(collection.id)
                # The index's copy of the rows is made and put in place on the other core while
                # SQLite writes, so after the commit `add` only publishes it (`is not None`: an
                # empty index is falsy, and its first batch was prepared after the commit).
                prepared = (
                    self._helper.submit(_prepare, index, vectors) if index is not None else None
                )
                try:
                    rowids, replaced = self._store.insert(
                        collection,
                        ids,
                        texts,
                        metadata,
                        vectors,
                        upsert=upsert,
                        check_keys=check_ids,
                    )
                finally:
                    rows = _settled(prepared, vectors)
                self._sync_index(
                    collection, lambda index: (index.remove(replaced), index.add(rowids, rows))
                )
                return len(replaced)

            replaced = await self._write(work)
            self.counts[collection.id] += len(ids) - replaced
        return replaced

    async def update(
        self,
        name: str,
        ids: Sequence[str],
        *,
        texts: Sequence[str | None] | None = None,
        metadata: Sequence[str] | None = None,
        merge: bool = False,
        vectors: np.ndarray | None = None,
    ) -> None:
        """Change existing records in one transaction (NotFound if any id is missing)."""
        async with self._write_lock:
            collection = self.collection(name)

            def work() -> None:
                if vectors is not None:
                    self.snapshots.invalidate(collection.id)
                rowids = self._store.update(
                    collection, ids, texts=texts, metadata=metadata, merge=merge, vectors=vectors
                )
                if vectors is not None:
                    self._sync_index(collection, lambda index: index.replace(rowids, vectors))

            await self._write(work)

    async def delete(
        self, name: str, ids: Sequence[str] | None = None, where: Compiled | None = None
    ) -> int:
        """Delete records by id or by filter; returns how many were deleted."""
        async with self._write_lock:
            collection = self.collection(name)

            def work() -> int:
                store = self._store
                with store.reader() as conn:  # the writer holds the lock: this snapshot is current
                    if ids is not None:
                        rowids = np.array(
                            sorted(store.rowids_for_keys(conn, collection, ids).values()), np.int64
                        )
                    else:
                        assert where is not None
                        rowids = store.filter_rowids(conn, collection, where)
                self.snapshots.invalidate(collection.id)
                deleted = store.delete(collection, rowids)
                self._sync_index(collection, lambda index: index.remove(rowids))
                return deleted

            deleted = await self._write(work)
            self.counts[collection.id] -= deleted
        return deleted

    # ----------------------------------------------------------------- reads

    async def get(
        self, name: str, ids: Sequence[str], *, vectors: bool = False
    ) -> tuple[list[Record], list[str], np.ndarray | None]:
        """(records found, ids missing, their vectors if asked)."""
        collection = self.collection(name)

        def work(conn: apsw.Connection) -> tuple[list[Record], list[str], np.ndarray | None]:
            found = self._store.rowids_for_keys(conn, collection, ids)
            rowids = [found[k] for k in ids if k in found]
            by_rowid = self._store.records(conn, rowids)
            records = [by_rowid[r] for r in rowids]
            array = self._store.vectors(conn, collection, rowids) if vectors else None
            return records, [k for k in ids if k not in found], array

        return await self._read(collection, work)

    async def page(
        self,
        name: str,
        where: Compiled,
        *,
        limit: int,
        after: int = 0,
        skip: int = 0,
        vectors: bool = False,
    ) -> tuple[list[Record], np.ndarray | None, int | None]:
        """(records, their vectors if asked, cursor of the next page or None); `skip`: leave
        out the first records after `after` (SQLite steps over them: no record is read)."""
        collection = self.collection(name)

        def work(conn: apsw.Connection) -> tuple[list[Record], np.ndarray | None, int | None]:
            records = self._store.page(conn, collection, where, limit, after, skip)
            array = (
                self._store.vectors(conn, collection, [r.rowid for r in records])
                if vectors
                else None
            )
            following = records[-1].rowid if len(records) == limit else None
            return records, array, following

        return await self._read(collection, work)

    async def count(self, name: str, where: Compiled) -> int:
        """How many records of the collection pass the filter."""
        collection = self.collection(name)
        if where.empty:
            return self.counts.get(collection.id, 0)
        return await self._read(collection, lambda conn: self._store.count(conn, collection, where))

    async def search(
        self,
        name: str,
        query: np.ndarray,
        k: int,
        *,
        where: Compiled,
        keywords: str | None = None,
        index: str | None = None,
        vectors: bool = False,
    ) -> list[SearchHit]:
        """The k records closest to `query` (fused with keyword search when `keywords` is given)."""
        collection = self.collection(name)
        use = index or self.settings.index
        if use == "sqlite-vec" and collection.metric == "dot":
            raise BadRequest(
                "sqlite-vec has no dot-product search; search collection "
                f"{name!r} with index 'memory'"
            )
        exact = await self.index_for(collection) if use == "memory" else None
        wanted = max(k, HYBRID_CANDIDATES) if keywords is not None else k

        def work(conn: apsw.Connection) -> list[SearchHit]:
            store = self._store
            if exact is not None:
                rowids, distances = self._exact_search(
                    conn, collection, exact, query, wanted, where
                )
            else:
                rowids, distances = store.knn(conn, collection, query, wanted, where)
            distance_of = dict(zip(rowids.tolist(), distances.tolist(), strict=True))
            if keywords is None:
                chosen = [
                    (r, _similarity(distance_of[r], collection.metric), None)
                    for r in rowids.tolist()
                ]
            else:
                fused = reciprocal_rank_fusion(
                    [rowids.tolist(), store.keyword(conn, collection, keywords, wanted, where)], k
                )
                chosen = [
                    (r, score, {"vector": ranks[0], "keyword": ranks[1]})
                    for r, score, ranks in fused
                ]
            records = store.records(conn, [r for r, _, _ in chosen])
            hits = [
                SearchHit(records[r], score, distance_of.get(r), ranks)
                for r, score, ranks in chosen
                if r in records
            ]
            if vectors and hits:
                array = store.vectors(conn, collection, [h.record.rowid for h in hits])
                for hit, row in zip(hits, array, strict=True):
                    hit.vector = row
            return hits

        return await self._read(collection, work)

    def _exact_search(
        self,
        conn: apsw.Connection,
        collection: Collection,
        exact: VectorIndex,
        query: np.ndarray,
        k: int,
        where: Compiled,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by the in-memory index, honouring the filter."""
        if where.empty:
            return exact.search(query, k)
        # Most filters keep some of the nearest records: if k of the nearest `probe` pass, they
        # are exactly the filtered top-k, for the price of checking `probe` rows, not all.
        probe = max(k * FILTER_PROBE_FACTOR, FILTER_PROBE_MIN)
        rowids, distances = exact.search(query, probe)
        passing = np.isin(rowids, self._store.passing(conn, rowids, where))
        if passing.sum() >= k or len(rowids) < probe:
            return rowids[passing][:k], distances[passing][:k]
        # A selective filter: evaluate it on the whole collection, then search only what passed.
        return exact.search(query, k, self._store.filter_rowids(conn, collection, where))

    async def integrity(self) -> list[str]:
        """SQLite's integrity check of the whole file (["ok"] when sound)."""

        def work() -> list[str]:
            with self._store.reader() as conn:
                return self._store.integrity(conn)

        return await anyio.to_thread.run_sync(work, limiter=self._readers)

    async def index_for(self, collection: Collection) -> VectorIndex:
        """The collection's in-memory index, loaded from SQLite on first use."""
        index = self.indexes.get(collection.id)
        if index is not None:
            return index
        async with self._write_lock:  # no write may land between the snapshot and the index
            index = self.indexes.get(collection.id)
            if index is None:
                if self.catalog.get(collection.name) != collection:
                    raise NotFound(f"collection {collection.name!r} was dropped")
                index = await self._write(self._load_index, collection)
                self.indexes[collection.id] = index
        return index

    # ----------------------------------------------------------------- helpers

    @property
    def _store(self) -> MemoryStore:
        if self.store is None:
            raise NotFound("the memory database is closed")
        return self.store

    def _new_index(self, dim: int, metric: str) -> VectorIndex:
        return VectorIndex(
            dim,
            metric,
            quantized_min_rows=self.settings.quantized_min_rows,
            scan_threads=self.settings.scan_threads,
            bit_scan_min_rows=self.settings.bit_scan_min_rows,
        )

    def _load_index(self, collection: Collection) -> VectorIndex:
        # The caller holds the write lock: the saved copy and the snapshot read stay current.
        started = time.perf_counter()
        with self._store.reader() as conn:
            count, last_rowid = self._store.extent(conn, collection)
            index = self.snapshots.load(collection, count, last_rowid, self._new_index)
            source = "its saved copy"
            if index is None:
                self.snapshots.invalidate(collection.id)  # stale or unreadable: never trusted
                rowids, rows = self._store.load_vectors(conn, collection)
                index = self._new_index(collection.dim, collection.metric)
                index.add(rowids, rows)
                source = "SQLite"
        log.info(
            "memory: loaded %d vectors of %r into RAM from %s in %.2f s",
            len(index),
            collection.name,
            source,
            time.perf_counter() - started,
        )
        self._calibrate_later(collection, index)
        return index

    def calibrating(self, index: VectorIndex) -> bool:
        """Whether the index's bit scan is being calibrated (or waits its turn to be)."""
        return id(index) in self._calibrating

    def _checkpoint_later(self) -> None:
        """Start a checkpoint on its own thread once the WAL has grown (one at a time)."""
        if self._checkpoint_due or self._store.wal_pages < CHECKPOINT_WAL_PAGES:
            return
        self._checkpoint_due = True

        def work() -> None:
            self._checkpoint_due = False  # a commit from now on may ask for the next one
            try:
                self._store.checkpoint()
            except apsw.Error:  # the next commit asks again; the data is safe in the WAL
                log.exception("memory: checkpoint failed")

        try:
            self._checkpointer.submit(work)
        except RuntimeError:  # closing: the last connection's close checkpoints
            self._checkpoint_due = False

    def _calibrate_later(self, collection: Collection, index: VectorIndex) -> None:
        """Calibrate the index's bit scan on the calibrating thread, if it is due."""
        if not index.needs_calibration() or id(index) in self._calibrating:
            return
        self._calibrating.add(id(index))

        def work() -> None:
            started = time.perf_counter()
            try:
                recalls = index.calibrate(pause=self._writes_idle.wait)
            except Exception:  # searches keep the int8 scan: slower, never wrong
                log.exception("memory: calibrating the bit scan of %r failed", collection.name)
                return
            finally:
                self._calibrating.discard(id(index))
            log.info(
                "memory: %r (%d vectors) %s; bit-scan recall@10 by budget %s (%.2f s)",
                collection.name,
                len(index),
                f"scans sign bits first, {index.budget} candidates"
                if index.budget
                else "keeps the int8 scan",
                {b: round(r, 3) for b, r in recalls.items()},
                time.perf_counter() - started,
            )

        self._calibrator.submit(work)

    def _sync_index(self, collection: Collection, change: Callable[[VectorIndex], Any]) -> None:
        # Runs after the commit: if the copy cannot follow, drop it so the next search reloads.
        index = self.indexes.get(collection.id)
        if index is None:
            return
        try:
            change(index)
            self._calibrate_later(collection, index)
        except Exception:
            log.exception(
                "memory: index of %r fell out of step; it will be reloaded", collection.name
            )
            self.indexes.pop(collection.id, None)

    async def _write(self, work: Callable[..., T], *args: Any) -> T:
        # The caller holds the write lock; the thread is not abandoned on cancellation, so a
        # commit that started always finishes (and is acknowledged only if the caller lives).
        def run() -> T:
            self._writes_idle.clear()
            try:
                result = work(*args)
                self.db_bytes = self._store.db_bytes()
                self._checkpoint_later()
            finally:
                self._writes_idle.set()
            return result

        return await anyio.to_thread.run_sync(run, limiter=self._writer)

    async def _read(self, collection: Collection, work: Callable[[apsw.Connection], T]) -> T:
        def run() -> T:
            with self._store.reader() as conn:
                return work(conn)

        try:
            return await anyio.to_thread.run_sync(run, limiter=self._readers)
        except apsw.SQLError as exc:
            if self.catalog.get(collection.name) != collection:
                raise NotFound(f"collection {collection.name!r} was dropped") from None
            raise exc


def _settled(prepared: Future[Prepared] | None, vectors: np.ndarray) -> Prepared | np.ndarray:
    # Waits even when the insert failed, so no preparation outlives its write. A failed one
    # only means `add` prepares the rows itself (and the index is dropped if that fails too):
    # it must not fail a write that has committed.
    if prepared is None:
        return vectors
    try:
        return prepared.result()
    except Exception:
        log.exception("memory: preparing index rows failed; adding them unprepared")
        return vectors


def _prepare(index: VectorIndex, vectors: np.ndarray) -> Prepared:
    return index.stage(vectors)


def _similarity(distance: float, metric: str) -> float:
    """Larger-is-closer score for a distance: cosine similarity, dot product, or -l2."""
    return 1.0 - distance if metric == "cosine" else -distance
