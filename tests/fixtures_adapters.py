"""Real LoRA adapters for the adapter tests: random low-rank ones written with `gguf`, the
trained one in tests/data/adapters, and a box with a quick fusion probe."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fixtures_box import BoxInThread, temp_box

from aether_box.adapters.lora_file import LoraFile, base_shapes, write_lora

TRAINED = Path(__file__).parent / "data" / "adapters" / "pirate-peft"


def random_lora(
    base: Path,
    *,
    rank: int = 8,
    std: float = 0.02,
    seed: int = 0,
    targets: tuple[str, ...] = ("attn_q", "attn_v"),
    alpha: float = 16.0,
) -> LoraFile:
    """A random rank-`rank` adapter of the `targets` weights of every layer of `base`."""
    arch, shapes = base_shapes(base)
    rng = np.random.default_rng(seed)
    factors = {}
    for name, (n_out, n_in) in shapes.items():
        if name.startswith("blk.") and any(f".{t}." in name for t in targets):
            a = rng.standard_normal((rank, n_in)).astype(np.float32) * std
            b = rng.standard_normal((n_out, rank)).astype(np.float32) * std
            factors[name] = (a, b)
    return LoraFile(arch, alpha, factors)


def write_random(path: Path, base: Path, **kwargs: object) -> Path:
    write_lora(path, random_lora(base, **kwargs))  # type: ignore[arg-type]
    return path


@pytest.fixture(scope="session")
def smollm2_path(model_store) -> Path:  # type: ignore[no-untyped-def]
    return model_store.path("smollm2")


@pytest.fixture(scope="module")
def adapter_box(models_dir: Path) -> Iterator[BoxInThread]:
    """A box with the test kit whose fusion probe reads 4 prompts (a quick, coarse probe)."""
    # One llama.cpp thread: on the shared 2-core test machine two threads' barriers wait on a
    # descheduled thread (measured 15-30x slower at load 16).
    overrides = {"adapters": {"probe_prompts": 4}, "engines": {"n_threads": 1}}
    with temp_box(overrides, models_dir=models_dir) as running:
        yield running
