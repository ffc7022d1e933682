"""Render a status report for people (the `aether-box status` command).

Lines carry the box's own text (names, paths, messages, hints such as "[tools] enabled =
true"), so they print without rich markup; the styled lines escape what they quote.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = [
    "access_line",
    "events_line",
    "orchestrate_line",
    "render_status",
    "route_line",
    "router_line",
    "tools_line",
]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _plain(console: Console) -> Callable[..., None]:
    """`console.print` without markup: the lines quote the box's own text."""
    return partial(console.print, markup=False)


def render_status(report: dict[str, Any], console: Console | None = None) -> None:
    """Print health, endpoints, services and counters as tables."""
    console = console or Console()
    say = _plain(console)
    console.print(
        f"[bold]aether-box {escape(str(report['version']))}[/] pid {report['pid']}  up {report['uptime_s']:.0f} s  "
        f"CPU {report['cpu_percent']:.0f}%  RSS {report['rss_mb']:.0f} MB  in flight {report['in_flight']}"
    )
    say(
        f"bus: {', '.join(report['endpoints']['bus'])}   events: {', '.join(report['endpoints']['events'])}"
        f"   CURVE: {'on' if report.get('curve') else 'off'}"
        f"   metrics: {report.get('metrics', {}).get('url', 'off')}"
        f"   http: {report.get('http', {}).get('url', 'off')}"
    )
    table = Table("service", "kind", "workers", "requests", "errors", "queued", "p50 ms", "p95 ms")
    for name, svc in report["services"].items():
        table.add_row(
            escape(name),  # a bus worker names its services
            svc["kind"],
            str(svc["workers"]),
            str(svc["requests"]),
            str(svc["errors"]),
            str(svc["queued"]),
            _ms(svc["p50_ms"]),
            _ms(svc["p95_ms"]),
        )
    console.print(table)
    if isinstance(report.get("access"), dict):
        say(f"access: {access_line(report['access'], report.get('rejected', {}))}")
    if isinstance(report.get("events"), dict):
        say(f"events: {events_line(report['events'])}")
    _render_sections(report, console)
    if report.get("rejected"):
        rejected = ", ".join(f"{k} {v}" for k, v in sorted(report["rejected"].items()))
        say(f"rejected messages: {rejected}")
    groups = report.get("reply_groups", {})
    if groups.get("groups"):
        say(
            f"replies sent in groups: {groups['replies']} in {groups['groups']} "
            "(to clients with many requests in flight)"
        )
    restarted = {n: c["restarts"] for n, c in report.get("components", {}).items() if c["restarts"]}
    if restarted:
        listed = ", ".join(f"{name} {count}x" for name, count in sorted(restarted.items()))
        console.print(f"[yellow]components restarted after failures:[/] {escape(listed)}")
    for alert in report.get("alerts", [])[-3:]:  # the latest few; all are in --json
        console.print(f"[yellow]alert[/] {escape(alert['message'])}")


def _scheduler_line(s: dict[str, Any]) -> str:
    """A generation model's slots, queue, KV cache, prompt reuse and speed, in one line."""
    reused = s.get("prompt_tokens_reused", 0) / max(1, s.get("prompt_tokens", 0))
    speed = s.get("aggregate_tokens_per_s")
    ttft = s.get("ttft_ms")
    return (
        f"slots {s.get('slots_busy', '?')}/{s.get('slots', '?')} busy, "
        f"{s.get('queue', 0)} queued; KV {s.get('kv_cells_used', '?')}/{s.get('kv_cells', '?')} "
        f"cells; {reused:.0%} of prompt tokens reused"
        + (f"; {speed} tok/s in all" if speed is not None else "")
        + (f"; first token {ttft} ms" if ttft is not None else "")
    )


