"""MCP servers as tool sources: the `mcpServers` of config, through the `mcp` SDK's client.

Each server gets one long-lived connection (stdio: the box starts the command, with an
allow-listed environment, not its own; streamable HTTP: a URL). Its tools are listed as
``server_tool``, and listed again every PING_S while it is idle: that is how a dead
connection is found, and a changed list picked up. A connection that drops (the server
exits, a listing fails) takes the server's tools off the list and is retried with a growing
pause.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from aether_box.errors import BadRequest, ConfigError, NotFound, ServiceUnavailable, ToolFailed
from aether_box.tools.settings import ToolsSettings, check_servers
from aether_box.tools.spec import Tool, tool_from_wire

__all__ = ["McpServers", "effect_of", "result_value"]

log = logging.getLogger(__name__)

PING_S = 10.0
RETRY_S = (1.0, 2.0, 5.0, 10.0, 30.0)


def effect_of(annotations: Any, configured: str | None) -> str:
    """A tool's effect: the server's configured one, else its hints (unknown: "send")."""
    if configured is not None:
        return configured
    if annotations is not None and annotations.read_only_hint:
        return "read"
    if annotations is not None and annotations.open_world_hint is False:
        return "write"
    return "send"  # MCP's default is an open world: the tool may reach outside


def result_value(result: Any) -> Any:
    """A tools/call result as plain data: its structured content, else its text."""
    texts = [block.text for block in result.content if getattr(block, "type", "") == "text"]
    if result.is_error:
        raise ToolFailed("; ".join(texts) or "the MCP tool reported an error")
    structured = result.structured_content
    if isinstance(structured, dict) and set(structured) == {"result"}:
        return structured["result"]  # how SDK servers wrap a return value that is no object
    if structured is not None:
        return structured
    if len(texts) == len(result.content):
        return texts[0] if len(texts) == 1 else texts
    return [block.model_dump(mode="json", exclude_none=True) for block in result.content]


class McpServer:
    """One configured server: its connection, its tools, its state."""

    def __init__(self, name: str, spec: dict[str, Any], env_allow: list[str]) -> None:
        self.name = name
        self.spec = spec
        self.env_allow = env_allow
        self.client: Any = None
        self.tools: list[Tool] = []
        self.state = "starting"
        self.error: str | None = None
        self.connects = 0
        self.in_flight = 0  # calls it is answering now

    def target(self) -> Any:
        """What the SDK's Client connects to: a URL, or the command to start."""
        if "url" in self.spec:
            return self.spec["url"]
        from mcp.client.stdio import StdioServerParameters

        env = {k: os.environ[k] for k in self.env_allow if k in os.environ}
        env.update({str(k): str(v) for k, v in self.spec.get("env", {}).items()})
        return StdioServerParameters(
            command=self.spec["command"],
            args=[str(a) for a in self.spec.get("args", [])],
            env=env,
            cwd=self.spec.get("cwd"),
        )

    async def keep_connected(self, start_s: float) -> None:
        """Connect, list tools, ping; on a drop, forget the tools and connect again."""
        attempt = 0
        while True:
            http = None
            try:
                client_for_server, http = await self._client()
                async with client_for_server as client:
                    with anyio.fail_after(start_s):
                        listed = await client.list_tools()
                    self.tools = self._tools(listed.tools)
                    self.client, self.state, self.error = client, "up", None
                    self.connects += 1
                    attempt = 0
                    log.info("MCP server %s: tools %s", self.name, [t.name for t in self.tools])
                    while True:
                        await anyio.sleep(PING_S)
                        if self.in_flight:  # a busy server may not answer; calls have timeouts
                            continue
                        # A listing, not a ping: MCP 2026 servers answer ping "Method not
                        # found" (the connection was dropped every PING_S, calls with it).
                        with anyio.fail_after(PING_S):
                            now = await client.list_tools(cache_mode="refresh")
                        if now.tools != listed.tools:  # (unchanged: no new skip warnings)
                            listed = now
                            self.tools = self._tools(listed.tools)
            except anyio.get_cancelled_exc_class():
                raise
            except Exception as exc:  # any failure of a foreign server: note it, retry
                self.error = self._down(exc, RETRY_S[min(attempt, len(RETRY_S) - 1)])
                log.warning("MCP server %s is down: %s", self.name, self.error)
            finally:
                self.client, self.tools = None, []
                if http is not None:
                    await http.aclose()
            self.state = "down"
            await anyio.sleep(RETRY_S[min(attempt, len(RETRY_S) - 1)])
            attempt += 1

    def _down(self, exc: BaseException, retry_s: float) -> str:
        """Why the server is down (the error the SDK's task groups wrap), where, and what next."""
        while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]
        where = self.spec.get("url") or self.spec.get("command")
        return (
            f"{type(exc).__name__}: {exc} ({where}); retrying in {retry_s:g} s: check that "
            f"the server runs, or fix [tools.mcpServers.{self.name}]"
        )

    async def _client(self) -> tuple[Any, Any]:
        """The SDK's client for this server, and the HTTP client to close after it (None for a
        stdio server)."""
        from mcp import Client

        if "url" not in self.spec:
            return Client(self.target(), raise_exceptions=True), None
        from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client

        # Making an HTTP client loads the CA certificates (file reads): off the event loop.
        http = await anyio.to_thread.run_sync(create_mcp_http_client)
        transport = streamable_http_client(self.spec["url"], http_client=http)
        return Client(transport, raise_exceptions=True), http

    def _tools(self, listed: list[Any]) -> list[Tool]:
        """The server's tools that the box can describe (the others are logged, skipped)."""
        tools = []
        for tool in listed:
            try:
                tools.append(self._tool(tool))
            except BadRequest as exc:
                log.warning("MCP server %s: tool %r skipped: %s", self.name, tool.name, exc)
        return tools

    def _tool(self, listed: Any) -> Tool:
        return tool_from_wire(
            {
                "name": f"{self.name}_{listed.name}",
                "target": listed.name,
                "description": listed.description or listed.title or listed.name,
                "schema": listed.input_schema,
                "effect": effect_of(listed.annotations, self.spec.get("effect")),
                "private": bool(self.spec.get("private", False)),
            },
            source="mcp",
            where=self.name,
        )


