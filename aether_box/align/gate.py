"""The gate: how far to trust one projection, judged without the native vector.

A client may send only its own model's vector, so the box cannot compare the projection with
what the target model would have said. The agreement is computed from three signals that the
projection itself gives, on the source vector alone:

- ``norm``: the length of the projector's output before normalisation. The targets are unit
  vectors and a ridge map shrinks towards their mean where the input is unlike the fitting
  data, so a short output means an uncertain one.
- ``cycle``: the cosine between the input and its round trip source -> target -> source
  through a reverse ridge map fitted on the same pairs.
- ``spread``: the mean cosine between the projection and those of K ridge maps each fitted
  on a different (K-1)/K of the pairs. Where the data pin the map down they agree; where
  the query lies off the data they scatter (an ensemble's estimate of its own uncertainty).

A fourth signal needs the collection searched, so it is not in the ONNX graph: ``margin``,
how much nearer the projection's nearest collection vector is than its second nearest. A
projection whose top hit stands out finds the native top-1; one among near-equal neighbours
often does not. Memory's cross-model search has the collection searched anyway, so it gates
on the *combined* probability (`combine`): a logistic of the projection's agreement (as a
logit) and the margin, calibrated on the same split (`combined_coef`). The margin is measured
among the calibration split's texts (up to 1,000): in a much larger collection neighbours
crowd closer, margins shrink, and the combined gate proxies more (it errs on the safe side).
`calibrate` reports the AUC of each signal and what the combined gate proxies.

The agreement is a logistic calibration of these signals to the event that matters: the
projection retrieves, among N = 1,000 held-out texts, the same nearest neighbour as the
native vector would (top-1). So it reads as a probability: a gate of 0.8 (the default) uses a
projection only when it is at least 80% likely to find what the target model itself would
have found, and re-embeds the text with the target model otherwise. It is calibrated on pairs that the
judged maps were not fitted on (see `fit_gate`); `calibrate` reports on held-out pairs how
well it ranks good and bad projections, what share of queries each threshold sends to the
proxy, and the top-1 of the combined path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aether_box.align.fidelity import ranks
from aether_box.align.fit import ridge_with, split_validation
from aether_box.align.projectors import Projector, normalise

__all__ = [
    "FEATURES",
    "FOLDS",
    "Gate",
    "auc",
    "calibrate",
    "combine",
    "fit_gate",
    "gate_maps",
    "logistic",
    "signals",
]

FEATURES = ("norm", "cycle", "spread")
FOLDS = 4
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def signals(
    projector: Projector, reverse: Projector, folds: list[Projector], x: np.ndarray
) -> np.ndarray:
    """(n, 3): output norm, round-trip cosine and ensemble spread for each row of `x`."""
    xn = normalise(np.atleast_2d(x))
    z = projector.raw(xn)
    y = normalise(z)
    back = normalise(reverse.raw(y))
    cycle = np.sum(xn * back, axis=1)
    spread = np.mean([np.sum(fold(xn) * y, axis=1) for fold in folds], axis=0)
    return np.stack([np.linalg.norm(z, axis=1), cycle, spread], axis=1).astype(np.float32)


def margin(projected: np.ndarray, collection: np.ndarray) -> np.ndarray:
    """(n,): top-1 minus top-2 cosine of each projected row among the collection's rows."""
    sims = normalise(projected) @ normalise(collection).T
    if sims.shape[1] < 2:
        return np.zeros(len(sims), np.float32)
    top = -np.partition(-sims, 1, axis=1)[:, :2]
    return (top[:, 0] - top[:, 1]).astype(np.float32)


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(t, -60, 60)))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def combine(agreement: Any, gaps: Any, coef: list[float]) -> np.ndarray:
    """The combined gate's probability that a projection finds the native top-1, from its
    agreement and its collection margin (`margin`), by the calibration `coef` (fit_gate's
    ``combined_coef``: intercept, agreement logit, margin)."""
    features = np.column_stack([_logit(agreement), np.asarray(gaps, np.float64)])
    return _sigmoid(coef[0] + features @ np.asarray(coef[1:], np.float64))


