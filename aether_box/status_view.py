"""Render a status report for people (the `aether-box status` command)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["render_status"]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render_status(report: dict[str, Any], console: Console | None = None) -> None:
    """Print health, endpoints, services and counters as tables."""
    console = console or Console()
    console.print(
        f"[bold]aether-box {report['version']}[/] pid {report['pid']}  up {report['uptime_s']:.0f} s  "
        f"CPU {report['cpu_percent']:.0f}%  RSS {report['rss_mb']:.0f} MB  in flight {report['in_flight']}"
    )
    console.print(
        f"bus: {', '.join(report['endpoints']['bus'])}   events: {', '.join(report['endpoints']['events'])}"
        f"   CURVE: {'on' if report.get('curve') else 'off'}"
    )
    table = Table("service", "kind", "workers", "requests", "errors", "queued", "p50 ms", "p95 ms")
    for name, svc in report["services"].items():
        table.add_row(
            name,
            svc["kind"],
            str(svc["workers"]),
            str(svc["requests"]),
            str(svc["errors"]),
            str(svc["queued"]),
            _ms(svc["p50_ms"]),
            _ms(svc["p95_ms"]),
        )
    console.print(table)
    if report.get("rejected"):
        rejected = ", ".join(f"{k} {v}" for k, v in sorted(report["rejected"].items()))
        console.print(f"rejected messages: {rejected}")
