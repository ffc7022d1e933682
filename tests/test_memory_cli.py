"""`aether-box memory ...` against a running box: create, import, export, list, delete, drop."""

from __future__ import annotations

import json

import numpy as np
import orjson
from click.testing import CliRunner
from fixtures_memory import unit_vectors

from aether_box.cli import cli

DIM = 8


def run(box, *args: str, ok: bool = True):
    result = CliRunner().invoke(
        cli, ["--data-dir", str(box.data_dir), "--endpoint", box.endpoint, "memory", *args]
    )
    if ok:
        assert result.exit_code == 0, result.output
    return result


def test_import_export_round_trip(memory_box, tmp_path):
    vectors = unit_vectors(2_500, DIM)
    source = tmp_path / "in.jsonl"
    with source.open("wb") as out:
        for i, vector in enumerate(vectors):
            line = {
                "id": f"n{i}",
                "text": f"note {i}",
                "metadata": {"tag": "ab"[i % 2], "i": i},
                "vector": vector.tolist(),
            }
            out.write(orjson.dumps(line) + b"\n")
            if i == 10:
                out.write(b"\n")  # blank lines are skipped

    assert (
        "created docs (test, 8-d, l2)"
        in run(
            memory_box, "create", "docs", "--model", "test", "--dim", "8", "--metric", "l2"
        ).output
    )
    again = run(memory_box, "create", "docs", "--model", "test", "--dim", "8", ok=False)
    assert again.exit_code == 1 and "--exist-ok" in again.output  # the flag, not the API field
    result = run(memory_box, "import", str(source), "--collection", "docs", "--batch", "1000")
    assert "imported 2500 records into docs" in result.output
    listed = run(memory_box, "list", "--json").output
    assert json.loads(listed)[0] | {"created": 0} == {
        "name": "docs",
        "model": "test",
        "dim": 8,
        "metric": "l2",
        "recipe": {"prompt": None, "pooling": "mean"},  # plain: the default
        "count": 2500,
        "created": 0,
    }

    exported = tmp_path / "out.jsonl"
    assert "exported 2500 records" in run(memory_box, "export", "docs", str(exported)).output
    header, *lines = [orjson.loads(line) for line in exported.read_bytes().splitlines()]
    plain = {"prompt": None, "pooling": "mean"}
    assert header == {
        "collection": {"name": "docs", "model": "test", "dim": 8, "metric": "l2", "recipe": plain}
    }
    assert [line["id"] for line in lines] == [f"n{i}" for i in range(2_500)]
    assert lines[7]["metadata"] == {"tag": "b", "i": 7} and lines[7]["text"] == "note 7"
    np.testing.assert_array_equal(np.array([line["vector"] for line in lines], np.float32), vectors)

    # The export imports as is: a missing collection is made as its header describes it.
    result = run(memory_box, "import", str(exported), "--collection", "copy")
    assert "created collection copy (test, 8-d, l2)" in result.output
    listed = {c["name"]: c for c in json.loads(run(memory_box, "list", "--json").output)}
    assert listed["copy"]["count"] == 2500 and listed["copy"]["metric"] == "l2"
    # A file with no header needs a collection named.
    plain = tmp_path / "plain.jsonl"
    plain.write_bytes(b"".join(exported.read_bytes().splitlines(keepends=True)[1:]))
    result = run(memory_box, "import", str(plain), ok=False)
    assert result.exit_code != 0 and "pass --collection" in result.output

    records = json.loads(
        run(memory_box, "list", "docs", "--where", '{"i": {"$lt": 3}}', "--json").output
    )
    assert [r["id"] for r in records] == ["n0", "n1", "n2"]
    assert "deleted 1250" in run(memory_box, "delete", "docs", "--where", '{"tag": "a"}').output
    # Neither ids nor a filter: say what to give (it said "not both" of what was not given).
    neither = run(memory_box, "delete", "docs", ok=False)
    assert neither.exit_code == 2 and "give the ids of the records to delete" in neither.output
    got = json.loads(run(memory_box, "get", "docs", "n1", "n2").output)
    assert [r["id"] for r in got["records"]] == ["n1"] and got["missing"] == ["n2"]
    assert run(memory_box, "check").output.strip() == "ok"
    assert "dropped docs (1250 records)" in run(memory_box, "drop", "docs", "--yes").output


