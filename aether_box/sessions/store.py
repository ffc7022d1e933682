"""Sessions and their messages in one SQLite file (apsw, WAL, synchronous FULL).

A user message and the model's reply are written in one transaction, after the reply is
complete: a crash or a cancelled request leaves the conversation as it was, never half a turn.
All calls block: run them in a worker thread.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import apsw

from aether_box.bus.failures import DISK_FULL_HINT, no_space_at
from aether_box.errors import ConfigError, DiskFull, NotFound
from aether_box.sqlite import check_sound, open_durable

__all__ = ["SessionStore"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    system TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    session TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (session, seq)
);
"""


# Never "delete it": the file holds the user's conversations, and SQLite can often save them.
_REMEDY = (
    "move it aside to start with no sessions (`sqlite3 FILE .recover` may save what it "
    "holds), or set sessions.file"
)


class SessionStore:
    """Create, read, extend and delete sessions."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.frozen = False
        try:
            self._conn = open_durable(path)
            check_sound(self._conn, path, "the sessions database", _REMEDY)
            self._conn.pragma("foreign_keys", "ON")
            with self._conn:
                self._conn.execute(SCHEMA)
                columns = {row[1] for row in self._conn.execute("PRAGMA table_info(sessions)")}
                if "adapters" not in columns:  # a database from before adapters
                    self._conn.execute("ALTER TABLE sessions ADD COLUMN adapters TEXT")
                if "pinned" not in columns:  # a database from before pins
                    self._conn.execute(
                        "ALTER TABLE sessions ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0"
                    )
        except apsw.Error as exc:
            if no_space_at(path.parent):  # start anyway, read-only: see MemoryStore.frozen
                self._conn = apsw.Connection(str(path))  # _check_writable refuses writes
                self._conn.pragma("locking_mode", "exclusive")  # the WAL index in memory
                self.frozen = True
                return
            raise ConfigError(
                f"cannot open the sessions database {path} ({exc}); {_REMEDY}"
            ) from exc

    def _check_writable(self) -> None:
        if self.frozen:
            raise DiskFull(
                "session: the disk was full when the box started, so conversations are "
                f"read-only until the box restarts with free space. {DISK_FULL_HINT}"
            )

    def close(self) -> None:
        self._conn.close()

    def create(
        self,
        model: str,
        system: str | None,
        adapters: list[dict[str, Any]] | None = None,
        pinned: bool = False,
    ) -> dict[str, Any]:
        """A new session; `adapters` are its default LoRA adapters (see llm's ``adapters``);
        `pinned`: it keeps its model loaded (see SessionsComponent)."""
        self._check_writable()
        now = time.time()
        session = {
            "id": uuid.uuid4().hex[:16],
            "model": model,
            "system": system,
            "pinned": pinned,
            "updated": now,
        }
        with self._conn:
            self._conn.execute(
                "INSERT INTO sessions (id, model, system, created, updated, adapters, pinned) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    session["id"],
                    model,
                    system,
                    now,
                    now,
                    json.dumps(adapters) if adapters else None,
                    int(pinned),
                ),
            )
        return session

    def pin(self, session_id: str, pinned: bool) -> dict[str, Any]:
        """Pin or unpin a session; -> the session (NotFound for an unknown one)."""
        self._check_writable()
        with self._conn:
            self._conn.execute(
                "UPDATE sessions SET pinned = ? WHERE id = ?", (int(pinned), session_id)
            )
        return self.get(session_id)

    def pinned(self) -> list[dict[str, Any]]:
        """The pinned sessions: id, model and when each was last used (wall-clock)."""
        rows = self._conn.execute(
            "SELECT id, model, updated FROM sessions WHERE pinned = 1"
        ).fetchall()
        return [dict(zip(("id", "model", "updated"), row, strict=True)) for row in rows]

    def get(self, session_id: str) -> dict[str, Any]:
        """The session's model, system prompt and default adapters, or NotFound."""
        rows = self._conn.execute(
            "SELECT id, model, system, adapters, pinned, updated FROM sessions WHERE id = ?",
            (session_id,),
        ).fetchall()
        if not rows:
            raise NotFound(
                f"no session {session_id!r}; list them with op 'list' (`aether-box sessions "
                "list`), or make one with 'create' (`aether-box chat MODEL` without --session "
                "starts one)"
            )
        keys = ("id", "model", "system", "adapters", "pinned", "updated")
        session = dict(zip(keys, rows[0], strict=True))
        session["adapters"] = json.loads(session["adapters"]) if session["adapters"] else []
        session["pinned"] = bool(session["pinned"])
        return session

    def messages(self, session_id: str) -> list[dict[str, Any]]:
        """The whole conversation, oldest first."""
        self.get(session_id)
        return [
            {"role": role, "content": content, "at": at}
            for role, content, at in self._conn.execute(
                "SELECT role, content, at FROM messages WHERE session = ? ORDER BY seq",
                (session_id,),
            ).fetchall()
        ]

    def append(self, session_id: str, turn: list[tuple[str, str]]) -> int:
        """Add a turn's messages in one transaction; returns how many the session now has."""
        self._check_writable()
        now = time.time()
        with self._conn:
            if not self._conn.execute(
                "SELECT 1 FROM sessions WHERE id = ?", (session_id,)
            ).fetchall():
                raise NotFound(
                    f"session {session_id!r} was deleted while it answered; the reply was "
                    "not kept (make a new session with 'create')"
                )
            (count,) = self._conn.execute(
                "SELECT count(*) FROM messages WHERE session = ?", (session_id,)
            ).fetchall()[0]
            self._conn.executemany(
                "INSERT INTO messages (session, seq, role, content, at) VALUES (?, ?, ?, ?, ?)",
                [(session_id, count + i, role, text, now) for i, (role, text) in enumerate(turn)],
            )
            self._conn.execute("UPDATE sessions SET updated = ? WHERE id = ?", (now, session_id))
        return count + len(turn)

    def list(self) -> list[dict[str, Any]]:
        """Every session, most recently used first, with its message count."""
        rows = self._conn.execute(
            "SELECT s.id, s.model, s.created, s.updated, s.pinned, count(m.seq) FROM sessions s "
            "LEFT JOIN messages m ON m.session = s.id GROUP BY s.id ORDER BY s.updated DESC"
        ).fetchall()
        keys = ("id", "model", "created", "updated", "pinned", "messages")
        found = [dict(zip(keys, row, strict=True)) for row in rows]
        for session in found:
            session["pinned"] = bool(session["pinned"])
        return found

    def delete(self, session_id: str) -> bool:
        self._check_writable()
        with self._conn:
            self._conn.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
            return self._conn.changes() > 0
