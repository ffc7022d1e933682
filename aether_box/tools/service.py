"""The `tools` service: one list of tools from bus workers, MCP servers and the box itself.

Ops:
- ``list``: ``{"all"?}`` -> ``{"enabled", "tools": [{"name", "description", "schema",
  "effect", "private", "source", "where", "examples", "allowed"}], "mcp_down"?: {server:
  {"state", "error"}}, "not_allowed"?: count}``: the tools reachable now (a worker's tools go
  with its last worker, within the bus heartbeat window). ``all`` also lists those that
  ``tools.allow`` keeps off (else counted in ``not_allowed``).
- ``call``: ``{"tool", "arguments"?, "timeout_s"?}`` -> ``{"tool", "result", "took_ms"}``.
  Arguments are checked against the tool's schema first (``bad_request`` naming each misfit);
  a tool that does not answer within ``tools.timeout_s`` (default 30 s) fails with
  ``timeout``; a tool's own failure comes back as ``tool_failed`` with its message.
- ``register``: ``{"service", "tools": [{"name", "description", "schema", "effect",
  "private"?, "examples"?}]}`` -> ``{"registered": [names]}``: a bus worker serving
  ``service`` offers these tools (replacing what it offered before). The `Worker` class does
  this for its ``@worker.tool`` functions.
- ``unregister``: ``{"service"}`` -> ``{"removed": [names]}``.

Tools are off until ``[tools] enabled = true``: until then ``list`` says so and ``call``
fails with ``not_allowed``. A worker may register either way.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any, ClassVar

import anyio
import anyio.abc

from aether_box.bus.service import OpService, Request, require
from aether_box.bus.worker import TOOL_OP
from aether_box.context import BoxContext
from aether_box.contract import ToolCatalog
from aether_box.errors import BadRequest, BoxError, NotAllowed, NotFound, Timeout, ToolFailed
from aether_box.tools.builtin import BUILTIN_TOOLS, call_builtin
from aether_box.tools.mcp_client import McpServers
from aether_box.tools.settings import ToolsSettings
from aether_box.tools.spec import Tool, tool_from_wire

__all__ = ["ToolsComponent"]

log = logging.getLogger(__name__)

MAX_TOOLS_PER_WORKER = 256


class ToolsComponent(OpService, ToolCatalog):
    """Serves `tools`; see the module docstring."""

    name: ClassVar[str] = "tools"
    settings_class: ClassVar[type | None] = ToolsSettings

    def __init__(self, ctx: BoxContext) -> None:
        self.ctx = ctx
        self.settings = ctx.config.get(ToolsSettings)
        self.mcp = McpServers(self.settings)
        self._worker_tools: dict[str, dict[str, Tool]] = {}  # service -> name -> tool
        self.calls: Counter[str] = Counter()  # tool -> calls answered
        self.failures: Counter[str] = Counter()  # error code -> calls that failed

    async def serve(
        self,
        ctx: BoxContext,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        ctx.add_service("tools", self)
        async with anyio.create_task_group() as tg:
            if self.settings.enabled:
                await self.mcp.start(tg)
            task_status.started()

    # ----------------------------------------------------------------- the catalog

    def _all_tools(self) -> dict[str, Tool]:
        """Every tool reachable now, by name (a name taken twice keeps the first)."""
        found: dict[str, Tool] = {}
        sources: list[list[Tool]] = []
        if self.settings.builtins:
            sources.append([t for t in BUILTIN_TOOLS if self.ctx.service_alive(t.where)])
        sources.append(self.mcp.tools())
        for service, tools in self._worker_tools.items():
            # A worker's tools show while one of its workers is alive: the broker drops a
            # dead worker within its heartbeat window, and its tools with it.
            if self.ctx.service_alive(service):
                sources.append(list(tools.values()))
        for tools in sources:
            for tool in tools:
                found.setdefault(tool.name, tool)
        return found

    def allowed(self, name: str) -> bool:
        """Whether config lets tool `name` be called."""
        return self.settings.enabled and any(
            fnmatch.fnmatchcase(name, pattern) for pattern in self.settings.allow
        )

    def callable_tools(self) -> list[Tool]:
        return [t for t in self._all_tools().values() if self.allowed(t.name)]

    async def call_tool(self, name: str, arguments: Mapping[str, Any]) -> Any:
        return await self._call(name, arguments, self.settings.timeout_s)

    async def _call(self, name: str, arguments: Any, timeout_s: float) -> Any:
        if not self.settings.enabled:
            raise NotAllowed(
                "tools are off; set [tools] enabled = true in config.toml (and allow the "
                "tools you want with tools.allow) to call them"
            )
        tool = self._all_tools().get(name)
        if tool is None:
            raise NotFound(self._why_missing(name))
        if not self.allowed(name):
            raise NotAllowed(f"tool {name!r} is not in tools.allow {self.settings.allow}")
        checked = tool.check(arguments if arguments is not None else {})
        try:
            with anyio.fail_after(timeout_s):
                result = await self._invoke(tool, checked)
        except TimeoutError:
            self.failures["timeout"] += 1
            raise Timeout(
                f"tool {name!r} did not answer within {timeout_s:g} s; its {tool.source} "
                f"({tool.where}) may be stuck, or raise tools.timeout_s"
            ) from None
        except BadRequest as exc:
            self.failures[exc.code] += 1
            raise
        except BoxError as exc:
            self.failures[exc.code] += 1
            why, hint = exc.message, ""
            if tool.source == "worker" and exc.code == "unavailable":
                # Not "retry": the worker is gone, or it was busy in this call past the bus
                # heartbeat window (it heartbeats between calls only).
                why = why.removesuffix("; retry the request")
                hint = (
                    f"; its worker ({tool.where}) exited, or the call outlasted the bus "
                    "heartbeat window: see the worker's output"
                )
            code = "" if isinstance(exc, ToolFailed) else f" [{exc.code}]"  # said once, after
            raise ToolFailed(f"tool {name!r} failed: {why}{code}{hint}") from exc
        self.calls[name] += 1
        return result

    async def _invoke(self, tool: Tool, arguments: dict[str, Any]) -> Any:
        if tool.source == "builtin":
            return await call_builtin(self.ctx.call, tool.name, arguments)
        if tool.source == "mcp":
            return await self.mcp.call(tool, arguments)
        body = {"op": TOOL_OP, "tool": tool.target, "arguments": arguments}
        reply = await self.ctx.call(tool.where, body)
        return reply.get("result")

    # ----------------------------------------------------------------- ops

    async def op_list(self, request: Request) -> dict[str, Any]:
        show_all = bool(request.body.get("all", False))
        tools, hidden = [], 0
        for tool in sorted(self._all_tools().values(), key=lambda t: t.name):
            allowed = self.allowed(tool.name)
            if allowed or show_all:
                tools.append({**tool.describe(), "allowed": allowed})
            else:
                hidden += 1
        reply: dict[str, Any] = {"enabled": self.settings.enabled, "tools": tools}
        if hidden and self.settings.enabled:  # else a tool missing from the list is a puzzle
            reply["not_allowed"] = hidden
        # A configured server whose tools are missing from the list says why.
        down = {n: s for n, s in self.mcp.status().items() if s["state"] != "up"}
        if down:
            reply["mcp_down"] = down
        if not self.settings.enabled:
            reply["hint"] = "tools are off; set [tools] enabled = true in config.toml"
        return reply

    async def op_call(self, request: Request) -> dict[str, Any]:
        body = request.body
        name = require(body, "tool", str)
        timeout_s = body.get("timeout_s", self.settings.timeout_s)
        if not isinstance(timeout_s, int | float) or isinstance(timeout_s, bool) or timeout_s <= 0:
            raise BadRequest("field 'timeout_s' must be a number of seconds above 0")
        started = time.monotonic()
        result = await self._call(name, body.get("arguments", {}), float(timeout_s))
        took_ms = round((time.monotonic() - started) * 1000, 3)
        return {"tool": name, "result": result, "took_ms": took_ms}

    async def op_register(self, request: Request) -> dict[str, Any]:
        service = require(request.body, "service", str)
        specs = require(request.body, "tools", list)
        if len(specs) > MAX_TOOLS_PER_WORKER:
            raise BadRequest(f"at most {MAX_TOOLS_PER_WORKER} tools per worker")
        if self.ctx.serves_in_process(service):
            raise BadRequest(f"{service!r} is one of the box's own services, not a worker's")
        tools = {}
        for spec in specs:
            tool = tool_from_wire(spec, source="worker", where=service)
            taken = self._owner_of(tool.name, service)
            if taken is not None:
                raise BadRequest(f"tool name {tool.name!r} is taken by {taken}; rename it")
            tools[tool.name] = tool
        for offered in self._worker_tools.values():
            for name in tools:  # a gone worker's claim on the name (live ones refused above)
                offered.pop(name, None)
        self._worker_tools[service] = tools
        log.info("worker service %s offers tools %s", service, sorted(tools))
        self.ctx.events.publish("tools.registered", {"service": service, "tools": sorted(tools)})
        return {"registered": sorted(tools)}

    async def op_unregister(self, request: Request) -> dict[str, Any]:
        service = require(request.body, "service", str)
        removed = self._worker_tools.pop(service, {})
        return {"removed": sorted(removed)}

    def _owner_of(self, name: str, service: str) -> str | None:
        """Who else offers tool `name` now (a worker that is gone no longer holds it)."""
        if any(t.name == name for t in BUILTIN_TOOLS) and self.settings.builtins:
            return "the box (a built-in tool)"
        if any(t.name == name for t in self.mcp.tools()):
            return "an MCP server"
        for other, tools in self._worker_tools.items():
            if name in tools and other != service and self.ctx.service_alive(other):
                return f"the worker service {other!r}"
        return None

    def _why_missing(self, name: str) -> str:
        """Why tool `name` is not reachable now, and what to do."""
        for service, tools in self._worker_tools.items():
            if name in tools:
                return (
                    f"tool {name!r} is offered by worker service {service!r}, which no "
                    "worker serves now; start that worker"
                )
        for server in self.mcp.servers.values():
            if name.startswith(f"{server.name}_") and server.state != "up":
                why = f": {server.error}" if server.error else ""
                return f"tool {name!r}: MCP server {server.name!r} is {server.state}{why}"
        builtin = next((t for t in BUILTIN_TOOLS if t.name == name), None)
        if builtin is not None and not self.settings.builtins:
            return f"tool {name!r} is built in, and tools.builtins is false"
        if builtin is not None:
            return f"tool {name!r} needs the box's {builtin.where!r} service, which is not running"
        return f"no tool {name!r}; see `aether-box tools list`"

    # ----------------------------------------------------------------- status

    def status_section(self) -> dict[str, Any]:
        tools = self._all_tools()
        by_source = Counter(t.source for t in tools.values())
        return {
            "enabled": self.settings.enabled,
            "tools": len(tools),
            "callable": sum(1 for name in tools if self.allowed(name)),
            "by_source": dict(by_source),
            "mcp_servers": self.mcp.status(),
            "calls": sum(self.calls.values()),
            "calls_by_tool": dict(self.calls),
            "failures": dict(self.failures),
        }
