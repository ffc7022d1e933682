"""Merging adapters into one: linear (exact), TIES and DARE (dense, then back to low rank).

Two LoRA factor pairs cannot be merged element by element: B @ A equals (B M) @ (M^-1 A) for
any invertible M, so the factors' basis is arbitrary and averaging them gives some other
adapter. Linear merging instead concatenates the factors, ``[B1 B2] @ [w1 s1 A1; w2 s2 A2] =
w1 s1 B1 A1 + w2 s2 B2 A2``: exactly the weighted sum, at the sum of the ranks. TIES and DARE
act on entries of the dense delta of each weight, so they build it, merge it, and take a
(randomized) truncated SVD back to the requested rank, recording how much of the delta's energy (the
squared singular values) that rank keeps.

All of it is numpy and blocks: run it in a worker thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from aether_box.adapters.lora_file import LoraFile
from aether_box.errors import BadRequest

__all__ = ["METHODS", "MergeReport", "merge"]

METHODS = ("linear", "ties", "dare")


@dataclass
class MergeReport:
    """The merged adapter and what the truncation to its rank kept."""

    lora: LoraFile
    rank: int
    energy_mean: float  # over tensors, the share of each delta's energy kept (1.0: exact)
    energy_min: float


def merge(
    sources: Sequence[tuple[LoraFile, float]],
    method: str,
    *,
    density: float = 0.3,
    rank: int = 16,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> MergeReport:
    """Merge `sources` ((adapter, weight) pairs) with `method` into one adapter."""
    if method not in METHODS:
        raise BadRequest(f"merge method must be one of {list(METHODS)}, got {method!r}")
    if not sources:
        raise BadRequest("name at least one adapter to merge")
    if not 0.0 < density <= 1.0:
        raise BadRequest(f"density must be > 0 and <= 1, got {density}")
    if rank < 1:
        raise BadRequest(f"rank must be at least 1, got {rank}")
    arch = {lora.architecture for lora, _ in sources}
    if len(arch) != 1:
        raise BadRequest(f"the adapters are for different architectures: {sorted(arch)}")
    names = sorted({name for lora, _ in sources for name in lora.factors})
    # One BLAS thread: on a busy machine (llama.cpp's threads on every core) OpenBLAS's own
    # threads spin against them, measured 7x slower than one thread.
    with threadpool_limits(1, user_api="blas"):
        return _merge(sources, names, method, density, rank, seed, progress)


def _merge(
    sources: Sequence[tuple[LoraFile, float]],
    names: list[str],
    method: str,
    density: float,
    rank: int,
    seed: int,
    progress: Callable[[int, int], None] | None,
) -> MergeReport:
    arch = sources[0][0].architecture
    if method == "linear":
        return _linear(sources, names, progress)
    rng = np.random.default_rng(seed)
    factors: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    energies = []
    for i, name in enumerate(names):
        deltas = [(lora.delta(name), w) for lora, w in sources if name in lora.factors]
        if method == "ties":
            dense = _ties(deltas, density)
        else:
            dense = _dare(deltas, density, rng)
        a, b, energy = _low_rank(dense, rank, rng)
        factors[name] = (a, b)
        energies.append(energy)
        if progress is not None:
            progress(i + 1, len(names))
    # alpha 0: llama.cpp then scales by the request's scale alone (the factors hold the rest).
    merged = LoraFile(arch, 0.0, factors)
    return MergeReport(merged, rank, float(np.mean(energies)), float(np.min(energies)))


def _linear(
    sources: Sequence[tuple[LoraFile, float]],
    names: list[str],
    progress: Callable[[int, int], None] | None,
) -> MergeReport:
    factors = {}
    for i, name in enumerate(names):
        parts = [(lora, w) for lora, w in sources if name in lora.factors]
        a = np.concatenate(
            [
                w * lora.scale_of(name) * lora.factors[name][0].astype(np.float32)
                for lora, w in parts
            ]
        )
        b = np.concatenate([lora.factors[name][1].astype(np.float32) for lora, _ in parts], axis=1)
        factors[name] = (a.astype(np.float32), b)
        if progress is not None:
            progress(i + 1, len(names))
    merged = LoraFile(sources[0][0].architecture, 0.0, factors)
    return MergeReport(merged, merged.rank, 1.0, 1.0)


def _trim(delta: np.ndarray, density: float) -> np.ndarray:
    """Keep the `density` share of entries with the largest magnitude, zero the rest."""
    k = int(round(density * delta.size))
    if k >= delta.size:
        return delta
    if k <= 0:
        return np.zeros_like(delta)
    cut = np.partition(np.abs(delta).ravel(), delta.size - k)[delta.size - k]
    return np.where(np.abs(delta) >= cut, delta, 0.0).astype(delta.dtype)


def _ties(deltas: list[tuple[np.ndarray, float]], density: float) -> np.ndarray:
    """TIES (Yadav et al. 2023), as PEFT does it: trim each delta, elect each entry's sign
    by the sum of the trimmed deltas, then average the weighted entries that agree with it."""
    trimmed = np.stack([_trim(d, density) for d, _ in deltas])
    weights = np.array([w for _, w in deltas], dtype=np.float32).reshape(-1, 1, 1)
    sign = np.sign(trimmed.sum(axis=0))
    agree = (np.sign(trimmed) == sign) & (trimmed != 0)
    total = (trimmed * weights * agree).sum(axis=0)
    return total / np.maximum(agree.sum(axis=0), 1)


def _dare(
    deltas: list[tuple[np.ndarray, float]], density: float, rng: np.random.Generator
) -> np.ndarray:
    """DARE (Yu et al. 2023), linear: drop each entry with probability 1 - density, rescale
    the rest by 1 / density, then take the weighted sum."""
    total = np.zeros_like(deltas[0][0])
    for delta, weight in deltas:
        keep = rng.random(delta.shape) < density
        total += weight * np.where(keep, delta / density, 0.0).astype(delta.dtype)
    return total


def _low_rank(
    dense: np.ndarray, rank: int, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """Factors (A (r, n_in), B (n_out, r)) of a rank-r approximation of `dense`, and the share
    of its energy (squared Frobenius norm) they keep.

    A randomized truncated SVD (Halko et al. 2011: a range found with an oversampled Gaussian
    sketch and two power iterations) rather than a full one: the full SVD of every weight costs
    about 20x more, and the top singular values come out the same to a fraction of a percent.
    """
    x = dense.astype(np.float32)
    r = min(rank, *x.shape)
    sketch = min(r + 10, *x.shape)
    rng = rng or np.random.default_rng(0)
    q, _ = np.linalg.qr(x @ rng.standard_normal((x.shape[1], sketch)).astype(np.float32))
    for _ in range(2):
        q, _ = np.linalg.qr(x.T @ q)
        q, _ = np.linalg.qr(x @ q)
    u_small, s, vt = np.linalg.svd(q.T @ x, full_matrices=False)
    u = q @ u_small
    total = float((x.astype(np.float64) ** 2).sum())
    energy = float((s[:r].astype(np.float64) ** 2).sum() / max(total, 1e-30))
    b = (u[:, :r] * s[:r]).astype(np.float32)
    a = vt[:r].astype(np.float32)
    return a, b, min(energy, 1.0)
