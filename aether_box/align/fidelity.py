"""How faithful a projection is, measured on held-out pairs against the native target vectors.

For held-out texts i = 1..N with projected vectors p_i and native target vectors b_i, every p_i
is used as a query among all N native vectors: top-1 is the share whose nearest native vector
is its own b_i, recall@10 the share with b_i among the ten nearest, mean rank the average
position of b_i (1 is best, (N+1)/2 is chance). The mean cosine is the mean of cos(p_i, b_i).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aether_box.align.projectors import Projector, normalise

__all__ = ["baseline", "evaluate", "ranks", "retrieval"]

BLOCK = 2048  # rows of the similarity matrix held at once


def ranks(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """1-based rank of each row's own target among all targets, by cosine (ties count against)."""
    p, t = normalise(pred), normalise(target)
    out = np.empty(len(p), dtype=np.int64)
    for start in range(0, len(p), BLOCK):
        sims = p[start : start + BLOCK] @ t.T
        own = sims[np.arange(len(sims)), np.arange(start, start + len(sims))]
        # Rank = 1 + how many other targets score strictly higher than the true one.
        out[start : start + BLOCK] = 1 + (sims > own[:, None]).sum(1)
    return out


def retrieval(pred: np.ndarray, target: np.ndarray, k: int = 10) -> dict[str, float]:
    """Mean cosine, top-1, recall@k, mean and median rank of `pred` rows among `target` rows."""
    p, t = normalise(pred), normalise(target)
    r = ranks(p, t)
    return {
        "n": int(len(p)),
        "mean_cosine": float(np.mean(np.sum(p * t, axis=1))),
        "top1": float(np.mean(r == 1)),
        f"recall_at_{k}": float(np.mean(r <= k)),
        "mean_rank": float(np.mean(r)),
        "median_rank": float(np.median(r)),
    }


def baseline(source: np.ndarray, target: np.ndarray) -> dict[str, Any] | None:
    """The same figures for the unprojected source vectors, or None when the dims differ."""
    if source.shape[1] != target.shape[1]:
        return None
    return retrieval(source, target)


def evaluate(
    projector: Projector, x: np.ndarray, y: np.ndarray, n: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Fidelity of `projector` on held-out pairs (x, y), among n of them (all if fewer)."""
    if len(x) > n:
        pick = np.sort(np.random.default_rng(seed).choice(len(x), n, replace=False))
        x, y = x[pick], y[pick]
    report: dict[str, Any] = retrieval(projector(x), y)
    report["chance_top1"] = 1.0 / max(len(x), 1)
    report["unprojected"] = baseline(normalise(x), normalise(y))
    return report
