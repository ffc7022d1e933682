"""The `[adapters]` config section."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aether_box.config import section
from aether_box.errors import ConfigError

__all__ = ["AdapterSettings"]


@section("adapters")
@dataclass
class AdapterSettings:
    """How the fusion probe measures adapters."""

    # How many of the shipped probe prompts (16) each probe reads; fewer is faster and coarser.
    probe_prompts: int = 16

    def resolve(self, data_dir: Path) -> None:
        if not 1 <= self.probe_prompts <= 64:
            raise ConfigError(f"adapters.probe_prompts must be 1 to 64, got {self.probe_prompts}")
