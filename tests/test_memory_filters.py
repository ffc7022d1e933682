"""The metadata filter language selects the right records in a real SQLite, and nothing else."""

from __future__ import annotations

import json

import apsw
import pytest

from aether_box.errors import BadRequest
from aether_box.memory.filters import MAX_CONDITIONS, compile_filter

ROWS = {
    1: {"tag": "x", "year": 2019, "tags": ["a", "b"], "author": {"name": "Ada"}, "ok": True},
    2: {"tag": "y", "year": 2021, "tags": ["b"], "author": {"name": "Bo"}, "ok": False},
    3: {"tag": "x", "year": 2023, "tags": [], "note": None},
    4: {"tag": "z", "year": "2024", "score": 0.5},
    5: {},
}


@pytest.fixture(scope="module")
def db() -> apsw.Connection:
    conn = apsw.Connection(":memory:")
    conn.execute("CREATE TABLE records(rowid INTEGER PRIMARY KEY, metadata BLOB)")
    conn.executemany(
        "INSERT INTO records VALUES (?, jsonb(?))", [(k, json.dumps(v)) for k, v in ROWS.items()]
    )
    return conn


def matching(db: apsw.Connection, where) -> list[int]:
    compiled = compile_filter(where)
    rows = db.execute(
        f"SELECT rowid FROM records WHERE {compiled.sql} ORDER BY rowid", compiled.params
    )
    return [r[0] for r in rows]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ({"tag": "x"}, [1, 3]),
        ({"tag": "x", "year": {"$gte": 2020}}, [3]),
        ({"year": {"$gt": 2019, "$lt": 2023}}, [2]),
        # "2024" is a string: numeric comparisons skip it instead of sorting text above numbers.
        ({"year": {"$gt": 2000}}, [1, 2, 3]),
        ({"year": {"$gte": "2000"}}, [4]),
        ({"tag": {"$in": ["y", "z"]}}, [2, 4]),
        ({"tag": {"$nin": ["x"]}}, [2, 4, 5]),
        ({"tag": {"$ne": "x"}}, [2, 4, 5]),
        ({"tags": {"$contains": "b"}}, [1, 2]),
        ({"author.name": "Bo"}, [2]),
        ({"ok": True}, [1]),
        ({"ok": False}, [2]),
        ({"author.name": None}, [3, 4, 5]),  # null or absent
        ({"note": None}, [1, 2, 3, 4, 5]),
        ({"note": {"$exists": True}}, [3]),
        ({"score": {"$exists": False}}, [1, 2, 3, 5]),
        ({"$or": [{"tag": "y"}, {"score": {"$lte": 0.5}}]}, [2, 4]),
        ({"$not": {"tag": "x"}}, [2, 4, 5]),
        ({"$and": [{"tag": "x"}, {"$not": {"year": 2019}}]}, [3]),
        ({}, [1, 2, 3, 4, 5]),
        ('{"tag": "x"}', [1, 3]),  # JSON text, as the CLI sends it
    ],
)
def test_filters_select_the_right_records(db, where, expected):
    assert matching(db, where) == expected


@pytest.mark.parametrize(
    "where",
    [
        {"tag": "x' OR 1=1 --"},
        {"tag') OR 1=1 --": "x"},
        {"tag": {"$in": ["x') OR ('1'='1"]}},
    ],
)
def test_hostile_names_and_values_are_data_not_sql(db, where):
    assert matching(db, where) == []


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("{not json", "not valid JSON"),
        ([1, 2], "must be a JSON object"),
        ({"year": {"$gtt": 1}}, "unknown operator '$gtt'"),
        ({"$nor": []}, "unknown operator '$nor'"),
        ({"$or": []}, "non-empty list"),
        ({"year": {"$gt": True}}, "compares numbers or strings"),
        ({"year": {"$gt": float("nan")}}, "NaN"),
        ({"tag": {"$in": "x"}}, "list of 1 to"),
        ({"tag": {"$exists": 1}}, "true or false"),
        ({'a"b': 1}, "bad field name"),
        ({"a..b": 1}, "bad field name"),
        ({"tag": {}}, "empty condition"),
        ({"author": {"name": "Ada"}}, "expected a string, number or boolean"),
        (
            {
                "$and": [
                    {
                        "$and": [
                            {
                                "$and": [
                                    {
                                        "$and": [
                                            {
                                                "$and": [
                                                    {
                                                        "$and": [
                                                            {
                                                                "$and": [
                                                                    {"$and": [{"$and": [{"x": 1}]}]}
                                                                ]
                                                            }
                                                        ]
                                                    }
                                                ]
                                            }
                                        ]
                                    }
                                ]
                            }
                        ]
                    }
                ]
            },
            "deeper than",
        ),
        ({f"f{i}": i for i in range(MAX_CONDITIONS + 1)}, "more than"),
    ],
)
def test_bad_filters_are_clear_errors(where, message):
    with pytest.raises(BadRequest, match=message.replace("$", r"\$").replace("(", r"\(")):
        compile_filter(where)
