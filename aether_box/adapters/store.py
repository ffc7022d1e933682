"""Kept adapters: GGUF files named by their sha256 in the data dir, and an index in SQLite.

The index (``adapters.sqlite``, apsw, WAL) holds each adapter's name, base model, sha256,
shape figures and how it was made, the fusion log (see `probe`): one row per probe run, and
the pruning decisions (`prune`, `restore`): the latest per adapter.
A file is written to a temporary name, hashed, then renamed, and its row is committed after
the rename: a crash leaves either no adapter or a whole one. What a crash left half done (a
temporary file, a renamed file no row names) is deleted when the store opens again.
All calls block: run them in a thread.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from aether_box.adapters.lora_file import LoraFile, write_lora
from aether_box.errors import BadRequest, NotFound
from aether_box.sqlite import open_with_schema

log = logging.getLogger(__name__)
# Where the sweep moves adapter files the index does not list: never deleted, since a lost
# or replaced index would otherwise take every adapter the user kept with it.
UNINDEXED_DIR = "unindexed"

__all__ = ["AdapterStore", "valid_name"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS adapters (
    name TEXT PRIMARY KEY,
    base TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    rank INTEGER NOT NULL,
    alpha REAL NOT NULL,
    tensors INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    source TEXT NOT NULL,
    recipe TEXT,
    added REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS fusion_log (
    id INTEGER PRIMARY KEY,
    adapter TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL,
    state TEXT NOT NULL,
    prompts INTEGER,
    tokens INTEGER,
    kl_mean REAL,
    kl_p95 REAL,
    top1 REAL,
    stack_kl_mean REAL,
    stack_kl_p95 REAL,
    verdict TEXT,
    reason TEXT,
    seconds REAL
);
CREATE INDEX IF NOT EXISTS fusion_by_adapter ON fusion_log (adapter, id);
CREATE TABLE IF NOT EXISTS pruning (
    adapter TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    by TEXT NOT NULL,
    at REAL NOT NULL,
    probe INTEGER
);
"""
PRUNE_COLUMNS = ("adapter", "state", "reason", "by", "at", "probe")
COLUMNS = (
    "name",
    "base",
    "sha256",
    "rank",
    "alpha",
    "tensors",
    "bytes",
    "source",
    "recipe",
    "added",
)
LOG_COLUMNS = (
    "id", "adapter", "sha256", "started", "finished", "state", "prompts", "tokens", "kl_mean",
    "kl_p95", "top1", "stack_kl_mean", "stack_kl_p95", "verdict", "reason", "seconds",
)  # fmt: skip


def valid_name(name: Any) -> str:
    """`name` if it is a usable adapter name, else BadRequest saying what is."""
    if (
        not isinstance(name, str)
        or not 0 < len(name) <= 64
        or not all(c.isalnum() or c in "-_." for c in name)
        or name[0] == "."
    ):
        raise BadRequest(
            f"adapter name {name!r} is not usable: 1 to 64 letters, digits, '-', '_' or '.'"
        )
    return name


