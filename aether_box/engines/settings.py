"""The `[engines]` config section."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import psutil

from aether_box.config import section
from aether_box.errors import ConfigError

__all__ = ["EngineSettings"]


@section("engines")
@dataclass
class EngineSettings:
    """How models are loaded and run."""

    # Total for all loaded models (weights, KV cache, compute buffers), as llama.cpp and
    # ONNX Runtime account them; least recently used models are unloaded to stay within it.
    memory_budget_mb: int = 3072
    # Context length of generation instances (prompt plus reply, in tokens).
    n_ctx: int = 2048
    # Longest text, in tokens, that a GGUF embedding instance takes.
    embed_n_ctx: int = 512
    # llama.cpp threads; 0 = the machine's physical cores.
    n_threads: int = 0
    # "auto": offload to a GPU when llama.cpp / ONNX Runtime can and one is present; "off": CPU.
    gpu: str = "auto"
    # Texts per engine call; a bigger request is split, and other requests for the same
    # model get their turn between the pieces.
    embed_batch: int = 32
    # Most texts one embed request may carry.
    max_texts: int = 10_000

    def resolve(self, data_dir: Path) -> None:
        """Check the values."""
        if self.gpu not in ("auto", "off"):
            raise ConfigError(f"engines.gpu must be 'auto' or 'off', got {self.gpu!r}")
        for key in ("memory_budget_mb", "n_ctx", "embed_n_ctx", "embed_batch", "max_texts"):
            if getattr(self, key) < 1:
                raise ConfigError(f"engines.{key} must be at least 1, got {getattr(self, key)}")
        if self.n_threads < 0:
            raise ConfigError(f"engines.n_threads must be 0 (auto) or more, got {self.n_threads}")

    def probe_threads(self) -> int:
        """The llama.cpp / ONNX Runtime thread count (reads the CPU topology: call off the loop)."""
        return self.n_threads or psutil.cpu_count(logical=False) or os.cpu_count() or 1
