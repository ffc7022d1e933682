"""Built-in tools: the box's own services (memory search and add, session history, embed)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import numpy as np

from aether_box.errors import NotFound
from aether_box.tools.spec import Tool

__all__ = ["BUILTIN_TOOLS", "call_builtin"]

Call = Callable[[str, Mapping[str, Any]], Awaitable[dict[str, Any]]]

DEFAULT_COLLECTION = "notes"
DEFAULT_EMBED = "minilm"

BUILTIN_TOOLS = [
    Tool(
        name="memory_search",
        description="Search the user's saved notes and memories for text about a topic.",
        schema={
            "type": "object",
            "properties": {
                "query": {"type": "string", "minLength": 1},
                "collection": {"type": "string", "default": DEFAULT_COLLECTION},
                "k": {"type": "integer", "minimum": 1, "maximum": 20, "default": 3},
            },
            "required": ["query"],
        },
        effect="read",
        private=True,
        source="builtin",
        where="memory",
        examples=[
            "what did I write down about my trip",
            "find my notes on the garden",
            "do I have a memory of where I parked",
            "search what I saved earlier about the car",
        ],
    ),
    Tool(
        name="memory_add",
        description="Save a note or fact in the user's memory so it can be found later.",
        schema={
            "type": "object",
            "properties": {
                "text": {"type": "string", "minLength": 1},
                "collection": {"type": "string", "default": DEFAULT_COLLECTION},
            },
            "required": ["text"],
        },
        effect="write",
        private=True,
        source="builtin",
        where="memory",
        examples=["remember that the dentist is on Friday", "save a note: buy milk"],
    ),
    Tool(
        name="session_history",
        description="Read the messages of an earlier chat session.",
        schema={
            "type": "object",
            "properties": {"session": {"type": "string", "minLength": 1}},
            "required": ["session"],
        },
        effect="read",
        private=True,
        source="builtin",
        where="session",
        examples=["what did we say in chat session 3f2a", "show the history of that session"],
    ),
    Tool(
        name="embed",
        description="Turn a text into its embedding vector (a list of numbers).",
        schema={
            "type": "object",
            "properties": {
                "text": {"type": "string", "minLength": 1},
                "model": {"type": "string", "default": DEFAULT_EMBED},
            },
            "required": ["text"],
        },
        effect="read",
        source="builtin",
        where="embed",
        examples=["compute the embedding vector of this sentence"],
    ),
]


async def call_builtin(call: Call, name: str, arguments: Mapping[str, Any]) -> Any:
    """Run built-in tool `name` through the box's services (arguments already checked)."""
    if name == "memory_search":
        collection = arguments.get("collection", DEFAULT_COLLECTION)
        body = {"op": "search", "collection": collection, "text": arguments["query"]}
        try:
            reply = await call("memory", {**body, "k": arguments.get("k", 3)})
        except NotFound:
            # Nothing saved yet: memory_add makes the default collection on first use.
            if collection != DEFAULT_COLLECTION or await _has_collection(call, collection):
                raise
            return []
        keep = ("id", "score", "text", "metadata")
        return [{k: r.get(k) for k in keep} for r in reply["results"]]
    if name == "memory_add":
        collection = arguments.get("collection", DEFAULT_COLLECTION)
        await call(
            "memory",
            {"op": "create", "collection": collection, "model": DEFAULT_EMBED, "exist_ok": True},
        )
        reply = await call(
            "memory", {"op": "add", "collection": collection, "texts": [arguments["text"]]}
        )
        return {"collection": collection, "ids": list(reply["ids"])}
    if name == "session_history":
        reply = await call("session", {"op": "history", "session": arguments["session"]})
        messages = [{"role": m["role"], "content": m["content"]} for m in reply["messages"]]
        return {"session": reply["session"], "messages": messages}
    if name == "embed":
        model = arguments.get("model", DEFAULT_EMBED)
        reply = await call("embed", {"op": "embed", "model": model, "texts": [arguments["text"]]})
        vector = np.asarray(reply["vectors"], dtype=np.float32)[0]
        return {"model": model, "dim": int(vector.shape[0]), "vector": vector.round(6).tolist()}
    raise KeyError(name)


async def _has_collection(call: Call, collection: str) -> bool:
    reply = await call("memory", {"op": "collections"})
    return any(c.get("name") == collection for c in reply["collections"])
