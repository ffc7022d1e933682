"""The box as an MCP server: memory search and add, chat and embed, for MCP hosts.

Two transports, one set of tools (`build_server`, over any way to call the box's services):
- stdio: `aether-box mcp` (a bus client of the running box; an editor starts it);
- streamable HTTP: ``/mcp`` on the HTTP gateway, when it runs (same API keys as its other
  routes; DNS-rebinding protection on loopback).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any

import anyio
import click
from pydantic import Field

from aether_box.cli import CliState, pass_state, timeout_option
from aether_box.errors import BoxError
from aether_box.tools.builtin import DEFAULT_COLLECTION, DEFAULT_EMBED, call_builtin

__all__ = ["build_server", "http_endpoint", "mcp"]

Call = Callable[[str, Mapping[str, Any]], Awaitable[dict[str, Any]]]
DEFAULT_CHAT = "smollm2"
INSTRUCTIONS = (
    "Aether Box: a local AI appliance. Search and add to the user's memory, chat with a "
    "local model, embed texts. Everything runs on this machine."
)
MAX_K = 1000  # the memory service's own bound on k

# Argument descriptions, in the input schemas hosts show their models.
Query = Annotated[str, Field(description="What to look for, in plain words (matched by meaning).")]
Collection = Annotated[
    str,
    Field(
        description=f"Memory collection (default {DEFAULT_COLLECTION!r}, where memory_add saves)."
    ),
]
K = Annotated[int, Field(ge=1, le=MAX_K, description=f"How many results, 1 to {MAX_K}.")]
NoteText = Annotated[str, Field(min_length=1, description="The note or fact to save.")]
Message = Annotated[str, Field(description="The message to send to the model.")]
ChatModel = Annotated[
    str,
    Field(
        description=f"An installed chat (GGUF) model, default {DEFAULT_CHAT!r}; "
        "`aether-box models list` shows them."
    ),
]
MaxTokens = Annotated[int, Field(ge=1, description="Longest reply, in tokens.")]
EmbedText = Annotated[str, Field(description="The text to embed.")]
EmbedModel = Annotated[
    str,
    Field(
        description=f"An installed embedding model, default {DEFAULT_EMBED!r}; "
        "`aether-box models list` shows them."
    ),
]


def build_server(call: Call) -> Any:
    """An MCPServer whose tools call the box through `call(service, body)`."""
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
    from mcp.types import ToolAnnotations

    server = MCPServer("aether-box", instructions=INSTRUCTIONS)
    local_read = ToolAnnotations(read_only_hint=True, open_world_hint=False)

    # Typed returns, so that hosts get structured content as well as text.
    async def run(name: str, arguments: dict[str, Any]) -> Any:
        try:
            return await call_builtin(call, name, arguments)
        except BoxError as exc:  # keeps the box's message (a crash would show none of it)
            raise ToolError(str(exc)) from exc

    @server.tool(annotations=local_read)
    async def memory_search(
        query: Query, collection: Collection = DEFAULT_COLLECTION, k: K = 3
    ) -> list[dict[str, Any]]:
        """Search the user's saved notes and memories for text about a topic."""
        return await run("memory_search", {"query": query, "collection": collection, "k": k})

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, open_world_hint=False))
    async def memory_add(
        text: NoteText, collection: Collection = DEFAULT_COLLECTION
    ) -> dict[str, Any]:
        """Save a note or fact in the user's memory so it can be found later."""
        return await run("memory_add", {"text": text, "collection": collection})

    @server.tool(annotations=local_read)
    async def chat(
        message: Message, model: ChatModel = DEFAULT_CHAT, max_tokens: MaxTokens = 256
    ) -> str:
        """Ask a local language model; returns its reply."""
        body = {
            "op": "chat",
            "model": model,
            "messages": [{"role": "user", "content": message}],
            "max_tokens": max_tokens,
        }
        try:
            reply = await call("llm", body)
        except BoxError as exc:
            raise ToolError(str(exc)) from exc
        return str(reply["text"])

    @server.tool(annotations=local_read)
    async def embed(text: EmbedText, model: EmbedModel = DEFAULT_EMBED) -> dict[str, Any]:
        """Turn a text into its embedding vector (a list of numbers)."""
        return await run("embed", {"text": text, "model": model})

    return server


def import_sdk() -> None:
    """Import the mcp SDK's server parts (their first import reads files: call it off the
    event loop, before http_endpoint)."""
    import mcp.server.mcpserver  # noqa: F401
    import mcp.server.streamable_http_manager  # noqa: F401


def http_endpoint(call: Call, host: str) -> tuple[Any, Any]:
    """(ASGI app for /mcp, the session manager to run while it serves)."""
    from mcp.server.streamable_http_manager import StreamableHTTPASGIApp

    server = build_server(call)
    server.streamable_http_app(streamable_http_path="/mcp", host=host)  # makes the manager
    return StreamableHTTPASGIApp(server.session_manager), server.session_manager


@click.command()
@timeout_option(600.0, help="Seconds a box call may take.")
@pass_state
def mcp(state: CliState, timeout: float) -> None:
    """Serve this box to an MCP host over stdio (memory search and add, chat, embed).

    \b
    In the host's config (Claude Desktop, editors):
        {"mcpServers": {"aether-box": {"command": "aether-box", "args": ["mcp"]}}}
    Hosts start it with a bare PATH: give the full path to aether-box (`which aether-box`),
    and "--data-dir", DIR before "mcp" if the box runs with one. Until the box runs, each
    call answers with how to start it. The gateway also serves MCP at /mcp.
    """
    import mcp.server.mcpserver  # noqa: F401  (imported before the event loop runs)

    anyio.run(_serve_stdio, state, timeout)


async def _serve_stdio(state: CliState, timeout: float) -> None:
    """Serve at once, box or not: hosts start this before the box and do not restart it.

    The bus client opens at the first call, in a task of its own that holds it open; until a
    box runs, each call fails saying how to start one (an error result, not a dead server).
    """
    from aether_box.client import AsyncClient

    opened: list[AsyncClient] = []
    lock = anyio.Lock()
    asks, asked = anyio.create_memory_object_stream[Any](0)

    async def hold_client() -> None:
        async for answer in asked:  # one per attempt; answered with None or the BoxError
            try:
                async with AsyncClient(
                    state.endpoint, data_dir=state.data_dir, timeout=timeout
                ) as client:
                    opened.append(client)
                    await answer.send(None)
                    await anyio.sleep_forever()
            except BoxError as exc:  # NoBox: nothing listens there yet
                await answer.send(exc)

    async def call(service: str, body: Mapping[str, Any]) -> dict[str, Any]:
        async with lock:
            if not opened:
                answer, outcome = anyio.create_memory_object_stream[BoxError | None](1)
                await asks.send(answer)
                failure = await outcome.receive()
                if failure is not None:
                    raise failure
        return await opened[0].request(service, body)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(hold_client)
        await build_server(call).run_stdio_async()
        tasks.cancel_scope.cancel()
