"""Request counts and latency percentiles, kept per service."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np

__all__ = ["LatencyWindow", "ServiceStats", "error_code"]

# Error codes that say the caller asked for something wrong: counted apart from the box's own
# errors, so a client's mistakes never raise an alert about the box.
# The caller's to fix or to choose otherwise (what it sent, or asked of a setting or an adapter
# that says no): counted apart from the box's own errors, which alerts watch.
CLIENT_ERROR_CODES = frozenset(
    {"bad_request", "bad_frames", "not_found", "too_large", "forbidden", "not_allowed",
     "adapter_pruned", "adapter_in_use"}
)  # fmt: skip


def error_code(reply: dict) -> str | None:
    """The error code of a reply body, or None when it is not an error."""
    error = reply.get("error")
    if error is None:
        return None
    return error.get("code", "internal") if isinstance(error, dict) else "internal"


class LatencyWindow:
    """The most recent latencies, for p50/p95 without unbounded memory."""

    def __init__(self, size: int = 2048) -> None:
        self._values: deque[float] = deque(maxlen=size)

    def add(self, seconds: float) -> None:
        self._values.append(seconds)

    def percentiles_ms(self) -> dict[str, float | None]:
        if not self._values:
            return {"p50_ms": None, "p95_ms": None}
        p50, p95 = np.percentile(np.fromiter(self._values, float), [50, 95]) * 1000.0
        return {"p50_ms": round(float(p50), 3), "p95_ms": round(float(p95), 3)}


@dataclass
class ServiceStats:
    """What `status` reports for one service."""

    requests: int = 0
    errors: int = 0  # the box's own failures: what alerts watch
    client_errors: int = 0  # bad requests, unknown names: the caller's to fix
    cancelled: int = 0  # stopped by the client or a shutdown
    rejected: Counter = field(default_factory=Counter)
    latency: LatencyWindow = field(default_factory=LatencyWindow)

    def finished(self, seconds: float, code: str | None = None) -> None:
        """Count one answered request; `code`: its error code, None when it succeeded."""
        self.requests += 1
        if code == "cancelled":
            self.cancelled += 1
        elif code in CLIENT_ERROR_CODES:
            self.client_errors += 1
        elif code is not None:
            self.errors += 1
        self.latency.add(seconds)

    def snapshot(self) -> dict:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "client_errors": self.client_errors,
            "cancelled": self.cancelled,
            "rejected": dict(self.rejected),
            **self.latency.percentiles_ms(),
        }
