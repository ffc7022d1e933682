"""The `[engines]` config section."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import psutil

from aether_box.config import section
from aether_box.errors import ConfigError

__all__ = ["FLASH_ATTN", "EngineSettings"]

FLASH_ATTN = ("auto", "on", "off")


@section("engines")
@dataclass
class EngineSettings:
    """How models are loaded and run."""

    # Total for all loaded models (weights, KV cache, compute buffers), as llama.cpp and
    # ONNX Runtime account them; least recently used models are unloaded to stay within it.
    memory_budget_mb: int = 3072
    # Seconds a loaded model may sit idle before the tuner unloads it (it reloads on its next
    # request); 0 keeps models loaded until the budget needs room. Ollama's default is 300.
    keep_alive: float = 900.0
    # Context length of one generation request (prompt plus reply, in tokens).
    n_ctx: int = 2048
    # Requests one generation instance serves at once (continuous batching, one sequence each).
    parallel: int = 4
    # Requests that may wait for a slot beyond those; more are refused at once as `busy`.
    max_queue: int = 32
    # KV cache cells of one generation instance, for all its sequences (and the
    # conversations its slots keep); 0 = n_ctx * parallel, room for every slot at full length.
    kv_cells: int = 0
    # false: each sequence has kv_cells / parallel cells of its own, and batching leaves
    # greedy answers exactly as they are alone. true: one shared pool (a long conversation may
    # use what the others do not), but batched answers may drift from lone ones (README).
    kv_unified: bool = False
    # Flash attention in generation: "auto" lets llama.cpp use it where the backend has it
    # (the CPU does: about a quarter faster a token here, and batched answers stay exactly
    # the lone ones), "on" insists, "off" uses the plain attention llama-cpp-python's `Llama`
    # uses by default (replies then match it token for token).
    flash_attn: str = "auto"
    # Disk kept for sessions' conversation states (restored instead of re-read; least
    # recently used deleted first), per generation model; 0 = none kept.
    state_cache_mb: int = 256
    # Where they are kept; default: <data dir>/kv-state.
    state_dir: Path | None = None
    # Longest text, in tokens, that a GGUF embedding instance takes.
    embed_n_ctx: int = 512
    # llama.cpp threads; 0 = auto: up to the machine's physical cores, fewer while measured
    # faster (a busy host makes every thread wait for a descheduled one; engines/threads.py).
    n_threads: int = 0
    # "auto": offload to a GPU when llama.cpp / ONNX Runtime can and one is present; "off": CPU.
    gpu: str = "auto"
    # Layers of a GGUF model put on the GPU when one is used: "all", or a number (0 = none).
    n_gpu_layers: int | str = "all"
    # Texts per engine call; a bigger request is split, and other requests for the same
    # model get their turn between the pieces.
    embed_batch: int = 32
    # Most texts one embed request may carry.
    max_texts: int = 10_000
    # ONNX encoders run their int8 copy (dynamic quantisation; about 2x the texts/s on CPU,
    # vectors within cosine 0.99 of float32). Vectors stored under one setting are best
    # searched with queries embedded under the same one.
    onnx_int8: bool = False

    def resolve(self, data_dir: Path) -> None:
        """Check the values."""
        if self.gpu not in ("auto", "off"):
            raise ConfigError(f"engines.gpu must be 'auto' or 'off', got {self.gpu!r}")
        if self.flash_attn not in FLASH_ATTN:
            raise ConfigError(
                f"engines.flash_attn must be one of {list(FLASH_ATTN)}, got {self.flash_attn!r}"
            )
        layers = self.n_gpu_layers
        if layers != "all" and (isinstance(layers, str) or isinstance(layers, bool) or layers < 0):
            raise ConfigError(
                f'engines.n_gpu_layers must be "all" or a number >= 0, got {layers!r}'
            )
        for key in (
            "memory_budget_mb",
            "n_ctx",
            "embed_n_ctx",
            "embed_batch",
            "max_texts",
            "parallel",
        ):
            if getattr(self, key) < 1:
                raise ConfigError(f"engines.{key} must be at least 1, got {getattr(self, key)}")
        if self.state_dir is None:
            self.state_dir = data_dir / "kv-state"
        if self.max_queue < 0 or self.kv_cells < 0 or self.state_cache_mb < 0:
            raise ConfigError(
                "engines.max_queue, engines.kv_cells and engines.state_cache_mb must be 0 or more"
            )
        per_sequence = self.kv_cells if self.kv_unified else self.kv_cells // self.parallel
        if self.kv_cells and per_sequence < self.n_ctx:
            raise ConfigError(
                f"engines.kv_cells ({self.kv_cells}) must give each sequence a whole context "
                f"(engines.n_ctx = {self.n_ctx}; {self.parallel} sequences"
                f"{', unified' if self.kv_unified else ''}), or be 0"
            )
        if self.keep_alive < 0:
            raise ConfigError(f"engines.keep_alive must be 0 (keep) or more, got {self.keep_alive}")
        if self.n_threads < 0:
            raise ConfigError(f"engines.n_threads must be 0 (auto) or more, got {self.n_threads}")

    def probe_threads(self) -> int:
        """The llama.cpp / ONNX Runtime thread count (reads the CPU topology: call off the loop)."""
        return self.n_threads or psutil.cpu_count(logical=False) or os.cpu_count() or 1
