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


def gbnf_for(params: GenerationParams) -> str | None:
    """The GBNF text that constrains this request, or None when it is free text."""
    if params.grammar is not None:
        return params.grammar
    if params.json_schema is None:
        return None
    try:
        return json_schema_to_gbnf(params.json_schema)
    except (ValueError, KeyError, TypeError, RecursionError, json.JSONDecodeError) as exc:
        raise BadRequest(f"field 'json_schema' cannot be turned into a grammar: {exc}") from exc
    except Exception as exc:  # the converter raises bare Exceptions for what it does not support
        raise BadRequest(f"field 'json_schema' uses something unsupported: {exc}") from exc
