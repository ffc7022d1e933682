"""The `[federation]` config section."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aether_box.config import section
from aether_box.errors import ConfigError

__all__ = ["FederationSettings"]


@section("federation")
@dataclass
class FederationSettings:
    """Where links are kept, how often peers are checked, how long forwarded calls may wait."""

    # The linked peers, kept across restarts; default {data_dir}/peers.toml.
    peers_file: Path | None = None
    # Seconds between looks at each peer's status (and how long one look may wait).
    refresh_s: float = 5.0
    # How long a forwarded request waits for each reply from the peer.
    request_timeout_s: float = 600.0

    def resolve(self, data_dir: Path) -> None:
        """Fill in the default peers file."""
        self.peers_file = Path(self.peers_file or data_dir / "peers.toml").expanduser()
        for key in ("refresh_s", "request_timeout_s"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"federation.{key} must be > 0 seconds, got {getattr(self, key)}")
