"""MCP servers as tool sources: a real stdio server (tests/data/mcp_server.py, the mcp SDK)."""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures_box import BoxInThread, temp_box, wait_for

from aether_box.config import Config
from aether_box.errors import BadRequest, ConfigError, ToolFailed
from aether_box.tools.settings import ToolsSettings

SERVER = Path(__file__).parent / "data" / "mcp_server.py"


def listed(client: Any) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in client.request("tools", {"op": "list"})["tools"]}


@pytest.fixture(scope="module")
def mcp_box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BoxInThread]:
    """A box whose tools come from the test MCP server, named in an mcpServers JSON file."""
    mcp_json = tmp_path_factory.mktemp("mcp") / "mcp.json"
    servers = {
        "mcpServers": {
            "testmcp": {
                "command": sys.executable,
                "args": [str(SERVER)],
                "env": {"ABX_GIVEN": "from config"},
            }
        }
    }
    mcp_json.write_text(json.dumps(servers))
    os.environ["ABX_SECRET"] = "the box's own secret"
    try:
        with temp_box({"tools": {"enabled": True, "mcp_config": str(mcp_json)}}) as running:
            with running.client() as client:
                wait_for(lambda: "testmcp_add" in listed(client), 60, "the MCP server's tools")
            yield running
    finally:
        del os.environ["ABX_SECRET"]


def call(client: Any, tool: str, **arguments: Any) -> Any:
    return client.request("tools", {"op": "call", "tool": tool, "arguments": arguments})["result"]


def test_mcp_tools_are_listed_as_server_tool_with_their_effect(mcp_box: BoxInThread) -> None:
    with mcp_box.client() as client:
        tools = listed(client)
        assert tools["testmcp_add"]["source"] == "mcp" and tools["testmcp_add"]["effect"] == "read"
        # No read-only hint: MCP's open world, so the box counts it as sending data out.
        assert tools["testmcp_post"]["effect"] == "send"
        assert tools["testmcp_add"]["schema"]["required"] == ["a", "b"]
        assert client.status()["tools"]["mcp_servers"]["testmcp"]["state"] == "up"


def test_mcp_tool_call_round_trip(mcp_box: BoxInThread) -> None:
    with mcp_box.client() as client:
        assert call(client, "testmcp_add", a=2, b=40) == 42
        assert call(client, "testmcp_shout", text="hi there") == "HI THERE"
        with pytest.raises(BadRequest, match="not of type 'integer'"):
            call(client, "testmcp_add", a="2", b=1)
        with pytest.raises(ToolFailed, match="the MCP tool broke") as failed:
            call(client, "testmcp_broken")
        assert str(failed.value).count("[tool_failed]") == 1, failed.value  # was said twice


def test_stdio_servers_get_an_allow_listed_environment(mcp_box: BoxInThread) -> None:
    with mcp_box.client() as client:
        assert call(client, "testmcp_getenv", name="ABX_GIVEN") == "from config"
        assert call(client, "testmcp_getenv", name="ABX_SECRET") == ""
        assert call(client, "testmcp_getenv", name="PATH") != ""


def test_bad_mcp_config_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exactly one of command"):
        Config(tmp_path, {"tools": {"mcpServers": {"x": {"args": []}}}}).get(ToolsSettings)
    with pytest.raises(ConfigError, match="unknown keys"):
        Config(tmp_path, {"tools": {"mcpServers": {"x": {"command": "a", "colour": 1}}}}).get(
            ToolsSettings
        )


def test_a_server_that_cannot_be_reached_says_why(data_dir: Path) -> None:
    # The README's `[tools.mcpServers.search] url = ...` with nothing listening there used to
    # log "ExceptionGroup: unhandled errors in a TaskGroup (1 sub-exception)" and nothing else.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/mcp"  # closed once the block ends
    tools = {"enabled": True, "mcpServers": {"s": {"url": url}}}
    # No gateway: its first hypercorn import on the loop can wait on the import lock the MCP
    # client's thread holds, which blockbuster reports (seen only when this test runs alone).
    running = BoxInThread(data_dir, {"tools": tools, "http": {"address": ""}})
    try:
        with running.client() as client:

            def server() -> dict[str, Any]:
                return client.status()["tools"]["mcp_servers"]["s"]

            wait_for(lambda: server()["state"] == "down", 30, "the MCP server marked down")
            error = server()["error"]
            assert "TaskGroup" not in error, error
            assert url in error and "retrying" in error, error
    finally:
        running.stop(timeout=30)
