"""A small MCP server over stdio, made with the mcp SDK (tests/test_tools_mcp.py, bench/tools.py)."""

from __future__ import annotations

import os

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

server = MCPServer("testmcp")


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def add(a: int, b: int) -> int:
    """Add two whole numbers."""
    return a + b


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def shout(text: str) -> str:
    """Say the text in capital letters."""
    return text.upper()


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def getenv(name: str) -> str:
    """The value of one of this server's environment variables ("" when unset)."""
    return os.environ.get(name, "")


@server.tool()
def post(text: str) -> str:
    """Post a message to the outside world (it only pretends)."""
    return f"posted {len(text)} characters"


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def broken() -> str:
    """Always fails."""
    raise ToolError("the MCP tool broke")


if __name__ == "__main__":
    server.run()
