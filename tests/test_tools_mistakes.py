"""Tools as developers and users get them wrong: gone workers, down MCP servers, empty memory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fixtures_box import BoxInThread, temp_box, wait_for

from aether_box.cli import cli
from aether_box.client import BadRequest, NotFound
from aether_box.errors import ConfigError, ToolFailed

WORKER = Path(__file__).parent / "data" / "tool_worker.py"
HEARTBEAT = {"heartbeat_s": 0.5, "heartbeat_liveness": 4}


def listed(client: Any) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in client.request("tools", {"op": "list"})["tools"]}


@pytest.fixture(scope="module")
def tools_box(models_dir: Path) -> Iterator[BoxInThread]:
    with temp_box({"bus": HEARTBEAT, "tools": {"enabled": True}}, models_dir=models_dir) as box:
        yield box


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        assert process.stderr is not None
        process.stderr.close()


def start_worker(
    box: BoxInThread, service: str, started: list[subprocess.Popen[bytes]]
) -> subprocess.Popen[bytes]:
    """tests/data/tool_worker.py serving `service`, once its `echo` is listed there; fails
    the test with its output if it exits first (as when the box refuses its tools)."""
    process = subprocess.Popen(
        [sys.executable, str(WORKER), box.endpoint, service], stderr=subprocess.PIPE
    )
    started.append(process)
    with box.client() as client:
        wait_for(
            lambda: (
                listed(client).get("echo", {}).get("where") == service or process.poll() is not None
            ),
            30,
            f"{service}'s tools to show",
        )
    if process.poll() is not None:
        assert process.stderr is not None
        pytest.fail(f"the worker for {service} exited: {process.stderr.read().decode()}")
    return process


def test_a_worker_dying_mid_call_says_so_and_its_tools_say_whose_they_were(
    tools_box: BoxInThread, workers: list[subprocess.Popen[bytes]]
) -> None:
    worker = start_worker(tools_box, "weather_v0", workers)
    with tools_box.client() as client:
        # Not only "retry the request": retrying cannot help, the worker is gone.
        with pytest.raises(ToolFailed, match=r"its worker \(weather_v0\) exited"):
            client.request("tools", {"op": "call", "tool": "die"})
        assert worker.wait(10) == 3
        wait_for(lambda: "echo" not in listed(client), 30, "the dead worker's tools to go")
        # Its tool now says whose it was and what to do (was: "no tool 'echo'").
        with pytest.raises(NotFound, match="worker service 'weather_v0', which no worker serves"):
            client.request("tools", {"op": "call", "tool": "echo", "arguments": {"text": "x"}})


def test_a_gone_workers_tool_names_go_to_the_next_worker_that_offers_them(
    tools_box: BoxInThread, workers: list[subprocess.Popen[bytes]]
) -> None:
    first = start_worker(tools_box, "weather_v1", workers)
    first.kill()  # no goodbye: the broker finds it gone when its heartbeats stop
    first.wait(10)
    with tools_box.client() as client:
        wait_for(lambda: "echo" not in listed(client), 30, "the dead worker's tools to go")
        # The same tools under a new service name: the dead worker held the names for good,
        # and the new worker exited at start with "tool name 'echo' is taken by weather_v1".
        second = start_worker(tools_box, "weather_v2", workers)
        reply = client.request("tools", {"op": "call", "tool": "echo", "arguments": {"text": "hi"}})
        assert reply["result"] == {"text": "hi", "pid": second.pid}
        # A live worker keeps its names.
        spec = {"name": "echo", "description": "mine", "effect": "read"}
        with pytest.raises(BadRequest, match="taken by the worker service 'weather_v2'"):
            client.request("tools", {"op": "register", "service": "other", "tools": [spec]})


def test_a_tool_of_an_mcp_server_that_is_down_says_why() -> None:
    tools = {"enabled": True, "mcpServers": {"ghost": {"command": "no-such-mcp-server-here"}}}
    with temp_box({"tools": tools}) as box, box.client() as client:
        wait_for(
            lambda: client.status()["tools"]["mcp_servers"]["ghost"]["state"] == "down",
            30,
            "the missing MCP server to be down",
        )
        with pytest.raises(NotFound, match="MCP server 'ghost' is down: FileNotFoundError"):
            client.request("tools", {"op": "call", "tool": "ghost_read"})
        # `tools list` says so too (it listed the other tools, not a word of the server).
        listing = CliRunner().invoke(cli, ["--data-dir", str(box.data_dir), "tools", "list"])
        assert listing.exit_code == 0, listing.output
        assert "MCP server ghost is down, its tools not listed: FileNotFoundError" in listing.output


def test_memory_search_on_a_box_with_nothing_saved_finds_nothing(tools_box: BoxInThread) -> None:
    with tools_box.client(timeout=60) as client:
        search = {"op": "call", "tool": "memory_search", "arguments": {"query": "my keys"}}
        assert client.request("tools", search)["result"] == []
        # A collection the user names that does not exist is still an error.
        search["arguments"] = {"query": "my keys", "collection": "recipes"}
        with pytest.raises(ToolFailed, match="no collection 'recipes'"):
            client.request("tools", search)


SLOW_SERVER = """
import os

