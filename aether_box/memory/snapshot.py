"""Saved copies of the in-memory indexes, beside the SQLite file, so a restart need not rebuild.

Rebuilding a collection's index means reading every vector back out of sqlite-vec (1.5 s at
100k x 384); loading a saved copy takes a tenth of that. SQLite stays the source of truth: a
copy is only trusted while no write has touched its collection since it was saved. So the box
deletes a collection's copy before the first write to it commits (and fsyncs the directory,
so the deletion is on disk first), and saves copies when it closes cleanly. After kill -9 the
copy of every collection written since the last clean close is gone, and that index is rebuilt
from SQLite; a copy that does not match the database's count and last rowid is ignored too.

Layout: ``<db file>.index/c<collection id>.idx``: one JSON line (format, collection, count,
last rowid), then the arrays of VectorIndex.arrays as .npy records one after another (no zip:
zipfile's CRC over 1.9 GB made a 1M-vector save outlast a stop's grace period).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from aether_box.memory.index import VectorIndex
from aether_box.memory.store import Collection
from aether_box.models.files import atomic_writer, fsync_dir, remove_partials

__all__ = ["Snapshots", "SNAPSHOT_FORMAT"]

log = logging.getLogger(__name__)
# Bump when the saved arrays change meaning, so older copies are rebuilt instead of misread.
SNAPSHOT_FORMAT = 3
_ARRAYS = ("rowids", "rows", "codes", "steps", "bits", "calibration")


class Snapshots:
    """The saved index copies of one memory database (call from worker threads: file I/O)."""

    def __init__(self, db_path: Path) -> None:
        self.directory = Path(f"{db_path}.index")
        # Collections whose copy is known to be gone: a write needs no unlink then.
        self._absent: set[int] = set()
        # Collections whose saved copy was there but unusable, and why: `status` says so.
        self.rebuilt: dict[int, str] = {}

    def clean(self) -> None:
        """Delete what saves cut short by a kill left behind; move aside a file (not a
        directory) where the copies belong, so saves work again without deleting it."""
        if self.directory.exists() and not self.directory.is_dir():
            aside = self.directory.with_name(f"{self.directory.name}.not-a-directory")
            log.warning(
                "memory: %s is a file, not the directory of saved indexes; moved it to %s "
                "(the indexes are rebuilt from the database)",
                self.directory,
                aside,
            )
            os.replace(self.directory, aside)
        remove_partials(self.directory)

    def path(self, collection_id: int) -> Path:
        return self.directory / f"c{int(collection_id)}.idx"

    def load(
        self,
        collection: Collection,
        count: int,
        last_rowid: int,
        new_index: Callable[[int, str], VectorIndex],
    ) -> VectorIndex | None:
        """The saved index of `collection` if it is there and matches the database, else None.

        `new_index(dim, metric)` makes an empty index with the box's settings to load into.
        """
        path = self.path(collection.id)
        expected = {
            "format": SNAPSHOT_FORMAT,
            "dim": collection.dim,
            "metric": collection.metric,
            "created": collection.created,
            "count": count,
            "last_rowid": last_rowid,
        }
        try:
            with open(path, "rb") as handle:
                if json.loads(handle.readline()) != expected:
                    # Another format, or a write since the save that a crash kept from
                    # deleting the copy: the database is the truth.
                    log.info("memory: saved index of %r is stale; rebuilding", collection.name)
                    self.rebuilt[collection.id] = "saved index stale"
                    return None
                arrays = {name: np.load(handle, allow_pickle=False) for name in _ARRAYS}
                if handle.read(1):
                    raise ValueError("bytes after the last array")
            index = new_index(collection.dim, collection.metric)
            index.load_arrays(arrays)
            return index
        except FileNotFoundError:
            self._absent.add(collection.id)
            return None
        except (OSError, ValueError, KeyError, EOFError) as exc:
            log.warning(
                "memory: saved index %s unreadable (%s); rebuilding it from the database",
                path,
                exc,
            )
            self.rebuilt[collection.id] = "saved index unreadable"
            return None

    def save(self, collection: Collection, index: VectorIndex) -> None:
        """Write the index's copy atomically (a crash mid-write leaves no copy, not a torn one)."""
        arrays = index.arrays()
        rowids = arrays["rowids"]
        meta = {
            "format": SNAPSHOT_FORMAT,
            "dim": collection.dim,
            "metric": collection.metric,
            "created": collection.created,
            "count": len(rowids),
            "last_rowid": int(rowids[-1]) if len(rowids) else 0,
        }
        with atomic_writer(self.path(collection.id)) as handle:
            handle.write(json.dumps(meta).encode() + b"\n")
            for name in _ARRAYS:
                np.save(handle, arrays[name], allow_pickle=False)
        self._absent.discard(collection.id)

    def has(self, collection_id: int) -> bool:
        return collection_id not in self._absent and self.path(collection_id).exists()

    def invalidate(self, collection_id: int) -> None:
        """Delete the copy before a write to its collection commits (cheap once it is gone)."""
        if collection_id in self._absent:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(collection_id))
            fsync_dir(self.directory)  # the deletion reaches the disk before the write does
        self._absent.add(collection_id)
