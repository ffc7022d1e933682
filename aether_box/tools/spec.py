"""What a tool is: a name, a description, a JSON Schema for its arguments, and where it runs."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from jsonschema.exceptions import SchemaError

from aether_box.errors import BadRequest

__all__ = ["EFFECTS", "SOURCES", "Tool", "tool_from_wire"]

# What a tool does beyond answering: nothing ("read"), changes state ("write"), or makes
# data leave the machine ("send").
EFFECTS = ("read", "write", "send")
SOURCES = ("builtin", "worker", "mcp")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}


@dataclass
class Tool:
    """One callable tool; `target` is its name where it runs (a worker's, an MCP server's)."""

    name: str
    description: str
    schema: dict[str, Any]
    effect: str
    source: str
    where: str  # the worker's service, the MCP server's name, or the box service it wraps
    target: str = ""
    private: bool = False
    examples: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.target = self.target or self.name
        self._validator = _validator(self.schema, self.name)

    def describe(self) -> dict[str, Any]:
        """The tool as `tools list` shows it."""
        return {
            "name": self.name,
            "description": self.description,
            "schema": self.schema,
            "effect": self.effect,
            "private": self.private,
            "source": self.source,
            "where": self.where,
            "examples": self.examples,
        }

    def check(self, arguments: Any) -> dict[str, Any]:
        """The arguments, if they fit the schema; else a BadRequest naming every misfit."""
        if not isinstance(arguments, Mapping):
            raise BadRequest(f"arguments for tool {self.name!r} must be a map")
        errors = sorted(self._validator.iter_errors(dict(arguments)), key=lambda e: e.path)
        if errors:
            found = "; ".join(f"{_where(e)}: {e.message}" for e in errors[:5])
            raise BadRequest(
                f"arguments for tool {self.name!r} do not fit its schema ({found}); "
                f"see `aether-box tools list` for the schema"
            )
        return dict(arguments)


def tool_from_wire(spec: Any, *, source: str, where: str) -> Tool:
    """A Tool from a map a worker (or config) sent; a BadRequest says what is wrong with it."""
    if not isinstance(spec, Mapping):
        raise BadRequest("each tool must be a map with name, description, schema, effect")
    name = spec.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise BadRequest(
            f"tool name {name!r} must be 1-64 letters, digits, '_', '.' or '-' (first: a letter or digit)"
        )
    description = spec.get("description")
    if not isinstance(description, str) or not description.strip():
        raise BadRequest(f"tool {name!r} needs a description (it is how the box picks tools)")
    effect = spec.get("effect")
    if effect not in EFFECTS:
        raise BadRequest(f"tool {name!r} needs effect: one of {list(EFFECTS)}, got {effect!r}")
    schema = spec.get("schema", EMPTY_SCHEMA)
    if not isinstance(schema, Mapping):
        raise BadRequest(f"tool {name!r}: schema must be a JSON Schema map")
    examples = spec.get("examples", [])
    if not isinstance(examples, list) or not all(isinstance(e, str) for e in examples):
        raise BadRequest(f"tool {name!r}: examples must be a list of texts")
    return Tool(
        name=name,
        description=description.strip(),
        schema=dict(schema),
        effect=effect,
        source=source,
        where=where,
        target=str(spec.get("target") or name),
        private=bool(spec.get("private", False)),
        examples=examples,
    )


def _validator(schema: dict[str, Any], name: str) -> Any:
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        raise BadRequest(f"tool {name!r} has an invalid JSON Schema: {exc.message}") from exc
    if schema.get("type", "object") != "object":
        raise BadRequest(f"tool {name!r}: the schema of its arguments must be of type object")
    return cls(schema)


def _where(error: Any) -> str:
    return "arguments" + "".join(f"[{p!r}]" for p in error.absolute_path)
