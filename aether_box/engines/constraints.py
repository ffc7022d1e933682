"""Constrained output: a request's `grammar` (GBNF) or `json_schema`, as the GBNF llama.cpp takes.

The JSON schema goes through llama-cpp-python's converter (a port of llama.cpp's
json-schema-to-grammar), so a reply that completes the grammar is JSON that fits the schema.
"""

from __future__ import annotations

import json

from llama_cpp.llama_grammar import json_schema_to_gbnf

from aether_box.engines.generation import GenerationParams
from aether_box.errors import BadRequest

__all__ = ["gbnf_for"]

# The converter's string character is `[^"\\]`, which lets a model write a raw newline or tab
# inside a JSON string: text json.loads refuses. llama.cpp's own converter has since left out
# the control characters JSON forbids (and DEL); this is its rule, with the converter's escapes.
_JSON_STRING_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'


def gbnf_for(params: GenerationParams) -> str | None:
    """The GBNF text that constrains this request, or None when it is free text."""
    if params.grammar is not None:
        return params.grammar
    if params.json_schema is None:
        return None
    try:
        gbnf = json_schema_to_gbnf(params.json_schema)
    except (ValueError, KeyError, TypeError, RecursionError, json.JSONDecodeError) as exc:
        raise BadRequest(f"field 'json_schema' cannot be turned into a grammar: {exc}") from exc
    except Exception as exc:  # the converter raises bare Exceptions for what it does not support
        raise BadRequest(f"field 'json_schema' uses something unsupported: {exc}") from exc
    return _with_json_string_chars(gbnf)


def _with_json_string_chars(gbnf: str) -> str:
    """The converter's grammar with its `char` rule (the one all strings use) held to JSON's."""
    rules = [
        _JSON_STRING_CHAR if line.startswith("char ::= ") else line for line in gbnf.splitlines()
    ]
    return "\n".join(rules) + "\n"
