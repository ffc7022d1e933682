"""The metadata filter language: a small JSON query compiled to SQL with bound parameters.

A filter is a JSON object. Its keys are metadata fields (dotted for nesting: ``"author.name"``)
or the logical operators; several keys in one object must all hold::

    {"tag": "x"}                              equal (strings, numbers, booleans)
    {"tag": null}                             null or absent
    {"year": {"$gte": 2020, "$lt": 2025}}     $eq $ne $gt $gte $lt $lte
    {"tag": {"$in": ["a", "b"]}}              $in $nin (absent fields are "not in")
    {"tags": {"$contains": "x"}}              an array field holds the value
    {"note": {"$exists": false}}              presence
    {"$and": [...]}, {"$or": [...]}, {"$not": {...}}

Comparisons only match values of the same kind (numbers with numbers, strings with strings).
Field names and values reach SQLite only as bound parameters: a filter can never change the
shape of the query beyond this grammar.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aether_box.errors import BadRequest

__all__ = ["Compiled", "compile_filter", "parse_filter"]

MAX_DEPTH = 8
MAX_CONDITIONS = 64
MAX_IN = 1_000
MAX_FIELD_CHARS = 256
INT64 = -(2**63)  # the smallest integer SQLite binds; the largest is -INT64 - 1

_COMPARE = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_FIELD_OPS = ("$eq", "$ne", *_COMPARE, "$in", "$nin", "$contains", "$exists")
_LOGIC_OPS = ("$and", "$or", "$not")

Scalar = str | int | float | bool | None


@dataclass(frozen=True)
class Compiled:
    """A filter as an SQL boolean expression and the parameters it binds, in order."""

    sql: str
    params: tuple[Any, ...]

    @property
    def empty(self) -> bool:
        return not self.params and self.sql == "1"


def parse_filter(where: Any) -> Mapping[str, Any] | None:
    """A filter given as a map or as JSON text (the CLI's form); None when there is none."""
    if where is None or (isinstance(where, str) and not where):
        return None
    if isinstance(where, str):
        try:
            where = json.loads(where)
        except json.JSONDecodeError as exc:
            raise BadRequest(
                f'filter is not valid JSON ({exc}); write it like \'{{"tag": "x"}}\''
            ) from None
    if not isinstance(where, Mapping):
        raise BadRequest(f"filter must be a JSON object, got {type(where).__name__}")
    return where


def compile_filter(where: Any, column: str = "metadata") -> Compiled:
    """Compile a filter over the JSON text in `column` (a column name from our own code)."""
    parsed = parse_filter(where)
    if not parsed:
        return Compiled("1", ())
    compiler = _Compiler(column)
    sql = compiler.object(parsed, "", 0)
    return Compiled(sql, tuple(compiler.params))


class _Compiler:
    def __init__(self, column: str) -> None:
        self.column = column
        self.params: list[Any] = []
        self.conditions = 0

    def object(self, node: Any, where: str, depth: int) -> str:
        if depth > MAX_DEPTH:
            raise _error(where, f"nested deeper than {MAX_DEPTH} levels")
        if not isinstance(node, Mapping) or not node:
            raise _error(where, "expected a non-empty JSON object of conditions")
        parts = []
        for key, value in node.items():
            if not isinstance(key, str):
                raise _error(where, f"keys must be strings, got {key!r}")
            if key.startswith("$"):
                parts.append(self.logic(key, value, _at(where, key), depth))
            else:
                parts.append(self.field(key, value, _at(where, key)))
        return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"

    def logic(self, op: str, value: Any, where: str, depth: int) -> str:
        if op == "$not":
            return f"NOT ({self.object(value, where, depth + 1)})"
        if op not in _LOGIC_OPS:
            raise _error(
                where,
                f"unknown operator {op!r}; at this level use {list(_LOGIC_OPS)} or a field name",
            )
        if not isinstance(value, list) or not value:
            raise _error(where, f"{op} takes a non-empty list of filters")
        joiner = " AND " if op == "$and" else " OR "
        return (
            "("
            + joiner.join(
                self.object(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)
            )
            + ")"
        )

    def field(self, name: str, condition: Any, where: str) -> str:
        path = _json_path(name, where)
        if isinstance(condition, Mapping) and not condition:
            raise _error(where, "empty condition")
        if isinstance(condition, Mapping) and any(str(k).startswith("$") for k in condition):
            parts = [
                self.operator(path, str(op), value, _at(where, str(op)))
                for op, value in condition.items()
            ]
            return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"
        return self.operator(path, "$eq", condition, where)

    def operator(self, path: str, op: str, value: Any, where: str) -> str:
        self.conditions += 1
        if self.conditions > MAX_CONDITIONS:
            raise _error(where, f"more than {MAX_CONDITIONS} conditions")
        extract = f"json_extract({self.column}, ?)"
        if op in ("$eq", "$ne"):
            self.params += [path, _scalar(value, where)]
            return f"{extract} {'IS' if op == '$eq' else 'IS NOT'} ?"
        if op in _COMPARE:
            value = _scalar(value, where)
            if isinstance(value, bool) or value is None:
                raise _error(where, f"{op} compares numbers or strings, got {value!r}")
            kinds = "('integer', 'real')" if isinstance(value, (int, float)) else "('text')"
            self.params += [path, path, value]
            return f"(json_type({self.column}, ?) IN {kinds} AND {extract} {_COMPARE[op]} ?)"
        if op in ("$in", "$nin"):
            values = _values(value, where)
            listed = json.dumps(values)
            if op == "$in":
                self.params += [path, listed]
                return f"{extract} IN (SELECT value FROM json_each(?))"
            self.params += [path, path, listed]
            return f"({extract} IS NULL OR {extract} NOT IN (SELECT value FROM json_each(?)))"
        if op == "$contains":
            self.params += [path, _scalar(value, where, allow_null=False)]
            return f"EXISTS (SELECT 1 FROM json_each({self.column}, ?) WHERE value IS ?)"
        if op == "$exists":
            if not isinstance(value, bool):
                raise _error(where, f"$exists takes true or false, got {value!r}")
            self.params.append(path)
            return f"json_type({self.column}, ?) IS {'NOT NULL' if value else 'NULL'}"
        raise _error(where, f"unknown operator {op!r}; field operators: {list(_FIELD_OPS)}")


def _json_path(name: str, where: str) -> str:
    if not name or len(name) > MAX_FIELD_CHARS:
        raise _error(where, f"field names must be 1 to {MAX_FIELD_CHARS} characters")
    segments = name.split(".")
    for segment in segments:
        if not segment or any(c in segment for c in '"\\') or not segment.isprintable():
            raise _error(
                where,
                f"bad field name {name!r}: dotted segments must be non-empty "
                "and free of quotes, backslashes and control characters",
            )
    return "$" + "".join(f'."{segment}"' for segment in segments)


def _scalar(value: Any, where: str, *, allow_null: bool = True) -> Scalar:
    if value is None and allow_null:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        raise _error(where, "NaN and infinity cannot be compared")
    if isinstance(value, int) and not isinstance(value, bool) and not INT64 <= value < -INT64:
        raise _error(where, f"{value} is beyond SQLite's 64-bit integers; write it as a float")
    if isinstance(value, (str, int, float, bool)) and value is not None:
        return value
    raise _error(where, f"expected a string, number or boolean, got {type(value).__name__}")


def _values(value: Any, where: str) -> list[Scalar]:
    if not isinstance(value, list) or not value or len(value) > MAX_IN:
        raise _error(where, f"expects a list of 1 to {MAX_IN} values")
    return [_scalar(v, f"{where}[{i}]", allow_null=False) for i, v in enumerate(value)]


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _error(where: str, what: str) -> BadRequest:
    return BadRequest(f"filter at {where or 'top level'!r}: {what}")
