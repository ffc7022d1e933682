"""The `[grid]` config section."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from aether_box.config import section, setting

__all__ = ["GridSettings"]


@section("grid")
@dataclass
class GridSettings:
    """This box's name and address in the grid, and how fast members notice each other."""

    # The members, kept across restarts; default {data_dir}/grid.toml.
    members_file: Path | None = None
    # This box's name in the grid (it prefixes its services on the others: `NAME/llm`);
    # default: the host name.
    name: str | None = None
    # The bus endpoint members reach this box at; default: its first tcp endpoint that
    # names an address (not 0.0.0.0).
    advertise: str | None = None
    # Seconds between heartbeats to each member (each carries this box's load).
    beat_s: float = setting(0.15, min=0.01, max=60)
    # A member whose heartbeat goes unanswered this long is down (and its requests fail over).
    down_after_s: float = setting(0.5, min=0.05, max=600)
    # How long a grid memory search waits for each member.
    search_timeout_s: float = setting(2.0, min=0.05, max=600)
    # How long a request placed on a member waits for each of its replies.
    request_timeout_s: float = setting(600.0, min=0.1)

    def resolve(self, data_dir: Path) -> None:
        """Fill in the default members file and name."""
        self.members_file = Path(self.members_file or data_dir / "grid.toml").expanduser()
        self.name = self.name or socket.gethostname().split(".")[0] or "box"
