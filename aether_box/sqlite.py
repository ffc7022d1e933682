"""Opening the box's SQLite files (through apsw) the one way they all need."""

from __future__ import annotations

from pathlib import Path

import apsw

from aether_box.errors import ConfigError

__all__ = ["open_durable", "open_with_schema"]


def open_durable(path: Path) -> apsw.Connection:
    """A connection to `path` in WAL mode with full syncs: a committed write survives a crash
    or a power cut. It waits up to 10 s for another writer's lock."""
    conn = apsw.Connection(str(path))
    conn.set_busy_timeout(10_000)
    conn.pragma("journal_mode", "wal")
    conn.pragma("synchronous", "FULL")
    return conn


def open_with_schema(path: Path, schema: str, what: str, remedy: str) -> apsw.Connection:
    """`open_durable`, with `schema` applied in one transaction. A file SQLite cannot open or
    set up raises ConfigError naming `what` it holds and `remedy`, what the user can do."""
    try:
        conn = open_durable(path)
        with conn:
            conn.execute(schema)
    except apsw.Error as exc:
        raise ConfigError(f"cannot open {what} {path} ({exc}); {remedy}") from exc
    return conn
