"""Request counts and latency percentiles, kept per service."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np

__all__ = ["LatencyWindow", "ServiceStats"]


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
    errors: int = 0
    rejected: Counter = field(default_factory=Counter)
    latency: LatencyWindow = field(default_factory=LatencyWindow)

    def finished(self, seconds: float, *, error: bool) -> None:
        self.requests += 1
        self.errors += int(error)
        self.latency.add(seconds)

    def snapshot(self) -> dict:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "rejected": dict(self.rejected),
            **self.latency.percentiles_ms(),
        }
