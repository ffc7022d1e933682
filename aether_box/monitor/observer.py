"""The observer: every few seconds, compare the status report with the last one and speak up.

It publishes `metrics.snapshot` (rates over the window, per service) and, when something
looks wrong, `metrics.alert`: a service answering mostly with errors, messages being
rejected, the process holding more memory than allowed, or a model generating far slower
than it usually does (drift). Alerts are also kept for the
`status` report (section `alerts`), and the same alert is not repeated within
`monitor.alert_every_s`.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar

import anyio
import numpy as np

from aether_box.context import BoxContext
from aether_box.contract import Observations, StatusReporter
from aether_box.engines.settings import EngineSettings
from aether_box.errors import BoxError, ServiceUnavailable
from aether_box.monitor.settings import MonitorSettings
from aether_box.monitor.watches import (
    AdapterWatch,
    AlignWatch,
    DriftWatch,
    NllWatch,
    ResidencyWatch,
    RouterWatch,
    Signals,
)

__all__ = ["ObserverComponent", "SpeedWatch", "Window", "compare"]

log = logging.getLogger(__name__)

KEPT_ALERTS = 50
# Signals that are also alerts (idle models and memory pressure are routine, not news).
ALERTING = ("align", "drift", "nll", "router")


@dataclass
class Window:
    """What changed between two status reports."""

    seconds: float
    # service -> {"requests": n, "errors": n, "per_s": rate, "error_ratio": r, "p95_ms": ms}
    services: dict[str, dict[str, Any]]
    # reason -> messages the bus refused in the window
    rejected: dict[str, int]
    rss_mb: float

    def snapshot(self) -> dict[str, Any]:
        """The `metrics.snapshot` event body."""
        return {
            "window_s": round(self.seconds, 3),
            "services": self.services,
            "rejected": self.rejected,
            "rss_mb": self.rss_mb,
        }


def compare(before: dict[str, Any], after: dict[str, Any], seconds: float) -> Window:
    """The window between two status reports (see aether_box.status)."""
    services = {}
    for name, svc in after["services"].items():
        old = before["services"].get(name, {"requests": 0, "errors": 0})
        requests = svc["requests"] - old["requests"]
        errors = svc["errors"] - old["errors"]
        services[name] = {
            "requests": requests,
            "errors": errors,
            "per_s": round(requests / seconds, 2) if seconds > 0 else 0.0,
            "error_ratio": round(errors / requests, 3) if requests else 0.0,
            "p95_ms": svc.get("p95_ms"),
        }
    rejected = {
        reason: count - before["rejected"].get(reason, 0)
        for reason, count in after["rejected"].items()
        if count > before["rejected"].get(reason, 0)
    }
    return Window(seconds, services, rejected, after["rss_mb"])


def alerts_for(window: Window, settings: MonitorSettings) -> list[dict[str, Any]]:
    """What in a window deserves a user's attention, each with what to do about it."""
    alerts = []
    for name, svc in window.services.items():
        if svc["requests"] >= settings.alert_min_requests and (
            svc["error_ratio"] >= settings.alert_error_ratio
        ):
            alerts.append(
                {
                    "kind": "errors",
                    "subject": name,
                    "message": f"{name} answered {svc['errors']} of {svc['requests']} requests "
                    f"with an error in the last {window.seconds:.0f} s; see the box log "
                    "(`log.` events) for the causes",
                }
            )
    if window.rejected:
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(window.rejected.items()))
        alerts.append(
            {
                "kind": "rejected",
                "subject": "bus",
                "message": f"the bus refused messages in the last {window.seconds:.0f} s "
                f"({reasons}); a client is sending malformed or oversized requests"
                + (", or ops its scope does not allow" if "forbidden" in window.rejected else ""),
            }
        )
    if settings.alert_rss_mb and window.rss_mb >= settings.alert_rss_mb:
        alerts.append(
            {
                "kind": "memory",
                "subject": "process",
                "message": f"the box holds {window.rss_mb:.0f} MB (alert at "
                f"{settings.alert_rss_mb} MB); unload models (engines.memory_budget_mb) or "
                "raise monitor.alert_rss_mb",
            }
        )
    return alerts