class McpServers:
    """Every configured MCP server; see the module docstring."""

    def __init__(self, settings: ToolsSettings) -> None:
        self.settings = settings
        self.servers: dict[str, McpServer] = {}

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        """Read the servers (config, and the mcp_config file) and connect to each."""
        specs = dict(self.settings.mcpServers)
        if self.settings.mcp_config is not None:
            specs.update(await anyio.to_thread.run_sync(_read_file, self.settings.mcp_config))
        if specs:  # import the SDK in a thread: its first import reads many files
            await anyio.to_thread.run_sync(_import_sdk)
        for name, spec in specs.items():
            server = McpServer(name, spec, self.settings.mcp_env)
            self.servers[name] = server
            tg.start_soon(server.keep_connected, self.settings.mcp_start_s)

    def tools(self) -> list[Tool]:
        return [tool for server in self.servers.values() for tool in server.tools]

    async def call(self, tool: Tool, arguments: dict[str, Any]) -> Any:
        server = self.servers.get(tool.where)
        if server is None:
            raise NotFound(f"no MCP server {tool.where!r}")
        client = server.client
        if client is None:
            raise ServiceUnavailable(f"MCP server {tool.where} is down ({server.error}); retry")
        server.in_flight += 1
        try:
            result = await client.call_tool(tool.target, arguments)
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:  # the SDK's protocol errors, a dropped connection
            raise ToolFailed(f"MCP server {tool.where}: {type(exc).__name__}: {exc}") from exc
        finally:
            server.in_flight -= 1
        return result_value(result)

    def status(self) -> dict[str, Any]:
        return {
            name: {"state": s.state, "tools": len(s.tools), "error": s.error}
            for name, s in self.servers.items()
        }


def _import_sdk() -> None:
    import mcp.client.stdio  # noqa: F401
    from mcp import Client  # noqa: F401


def _read_file(path: Path) -> dict[str, Any]:
    """The mcpServers map of a JSON file as editors write it ({"mcpServers": {...}})."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"tools.mcp_config {path}: cannot read it as JSON ({exc})") from exc
    servers = data.get("mcpServers") if isinstance(data, dict) else None
    if servers is None:
        raise ConfigError(f'tools.mcp_config {path} needs a top-level "mcpServers" map')
    return check_servers(servers, f"{path} mcpServers")
