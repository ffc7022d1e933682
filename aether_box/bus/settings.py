"""The `[bus]` config section."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from aether_box.config import section, setting

__all__ = ["BusSettings", "DEFAULT_TCP_ENDPOINTS"]

# The default loopback ports. When one is taken (by another box on this machine), a box
# listens on a free port instead and publishes it in its data dir (bus/discovery.py), so a
# second box needs only its own --data-dir; endpoints a user chose are never moved.
DEFAULT_BUS_TCP = "tcp://127.0.0.1:7745"
DEFAULT_EVENTS_TCP = "tcp://127.0.0.1:7746"
DEFAULT_TCP_ENDPOINTS = frozenset({DEFAULT_BUS_TCP, DEFAULT_EVENTS_TCP})


@section("bus")
@dataclass
class BusSettings:
    """Where the bus listens and the limits it enforces."""

    # "{data_dir}" is replaced by the box's data dir.
    endpoints: list[str] = field(
        default_factory=lambda: ["ipc://{data_dir}/bus.sock", DEFAULT_BUS_TCP]
    )
    event_endpoints: list[str] = field(
        default_factory=lambda: ["ipc://{data_dir}/events.sock", DEFAULT_EVENTS_TCP]
    )
    max_message_mb: float = setting(64.0, min=0.001, max=4096)
    # CURVE on tcp endpoints: "auto" (on for non-loopback ones when the data dir has keys;
    # loopback stays plain, so local apps keep working after `keys init`), "on" (every tcp
    # endpoint, loopback too: local clients then need the data dir's keys) or "off".
    curve: str = setting("auto", choices=("auto", "on", "off"))
    # Plain tcp on loopback (any local user can connect there) gets the `use` scope; true
    # gives it `admin` too (memory drop, federation links, ...). See aether_box.bus.scopes.
    loopback_admin: bool = False
    heartbeat_s: float = setting(2.5, min=0.05, max=3600)
    heartbeat_liveness: int = setting(3, min=1, max=1000)
    queue_limit: int = setting(10_000, min=1)
    request_expiry_s: float = setting(60.0, min=0.01)
    local_concurrency: int = setting(64, min=1)
    shutdown_grace_s: float = setting(3.5, min=0, max=3600)

    def resolve(self, data_dir: Path) -> None:
        """Fill the data dir into endpoint templates."""
        self.endpoints = [e.replace("{data_dir}", str(data_dir)) for e in self.endpoints]
        self.event_endpoints = [
            e.replace("{data_dir}", str(data_dir)) for e in self.event_endpoints
        ]

    @property
    def curve_on_loopback(self) -> bool:
        """Whether loopback tcp endpoints use CURVE too (only when asked for: "on")."""
        return self.curve == "on"

    @property
    def max_message_bytes(self) -> int:
        return int(self.max_message_mb * 1024 * 1024)