import anyio
from mcp.server.mcpserver import MCPServer

server = MCPServer("slow")


@server.tool()
async def report(seconds: float) -> str:
    \"\"\"A report that takes a while to make.\"\"\"
    await anyio.sleep(seconds)
    return "done"


@server.tool()
def pid() -> int:
    \"\"\"This server's process id.\"\"\"
    return os.getpid()


server.run()
"""


@pytest.fixture(scope="module")
def slow_mcp_box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BoxInThread]:
    """A box whose tools.timeout_s is 60 s, with an MCP server whose tool takes a while."""
    script = tmp_path_factory.mktemp("mcp") / "slow_mcp.py"
    script.write_text(SLOW_SERVER)
    config = (
        "[tools]\nenabled = true\ntimeout_s = 60\n"
        f'[tools.mcpServers.slow]\ncommand = "{sys.executable}"\nargs = ["{script}"]\n'
    )
    with temp_box(files={"config.toml": config}) as box:
        with box.client() as client:
            wait_for(lambda: "slow_report" in listed(client), 60, "the MCP server's tools")
        yield box


def test_an_mcp_call_longer_than_the_liveness_check_keeps_its_connection(
    slow_mcp_box: BoxInThread,
) -> None:
    # The box pinged each server every 10 s; an MCP 2026 server answers ping "Method not
    # found", so the box dropped the connection, and this call failed "Connection closed".
    with slow_mcp_box.client(timeout=60) as client:
        call = {"op": "call", "tool": "slow_report", "arguments": {"seconds": 12}}
        assert client.request("tools", call)["result"] == "done"
        assert client.status()["tools"]["mcp_servers"]["slow"]["state"] == "up"


def test_an_mcp_server_that_dies_is_found_and_reconnected(slow_mcp_box: BoxInThread) -> None:
    # Liveness is a listing now, not a ping: a dead server must still be found.
    with slow_mcp_box.client(timeout=60) as client:

        def server_pid() -> int | None:
            try:
                return int(client.request("tools", {"op": "call", "tool": "slow_pid"})["result"])
            except (NotFound, ToolFailed):  # down, or found down by this call
                return None

        first = server_pid()
        assert first is not None
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: server_pid() not in (None, first), 30, "a new server process")


def test_tools_call_waits_as_long_as_the_configured_tools_timeout(
    slow_mcp_box: BoxInThread,
) -> None:
    # The CLI waited 35 s whatever tools.timeout_s said, so a slower tool's answer was lost
    # (the client gave up) while the box still waited on it.
    result = CliRunner().invoke(
        cli,
        [
            "--data-dir",
            str(slow_mcp_box.data_dir),
            "tools",
            "call",
            "slow_report",
            '{"seconds": 36}',
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == "done"


def test_an_mcp_server_name_that_cannot_name_its_tools_is_refused_at_start() -> None:
    # "my files" made tool names such as "my files_add": each was skipped with a log line,
    # and the server showed "up" with no tools.
    server = {"command": sys.executable, "args": [str(WORKER.parent / "mcp_server.py")]}
    tools = {"enabled": True, "mcpServers": {"my files": server}}
    with pytest.raises(ConfigError, match="'my files': a server's name must be letters"):
        with temp_box({"tools": tools}):
            pass


def test_tools_list_says_when_tools_allow_keeps_tools_off() -> None:
    # A tool that tools.allow keeps off was silently missing from `tools list`.
    with temp_box({"tools": {"enabled": True, "allow": ["memory_*"]}}) as box:
        base = ["--data-dir", str(box.data_dir), "tools", "list"]
        listing = CliRunner().invoke(cli, base)
        assert listing.exit_code == 0, listing.output
        assert "memory_search" in listing.output and "session_history" not in listing.output
        assert "tool(s) that tools.allow keeps off; --all lists them" in listing.output
        everything = CliRunner().invoke(cli, [*base, "--all"])
        assert "session_history" in everything.output and "keeps off" not in everything.output
