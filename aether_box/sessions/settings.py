"""The `[sessions]` config section."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aether_box.config import section
from aether_box.errors import ConfigError

__all__ = ["SessionSettings"]


@section("sessions")
@dataclass
class SessionSettings:
    """Where conversations are kept, and how much of one the model is shown."""

    # The sessions database; default {data_dir}/sessions.db.
    file: Path | None = None
    # The newest messages whose text fits in this many characters go to the model with each
    # new one (the system prompt always does); older ones stay in the history.
    history_chars: int = 6000
    # A pinned session keeps its model loaded (the tuner does not unload it when idle or
    # under memory pressure) until it is unpinned or deleted, or nobody used it for this many
    # seconds (0: a pin never lapses by itself).
    pin_expiry_s: float = 86400.0

    def resolve(self, data_dir: Path) -> None:
        """Fill in the default database path."""
        self.file = Path(self.file or data_dir / "sessions.db").expanduser()
        if self.history_chars < 1:
            raise ConfigError(f"sessions.history_chars must be >= 1, got {self.history_chars}")
        if self.pin_expiry_s < 0:
            raise ConfigError(
                f"sessions.pin_expiry_s must be 0 (never) or more, got {self.pin_expiry_s}"
            )
