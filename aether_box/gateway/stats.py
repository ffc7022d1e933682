"""Counters of the gateway: per route and per key name (never key material)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aether_box.bus.stats import LatencyWindow

__all__ = ["ANONYMOUS", "GatewayStats"]

# The key name requests without a (checked) key are counted under.
ANONYMOUS = "-"


@dataclass
class Counts:
    """Requests answered, the box's failures (5xx) and the caller's (4xx), and latency."""

    requests: int = 0
    errors: int = 0
    client_errors: int = 0
    latency: LatencyWindow = field(default_factory=LatencyWindow)

    def finished(self, status: int, seconds: float) -> None:
        self.requests += 1
        if status >= 500:
            self.errors += 1
        elif status >= 400:
            self.client_errors += 1
        self.latency.add(seconds)

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "client_errors": self.client_errors,
            **self.latency.percentiles_ms(),
        }


class GatewayStats:
    """Updated on the event loop as each response ends; read by the status section."""

    def __init__(self) -> None:
        self.routes: dict[str, Counts] = {}
        self.keys: dict[str, Counts] = {}

    def finished(self, route: str, key_name: str, status: int, seconds: float) -> None:
        """Count one request; `seconds`: until its last byte was handed to the server."""
        self.routes.setdefault(route, Counts()).finished(status, seconds)
        self.keys.setdefault(key_name, Counts()).finished(status, seconds)

    def snapshot(self) -> dict[str, Any]:
        return {
            "routes": {route: c.snapshot() for route, c in sorted(self.routes.items())},
            "keys": {name: c.snapshot() for name, c in sorted(self.keys.items())},
        }
