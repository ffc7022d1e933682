"""Opening the box's SQLite files (through apsw) the one way they all need."""

from __future__ import annotations

from pathlib import Path

import apsw

__all__ = ["open_durable"]


def open_durable(path: Path) -> apsw.Connection:
    """A connection to `path` in WAL mode with full syncs: a committed write survives a crash
    or a power cut. It waits up to 10 s for another writer's lock."""
    conn = apsw.Connection(str(path))
    conn.set_busy_timeout(10_000)
    conn.pragma("journal_mode", "wal")
    conn.pragma("synchronous", "FULL")
    return conn
