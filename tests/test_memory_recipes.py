"""Collections record how their vectors are made (their embedding recipe) and refuse others."""

from __future__ import annotations

from pathlib import Path

import apsw
import numpy as np
import pytest
from click.testing import CliRunner
from fixtures_box import BoxInThread

from aether_box.cli import cli
from aether_box.errors import BadRequest, RecipeMismatch
from aether_box.memory.store import SCHEMA_VERSION

LAST = {"prompt": 'In one word: "{text}"', "pooling": "last"}

# The collections table as schema 1 made it: no recipe column.
SCHEMA_1 = """
CREATE TABLE collections (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    name     TEXT NOT NULL UNIQUE,
    model    TEXT NOT NULL,
    dim      INTEGER NOT NULL CHECK (dim > 0),
    metric   TEXT NOT NULL CHECK (metric IN ('cosine', 'l2', 'dot')),
    created  REAL NOT NULL
);
INSERT INTO collections(name, model, dim, metric, created) VALUES ('old', 'smollm2', 4, 'cosine', 1);
PRAGMA user_version = 1;
"""


def test_a_schema_1_database_gets_recipes_and_its_collections_stay_plain(data_dir: Path) -> None:
    conn = apsw.Connection(str(data_dir / "memory.db"))
    conn.enable_load_extension(True)
    import sqlite_vec

    conn.load_extension(sqlite_vec.loadable_path())
    conn.execute(SCHEMA_1)
    conn.execute("CREATE VIRTUAL TABLE vec_1 USING vec0(embedding float[4] distance_metric=cosine)")
    conn.execute(
        "CREATE VIRTUAL TABLE fts_1 USING fts5(text, content='', contentless_delete=1, "
        "tokenize='porter unicode61')"
    )
    conn.close()
    box = BoxInThread(data_dir)
    try:
        with box.client(timeout=30) as client:
            old = client.request("memory", {"op": "info", "collection": "old"})["collection"]
            assert old["recipe"] == {"prompt": None, "pooling": "mean"}
            vector = np.ones((1, 4), np.float32)
            client.request("memory", {"op": "add", "collection": "old", "vectors": vector})
            body = {"op": "create", "collection": "new", "model": "m", "dim": 4, "recipe": LAST}
            made = client.request("memory", body)["collection"]
            assert made["recipe"] == LAST
            # Vectors of unstated recipe are plain `embed` output: refused here, and saying how.
            add = {"op": "add", "collection": "new", "vectors": vector}
            with pytest.raises(RecipeMismatch, match="'recipe'.*query_recipe"):
                client.request("memory", add)
            assert client.request("memory", {**add, "recipe": LAST})["count"] == 1
            search = {"op": "search", "collection": "new", "vector": vector[0], "k": 1}
            with pytest.raises(RecipeMismatch, match='"pooling": "last"'):
                client.request("memory", search)
            hits = client.request("memory", {**search, "query_recipe": LAST})["results"]
            assert len(hits) == 1
            with pytest.raises(BadRequest, match="exists"):  # exist_ok compares recipes too
                client.request("memory", {**body, "recipe": "plain", "exist_ok": True})
            with pytest.raises(BadRequest, match="pooling"):
                client.request("memory", {**body, "collection": "x", "recipe": {"pooling": "max"}})
    finally:
        box.stop()
    box = BoxInThread(data_dir)  # the recipe is stored, not remembered by the process
    try:
        with box.client(timeout=30) as client:
            again = client.request("memory", {"op": "info", "collection": "new"})["collection"]
            assert again["recipe"] == LAST
        # An export carries the recipe; its import re-creates it and states it for the vectors.
        exported = data_dir / "new.jsonl"
        _cli(box, "export", "new", str(exported))
        _cli(box, "import", str(exported), "--collection", "copy")
        with box.client(timeout=30) as client:
            copy = client.request("memory", {"op": "info", "collection": "copy"})["collection"]
            assert copy["recipe"] == LAST and copy["count"] == 1
    finally:
        box.stop()
    conn = apsw.Connection(str(data_dir / "memory.db"))
    assert conn.pragma("user_version") == SCHEMA_VERSION == 2
    conn.close()


def _cli(box: BoxInThread, *args: str) -> None:
    result = CliRunner().invoke(
        cli, ["--data-dir", str(box.data_dir), "--endpoint", box.endpoint, "memory", *args]
    )
    assert result.exit_code == 0, result.output
