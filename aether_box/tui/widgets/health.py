"""The box's health at a glance: connection state, uptime, CPU, RSS, endpoints."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from aether_box.status_view import orchestrate_line, router_line, tools_line
from aether_box.tui.view import MISSING, fmt_bytes, fmt_count, fmt_duration, fmt_float

__all__ = ["HealthPanel"]

# The heartbeat carries these; the rest of the panel comes from full status reports.
HEARTBEAT_KEYS = ("uptime_s", "cpu_percent", "rss_mb", "threads", "in_flight", "rejected_total")


class HealthPanel(Static):
    """Connection state and the box's process figures."""

    DEFAULT_CSS = """
    HealthPanel { border: round $primary-darken-2; padding: 0 1; height: 1fr; }
    """

    def __init__(self, *, id: str) -> None:
        super().__init__(id=id)
        self.border_title = "box"
        self.report: dict[str, Any] = {}
        self.state = Text("connecting…", style="bold yellow")
        self.stale = False
        self.endpoint = ""

    def on_mount(self) -> None:
        self._render_panel()

    def show_connected(self, endpoint: str) -> None:
        self.state = Text.assemble(("● connected ", "bold green"), (endpoint, "green"))
        self.endpoint = endpoint
        self.stale = False
        self._render_panel()

    def show_disconnected(self, endpoint: str, reason: str, retry_in: float, attempt: int) -> None:
        self.state = Text.assemble(
            ("✖ DISCONNECTED", "bold red"),
            (f" from {endpoint}\n", "red"),
            (reason, "red"),
            (
                f"\nreconnecting in {retry_in:.1f} s (attempt {attempt}); press r to retry now",
                "yellow",
            ),
        )
        self.stale = True
        self._render_panel()

    def show_report(self, report: Mapping[str, Any]) -> None:
        self.report = dict(report)
        self._render_panel()

    def show_heartbeat(self, summary: Mapping[str, Any]) -> None:
        """Fold a heartbeat's figures into the last report (between polls)."""
        if summary.get("pid") not in (None, self.report.get("pid")):
            return  # another box's heartbeat: wait for its full report
        self.report.update({k: summary[k] for k in HEARTBEAT_KEYS if k in summary})
        self._render_panel()

    def _access_text(self, access: Mapping[str, Any], curve: str) -> str:
        """Each way in's scope, this dashboard's own, and the ops refused for their scope."""
        rejected = self.report.get("rejected")
        refused = rejected.get("forbidden", 0) if isinstance(rejected, Mapping) else 0
        if self.endpoint.startswith("ipc://"):
            own = access.get("ipc", MISSING)
        elif self.report.get("curve"):
            own = "its key's scope"
        else:
            own = access.get("loopback_tcp", MISSING)
        return (
            f"ipc {access.get('ipc', MISSING)}, tcp {access.get('loopback_tcp', MISSING)}, {curve}"
            f"\nthis dashboard {own}; {fmt_count(refused)} refused"
        )

    def _render_panel(self) -> None:
        # After a disconnect the last figures stay, dimmed, so the user sees what was last known.
        grid = Table.grid(padding=(0, 1))
        grid.style = "dim" if self.stale else ""
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column()
        r = self.report
        if r:
            cpu = fmt_float(r.get("cpu_percent"))
            rss = fmt_float(r.get("rss_mb"))
            endpoints = r.get("endpoints") if isinstance(r.get("endpoints"), Mapping) else {}
            grid.add_row(
                "uptime",
                f"{fmt_duration(r.get('uptime_s'))}   pid {r.get('pid', MISSING)}"
                f"   v{r.get('version', MISSING)}",
            )
            grid.add_row("CPU", f"{cpu} %   RSS {rss} MB   threads {fmt_count(r.get('threads'))}")
            grid.add_row(
                "requests",
                f"in flight {fmt_count(r.get('in_flight'))}   "
                f"rejected {fmt_count(r.get('rejected_total'))}",
            )
            groups = r.get("reply_groups")
            if isinstance(groups, Mapping) and groups.get("groups"):
                # Replies to clients with many requests in flight go out several to a send.
                grid.add_row(
                    "grouped",
                    f"{fmt_count(groups['replies'])} replies in {fmt_count(groups['groups'])} sends",
                )
            grid.add_row("bus", "\n".join(endpoints.get("bus", [])) or MISSING)
            grid.add_row("events", "\n".join(endpoints.get("events", [])) or MISSING)
            if isinstance(r.get("events"), Mapping):
                grid.add_row("", _events_text(r["events"]))
            curve = f"CURVE {'on' if r.get('curve') else 'off'}"
            if isinstance(r.get("access"), Mapping):
                grid.add_row("access", self._access_text(r["access"], curve))
            else:
                grid.add_row("access", curve)
            _add_http_rows(grid, r)
            _add_tool_rows(grid, r)
            grid.add_row("data dir", Text(str(r.get("data_dir", MISSING))))
        outer = Table.grid()
        outer.add_row(self.state)
        outer.add_row(grid)
        self.update(outer)


def _add_http_rows(grid: Table, r: Mapping[str, Any]) -> None:
    """The gateway's URL, keys and requests (its routes are rows of the services table),
    and where Prometheus scrapes the metrics."""
    http = r.get("http")
    if isinstance(http, Mapping) and http.get("url"):  # only boxes with the gateway
        keys = http.get("keys") if isinstance(http.get("keys"), Mapping) else {}
        requests = sum(c.get("requests", 0) for c in keys.values())
        need = "keys required" if http.get("require_key") else "keys optional"
        grid.add_row("http", f"{http['url']}\n{need}, {fmt_count(requests)} requests")
    metrics = r.get("metrics")
    if isinstance(metrics, Mapping) and metrics.get("url"):
        grid.add_row("metrics", str(metrics["url"]))


def _add_tool_rows(grid: Table, r: Mapping[str, Any]) -> None:
    """Tools (on or off, calls), the orchestrator's runs and the router's decisions."""
    if isinstance(r.get("tools"), Mapping):
        # Text, not markup: the line reads "set [tools] enabled = true" when off.
        grid.add_row("tools", Text(tools_line(dict(r["tools"]))))
    if isinstance(r.get("orchestrate"), Mapping):
        grid.add_row("", orchestrate_line(dict(r["orchestrate"])))
    if isinstance(r.get("router"), Mapping):
        grid.add_row("router", router_line(dict(r["router"])))


def _events_text(events: Mapping[str, Any]) -> str:
    """Events sent and dropped (by topic), and what a stalled subscriber may hold at most."""
    dropped = events.get("dropped") if isinstance(events.get("dropped"), Mapping) else {}
    topics = ", ".join(f"{topic} {n}" for topic, n in sorted(dropped.items()))
    total = sum(v for v in dropped.values() if isinstance(v, int))
    return (
        f"{fmt_count(events.get('published'))} sent, {fmt_count(total)} dropped"
        + (f" ({topics})" if topics else "")
        + f"\nat most {fmt_bytes(events.get('queue_bytes_max'))} held a subscriber"
    )
