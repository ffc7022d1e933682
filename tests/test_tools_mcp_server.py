"""The box as an MCP server, driven by the mcp SDK's own client: stdio and streamable HTTP."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from fixtures_box import BoxInThread, wait_for
from fixtures_gateway import GatewayBox, gateway_box
from mcp import Client
from mcp.client.stdio import StdioServerParameters

EXPECTED = {"memory_search", "memory_add", "chat", "embed"}


@pytest.fixture(scope="module")
def served(models_dir: Path) -> Iterator[GatewayBox]:
    with gateway_box(models_dir, mcp=True) as running:
        yield running


async def exercise(target: Any) -> dict[str, Any]:
    """List the tools and use each one through an MCP client connected to `target`."""
    async with Client(target, raise_exceptions=True) as client:
        listed = await client.list_tools()
        added = await client.call_tool("memory_add", {"text": "The boat is moored at pier 7."})
        found = await client.call_tool("memory_search", {"query": "where is the boat"})
        vector = await client.call_tool("embed", {"text": "hello"})
        chat = await client.call_tool("chat", {"message": "Say hi.", "max_tokens": 8})
        missing = await client.call_tool("memory_search", {"query": "x", "collection": "nope"})
    return {
        "tools": {t.name: t for t in listed.tools},
        "added": added,
        "found": found,
        "vector": vector,
        "chat": chat,
        "missing": missing,
    }


def check(seen: dict[str, Any]) -> None:
    assert EXPECTED <= set(seen["tools"])
    assert seen["tools"]["memory_search"].annotations.read_only_hint is True
    assert not seen["added"].is_error
    found = seen["found"].structured_content["result"]
    assert found[0]["text"] == "The boat is moored at pier 7."
    assert len(seen["vector"].structured_content["vector"]) == 384
    assert not seen["chat"].is_error and seen["chat"].content[0].text
    assert seen["missing"].is_error and "nope" in seen["missing"].content[0].text


def test_mcp_over_the_gateways_streamable_http(served: GatewayBox) -> None:
    check(anyio.run(exercise, f"{served.url}/mcp"))
    routes = served.status()["http"]["routes"]
    assert "/mcp" in routes


def test_mcp_over_stdio(served: GatewayBox) -> None:
    command = StdioServerParameters(
        command=sys.executable,
        args=["-m", "aether_box", "--data-dir", str(served.box.data_dir), "mcp"],
    )
    check(anyio.run(exercise, command))


def test_another_box_uses_this_one_as_an_http_mcp_server(served: GatewayBox) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="abx-"))
    other = BoxInThread(
        data_dir,
        {
            "tools": {
                "enabled": True,
                "builtins": False,
                "mcpServers": {"boxa": {"url": f"{served.url}/mcp"}},
            }
        },
    )
    try:
        with other.client(timeout=120) as client:

            def names() -> set[str]:
                return {t["name"] for t in client.request("tools", {"op": "list"})["tools"]}

            wait_for(lambda: "boxa_embed" in names(), 60, "box A's tools in box B")
            tools = {t["name"]: t for t in client.request("tools", {"op": "list"})["tools"]}
            assert tools["boxa_memory_search"]["effect"] == "read"
            assert tools["boxa_memory_add"]["effect"] == "write"
            reply = client.request(
                "tools", {"op": "call", "tool": "boxa_embed", "arguments": {"text": "hi"}}
            )
            assert reply["result"]["dim"] == 384
    finally:
        other.stop(timeout=30)
        shutil.rmtree(data_dir, ignore_errors=True)