class AdapterStore:
    """The adapters under `directory` (files) and their index and fusion log."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.files = directory / "files"
        self.files.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # one apsw connection, used from worker threads
        self._conn = open_with_schema(
            directory / "adapters.sqlite",
            SCHEMA,
            "the adapters database",
            "move it aside to start with no adapters (their files are kept, moved to "
            "adapters/unindexed, to add again with `aether-box adapters add PATH`)",
        )
        self._sweep()

    def _sweep(self) -> None:
        """Clear what an add cut short left in `files` (one box owns the data dir: no add
        runs now): delete its temporary file; move a whole file the index does not list
        (renamed before its row was committed, or left by a lost index) to `unindexed`."""
        with self._lock:
            kept = {row[0] for row in self._conn.execute("SELECT sha256 FROM adapters")}
        for path in self.files.iterdir():
            if path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)
            elif path.suffix == ".gguf" and path.stem not in kept:
                self._set_aside(path)

    def _set_aside(self, path: Path) -> None:
        aside = self.directory / UNINDEXED_DIR
        aside.mkdir(exist_ok=True)
        os.replace(path, aside / path.name)
        log.warning(
            "adapters: %s is listed in no adapter; moved it to %s (add it again with "
            "`aether-box adapters add %s --base MODEL`)",
            path.name,
            aside,
            aside / path.name,
        )

    def close(self) -> None:
        self._conn.close()

    def file(self, sha256: str) -> Path:
        return self.files / f"{sha256}.gguf"

    # -- adapters ------------------------------------------------------------------------

    def add(
        self,
        name: str,
        base: str,
        lora: LoraFile,
        source: str,
        recipe: dict[str, Any] | None = None,
        *,
        copy_of: Path | None = None,
    ) -> dict[str, Any]:
        """Keep `lora` (already checked) as `name` for model `base`; `copy_of` is its GGUF
        file when it came as one (kept byte for byte), else it is written from `lora`."""
        valid_name(name)
        temporary = self.files / f".{name}.{os.getpid()}.tmp"
        try:
            if copy_of is not None:
                shutil.copyfile(copy_of, temporary)
            else:
                write_lora(temporary, lora)
            digest = _sha256(temporary)
            os.replace(temporary, self.file(digest))
        finally:
            temporary.unlink(missing_ok=True)
        row = {
            "name": name,
            "base": base,
            "sha256": digest,
            "rank": lora.rank,
            "alpha": lora.alpha,
            "tensors": len(lora.factors),
            "bytes": self.file(digest).stat().st_size,
            "source": source,
            "recipe": json.dumps(recipe) if recipe else None,
            "added": time.time(),
        }
        with self._lock, self._conn:
            if self._conn.execute("SELECT 1 FROM adapters WHERE name = ?", (name,)).fetchall():
                raise BadRequest(
                    f"an adapter named {name!r} exists; remove it first or pick another --name"
                )
            self._conn.execute(
                f"INSERT INTO adapters ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                tuple(row[c] for c in COLUMNS),
            )
        return self._public(row)

    def exists(self, name: str) -> bool:
        with self._lock:
            return bool(
                self._conn.execute("SELECT 1 FROM adapters WHERE name = ?", (name,)).fetchall()
            )

    def get(self, name: str) -> dict[str, Any]:
        """The adapter `name`, or NotFound listing the kept ones."""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {', '.join(COLUMNS)} FROM adapters WHERE name = ?", (name,)
            ).fetchall()
        if not rows:
            kept = ", ".join(a["name"] for a in self.list()) or "none"
            raise NotFound(
                f"no adapter {name!r} (kept: {kept}); add one with `aether-box adapters add`"
            )
        return self._public(dict(zip(COLUMNS, rows[0], strict=True)))

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {', '.join(COLUMNS)} FROM adapters ORDER BY name"
            ).fetchall()
        return [self._public(dict(zip(COLUMNS, row, strict=True))) for row in rows]

    def remove(self, name: str) -> dict[str, Any]:
        """Forget `name`; its file goes too unless another name keeps the same contents."""
        adapter = self.get(name)
        with self._lock, self._conn:
            self._conn.execute("DELETE FROM adapters WHERE name = ?", (name,))
            self._conn.execute("DELETE FROM pruning WHERE adapter = ?", (name,))
            shared = self._conn.execute(
                "SELECT 1 FROM adapters WHERE sha256 = ?", (adapter["sha256"],)
            ).fetchall()
        if not shared:
            self.file(adapter["sha256"]).unlink(missing_ok=True)
        return adapter

    def _public(self, row: dict[str, Any]) -> dict[str, Any]:
        out = dict(row)
        out["path"] = str(self.file(row["sha256"]))
        out["recipe"] = json.loads(row["recipe"]) if row.get("recipe") else None
        return out

    # -- the fusion log ------------------------------------------------------------------

    def log_start(self, adapter: str, sha256: str) -> int:
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT INTO fusion_log (adapter, sha256, started, state) VALUES (?, ?, ?, ?)",
                (adapter, sha256, time.time(), "running"),
            )
            return int(self._conn.last_insert_rowid())

    def log_finish(self, entry: int, **fields: Any) -> None:
        fields = {"finished": time.time(), **fields}
        names = [k for k in fields if k in LOG_COLUMNS]
        with self._lock, self._conn:
            self._conn.execute(
                f"UPDATE fusion_log SET {', '.join(f'{k} = ?' for k in names)} WHERE id = ?",
                (*(fields[k] for k in names), entry),
            )

    def fusion_log(self, adapter: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """The newest probe runs (of `adapter`, or all), newest first."""
        where, args = ("WHERE adapter = ?", (adapter, limit)) if adapter else ("", (limit,))
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {', '.join(LOG_COLUMNS)} FROM fusion_log {where} ORDER BY id DESC LIMIT ?",
                args,
            ).fetchall()
        return [dict(zip(LOG_COLUMNS, row, strict=True)) for row in rows]

    def latest(self, *, done: bool = False) -> dict[str, dict[str, Any]]:
        """Each kept adapter's newest probe of its present contents (by adapter name); with
        `done`, its newest finished one: the verdict that judges it while another probe
        runs, or after one failed or a stop cut it short."""
        state = "AND f.state = 'done' " if done else ""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {', '.join(LOG_COLUMNS)} FROM fusion_log WHERE id IN "
                "(SELECT MAX(f.id) FROM fusion_log f JOIN adapters a "
                f"ON a.name = f.adapter AND a.sha256 = f.sha256 {state}GROUP BY f.adapter)"
            ).fetchall()
        return {row[1]: dict(zip(LOG_COLUMNS, row, strict=True)) for row in rows}

    # -- pruning -------------------------------------------------------------------------

    def set_pruning(
        self, name: str, state: str, reason: str, by: str, probe: int | None = None
    ) -> dict[str, Any] | None:
        """Record `name` as "pruned" or "restored" (against fusion-log entry `probe`);
        -> the decision it replaces, if any."""
        self.get(name)  # NotFound for an adapter that is not kept
        with self._lock, self._conn:
            previous = self._pruning_rows("WHERE adapter = ?", (name,))
            self._conn.execute(
                "INSERT OR REPLACE INTO pruning (adapter, state, reason, by, at, probe) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (name, state, reason, by, time.time(), probe),
            )
        return previous[0] if previous else None

    def pruning(self) -> dict[str, dict[str, Any]]:
        """The latest pruning decision of each adapter that has one, by adapter name."""
        with self._lock:
            return {row["adapter"]: row for row in self._pruning_rows("", ())}

    def _pruning_rows(self, where: str, args: tuple[Any, ...]) -> list[dict[str, Any]]:
        rows = self._conn.execute(
            f"SELECT {', '.join(PRUNE_COLUMNS)} FROM pruning {where}", args
        ).fetchall()
        return [dict(zip(PRUNE_COLUMNS, row, strict=True)) for row in rows]

    def abandon_running(self) -> int:
        """Mark probes a stopped box left running as interrupted (at start)."""
        with self._lock, self._conn:
            self._conn.execute(
                "UPDATE fusion_log SET state = 'interrupted' WHERE state = 'running'"
            )
            return int(self._conn.changes())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