@dataclass
class Gate:
    """The reverse map, the fold maps and the logistic calibration of their signals."""

    reverse: Projector
    folds: list[Projector]
    coef: np.ndarray  # (1 + len(FEATURES),): intercept first

    def agreement(self, projector: Projector, x: np.ndarray) -> np.ndarray:
        """Estimated probability that each projection finds the native top-1, (n,)."""
        return self.from_signals(signals(projector, self.reverse, self.folds, x))

    def from_signals(self, s: np.ndarray) -> np.ndarray:
        """The calibrated agreement for precomputed signals."""
        return _sigmoid(self.coef[0] + s.astype(np.float64) @ self.coef[1:]).astype(np.float32)

    def save(self, path: Path) -> None:
        """Write the maps and the calibration to one .npz."""
        arrays = {"reverse_w0": self.reverse.w0, "reverse_b0": self.reverse.b0}
        for i, fold in enumerate(self.folds):
            arrays[f"fold{i}_w0"], arrays[f"fold{i}_b0"] = fold.w0, fold.b0
        meta = {
            "source": self.reverse.target,
            "target": self.reverse.source,
            "folds": len(self.folds),
            "features": list(FEATURES),
        }
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, coef=self.coef, meta=np.array(json.dumps(meta)), **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Gate:
        """Read a gate written by `save`."""
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            source, target = meta["source"], meta["target"]
            reverse = Projector("ridge", target, source, data["reverse_w0"], data["reverse_b0"])
            folds = [
                Projector("ridge", source, target, data[f"fold{i}_w0"], data[f"fold{i}_b0"])
                for i in range(meta["folds"])
            ]
            return cls(reverse, folds, data["coef"].astype(np.float64))


def _fold_maps(
    x: np.ndarray, y: np.ndarray, lam: float, k: int, seed: int, source: str, target: str
) -> list[Projector]:
    fold = np.random.default_rng(seed).permutation(len(x)) % k
    return [ridge_with(x[fold != i], y[fold != i], source, target, lam) for i in range(k)]


def gate_maps(
    x: np.ndarray, y: np.ndarray, lam: float, seed: int, source: str, target: str
) -> tuple[Projector, list[Projector]]:
    """The reverse map and the K fold maps a gate's signals need, fitted on pairs (x, y)."""
    reverse = ridge_with(y, x, target, source, lam)
    return reverse, _fold_maps(x, y, lam, FOLDS, seed, source, target)


def logistic(features: np.ndarray, hit: np.ndarray, *, nonnegative: bool = False) -> np.ndarray:
    """Calibration coefficients (intercept first) of `features` to the 0/1 `hit`; where every
    row hit or none did, nothing tells them apart: the base rate, every weight zero.

    `nonnegative`: every feature is one that can only speak for a hit (higher means more
    likely right); a feature whose fitted weight comes out negative is dropped and the rest
    refitted. A weight against that sense is the calibration set's noise, and it turns into
    nonsense on text unlike the calibration set's (measured on routes through the hub: an
    unconstrained fit on glosses ranked Python-docs projections worse than chance)."""
    coef = np.zeros(features.shape[1] + 1)
    rate = float(np.clip(hit.mean(), 1e-3, 1 - 1e-3))
    coef[0] = np.log(rate / (1 - rate))
    if not 0 < hit.mean() < 1:
        return coef
    active = list(range(features.shape[1]))
    while active:
        fitted = _logistic(features[:, active], hit)
        if not nonnegative or fitted[1:].min() >= 0:
            coef[0] = fitted[0]
            coef[1 + np.array(active)] = fitted[1:]
            break
        active.pop(int(np.argmin(fitted[1:])))
    return coef


def _logistic(features: np.ndarray, hit: np.ndarray, l2: float = 1e-2) -> np.ndarray:
    """Coefficients (intercept first) of a logistic regression, by Newton's method."""
    mean, scale = features.mean(0), features.std(0) + 1e-9
    design = np.column_stack([np.ones(len(features)), (features - mean) / scale])
    w = np.zeros(design.shape[1])
    penalty = l2 * np.eye(len(w))
    penalty[0, 0] = 0.0
    for _ in range(50):
        p = _sigmoid(design @ w)
        grad = design.T @ (p - hit) + penalty @ w
        hess = design.T @ (design * (p * (1 - p))[:, None]) + penalty + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    coef = w[1:] / scale
    return np.concatenate([[w[0] - mean @ coef], coef])


