"""Opening the box's SQLite files (through apsw) the one way they all need."""

from __future__ import annotations

from pathlib import Path

import apsw

from aether_box.errors import ConfigError

__all__ = ["check_sound", "open_durable", "open_with_schema"]


def open_durable(path: Path) -> apsw.Connection:
    """A connection to `path` in WAL mode with full syncs: a committed write survives a crash
    or a power cut. It waits up to 10 s for another writer's lock."""
    conn = apsw.Connection(str(path))
    conn.set_busy_timeout(10_000)
    conn.pragma("journal_mode", "wal")
    conn.pragma("synchronous", "FULL")
    return conn


def check_sound(conn: apsw.Connection, path: Path, what: str, remedy: str) -> None:
    """ConfigError naming `what` and `remedy` unless SQLite's quick check of `path` passes.

    Opening reads only the first page: a file cut short or overwritten further in would
    otherwise open fine and fail in the middle of a request. The check reads every page
    once, so it is for the small files (sessions, adapters, tuner), not memory.db."""
    found = [row[0] for row in conn.execute("PRAGMA quick_check(1)")]
    if found != ["ok"]:
        # The first problem, on one line: the message is the one line the user sees.
        problem = " ".join(found[0].replace("*** in database main ***", "").split())
        raise ConfigError(f"{what} {path} is damaged (SQLite found: {problem}); {remedy}")


def open_with_schema(path: Path, schema: str, what: str, remedy: str) -> apsw.Connection:
    """`open_durable`, checked sound, with `schema` applied in one transaction. A file SQLite
    cannot open, check or set up raises ConfigError naming `what` it holds and `remedy`."""
    try:
        conn = open_durable(path)
        check_sound(conn, path, what, remedy)
        with conn:
            conn.execute(schema)
    except apsw.Error as exc:
        raise ConfigError(f"cannot open {what} {path} ({exc}); {remedy}") from exc
    return conn
