"""The memory database: one SQLite file with sqlite-vec, opened through apsw.

Schema (``PRAGMA user_version`` 1)::

    collections  id, name (unique), model, dim, metric, created
    records      rowid (never reused), collection_id, key, text, metadata (JSONB),
                 created, updated; (collection_id, key) unique
    vec_<id>     sqlite-vec vec0 table of the collection's float32 vectors, rowid = records.rowid
    fts_<id>     contentless FTS5 table of the collection's texts, rowid = records.rowid

Per-collection table names carry only the collection's integer id, never a user's string.
One writer connection, used by one thread at a time (the service holds its write lock around
every write), commits each request in one transaction; read-only connections come from a pool
and read inside a transaction, so each read sees one committed snapshot (WAL).
"""

from __future__ import annotations

import json
import os
import queue
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw
import numpy as np
import sqlite_vec

from aether_box.bus.failures import DISK_FULL_HINT, no_space_at
from aether_box.errors import BadRequest, ConfigError, DiskFull, NotFound
from aether_box.memory.filters import Compiled

__all__ = ["Collection", "MemoryStore", "Record", "SCHEMA_VERSION"]

# 2: collections.recipe, how the collection's vectors are made (NULL: plain `embed`).
SCHEMA_VERSION = 2
MAX_KEYWORD_TOKENS = 64
_TOKEN = re.compile(r"\w+", re.UNICODE)
# Every statement is read to the end (fetchall, not fetchone): apsw cannot commit while a
# statement is still open.
# vec0 knows cosine and l2; dot-product collections store their vectors under l2.
# Vectors a vec0 chunk holds (sqlite-vec's default: 1,024) in the tables of new collections.
# vec0 writes each row into its chunk's blob, and reaching an offset in a blob walks its
# overflow pages from the start: with 1.5 MB chunks (1,024 x 384 float32) that walk was most
# of an insert. 256 ingested 1.3-1.6x faster (100k x 384 in 10k-row transactions, load 4.6),
# while vec0's own full-scan search, which pays per chunk, took about 20% longer.
VEC0_CHUNK = 256
_VEC0_METRIC = {"cosine": "cosine", "l2": "l2", "dot": "l2"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    name     TEXT NOT NULL UNIQUE,
    model    TEXT NOT NULL,
    dim      INTEGER NOT NULL CHECK (dim > 0),
    metric   TEXT NOT NULL CHECK (metric IN ('cosine', 'l2', 'dot')),
    created  REAL NOT NULL,
    recipe   TEXT
);
CREATE TABLE IF NOT EXISTS records (
    rowid          INTEGER PRIMARY KEY AUTOINCREMENT,
    collection_id  INTEGER NOT NULL REFERENCES collections(id),
    key            TEXT NOT NULL,
    text           TEXT,
    metadata       BLOB NOT NULL,
    created        REAL NOT NULL,
    updated        REAL NOT NULL,
    UNIQUE (collection_id, key)
);
"""


@dataclass(frozen=True)
class Collection:
    """A named set of records whose vectors share one embedding space and metric."""

    id: int
    name: str
    model: str
    dim: int
    metric: str
    created: float
    # The `embed` options its vectors are made with ({prompt, pooling}); None: plain `embed`
    # (no prompt, mean pooling), as every collection made before recipes were recorded.
    recipe: dict[str, Any] | None = field(default=None, hash=False)

    @property
    def recipe_options(self) -> dict[str, Any]:
        """{prompt, pooling} of its vectors (plain ones: no prompt, mean pooling)."""
        return dict(self.recipe or {"prompt": None, "pooling": "mean"})

    def info(self, count: int) -> dict[str, Any]:
        """The collection as replies and `status` show it."""
        return {
            "name": self.name,
            "model": self.model,
            "dim": self.dim,
            "metric": self.metric,
            "recipe": self.recipe_options,
            "count": count,
            "created": self.created,
        }


@dataclass
class Record:
    """One stored record, without its vector."""

    rowid: int
    id: str
    text: str | None
    metadata: dict[str, Any]
    created: float
    updated: float

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "text": self.text,
            "metadata": self.metadata,
            "created": self.created,
            "updated": self.updated,
        }


def _text_carray(values: Sequence[str]) -> apsw.carray | None:
    """Strings bound as one carray, or None when one holds a NUL (carray's are C strings)."""
    try:
        return apsw.carray(tuple(values))
    except ValueError:
        return None


def _collection(row: Any) -> Collection:
    """A `collections` row (its recipe stored as JSON) as a Collection."""
    *head, recipe = row
    return Collection(*head, recipe=json.loads(recipe) if recipe else None)


class MemoryStore:
    """Synchronous access to the memory database; call it from worker threads only."""

    def __init__(
        self, path: Path, *, synchronous: str = "full", vec0_chunk: int = VEC0_CHUNK
    ) -> None:
        self.path = Path(path)
        self.vec0_chunk = vec0_chunk
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._synchronous = synchronous.upper()
        self._idle: queue.SimpleQueue[apsw.Connection] = queue.SimpleQueue()
        self._readers: list[apsw.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        self._checkpointer: apsw.Connection | None = None
        self.wal_pages = 0  # pages in the WAL after the last commit (from the WAL hook)
        # Opened on a full disk: read-only and immutable (SQLite cannot even make the WAL's
        # index there), so the box starts and answers reads; every write says disk_full.
        self.frozen = False
        try:
            self._conn = self._connect(readonly=False)
            self._migrate()
        except apsw.Error as exc:
            if no_space_at(self.path.parent):
                self.frozen = True
                self._conn = self._connect(readonly=False)  # but _writer refuses writes
                return
            raise self._unreadable(exc) from exc

    def _unreadable(self, exc: apsw.Error) -> ConfigError:
        """What the box says when memory.db cannot be opened or read as it starts."""
        return ConfigError(
            f"cannot open the memory database {self.path}: {exc}; check memory.db and "
            "its directory, or move the file aside to start with an empty memory"
        )

    # ----------------------------------------------------------------- connections

    def _connect(self, *, readonly: bool) -> apsw.Connection:
        flags = (
            apsw.SQLITE_OPEN_READONLY
            if readonly
            else (apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE)
        )
        conn = apsw.Connection(str(self.path), flags=flags)
        if self.frozen:
            # One connection with an exclusive lock keeps the WAL's index in memory, where no
            # -shm file could be made: it still reads what the WAL holds.
            conn.pragma("locking_mode", "exclusive")
        conn.set_busy_timeout(10_000)
        conn.enable_load_extension(True)
        conn.load_extension(sqlite_vec.loadable_path())
        conn.enable_load_extension(False)
        # Double-quoted strings are identifiers only: a typo can never become a string literal.
        conn.config(apsw.SQLITE_DBCONFIG_DQS_DML, 0)
        conn.config(apsw.SQLITE_DBCONFIG_DQS_DDL, 0)
        if not readonly and not self.frozen:
            mode = conn.pragma("journal_mode", "wal")
            if str(mode).lower() != "wal":
                raise ConfigError(
                    f"{self.path} cannot use WAL (journal_mode is {mode}); "
                    "put memory.db on a local file system"
                )
            conn.pragma("synchronous", self._synchronous)
            conn.pragma("foreign_keys", "ON")
            # No checkpoint inside a commit: copying the WAL into the database (15 MB a
            # 10,000-vector batch) is `checkpoint`'s job, on a thread of its own, so the next
            # batch is written meanwhile. Each commit still syncs the WAL: durability is the
            # same, only the copy moves.
            conn.pragma("wal_autocheckpoint", 0)
            conn.set_wal_hook(self._committed)  # after the pragma, which would replace it
            # vec0 rewrites its chunks in place: a larger page cache (64 MiB, not 2) keeps a
            # batch's chunks in memory until the commit, ~30% faster ingest (1,024-row chunks).
            conn.pragma("cache_size", -65_536)
        return conn

    @contextmanager
    def reader(self) -> Iterator[apsw.Connection]:
        """A read-only connection holding one read transaction (a consistent snapshot)."""
        if self.frozen:
            with self._readers_lock, self._conn:  # one connection: one reader at a time
                yield self._conn
            return
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            conn = self._connect(readonly=True)
            with self._readers_lock:
                self._readers.append(conn)
        try:
            with conn:
                yield conn
        finally:
            if self._closed:
                conn.close()
            else:
                self._idle.put(conn)

    @property
    def _writer(self) -> apsw.Connection:
        """The connection that writes; DiskFull while the memory is frozen."""
        if self.frozen:
            raise DiskFull(
                "memory: the disk was full when the box started, so the memory is read-only "
                f"until the box restarts with free space. {DISK_FULL_HINT}"
            )
        return self._conn

    def _committed(self, conn: apsw.Connection, name: str, pages: int) -> int:
        # SQLite's WAL hook: called after each commit with the pages the log now holds.
        self.wal_pages = pages
        return apsw.SQLITE_OK

    def checkpoint(self) -> tuple[int, int]:
        """Copy committed WAL frames into the database (PASSIVE: never waits on a writer or
        reader, so it runs beside writes); returns (frames in the log, frames copied).

        Its own connection, used by one thread at a time (the caller's single checkpointer).
        """
        if self.frozen or self._closed:
            return 0, 0
        if self._checkpointer is None:
            self._checkpointer = self._connect(readonly=False)
        return self._checkpointer.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)

    def close(self) -> None:
        """Close every connection (the writer last, after updating planner statistics)."""
        self._closed = True
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.close()
        try:
            if not self.frozen:
                self._conn.pragma("optimize")
        except apsw.Error:
            pass  # statistics are an optimisation; closing must still happen
        self._conn.close()

    def _migrate(self) -> None:
        version = self._writer.pragma("user_version")
        if version > SCHEMA_VERSION:
            raise ConfigError(
                f"{self.path} has memory schema {version}, newer than this box "
                f"knows ({SCHEMA_VERSION}); upgrade aether-box"
            )
        with self._writer:
            self._writer.execute(_SCHEMA)
            columns = {row[1] for row in self._writer.execute("PRAGMA table_info(collections)")}
            if "recipe" not in columns:  # schema 1: every collection's vectors are plain
                self._writer.execute("ALTER TABLE collections ADD COLUMN recipe TEXT")
            self._writer.pragma("user_version", SCHEMA_VERSION)

    # ----------------------------------------------------------------- catalog

    def catalog(self) -> tuple[dict[str, Collection], dict[int, int]]:
        """`collections` and `counts`, as the box reads them when it starts: a file damaged
        past its first page fails here, and says so as a ConfigError, not a traceback."""
        try:
            return self.collections(), self.counts()
        except apsw.Error as exc:
            raise self._unreadable(exc) from exc

    def collections(self) -> dict[str, Collection]:
        """Every collection by name."""
        rows = self._conn.execute(
            "SELECT id, name, model, dim, metric, created, recipe FROM collections ORDER BY name"
        )
        return {row[1]: _collection(row) for row in rows}

    def counts(self) -> dict[int, int]:
        """Record count per collection id."""
        return dict(
            self._conn.execute(
                "SELECT collection_id, count(*) FROM records GROUP BY collection_id"
            ).fetchall()
        )

    def db_bytes(self) -> int:
        """Size of the database file and its write-ahead log."""
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.stat(f"{self.path}{suffix}").st_size
            except FileNotFoundError:
                pass
        return total

    # ----------------------------------------------------------------- writes

    def create_collection(
        self, name: str, model: str, dim: int, metric: str, recipe: dict[str, Any] | None = None
    ) -> Collection:
        """Create a collection and its vec0 and FTS5 tables, in one transaction."""
        conn = self._writer
        with conn:
            cursor = conn.execute(
                "INSERT INTO collections(name, model, dim, metric, created, recipe) "
                "VALUES (?, ?, ?, ?, ?, ?) RETURNING id, name, model, dim, metric, created, recipe",
                (name, model, dim, metric, time.time(), json.dumps(recipe) if recipe else None),
            )
            collection = _collection(cursor.fetchall()[0])
            cid = collection.id  # an integer we made: safe in a table name
            conn.execute(
                f"CREATE VIRTUAL TABLE vec_{cid} USING vec0("
                f"embedding float[{int(dim)}] distance_metric={_VEC0_METRIC[metric]}, "
                f"chunk_size={int(self.vec0_chunk)})"
            )
            conn.execute(
                f"CREATE VIRTUAL TABLE fts_{cid} USING fts5("
                "text, content='', contentless_delete=1, tokenize='porter unicode61')"
            )
        return collection

    def drop_collection(self, collection: Collection) -> int:
        """Delete a collection with all its records; returns how many records went."""
        conn = self._writer
        cid = collection.id
        with conn:
            conn.execute("DELETE FROM records WHERE collection_id = ?", (cid,))
            count = conn.changes()
            conn.execute(f"DROP TABLE vec_{cid}")
            conn.execute(f"DROP TABLE fts_{cid}")
            conn.execute("DELETE FROM collections WHERE id = ?", (cid,))
        return count

    def insert(
        self,
        collection: Collection,
        keys: Sequence[str],
        texts: Sequence[str | None],
        metadata: Sequence[str],
        vectors: np.ndarray,
        *,
        upsert: bool = False,
        check_keys: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Insert records in one transaction; returns (new rowids, rowids they replaced)."""
        conn = self._writer
        now = time.time()
        cid = collection.id
        with conn:
            existing = self._existing(conn, cid, keys) if check_keys else {}
            if existing and not upsert:
                first = next(iter(existing))
                raise BadRequest(
                    f"{len(existing)} id(s) already exist in {collection.name!r} (e.g. {first!r}); "
                    "update them, or add with upsert=true to replace them"
                )
            replaced = np.array(sorted(rowid for rowid, _ in existing.values()), np.int64)
            if len(replaced):
                self._delete_rows(conn, cid, replaced)
            first_rowid = self._next_rowid(conn)
            rowids = np.arange(first_rowid, first_rowid + len(keys), dtype=np.int64)
            # One statement a table for the whole batch, over the rows handed in at once (a
            # JSON array of [key, text, metadata], a carray of rowids, one buffer of vectors):
            # SQLite loops in C. executemany bound and stepped each row from Python, taking the
            # GIL back every row from the thread preparing the index's rows, and updated
            # AUTOINCREMENT's counter once a row; the records table alone took 3x as long.
            distinct = set(metadata)
            with_text = any(t is not None for t in texts)
            key_array = _text_carray(keys) if len(distinct) == 1 and not with_text else None
            if key_array is not None:
                # Vectors with one metadata object for all (as `add` allows) and no texts, the
                # usual bulk load: the keys go in as a carray of strings, the metadata is
                # converted to JSONB once. 40% less CPU than through a JSON array.
                conn.execute(
                    "INSERT INTO records(rowid, collection_id, key, text, metadata, created, "
                    "updated) SELECT ?1 + rowid - 1, ?2, value, NULL, jsonb(?4), ?3, ?3 "
                    "FROM carray(?5)",
                    (first_rowid, cid, now, next(iter(distinct)), key_array),
                ).fetchall()
            else:
                if len(distinct) == 1:
                    # A batch sharing its metadata converts it to JSONB once, not once a row.
                    shared = conn.execute("SELECT jsonb(?)", (next(iter(distinct)),)).fetchall()
                    meta_sql, meta = "?4", shared[0][0]
                    batch = json.dumps(list(zip(keys, texts, strict=True)), ensure_ascii=False)
                else:
                    meta_sql, meta = "jsonb(value ->> 2)", None
                    batch = json.dumps(
                        list(zip(keys, texts, metadata, strict=True)), ensure_ascii=False
                    )
                conn.execute(
                    "INSERT INTO records(rowid, collection_id, key, text, metadata, created, "
                    f"updated) SELECT ?1 + key, ?2, value ->> 0, value ->> 1, {meta_sql}, ?3, ?3 "
                    "FROM json_each(?5)",
                    (first_rowid, cid, now, meta, batch),
                ).fetchall()
            if existing:  # a replaced record keeps its creation time
                conn.executemany(
                    "UPDATE records SET created = ? WHERE rowid = ?",
                    (
                        (existing[k][1], rowid)
                        for k, rowid in zip(keys, rowids.tolist(), strict=True)
                        if k in existing
                    ),
                )
            rows = np.ascontiguousarray(vectors, dtype="<f4")
            width = rows.shape[1] * rows.itemsize  # bytes a vector
            conn.execute(
                f"INSERT INTO vec_{cid}(rowid, embedding) "
                "SELECT value, substr(?2, (value - ?3) * ?4 + 1, ?4) FROM carray(?1)",
                (apsw.carray(rowids), memoryview(rows).cast("B"), first_rowid, width),
            ).fetchall()
            if with_text and any(texts):
                conn.execute(
                    f"INSERT INTO fts_{cid}(rowid, text) "
                    "SELECT ?1 + key, value ->> 1 FROM json_each(?2) WHERE value ->> 1 <> ''",
                    (first_rowid, batch),
                ).fetchall()
        return rowids, replaced

    def update(
        self,
        collection: Collection,
        keys: Sequence[str],
        *,
        texts: Sequence[str | None] | None = None,
        metadata: Sequence[str] | None = None,
        merge: bool = False,
        vectors: np.ndarray | None = None,
    ) -> np.ndarray:
        """Change existing records in one transaction; returns their rowids (in `keys` order)."""
        conn = self._writer
        cid = collection.id
        now = time.time()
        with conn:
            existing = self._existing(conn, cid, keys)
            missing = [k for k in keys if k not in existing]
            if missing:
                raise NotFound(
                    f"{len(missing)} id(s) not in {collection.name!r} (e.g. "
                    f"{missing[0]!r}); add them first"
                )
            ids = [existing[k][0] for k in keys]
            conn.executemany(
                "UPDATE records SET updated = ? WHERE rowid = ?", ((now, rowid) for rowid in ids)
            )
            if metadata is not None:
                expr = "jsonb_patch(metadata, ?)" if merge else "jsonb(?)"
                conn.executemany(
                    f"UPDATE records SET metadata = {expr} WHERE rowid = ?",
                    zip(metadata, ids, strict=True),
                )
            if texts is not None:
                conn.executemany(
                    "UPDATE records SET text = ? WHERE rowid = ?", zip(texts, ids, strict=True)
                )
                conn.executemany(f"DELETE FROM fts_{cid} WHERE rowid = ?", ((r,) for r in ids))
                conn.executemany(
                    f"INSERT INTO fts_{cid}(rowid, text) VALUES (?, ?)",
                    ((r, t) for r, t in zip(ids, texts, strict=True) if t),
                )
            if vectors is not None:
                rows = np.ascontiguousarray(vectors, dtype="<f4")
                conn.executemany(
                    f"UPDATE vec_{cid} SET embedding = ? WHERE rowid = ?",
                    ((rows[i].data, rowid) for i, rowid in enumerate(ids)),
                )
        return np.array(ids, np.int64)

    def delete(self, collection: Collection, rowids: np.ndarray) -> int:
        """Delete records by rowid in one transaction; returns how many were deleted."""
        with self._writer:
            return self._delete_rows(self._writer, collection.id, rowids)

    def _delete_rows(self, conn: apsw.Connection, cid: int, rowids: np.ndarray) -> int:
        ids = [(int(r),) for r in rowids]
        before = conn.total_changes()
        conn.executemany(
            "DELETE FROM records WHERE rowid = ? AND collection_id = ?", ((r, cid) for (r,) in ids)
        )
        deleted = conn.total_changes() - before
        conn.executemany(f"DELETE FROM vec_{cid} WHERE rowid = ?", ids)
        conn.executemany(f"DELETE FROM fts_{cid} WHERE rowid = ?", ids)
        return deleted

    @staticmethod
    def _existing(
        conn: apsw.Connection, cid: int, keys: Sequence[str]
    ) -> dict[str, tuple[int, float]]:
        rows = conn.execute(
            "SELECT key, rowid, created FROM records WHERE collection_id = ? "
            "AND key IN (SELECT value FROM json_each(?))",
            (cid, json.dumps(list(keys))),
        )
        return {key: (rowid, created) for key, rowid, created in rows}

    @staticmethod
    def _next_rowid(conn: apsw.Connection) -> int:
        # AUTOINCREMENT's counter: rowids are never reused, so the index's order stays valid.
        rows = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'records'").fetchall()
        return (rows[0][0] if rows else 0) + 1

    # ----------------------------------------------------------------- reads

    @staticmethod
    def rowids_for_keys(
        conn: apsw.Connection, collection: Collection, keys: Sequence[str]
    ) -> dict[str, int]:
        """Rowid of each key that exists."""
        existing = MemoryStore._existing(conn, collection.id, keys)
        return {key: rowid for key, (rowid, _) in existing.items()}

    @staticmethod
    def filter_rowids(conn: apsw.Connection, collection: Collection, where: Compiled) -> np.ndarray:
        """Rowids of the collection's records that pass the filter."""
        rows = conn.execute(
            f"SELECT rowid FROM records WHERE collection_id = ? AND {where.sql}",
            (collection.id, *where.params),
        )
        return np.fromiter((r[0] for r in rows), np.int64)

    @staticmethod
    def passing(conn: apsw.Connection, rowids: Sequence[int], where: Compiled) -> np.ndarray:
        """Which of these rowids pass the filter."""
        rows = conn.execute(
            "SELECT rowid FROM records WHERE rowid IN (SELECT value FROM json_each(?)) "
            f"AND {where.sql}",
            (json.dumps([int(r) for r in rowids]), *where.params),
        )
        return np.fromiter((r[0] for r in rows), np.int64)

    @staticmethod
    def count(conn: apsw.Connection, collection: Collection, where: Compiled) -> int:
        """How many records pass the filter."""
        return conn.execute(
            f"SELECT count(*) FROM records WHERE collection_id = ? AND {where.sql}",
            (collection.id, *where.params),
        ).fetchall()[0][0]

    @staticmethod
    def records(conn: apsw.Connection, rowids: Sequence[int]) -> dict[int, Record]:
        """The records with these rowids (absent ones are skipped)."""
        rows = conn.execute(
            "SELECT rowid, key, text, json(metadata), created, updated FROM records "
            "WHERE rowid IN (SELECT value FROM json_each(?))",
            (json.dumps([int(r) for r in rowids]),),
        )
        return {row[0]: _record(row) for row in rows}

    @staticmethod
    def page(
        conn: apsw.Connection,
        collection: Collection,
        where: Compiled,
        limit: int,
        after: int,
        skip: int = 0,
    ) -> list[Record]:
        """Up to `limit` records after rowid `after`, in rowid order, past the first `skip`."""
        rows = conn.execute(
            "SELECT rowid, key, text, json(metadata), created, updated FROM records "
            f"WHERE collection_id = ? AND rowid > ? AND {where.sql} ORDER BY rowid "
            "LIMIT ? OFFSET ?",
            (collection.id, after, *where.params, limit, skip),
        )
        return [_record(row) for row in rows]

    @staticmethod
    def vectors(conn: apsw.Connection, collection: Collection, rowids: Sequence[int]) -> np.ndarray:
        """The stored vectors of these rowids, in order (vec0 point lookups)."""
        out = np.empty((len(rowids), collection.dim), np.float32)
        sql = f"SELECT embedding FROM vec_{collection.id} WHERE rowid = ?"
        for i, rowid in enumerate(rowids):
            out[i] = np.frombuffer(conn.execute(sql, (int(rowid),)).fetchall()[0][0], "<f4")
        return out

    @staticmethod
    def extent(conn: apsw.Connection, collection: Collection) -> tuple[int, int]:
        """(record count, largest rowid or 0) of the collection: a saved index must match both."""
        count, last = conn.execute(
            "SELECT count(*), coalesce(max(rowid), 0) FROM records WHERE collection_id = ?",
            (collection.id,),
        ).fetchall()[0]
        return int(count), int(last)

    @staticmethod
    def load_vectors(
        conn: apsw.Connection, collection: Collection
    ) -> tuple[np.ndarray, np.ndarray]:
        """(rowids, vectors) of the whole collection, sorted by rowid."""
        total = conn.execute(
            "SELECT count(*) FROM records WHERE collection_id = ?", (collection.id,)
        ).fetchall()[0][0]
        rowids = np.empty(total, np.int64)
        rows = np.empty((total, collection.dim), np.float32)
        n = 0
        for rowid, blob in conn.execute(f"SELECT rowid, embedding FROM vec_{collection.id}"):
            if n == total:  # cannot happen inside one snapshot; guards the arrays
                raise RuntimeError(f"vec_{collection.id} holds more rows than records")
            rowids[n] = rowid
            rows[n] = np.frombuffer(blob, "<f4")
            n += 1
        order = np.argsort(rowids[:n], kind="stable")
        return rowids[:n][order], rows[:n][order]

    @staticmethod
    def knn(
        conn: apsw.Connection, collection: Collection, query: np.ndarray, k: int, where: Compiled
    ) -> tuple[np.ndarray, np.ndarray]:
        """(rowids, distances) of the k nearest records by sqlite-vec's own vec0 search."""
        sql = f"SELECT rowid, distance FROM vec_{collection.id} WHERE embedding MATCH ? AND k = ?"
        params: tuple[Any, ...] = (np.ascontiguousarray(query, "<f4").data, k)
        if not where.empty:
            sql += (
                f" AND rowid IN (SELECT rowid FROM records WHERE collection_id = ? AND {where.sql})"
            )
            params += (collection.id, *where.params)
        rows = conn.execute(sql + " ORDER BY distance", params).fetchall()
        return (
            np.array([r[0] for r in rows], np.int64),
            np.array([r[1] for r in rows], np.float32),
        )

    @staticmethod
    def keyword(
        conn: apsw.Connection, collection: Collection, text: str, limit: int, where: Compiled
    ) -> list[int]:
        """Rowids of the records whose text best matches the words of `text` (FTS5, bm25)."""
        words = list(dict.fromkeys(w.lower() for w in _TOKEN.findall(text)))[:MAX_KEYWORD_TOKENS]
        if not words:
            return []
        # Each word is quoted as an FTS5 string, so no FTS5 query syntax comes from the user.
        match = " OR ".join(f'"{w}"' for w in words)
        sql = f"SELECT rowid FROM fts_{collection.id} WHERE fts_{collection.id} MATCH ?"
        params: tuple[Any, ...] = (match,)
        if not where.empty:
            sql += (
                f" AND rowid IN (SELECT rowid FROM records WHERE collection_id = ? AND {where.sql})"
            )
            params += (collection.id, *where.params)
        rows = conn.execute(sql + " ORDER BY rank LIMIT ?", (*params, limit))
        return [r[0] for r in rows]

    @staticmethod
    def integrity(conn: apsw.Connection) -> list[str]:
        """`PRAGMA integrity_check`'s findings (["ok"] when the file is sound)."""
        return [row[0] for row in conn.execute("PRAGMA integrity_check")]


def _record(row: tuple[Any, ...]) -> Record:
    rowid, key, text, metadata, created, updated = row
    return Record(rowid, key, text, json.loads(metadata), created, updated)
