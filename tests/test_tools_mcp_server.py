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
from fixtures_box import BoxInThread, temp_box, wait_for
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
    tools = {
        "enabled": True,
        "builtins": False,
        "mcpServers": {"boxa": {"url": f"{served.url}/mcp"}},
    }
    with temp_box({"tools": tools}) as other, other.client(timeout=120) as client:

        def names() -> set[str]:
            return {t["name"] for t in client.request("tools", {"op": "list"})["tools"]}

        wait_for(lambda: "boxa_embed" in names(), 60, "box A's tools in box B")
        listed = {t["name"]: t for t in client.request("tools", {"op": "list"})["tools"]}
        assert listed["boxa_memory_search"]["effect"] == "read"
        assert listed["boxa_memory_add"]["effect"] == "write"
        reply = client.request(
            "tools", {"op": "call", "tool": "boxa_embed", "arguments": {"text": "hi"}}
        )
        assert reply["result"]["dim"] == 384


def test_every_argument_is_described_with_its_bounds(served: GatewayBox) -> None:
    """A host's model calls the tools from their input schemas alone."""

    async def schemas() -> dict[str, dict[str, Any]]:
        async with Client(f"{served.url}/mcp", raise_exceptions=True) as client:
            return {t.name: t.input_schema for t in (await client.list_tools()).tools}

    tools = anyio.run(schemas)
    for name in EXPECTED:
        for argument, schema in tools[name]["properties"].items():
            assert schema.get("description"), f"{name}.{argument} has no description"
    k = tools["memory_search"]["properties"]["k"]
    assert (k["minimum"], k["maximum"]) == (1, 1000)  # the memory service's bounds
    assert tools["chat"]["properties"]["max_tokens"]["minimum"] == 1


def test_stdio_server_started_before_the_box_says_how_to_start_it_then_uses_it(
    models_dir: Path,
) -> None:
    """Hosts start `aether-box mcp` with the editor, box or not, and do not restart it."""
    data_dir = Path(tempfile.mkdtemp(prefix="abx-"))
    command = StdioServerParameters(
        command=sys.executable, args=["-m", "aether_box", "--data-dir", str(data_dir), "mcp"]
    )

    async def session() -> tuple[Any, Any, Any]:
        async with Client(command, raise_exceptions=True) as client:
            listed = await client.list_tools()
            before = await client.call_tool("embed", {"text": "hello"})
            box = await anyio.to_thread.run_sync(
                BoxInThread, data_dir, {"models": {"dir": str(models_dir)}}
            )
            try:
                after = await client.call_tool("embed", {"text": "hello"})
            finally:
                await anyio.to_thread.run_sync(box.stop, 30)
        return listed, before, after

    try:
        listed, before, after = anyio.run(session)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    assert EXPECTED <= {t.name for t in listed.tools}
    assert before.is_error
    assert "no box is running" in before.content[0].text
    assert f"aether-box --data-dir {data_dir} run" in before.content[0].text
    assert not after.is_error and after.structured_content["dim"] == 384
