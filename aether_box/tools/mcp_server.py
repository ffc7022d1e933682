"""The box as an MCP server: memory search and add, chat and embed, for MCP hosts.

Two transports, one set of tools (`build_server`, over any way to call the box's services):
- stdio: `aether-box mcp` (a bus client of the running box; an editor starts it);
- streamable HTTP: ``/mcp`` on the HTTP gateway, when it runs (same API keys as its other
  routes; DNS-rebinding protection on loopback).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import click

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
        except BoxError as exc:  # the box's message, not the SDK's "Error executing tool"
            raise ToolError(str(exc)) from exc

    @server.tool(annotations=local_read)
    async def memory_search(
        query: str, collection: str = DEFAULT_COLLECTION, k: int = 3
    ) -> list[dict[str, Any]]:
        """Search the user's saved notes and memories for text about a topic."""
        return await run("memory_search", {"query": query, "collection": collection, "k": k})

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, open_world_hint=False))
    async def memory_add(text: str, collection: str = DEFAULT_COLLECTION) -> dict[str, Any]:
        """Save a note or fact in the user's memory so it can be found later."""
        return await run("memory_add", {"text": text, "collection": collection})

    @server.tool(annotations=local_read)
    async def chat(message: str, model: str = DEFAULT_CHAT, max_tokens: int = 256) -> str:
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
    async def embed(text: str, model: str = DEFAULT_EMBED) -> dict[str, Any]:
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
    The box must be running (`aether-box run`); the gateway also serves MCP at /mcp.
    """
    import mcp.server.mcpserver  # noqa: F401  (imported before the event loop runs)

    anyio.run(_serve_stdio, state, timeout)


async def _serve_stdio(state: CliState, timeout: float) -> None:
    from aether_box.client import AsyncClient

    async with AsyncClient(state.endpoint, data_dir=state.data_dir, timeout=timeout) as client:
        await build_server(client.request).run_stdio_async()
