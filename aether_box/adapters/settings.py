"""The `[adapters]` config section."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from aether_box.config import section
from aether_box.errors import ConfigError

__all__ = ["AdapterSettings"]


@section("adapters")
@dataclass
class AdapterSettings:
    """How the fusion probe measures adapters, and which are pinned hot."""

    # How many of the shipped probe prompts (16) each probe reads; fewer is faster and coarser.
    probe_prompts: int = 16
    # Adapter names pinned hot: a set made only of them is baked into a copy of the model on
    # its first request, not after engines.bake_after in a row (see README, "Adapters").
    pinned: list[str] = field(default_factory=list)

    def resolve(self, data_dir: Path) -> None:
        if not isinstance(self.pinned, list) or not all(isinstance(n, str) for n in self.pinned):
            raise ConfigError(f"adapters.pinned must be a list of names, got {self.pinned!r}")
        if not 1 <= self.probe_prompts <= 64:
            raise ConfigError(f"adapters.probe_prompts must be 1 to 64, got {self.probe_prompts}")