def test_import_errors_are_one_clear_line(memory_box, tmp_path):
    run(memory_box, "create", "docs", "--model", "test", "--dim", "8")
    bad = tmp_path / "bad.jsonl"
    good_line = orjson.dumps({"id": "a", "vector": [0.5] * DIM})
    bad.write_bytes(good_line + b"\n{oops\n")
    result = run(memory_box, "import", str(bad), "--collection", "docs", ok=False)
    assert result.exit_code == 1 and "line 2 is not JSON" in result.output
    assert "nothing was imported" in result.output  # it said "the records before line 1"
    later = tmp_path / "later.jsonl"
    later.write_bytes(b"\n".join([good_line, good_line.replace(b'"a"', b'"b"'), b"{oops"]))
    result = run(memory_box, "import", str(later), "--collection", "docs", "--batch", "1", ok=False)
    assert "the records up to line 2 were imported" in result.output
    run(memory_box, "delete", "docs", "a", "b")
    # A vector that is no list of numbers is refused before anything is made: a string's
    # length became a new collection's dimension.
    text_vector = tmp_path / "text_vector.jsonl"
    text_vector.write_bytes(orjson.dumps({"text": "t", "vector": "xyz"}) + b"\n")
    result = run(
        memory_box, "import", str(text_vector), "--collection", "made", "--model", "test", ok=False
    )
    assert result.exit_code == 1
    assert "line 1: 'vector' must be a list of numbers; nothing was imported" in result.output
    assert [c["name"] for c in json.loads(run(memory_box, "list", "--json").output)] == ["docs"]
    short = tmp_path / "short.jsonl"
    short.write_bytes(orjson.dumps({"vector": [0.5] * (DIM - 1)}) + b"\n")
    result = run(memory_box, "import", str(short), "--collection", "docs", ok=False)
    assert result.exit_code == 1
    assert "7 dimensions, but collection 'docs' holds 8-d" in result.output
    result = run(memory_box, "search", "docs", "q", "--where", "{nope", ok=False)
    assert result.exit_code == 2 and "--where" in result.output
    listed = json.loads(run(memory_box, "list", "--json").output)
    assert listed[0]["count"] == 0  # nothing from the failed imports was written


def test_records_print_as_written_brackets_and_all(memory_box, tmp_path):
    # A rich table reads its cells as markup: "[milk]" vanished and a lone "[/]" raised.
    run(memory_box, "create", "notes", "--model", "test", "--dim", "8")
    source = tmp_path / "notes.jsonl"
    texts = ["buy [milk] and eggs", "[/] closes nothing"]
    with source.open("wb") as out:
        for i, (text, vector) in enumerate(zip(texts, unit_vectors(2, DIM), strict=True)):
            line = {"id": f"t{i}", "text": text, "metadata": {}, "vector": vector.tolist()}
            out.write(orjson.dumps(line) + b"\n")
    assert (
        "imported 2 records into notes"
        in run(memory_box, "import", str(source), "--collection", "notes").output
    )
    one = tmp_path / "one.jsonl"
    one.write_bytes(orjson.dumps({"id": "t2", "vector": unit_vectors(1, DIM)[0].tolist()}))
    imported = run(memory_box, "import", str(one), "--collection", "notes").output
    assert "imported 1 record into notes" in imported
    listed = run(memory_box, "list", "notes").output
    assert all(text in listed for text in texts), listed


def progress_lines(output: str, start: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(start)]


def test_progress_off_a_terminal_is_separate_lines_ending_complete(memory_box, tmp_path):
    # CliRunner's output is no terminal, as a pipe, a log file or a CI job: rich's bars ran
    # together there, or showed nothing until the end.
    source = tmp_path / "in.jsonl"
    lines = [
        orjson.dumps({"id": f"n{i}", "text": f"note {i}", "vector": vector.tolist()})
        for i, vector in enumerate(unit_vectors(300, DIM))
    ]
    source.write_bytes(b"\n".join(lines) + b"\n")
    run(memory_box, "create", "docs", "--model", "test", "--dim", "8")
    imported = run(memory_box, "import", str(source), "--collection", "docs", "--batch", "100")
    shown = progress_lines(imported.output, f"import {source}: ")
    size = source.stat().st_size
    assert shown[0] == f"import {source}: 0/{size} (0%)", imported.output
    assert shown[-1] == f"import {source}: {size}/{size} (100%)", imported.output
    assert len(shown) == len(set(shown))
    exported = run(memory_box, "export", "docs", str(tmp_path / "out.jsonl"), "--batch", "100")
    assert progress_lines(exported.output, "export docs: ") == [
        "export docs: 0/300 (0%)",
        "export docs: 300/300 (100%)",  # the batches between came within 5 s: held back
    ], exported.output
