"""One fit of a model pair: which texts go where, every method fitted and judged, the gate.

`plan_texts` splits the texts: a held-out test set (never fitted on, N of "top-1 among N"),
the fit set (at most `max_pairs`), and optional out-of-domain sets from the built-in corpus.
`fit_pair` fits every method on the fit pairs, measures each on every held-out set, keeps the
one with the best held-out top-1, calibrates the gate and checks the ONNX export against numpy.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aether_box.align.corpus import load_set
from aether_box.align.export import OnnxProjector
from aether_box.align.fidelity import evaluate
from aether_box.align.fit import FitOptions, fit_mlp, fit_procrustes, fit_ridge, ridge_with
from aether_box.align.gate import FEATURES, Gate, calibrate, fit_gate
from aether_box.align.pairs import PairSet
from aether_box.align.projectors import Projector
from aether_box.align.settings import AlignSettings
from aether_box.align.store import pair_name
from aether_box.errors import BadRequest

__all__ = ["TextPlan", "fit_options", "fit_pair", "held_out_sets", "plan_texts", "stand_in"]

FITTERS = {"ridge": fit_ridge, "procrustes": fit_procrustes, "mlp": fit_mlp}
MIN_PAIRS = 20
SPLIT_SEED = 7


@dataclass
class TextPlan:
    """Named text sets: "fit", "in_domain" (held out) and any out-of-domain ones."""

    label: str
    parts: dict[str, list[str]]
    known_target: np.ndarray | None = None
    _known: dict[str, np.ndarray] = field(default_factory=dict)

    def all_texts(self) -> list[str]:
        """Every text of the plan once, in order."""
        return list(dict.fromkeys(t for texts in self.parts.values() for t in texts))

    def attach_target(self, texts: list[str], vectors: np.ndarray) -> None:
        """Target vectors that exist already (a collection's own); used instead of embedding."""
        self._known = dict(zip(texts, vectors, strict=True))
        self.parts = {"all": self.all_texts(), **self.parts}
        self.known_target = np.stack([self._known[t] for t in self.parts["all"]])


def plan_texts(
    texts: list[str],
    label: str,
    max_pairs: int,
    test_pairs: int,
    ood: list[str],
    *,
    standard: bool,
    builtin: bool = False,
) -> TextPlan:
    """Split `texts` into fit and held-out parts (and add the chosen out-of-domain sets)."""
    if not standard:
        return TextPlan(label, {"all": texts})
    if builtin:
        # The built-in glosses are shipped shuffled; the test set is their tail, so every
        # fit size (at most 8000 - test) sees the same held-out texts.
        test = texts[len(texts) - min(test_pairs, len(texts) // 5) :]
        fit = texts[: min(max_pairs, len(texts) - len(test))]
    else:
        if len(texts) < MIN_PAIRS + 5:
            raise BadRequest(
                f"{len(texts)} distinct texts are too few to fit and test a "
                f"projector; give at least {MIN_PAIRS + 5}"
            )
        order = np.random.default_rng(SPLIT_SEED).permutation(len(texts))
        n_test = min(test_pairs, max(5, len(texts) // 5))
        test = [texts[i] for i in order[:n_test]]
        fit = [texts[i] for i in order[n_test : n_test + max_pairs]]
    if len(fit) < MIN_PAIRS:  # said now, not after minutes of embedding the held-out sets
        raise BadRequest(
            f"{len(fit)} texts are left to fit on (max_pairs {max_pairs}, {len(test)} held "
            f"out); a projector needs at least {MIN_PAIRS}: raise max_pairs or give more texts"
        )
    parts = {"fit": fit, "in_domain": test}
    for name in ood:
        parts[f"ood:{name}"] = [t for t in load_set(name)[:test_pairs] if t not in set(fit)]
    return TextPlan(label, parts)


def fit_options(settings: AlignSettings) -> FitOptions:
    return FitOptions(mlp_epochs=settings.mlp_epochs, mlp_hidden=settings.mlp_hidden)


def held_out_sets(parts: dict[str, PairSet]) -> dict[str, PairSet]:
    """Held-out sets by report name: in_domain, out_of_domain (the first OOD set), ..."""
    out = {"in_domain": parts["in_domain"]}
    oods = [k for k in parts if k.startswith("ood:")]
    for i, key in enumerate(oods):
        out["out_of_domain" if i == 0 else f"out_of_domain_{key[4:]}"] = parts[key]
    return out


def fit_pair(
    parts: dict[str, PairSet],
    plan: TextPlan,
    settings: AlignSettings,
    methods: list[str],
    progress: Callable[[str, float], None] | None = None,
) -> tuple[dict[str, Any], dict[str, Projector], Gate]:
    """Fit, judge, pick and calibrate; (report, projectors by method, gate). Blocking."""
    if "fit" not in parts:  # a collection plan embeds "all" once; split it here
        raise BadRequest("internal: the plan has no fit part")
    fit = parts["fit"]
    if len(fit) < MIN_PAIRS:
        raise BadRequest(
            f"{len(fit)} pairs are too few to fit a projector; give at least {MIN_PAIRS} texts"
        )
    options = fit_options(settings)
    source, target = fit.source, fit.target
    held = held_out_sets(parts)
    projectors: dict[str, Projector] = {}
    results: dict[str, Any] = {}
    for method in methods:
        started = time.perf_counter()
        # Each fitter names its steps with its method ("ridge: choosing lambda").
        projector = FITTERS[method](fit.a, fit.b, source, target, options, progress)
        projectors[method] = projector
        results[method] = {
            "params": {k: v for k, v in projector.params.items() if k != "lambda_curve"},
            "fit_s": round(time.perf_counter() - started, 2),
            **{
                name: evaluate(projector, ps.a, ps.b, n=settings.test_pairs)
                for name, ps in held.items()
            },
        }
    best = max(
        methods,
        key=lambda m: (results[m]["in_domain"]["top1"], results[m]["in_domain"]["mean_cosine"]),
    )
    if progress:
        progress("gate: calibrating", 0.0)
    ridge_lambda = (
        float(projectors["ridge"].params["lambda"])
        if "ridge" in projectors
        else (float(fit_ridge(fit.a, fit.b, source, target, options).params["lambda"]))
    )
    gate, gate_fit = _fit_gate(fit, best, projectors[best], ridge_lambda, options)
    for method, projector in projectors.items():
        engine = OnnxProjector.from_projector(projector, gate if method == best else None)
        x = held["in_domain"].a
        diff = np.abs(engine.run(x)["y"] - projector(x)).max()
        results[method]["onnx_max_abs_diff"] = float(diff)
    margin_coef, combined_coef = gate_fit.get("margin_coef"), gate_fit.get("combined_coef")
    gate_report = {
        name: calibrate(
            gate, projectors[best], ps.a, ps.b, margin_coef=margin_coef, combined_coef=combined_coef
        )
        for name, ps in held.items()
    }
    if progress:
        progress("gate: calibrating", 1.0)
    report = {
        "name": pair_name(source, target),
        "source": source,
        "target": target,
        "dims": [int(fit.a.shape[1]), int(fit.b.shape[1])],
        "best": best,
        "created": time.time(),
        "pairs": {
            "corpus": plan.label,
            "fit": len(fit),
            **{name: len(ps) for name, ps in held.items()},
        },
        "methods": results,
        "gate": {
            "threshold": settings.gate,
            "features": list(FEATURES),
            "coef": [float(c) for c in gate.coef],
            "calibration": gate_fit,
            **gate_report,
        },
    }
    return report, projectors, gate


def _fit_gate(
    fit: PairSet, best: str, projector: Projector, ridge_lambda: float, options: FitOptions
) -> tuple[Gate, dict[str, Any]]:
    """The gate for the served method, calibrated with a stand-in of that method (gate.py)."""
    factory = stand_in(best, fit.source, fit.target, ridge_lambda, options)
    return fit_gate(projector, fit.a, fit.b, ridge_lambda, options.seed, factory)


def stand_in(
    method: str, source: str, target: str, ridge_lambda: float, options: FitOptions
) -> Callable[[np.ndarray, np.ndarray], Projector]:
    """Fits `method` on some of the pairs, as a calibration's stand-in for the served map
    (ridge with the served map's lambda: no search on the smaller set)."""

    def factory(a: np.ndarray, b: np.ndarray) -> Projector:
        if method == "ridge":
            return ridge_with(a, b, source, target, ridge_lambda)
        return FITTERS[method](a, b, source, target, options)

    return factory
