"""The box's SQLite files: opened durable with their schema, or a ConfigError that says what to do."""

from __future__ import annotations

from pathlib import Path

import pytest

from aether_box.errors import ConfigError
from aether_box.sqlite import open_with_schema
from aether_box.tuner.log import DecisionLog

SCHEMA = "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL)"


def test_a_file_opens_in_wal_mode_with_its_schema_and_again_after(tmp_path: Path) -> None:
    path = tmp_path / "notes.sqlite"
    conn = open_with_schema(path, SCHEMA, "the notes", "move it")
    with conn:
        conn.execute("INSERT INTO notes (text) VALUES ('kept')")
    assert conn.pragma("journal_mode") == "wal"
    conn.close()
    again = open_with_schema(path, SCHEMA, "the notes", "move it")  # the schema is idempotent
    assert [row[0] for row in again.execute("SELECT text FROM notes")] == ["kept"]


def test_a_file_that_is_not_a_database_names_itself_and_the_remedy(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    path.write_bytes(b"this is not SQLite " * 100)
    with pytest.raises(ConfigError) as caught:
        DecisionLog(path)
    message = caught.value.message
    assert "cannot open the tuner's log" in message and str(path) in message
    assert message.endswith("move or delete it, or set tuner.file")