class SpeedWatch:
    """Generation speed per model, against its own usual speed: drift shows as an alert.

    Each new reading (the `tokens_per_s` of a loaded model's latest request, from the
    status report's `models` section) is compared with the median of its earlier ones.
    """

    def __init__(self, settings: MonitorSettings, history: int = 50) -> None:
        self.settings = settings
        self.readings: dict[tuple[str, str], deque[float]] = {}
        self._last: dict[tuple[str, str], tuple[int, float]] = {}
        self._history = history

    def update(self, models: dict[str, Any] | None) -> list[dict[str, Any]]:
        alerts = []
        for entry in (models or {}).get("loaded", []):
            speed = entry.get("tokens_per_s")
            if not isinstance(speed, int | float) or speed <= 0:
                continue
            key = (entry.get("name", "?"), entry.get("role", "?"))
            seen = (entry.get("requests", 0), speed)
            if self._last.get(key) == seen:
                continue  # no request since the last look
            self._last[key] = seen
            earlier = self.readings.setdefault(key, deque(maxlen=self._history))
            if len(earlier) >= self.settings.alert_speed_after:
                usual = float(np.median(earlier))
                if speed < usual * self.settings.alert_speed_ratio:
                    alerts.append(
                        {
                            "kind": "slow",
                            "subject": key[0],
                            "message": f"{key[0]} generated at {speed:.1f} tokens/s, under "
                            f"{self.settings.alert_speed_ratio:.0%} of its usual {usual:.1f}: "
                            "the machine may be busy (see cpu_percent in status) or short of "
                            "memory",
                            "figures": {"tokens_per_s": speed, "usual": round(usual, 2)},
                        }
                    )
            earlier.append(float(speed))
        return alerts


class ObserverComponent(Observations):
    """Watches the status report and publishes snapshots, alerts and the tuner's signals."""

    name: ClassVar[str] = "observer"
    settings_class: ClassVar[type | None] = MonitorSettings
    status_key: ClassVar[str] = "alerts"

    def __init__(self, ctx: BoxContext) -> None:
        self.ctx = ctx
        self.settings = ctx.config.get(MonitorSettings)
        self.alerts: deque[dict[str, Any]] = deque(maxlen=KEPT_ALERTS)
        self.speeds = SpeedWatch(self.settings)
        self._last_said: dict[tuple[str, str], float] = {}
        s = self.settings
        self.keep_alive = ctx.config.get(EngineSettings).keep_alive
        self.table = Signals()
        self.residency = ResidencyWatch(self.table)
        self.align = AlignWatch(self.table, s.align_pass_min, s.align_min_projections)
        self.drift = DriftWatch(self.table, s.drift_min_texts, s.drift_p_value)
        self.nll = NllWatch(self.table, s.nll_mad, s.nll_after)
        self.router = RouterWatch(self.table, s.router_fallback_max, s.router_min_decisions)
        self.adapters = AdapterWatch(self.table)

    async def serve(
        self,
        ctx: BoxContext,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        status = ctx.get(StatusReporter)
        if status is None:
            raise ServiceUnavailable(
                "the observer needs the status component, which is not running"
            )
        task_status.started()
        before, then = status.report(), time.monotonic()
        while True:
            await anyio.sleep(self.settings.observe_s)
            after, now = status.report(), time.monotonic()
            window = compare(before, after, now - then)
            before, then = after, now
            ctx.events.publish("metrics.snapshot", window.snapshot())
            slow = self.speeds.update(after.get("models"))
            for alert in [*alerts_for(window, self.settings), *slow]:
                self._raise(alert, now)
            for alert in slow:  # the tuner's signal too: it proposes what to do about it
                self.table.set(
                    "slow", alert["subject"], True, alert["figures"], alert["message"], edge=False
                )
            await self._watch(after, now)

    async def _watch(self, report: dict[str, Any], now: float) -> None:
        """Update the tuner's signals; a triggered one that a user should see is an alert."""
        before = {(x["kind"], x["subject"]): x["seq"] for x in self.table.all()}
        s = self.settings
        self.residency.update(
            report, self.keep_alive, s.memory_pressure_percent, s.models_memory_mb
        )
        self.align.update(report.get("align"))
        self.nll.update(report.get("models"))
        self.router.update(report.get("router"))
        self.adapters.update(report.get("adapters"))
        try:
            await self.drift.update(report.get("memory"), self.ctx.call)
        except BoxError as exc:  # a collection dropped mid-read: next look starts again
            log.info("drift watch: %s", exc)
        for signal in self.table.all():
            news = signal["seq"] != before.get((signal["kind"], signal["subject"]))
            if news and signal["triggered"] and signal["kind"] in ALERTING:
                self._raise(
                    {
                        "kind": signal["kind"],
                        "subject": signal["subject"],
                        "message": signal["message"],
                    },
                    now,
                )

    def signals(self) -> list[dict[str, Any]]:
        """The tuner's signals (see aether_box.monitor.watches)."""
        return self.table.all()

    def _raise(self, alert: dict[str, Any], now: float) -> None:
        alert = {k: v for k, v in alert.items() if k != "figures"}
        key = (alert["kind"], alert["subject"])
        if now - self._last_said.get(key, -float("inf")) < self.settings.alert_every_s:
            return  # said recently: a persistent problem is one alert a while, not a flood
        self._last_said[key] = now
        alert = {**alert, "time": time.time()}
        self.alerts.append(alert)
        log.warning("alert: %s", alert["message"])
        self.ctx.events.publish("metrics.alert", alert)

    def status_section(self) -> list[dict[str, Any]]:
        """The "alerts" section of `status`: the latest alerts, oldest first."""
        return list(self.alerts)
