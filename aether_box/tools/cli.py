"""`aether-box tools`: list and call the box's tools, and run a task across them."""

from __future__ import annotations

import json
from typing import Any

import click

from aether_box.cli import CliState, Whole, pass_state, timeout_option
from aether_box.tools.settings import ToolsSettings

__all__ = ["tools"]


def _json_out(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


@click.group()
def tools() -> None:
    """Tools the box can call: its own services, bus workers' and MCP servers'.

    \b
    Tools are off until config.toml says:
        [tools]
        enabled = true
    See the README's "Tools" section for MCP servers and the safety rules.
    """


@tools.command("list")
@click.option("--all", "show_all", is_flag=True, help="Also tools that tools.allow keeps off.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with each tool's schema).")
@pass_state
def list_(state: CliState, show_all: bool, as_json: bool) -> None:
    """The tools reachable now: name, effect (read, write, send), where it runs."""
    with state.client() as client:
        reply = client.request("tools", {"op": "list", "all": show_all})
    if as_json:
        _json_out(reply)
        return
    if not reply["enabled"]:
        click.echo(reply.get("hint", "tools are off"), err=True)
    if hidden := reply.get("not_allowed"):
        click.echo(
            f"not listed: {hidden} tool(s) that tools.allow keeps off; --all lists them", err=True
        )
    for server, info in reply.get("mcp_down", {}).items():
        why = f": {info['error']}" if info.get("error") else ""
        click.echo(f"MCP server {server} is {info['state']}, its tools not listed{why}", err=True)
    for tool in reply["tools"]:
        flags = tool["effect"] + (", private" if tool["private"] else "")
        off = "" if tool["allowed"] else "  (not allowed)"
        click.echo(f"{tool['name']:<24} [{flags}] {tool['source']}:{tool['where']}{off}")
        click.echo(f"    {tool['description']}")
        if arguments := _arguments(tool.get("schema") or {}):
            # Errors of `tools call` send the user here for the schema: show its fields.
            click.echo(f"    arguments: {arguments}")


def _arguments(schema: dict[str, Any]) -> str:
    """A schema's properties in one line: `query` (string, required), `k` (integer)."""
    required = set(schema.get("required") or [])
    fields = []
    for name, spec in (schema.get("properties") or {}).items():
        kind = spec.get("type", "any") if isinstance(spec, dict) else "any"
        kind = "/".join(kind) if isinstance(kind, list) else str(kind)
        fields.append(f"{name} ({kind}{', required' if name in required else ''})")
    return ", ".join(fields)


@tools.command("call")
@click.argument("name")
@click.argument("arguments", required=False, default="{}")
@timeout_option(None, help="Seconds the tool gets (default: tools.timeout_s).")
@pass_state
def call(state: CliState, name: str, arguments: str, timeout: float | None) -> None:
    """Call tool NAME with ARGUMENTS, a JSON map checked against its schema.

    \b
    aether-box tools call memory_search '{"query": "garden"}'
    """
    try:
        parsed = json.loads(arguments)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="ARGUMENTS") from exc
    body: dict[str, Any] = {"op": "call", "tool": name, "arguments": parsed}
    if timeout is not None:
        body["timeout_s"] = timeout
    else:  # the box waits tools.timeout_s (config.toml may raise it): wait as long
        timeout = state.config().get(ToolsSettings).timeout_s
    with state.client(timeout + 5) as client:
        reply = client.request("tools", body)
    _json_out(reply["result"])


@tools.command("run")
@click.argument("task")
@click.option("--tool", "names", multiple=True, help="Only these tools (repeatable).")
@click.option("--model", help="The model that fills arguments and answers.")
@click.option("--session", help="Keep the trace with this session (its id).")
@click.option("--max-steps", type=Whole(), help="At most this many tool calls.")
@timeout_option(300.0, help="Seconds to wait per step.")
@pass_state
def run(
    state: CliState,
    task: str,
    names: tuple[str, ...],
    model: str | None,
    session: str | None,
    max_steps: int | None,
    timeout: float,
) -> None:
    """Do TASK: pick tools by meaning, call them, answer; each step shows as it happens.

    \b
    aether-box tools run "what is the weather in Oslo tomorrow"
    """
    body: dict[str, Any] = {"task": task}
    if names:
        body["tools"] = list(names)
    for key, value in (("model", model), ("session", session), ("max_steps", max_steps)):
        if value is not None:
            body[key] = value
    with state.client(timeout) as client:
        for part in client.stream("orchestrate", body):
            if "step" in part:
                click.echo(
                    f"step {part['step']}: {part['tool']}("
                    f"{json.dumps(part['arguments'], ensure_ascii=False)}) -> "
                    f"{json.dumps(part.get('result', part.get('failed', part.get('blocked'))), ensure_ascii=False)}",
                    err=True,
                )
            elif "answer" in part:
                click.echo(part["answer"])