def _render_sections(report: dict[str, Any], console: Console) -> None:
    """One line each for the models, memory, adapters and projectors sections, when the box has
    them."""
    say = _plain(console)
    models = report.get("models")
    if isinstance(models, dict):
        loaded = ", ".join(
            f"{m.get('name')} ({m.get('memory_mb', '?')} MB, {m.get('device', '?')})"
            for m in models.get("loaded", [])
        )
        installed = ", ".join(m.get("name", "?") for m in models.get("installed", []))
        say(f"models: installed {installed or 'none'}; loaded {loaded or 'none'}")
        for m in models.get("loaded", []):
            if isinstance(m.get("scheduler"), dict):
                say(f"  {m.get('name')}: {_scheduler_line(m['scheduler'])}")
                for copy in m["scheduler"].get("baked") or []:
                    say(f"    baked {_baked_line(copy)}")
        if models.get("onnx_cuda", "available") != "available":
            say(f"  gpu: {models['onnx_cuda']}")
        if models.get("llama_repacking", "on") != "on":
            say(f"  llama.cpp weight repacking: {models['llama_repacking']}")
    memory = report.get("memory")
    if isinstance(memory, dict):
        collections = memory.get("collections", {})
        listed = ", ".join(
            f"{name} ({c.get('count', '?')}"
            # how searches scan it: float32, int8+rescore, or bits+rescore with its budget
            + (f", {c['index_scan']}" if c.get("index_scan") else "")
            + (f" {c['bit_budget']}" if c.get("bit_budget") else "")
            + (", calibrating" if c.get("calibrating") else "")
            + (
                f", rebuilt from the database: {c['index_rebuilt']}"
                if c.get("index_rebuilt")
                else ""
            )
            + ")"
            for name, c in collections.items()
        )
        say(f"memory: {memory.get('db_mb', '?')} MB, collections {listed or 'none'}")
        cross = memory.get("cross_model") or {}
        if any(cross.values()):
            counts = ", ".join(f"{path} {count}" for path, count in cross.items())
            say(f"  searches from other models: {counts}")
    peers = (report.get("peers") or {}).get("peers")
    if peers:
        listed = ", ".join(f"{p.get('name')} ({p.get('state')})" for p in peers)
        say(f"peers: {listed}")
        _say_why_down(say, peers)
    grid = report.get("grid")
    if isinstance(grid, dict) and grid.get("members"):
        listed = ", ".join(f"{m.get('name')} ({m.get('state')})" for m in grid["members"])
        say(f"grid: {grid.get('name')} with {listed}")
        _say_why_down(say, grid["members"])
        placed = ", ".join(f"{p['box']} {p['count']}" for p in grid.get("placements", []))
        if placed:
            say(f"  requests placed: {placed}")
    http = report.get("http")
    if isinstance(http, dict) and http.get("keys"):
        keys = ", ".join(
            f"{name if name != '-' else 'no key'} {c.get('requests', 0)}"
            for name, c in http["keys"].items()
        )
        need = "required" if http.get("require_key") else "optional"
        say(f"http requests by API key ({need}): {keys}")
    if isinstance(http, dict) and http.get("routes"):
        say(f"http requests by route: {route_line(http['routes'])}")
    adapters = report.get("adapters")
    if isinstance(adapters, dict) and adapters.get("adapters"):
        listed = ", ".join(
            f"{a.get('name')} ({a.get('verdict')}"
            + (f", KL {a['kl_mean']:.3f}" if isinstance(a.get("kl_mean"), float) else "")
            + (", pruned" if a.get("pruned") else "")
            + (  # a prune verdict overruled by hand (or by the tuner)
                f", restored by {(a.get('pruning') or {}).get('by')}"
                if not a.get("pruned") and (a.get("pruning") or {}).get("state") == "restored"
                else ""
            )
            + f", {a.get('requests', 0)} requests)"
            for a in adapters["adapters"]
        )
        say(f"adapters: {listed}")
        probe = adapters.get("probe") or {}
        if probe.get("running"):
            say(
                f"  probing {probe['running']} {probe.get('done', 0)}/{probe.get('total', '?')}"
                f", queued {len(probe.get('queued', []))}"
            )
    tools = report.get("tools")
    if isinstance(tools, dict):
        say(f"tools: {tools_line(tools)}")
    if isinstance(report.get("orchestrate"), dict):
        say(f"orchestrate: {orchestrate_line(report['orchestrate'])}")
    if isinstance(report.get("router"), dict):
        say(f"router: {router_line(report['router'])}")
    align = report.get("align")
    if isinstance(align, dict):
        projectors = ", ".join(align.get("projectors", {})) or "none"
        say(f"projectors: {projectors} (gate {align.get('gate')})")
        for work in align.get("running") or []:  # fits and pair builds in progress
            pair = " -> ".join(str(work[k]) for k in ("from", "to") if work.get(k))
            say(f"  {work.get('op')} {pair or ''}: {work.get('step')}".replace(" :", ":"))
        coherence = align.get("coherence") or {}
        if coherence:  # the hub's last `align report`, one pair a line, top-1 per domain
            say(f"  through the hub {align.get('hub')} (top-1, `aether-box align report`):")
            for pair, figures in coherence.items():
                line = " ".join(f"{d} {v:.3f}" for d, v in figures.items())
                say(f"    {pair}: {line}")
    sessions = report.get("sessions")
    if isinstance(sessions, dict) and sessions.get("pins"):
        listed = ", ".join(
            f"{model} by {', '.join(ids)}" for model, ids in sessions["pinned_models"].items()
        )
        say(f"pinned by sessions (kept loaded): {listed}")
    tuner = report.get("tuner")
    if isinstance(tuner, dict):
        done = sum(
            n for states in tuner.get("counts", {}).values() for s, n in states.items()
            if s == "applied"
        )  # fmt: skip
        proposed = len(tuner.get("proposed", []))
        running = len(tuner.get("running", {}))
        say(
            f"tuner: {done} applied, {proposed} proposed, {running} running "
            "(`aether-box tuner status`)"
        )


