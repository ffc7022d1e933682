"""The `[bus]` config section."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from aether_box.config import section

__all__ = ["BusSettings"]


@section("bus")
@dataclass
class BusSettings:
    """Where the bus listens and the limits it enforces."""

    # "{data_dir}" is replaced by the box's data dir.
    endpoints: list[str] = field(
        default_factory=lambda: ["ipc://{data_dir}/bus.sock", "tcp://127.0.0.1:7745"]
    )
    event_endpoints: list[str] = field(
        default_factory=lambda: ["ipc://{data_dir}/events.sock", "tcp://127.0.0.1:7746"]
    )
    max_message_mb: float = 64.0
    # CURVE on tcp endpoints: "auto" (on when keys exist in the data dir), "on" or "off".
    curve: str = "auto"
    heartbeat_s: float = 2.5
    heartbeat_liveness: int = 3
    queue_limit: int = 10_000
    request_expiry_s: float = 60.0
    local_concurrency: int = 64
    shutdown_grace_s: float = 3.5

    def resolve(self, data_dir: Path) -> None:
        """Fill the data dir into endpoint templates."""
        self.endpoints = [e.replace("{data_dir}", str(data_dir)) for e in self.endpoints]
        self.event_endpoints = [
            e.replace("{data_dir}", str(data_dir)) for e in self.event_endpoints
        ]

    @property
    def max_message_bytes(self) -> int:
        return int(self.max_message_mb * 1024 * 1024)
