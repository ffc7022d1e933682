"""The tuner's decision log: one SQLite row per decision (apsw, WAL, synchronous FULL).

A row holds when, the signal that prompted it, the figures before, the action, the figures
after and the outcome. Every call blocks: run them in a worker thread.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from aether_box.errors import NotFound
from aether_box.sqlite import open_with_schema

__all__ = ["DecisionLog", "STATES"]

# proposed -> applying -> applied | rejected | failed; applied -> rolled_back; proposed -> dismissed
STATES = ("proposed", "applying", "applied", "rejected", "failed", "rolled_back", "dismissed")

SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    mode TEXT NOT NULL,
    state TEXT NOT NULL,
    signal TEXT NOT NULL,
    params TEXT NOT NULL,
    before TEXT,
    after TEXT,
    outcome TEXT
);
CREATE INDEX IF NOT EXISTS decisions_subject ON decisions(action, subject, created);
"""
COLUMNS = (
    "id", "created", "updated", "action", "subject", "mode", "state", "signal", "params",
    "before", "after", "outcome",
)  # fmt: skip
JSON_COLUMNS = ("signal", "params", "before", "after")


class DecisionLog:
    """Append and update decisions; read them back newest first."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = open_with_schema(
            path, SCHEMA, "the tuner's log", "move or delete it, or set tuner.file"
        )

    def close(self) -> None:
        self._conn.close()

    def add(
        self,
        action: str,
        subject: str,
        mode: str,
        state: str,
        signal: dict[str, Any],
        params: dict[str, Any],
        before: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Log a new decision; returns it with its id."""
        now = time.time()
        with self._conn:
            self._conn.execute(
                "INSERT INTO decisions (created, updated, action, subject, mode, state, signal, "
                "params, before) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (now, now, action, subject, mode, state, _dump(signal), _dump(params),
                 _dump(before)),
            )  # fmt: skip
            new_id = self._conn.last_insert_rowid()
        return self.get(new_id)

    def update(self, decision_id: int, **fields: Any) -> dict[str, Any]:
        """Change a decision's state, figures or outcome."""
        unknown = set(fields) - {"state", "before", "after", "outcome", "params"}
        if unknown:
            raise ValueError(f"cannot update {sorted(unknown)}")
        values = {k: _dump(v) if k in JSON_COLUMNS else v for k, v in fields.items()}
        sets = ", ".join(f"{k} = ?" for k in values)
        with self._conn:
            self._conn.execute(
                f"UPDATE decisions SET {sets}, updated = ? WHERE id = ?",
                (*values.values(), time.time(), decision_id),
            )
        return self.get(decision_id)

    def get(self, decision_id: int) -> dict[str, Any]:
        """One decision, or NotFound."""
        rows = self._conn.execute(
            f"SELECT {', '.join(COLUMNS)} FROM decisions WHERE id = ?", (decision_id,)
        ).fetchall()
        if not rows:
            raise NotFound(f"no tuner decision {decision_id}; `aether-box tuner log` lists them")
        return _row(rows[0])

    def recent(
        self, limit: int = 50, action: str | None = None, state: str | None = None
    ) -> list[dict[str, Any]]:
        """The newest decisions first, optionally of one action or state."""
        where, args = [], []
        if action:
            where.append("action = ?")
            args.append(action)
        if state:
            where.append("state = ?")
            args.append(state)
        sql = f"SELECT {', '.join(COLUMNS)} FROM decisions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._conn.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [_row(r) for r in rows]

    def last_for(self, action: str, subject: str) -> dict[str, Any] | None:
        """The newest decision about `subject` by `action`, if any."""
        rows = self._conn.execute(
            f"SELECT {', '.join(COLUMNS)} FROM decisions WHERE action = ? AND subject = ? "
            "ORDER BY id DESC LIMIT 1",
            (action, subject),
        ).fetchall()
        return _row(rows[0]) if rows else None

    def counts(self) -> dict[str, dict[str, int]]:
        """Decisions per action and state."""
        out: dict[str, dict[str, int]] = {}
        for action, state, n in self._conn.execute(
            "SELECT action, state, count(*) FROM decisions GROUP BY action, state"
        ):
            out.setdefault(action, {})[state] = n
        return out


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=float)


def _row(row: tuple[Any, ...]) -> dict[str, Any]:
    out = dict(zip(COLUMNS, row, strict=True))
    for key in JSON_COLUMNS:
        if out[key] is not None:
            out[key] = json.loads(out[key])
    return out