def _say_why_down(say: Callable[..., None], peers: list[dict[str, Any]]) -> None:
    """A line for each peer or member that is not up and says why."""
    for peer in peers:
        if peer.get("state") != "up" and peer.get("error"):
            say(f"  {peer.get('name')} {peer.get('state')}: {peer['error']}")


def _baked_line(copy: dict[str, Any]) -> str:
    """A baked copy of an adapter set: which set, its state (or bake progress), memory, use."""
    state = str(copy.get("state", "?"))
    if state == "baking":
        progress = copy.get("progress") or {}
        state += f" {progress.get('done', 0)}/{progress.get('of', '?')}"
    return (
        f"{copy.get('adapters', '?')}: {state}, {copy.get('memory_mb', '?')} MB, "
        f"{copy.get('requests', 0)} requests"
    )


def route_line(routes: dict[str, Any]) -> str:
    """HTTP requests per route, with the failed ones (4xx and 5xx) where there are any."""
    parts = []
    for route, counts in routes.items():
        failed = counts.get("errors", 0) + counts.get("client_errors", 0)
        parts.append(
            f"{route} {counts.get('requests', 0)}" + (f" ({failed} failed)" if failed else "")
        )
    return ", ".join(parts)


def router_line(router: dict[str, Any]) -> str:
    """Routing decisions, how many fell back (no route scored high enough), feedback kept."""
    return (
        f"{router.get('decisions', 0)} decisions, {router.get('fallbacks', 0)} fell back, "
        f"{router.get('feedback', 0)} feedback"
    )


def orchestrate_line(orchestrate: dict[str, Any]) -> str:
    """Tool runs, their steps, and the steps where no tool fit the task."""
    return (
        f"{orchestrate.get('runs', 0)} runs, {orchestrate.get('steps', 0)} steps, "
        f"{orchestrate.get('no_tool_steps', 0)} without a tool"
    )


def tools_line(tools: dict[str, Any]) -> str:
    """The tools section in one line: on or off, how many from where, calls, MCP servers."""
    if not tools.get("enabled"):
        return "off (set [tools] enabled = true)"
    sources = ", ".join(f"{n} {source}" for source, n in tools.get("by_source", {}).items())
    servers = ", ".join(
        f"{name} {s.get('state')}" for name, s in tools.get("mcp_servers", {}).items()
    )
    line = (
        f"{tools.get('callable', 0)} callable ({sources or 'none'}), {tools.get('calls', 0)} calls"
    )
    return line + (f"; MCP servers: {servers}" if servers else "")


def access_line(access: dict[str, Any], rejected: dict[str, Any]) -> str:
    """What each way in may do (scopes read < use < admin) and how many ops were refused."""
    ways = {"ipc": "ipc", "loopback_tcp": "loopback tcp", "curve": "CURVE"}
    line = ", ".join(f"{ways.get(way, way)} {scope}" for way, scope in access.items())
    return f"{line}; {rejected.get('forbidden', 0)} ops refused for their scope"


def events_line(events: dict[str, Any]) -> str:
    """Events published and dropped, and what a subscriber that stops reading costs at most."""
    dropped = events.get("dropped") or {}
    by_topic = ", ".join(f"{topic} {n}" for topic, n in sorted(dropped.items()))
    bound = events.get("queue_bytes_max")
    line = f"{events.get('published', 0)} published, {sum(dropped.values())} dropped"
    line += f" ({by_topic})" if by_topic else ""
    if isinstance(bound, int):
        line += f"; a stalled subscriber holds at most {bound / 2**20:.1f} MiB"
    return line
