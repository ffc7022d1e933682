"""The `[monitor]` config section."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from aether_box.config import section, setting
from aether_box.errors import ConfigError

__all__ = ["DEFAULT_METRICS_ADDRESS", "MonitorSettings"]

# Taken (by another box on this machine), it moves to a free port; a chosen address never does.
DEFAULT_METRICS_ADDRESS = "127.0.0.1:7747"


@section("monitor")
@dataclass
class MonitorSettings:
    """Where the Prometheus metrics are served, and when the observer raises an alert."""

    # "host:port" for GET /metrics; "" turns the endpoint off; port 0 picks a free one.
    metrics_address: str = DEFAULT_METRICS_ADDRESS
    # Serve /metrics on a non-loopback address (it tells anyone who can reach it what the
    # box runs and how busy it is): refused unless this says so.
    metrics_public: bool = False
    # Seconds between the observer's looks at the status report (a `metrics.snapshot` each).
    observe_s: float = setting(5.0, min=0.01)
    # A service whose share of error replies in a window reaches this raises an alert...
    alert_error_ratio: float = setting(0.5, min=0.001, max=1)
    # ...when it answered at least this many requests in that window.
    alert_min_requests: int = setting(5, min=1)
    # Resident memory of the box that raises an alert; 0 turns it off.
    alert_rss_mb: int = setting(0, min=0)
    # A model generating below this share of its usual tokens/s raises an alert...
    alert_speed_ratio: float = setting(0.5, min=0, max=1)
    # ...once it has this many earlier readings to know what usual is.
    alert_speed_after: int = setting(5, min=1)
    # The same alert (kind and subject) is raised at most once in this many seconds.
    alert_every_s: float = setting(60.0, min=0)
    # Signals the tuner acts on (aether_box/monitor/watches.py):
    # a collection's drift is tested once this many new texts arrived...
    drift_min_texts: int = setting(50, min=5)
    # ...and called a shift at this permutation p-value or under (200 permutations).
    drift_p_value: float = setting(0.01, min=0.001, max=1)
    # A projector whose gate passes less than this share of a window's queries...
    align_pass_min: float = setting(0.7, min=0, max=1)
    # ...judged on at least this many queries.
    align_min_projections: int = setting(20, min=1)
    # A model's per-token NLL above its rolling median by this many MADs is a spike.
    nll_mad: float = setting(3.0, min=0.5)
    # ...once it has this many earlier answers to know what usual is.
    nll_after: int = setting(10, min=3)
    # The router's share of messages taking the default route, in a window, that is news...
    router_fallback_max: float = setting(0.5, min=0, max=1)
    # ...judged on at least this many messages.
    router_min_decisions: int = setting(20, min=1)
    # The machine's memory in use (percent) from which idle models are unloaded, least
    # recently used first, one at a time.
    memory_pressure_percent: float = setting(92.0, min=1, max=100)
    # When the loaded models together hold more than this many MB, idle ones are unloaded,
    # least recently used first, until the rest fit (never one in use or pinned by a
    # session). 0 = no such limit, the default: engines.memory_budget_mb already bounds
    # loads; set it lower to keep memory free for other programs without refusing loads.
    models_memory_mb: float = setting(0.0, min=0)

    def resolve(self, data_dir: Path) -> None:
        """Check the values."""
        if self.metrics_address:
            host, _ = self.host_and_port()
            if not self.metrics_public and not _loopback(host):
                raise ConfigError(
                    f"monitor.metrics_address {self.metrics_address!r} is not a loopback "
                    "address: anyone who reaches it reads the box's models, services and load. "
                    "Use 127.0.0.1:PORT, or set monitor.metrics_public = true to serve it there"
                )

    def host_and_port(self) -> tuple[str, int]:
        """The address split for binding; a ConfigError says how to write it."""
        host, _, port = self.metrics_address.rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError(
                f'monitor.metrics_address must be host:port (e.g. 127.0.0.1:7747), or "" '
                f"to turn metrics off; got {self.metrics_address!r}"
            )
        return host.strip("[]"), int(port)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name or a wildcard such as 0.0.0.0: not provably loopback