def fit_gate(
    projector: Projector,
    x: np.ndarray,
    y: np.ndarray,
    lam: float,
    seed: int = 0,
    factory: Any = None,
) -> tuple[Gate, dict[str, Any]]:
    """Fit the gate's maps on every pair and calibrate it on a split none of its judged maps saw.

    Calibration: the pairs are split 80/20; on the 80% a stand-in for `projector` (made by
    `factory(x, y)`, default a ridge map with `lam`), a reverse map and K fold maps are
    fitted; on the 20% (up to N = 1,000 texts) their signals are regressed onto whether the
    stand-in's projection finds its own native vector first. The served gate then pairs that
    calibration with maps fitted on every pair. Returns (gate, calibration facts).
    """
    x, y = normalise(x), normalise(y)
    fit_idx, cal_idx = split_validation(len(x), 0.2, seed + 1)
    cal_idx = cal_idx[:1000]
    make = factory or (lambda a, b: ridge_with(a, b, projector.source, projector.target, lam))
    judged = make(x[fit_idx], y[fit_idx])
    reverse, folds = gate_maps(
        x[fit_idx], y[fit_idx], lam, seed, projector.source, projector.target
    )
    s = signals(judged, reverse, folds, x[cal_idx]).astype(np.float64)
    hit = (ranks(judged(x[cal_idx]), y[cal_idx]) == 1).astype(np.float64)
    gaps = margin(judged(x[cal_idx]), y[cal_idx]).astype(np.float64)[:, None]
    coef = logistic(s, hit)  # the base rate alone when every pair hit or none did
    margin_coef = combined_coef = None
    if 0 < hit.mean() < 1:
        margin_coef = _logistic(gaps, hit)
        agreement = _sigmoid(coef[0] + s @ coef[1:])
        combined_coef = _logistic(np.column_stack([_logit(agreement), gaps[:, 0]]), hit)
    gate = Gate(*gate_maps(x, y, lam, seed, projector.source, projector.target), coef)
    facts = {"pairs": int(len(cal_idx)), "top1": float(hit.mean()), "folds": FOLDS}
    if margin_coef is not None:
        facts["margin_coef"] = [float(c) for c in margin_coef]
    if combined_coef is not None:
        facts["combined_coef"] = [float(c) for c in combined_coef]
    return gate, facts


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a)).astype(np.float64)
    rb = np.argsort(np.argsort(b)).astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])


def auc(score: np.ndarray, good: np.ndarray) -> float | None:
    """Probability that a good projection scores above a bad one (ties count half)."""
    pos, neg = score[good], score[~good]
    if len(pos) == 0 or len(neg) == 0:
        return None
    both = np.concatenate([pos, neg])
    order = np.argsort(both, kind="mergesort")
    rank = np.empty(len(both), np.float64)
    rank[order] = np.arange(1, len(both) + 1)
    for value in np.unique(both):  # average ranks of ties
        tied = both == value
        if tied.sum() > 1:
            rank[tied] = rank[tied].mean()
    return float((rank[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def calibrate(
    gate: Gate,
    projector: Projector,
    x: np.ndarray,
    y: np.ndarray,
    thresholds: tuple[float, ...] = THRESHOLDS,
    margin_coef: list[float] | None = None,
    combined_coef: list[float] | None = None,
) -> dict[str, Any]:
    """How well the agreement predicts real fidelity on held-out pairs, and what gating costs.

    For each threshold: the share of queries sent to the proxy, the top-1 and mean cosine of
    the accepted projections, and the top-1 of the combined path (accepted queries use the
    projection; proxied ones are re-embedded natively, so they find their own vector).
    """
    agreement = gate.agreement(projector, x)
    projected = projector(x)
    true = np.sum(projected * normalise(y), axis=1)
    hit = ranks(projected, y) == 1
    table = []
    for t in thresholds:
        accepted = agreement >= t
        table.append(
            {
                "gate": t,
                "proxy_share": float(1 - accepted.mean()),
                "accepted_top1": float(hit[accepted].mean()) if accepted.any() else None,
                "accepted_mean_cosine": float(true[accepted].mean()) if accepted.any() else None,
                "combined_top1": float(np.where(accepted, hit, True).mean()),
            }
        )
    # A constant agreement (a leg whose calibration hit every time) or cosine has no
    # correlation to report.
    enough = len(x) > 2 and min(np.std(agreement, dtype=np.float64), np.std(true)) > 1e-9
    gaps = margin(projected, y)
    by_margin = None
    if margin_coef is not None:  # the margin gate: the collection is the held-out set itself
        p_margin = _sigmoid(margin_coef[0] + margin_coef[1] * gaps.astype(np.float64))
        by_margin = [
            {
                "gate": t,
                "proxy_share": float(np.mean(p_margin < t)),
                "combined_top1": float(np.where(p_margin >= t, hit, True).mean()),
            }
            for t in thresholds
        ]
    by_combined = None
    auc_combined = None
    if combined_coef is not None:  # the gate memory's cross-model search serves
        p_combined = combine(agreement, gaps, combined_coef)
        auc_combined = auc(p_combined, hit)
        by_combined = [
            {
                "gate": t,
                "proxy_share": float(np.mean(p_combined < t)),
                "accepted_top1": float(hit[p_combined >= t].mean())
                if (p_combined >= t).any()
                else None,
                "combined_top1": float(np.where(p_combined >= t, hit, True).mean()),
            }
            for t in thresholds
        ]
    return {
        "auc_combined": auc_combined,
        "combined_thresholds": by_combined,
        "auc_margin": auc(gaps, hit),
        "margin_thresholds": by_margin,
        "n": int(len(x)),
        "top1": float(hit.mean()),
        "mean_agreement": float(agreement.mean()),
        "auc_top1": auc(agreement, hit),
        "pearson_cosine": float(np.corrcoef(agreement, true)[0, 1]) if enough else None,
        "spearman_cosine": _spearman(agreement, true) if enough else None,
        "thresholds": table,
    }
