"""The `[monitor]` config section."""

from __future__ import annotations

from dataclasses import dataclass

from aether_box.config import section
from aether_box.errors import ConfigError

__all__ = ["MonitorSettings"]


@section("monitor")
@dataclass
class MonitorSettings:
    """Where the Prometheus metrics are served."""

    # "host:port" for GET /metrics; "" turns the endpoint off; port 0 picks a free one.
    metrics_address: str = "127.0.0.1:7747"

    def __post_init__(self) -> None:
        if self.metrics_address:
            self.host_and_port()

    def host_and_port(self) -> tuple[str, int]:
        """The address split for binding; a ConfigError says how to write it."""
        host, _, port = self.metrics_address.rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError(
                f'monitor.metrics_address must be host:port (e.g. 127.0.0.1:7747), or "" '
                f"to turn metrics off; got {self.metrics_address!r}"
            )
        return host.strip("[]"), int(port)
