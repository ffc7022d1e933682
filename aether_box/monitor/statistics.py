"""The observer's statistics, in numpy: embedding drift (MMD²) and a spike rule (median + k MAD).

Drift: the squared maximum mean discrepancy between a reference sample X and a recent sample
Y of unit vectors, with an RBF kernel whose bandwidth is the median pairwise distance of the
pooled sample (the median heuristic); its p-value is the share of random relabellings of the
pooled sample whose MMD² reaches the observed one (a permutation null). Both samples are
capped, so a test costs a few milliseconds.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

__all__ = ["Drift", "SpikeRule", "drift", "mmd2"]


def _kernel(z: np.ndarray) -> np.ndarray:
    """RBF kernel matrix of the pooled sample, bandwidth by the median heuristic."""
    sq = np.maximum(np.sum(z * z, 1)[:, None] + np.sum(z * z, 1)[None, :] - 2 * z @ z.T, 0.0)
    upper = sq[np.triu_indices(len(z), 1)]
    bandwidth = float(np.median(upper)) if len(upper) else 1.0
    kernel: np.ndarray = np.exp(-sq / max(bandwidth, 1e-12))
    return kernel


def _mmd2_from(k: np.ndarray, first: np.ndarray) -> float:
    """Unbiased MMD² of the split `first` (bool mask) vs the rest, from the pooled kernel."""
    x, y = first, ~first
    m, n = int(x.sum()), int(y.sum())
    kxx = k[np.ix_(x, x)]
    kyy = k[np.ix_(y, y)]
    kxy = k[np.ix_(x, y)]
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2 * kxy.mean()
    )


def mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² between samples x and y (rows), RBF kernel with the median heuristic."""
    z = np.concatenate([x, y]).astype(np.float64)
    first = np.zeros(len(z), bool)
    first[: len(x)] = True
    return _mmd2_from(_kernel(z), first)


@dataclass
class Drift:
    """One drift test: the statistic, its permutation p-value and the centroid distance."""

    mmd2: float
    p_value: float
    centroid_distance: float
    n_reference: int
    n_recent: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "mmd2": round(self.mmd2, 5),
            "p_value": round(self.p_value, 4),
            "centroid_distance": round(self.centroid_distance, 4),
            "n_reference": self.n_reference,
            "n_recent": self.n_recent,
        }


def drift(
    reference: np.ndarray,
    recent: np.ndarray,
    permutations: int = 200,
    cap: int = 200,
    seed: int = 0,
) -> Drift:
    """Whether `recent` vectors come from another distribution than `reference` (module doc)."""
    rng = np.random.default_rng(seed)
    if len(reference) > cap:
        reference = reference[rng.choice(len(reference), cap, replace=False)]
    if len(recent) > cap:
        recent = recent[rng.choice(len(recent), cap, replace=False)]
    z = np.concatenate([reference, recent]).astype(np.float64)
    k = _kernel(z)
    first = np.zeros(len(z), bool)
    first[: len(reference)] = True
    observed = _mmd2_from(k, first)
    reached = 0
    for _ in range(permutations):
        shuffled = rng.permutation(first)
        reached += _mmd2_from(k, shuffled) >= observed
    centroid = float(np.linalg.norm(reference.mean(0) - recent.mean(0)))
    return Drift(
        observed, (reached + 1) / (permutations + 1), centroid, len(reference), len(recent)
    )


class SpikeRule:
    """A reading is a spike when it passes the rolling median by more than k MADs.

    The median absolute deviation is scaled by 1.4826 (a normal sample's standard deviation);
    a floor keeps a perfectly steady history from calling every wobble a spike.
    """

    def __init__(self, window: int = 50, k: float = 3.0, warmup: int = 10, floor: float = 0.05):
        self.history: deque[float] = deque(maxlen=window)
        self.k, self.warmup, self.floor = k, warmup, floor

    def limit(self) -> float | None:
        """The value above which a reading is a spike (None while warming up)."""
        if len(self.history) < self.warmup:
            return None
        values = np.fromiter(self.history, float)
        median = float(np.median(values))
        mad = 1.4826 * float(np.median(np.abs(values - median)))
        return median + self.k * max(mad, self.floor * max(abs(median), 1e-9))

    def add(self, value: float) -> bool:
        """Record a reading; True when it is a spike (spikes stay out of the history)."""
        limit = self.limit()
        spike = limit is not None and value > limit
        if not spike:
            self.history.append(float(value))
        return spike

    @property
    def median(self) -> float | None:
        return float(np.median(np.fromiter(self.history, float))) if self.history else None
