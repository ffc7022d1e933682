"""A route's own gate through the hub (routes.py): calibrated on the whole route, it knows
where the product of its legs' gates knows nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from test_align_space import _models

from aether_box.align.fidelity import ranks
from aether_box.align.fit import fit_ridge, ridge_with
from aether_box.align.gate import auc, combine, fit_gate, logistic, margin
from aether_box.align.pairs import PairSet
from aether_box.align.routes import RouteGate, calibrate_route, route_signals, routes_through
from aether_box.align.space import build_space

# Noise on every model's vectors (their signal is ~7 a dimension): ~85% of the fit texts
# route to their own vector first, ~40% of the far ones.
NOISE, FAR_NOISE = 5.0, 8.0


def _leg(x: np.ndarray, y: np.ndarray, source: str, target: str, texts: list[str]):
    lam = float(fit_ridge(x, y, source, target).params["lambda"])
    projector = ridge_with(x, y, source, target, lam)
    gate, _ = fit_gate(projector, x, y, lam)
    return projector, gate, lam, PairSet(source, target, texts, x, y)


def test_a_calibrated_route_gate_knows_where_the_legs_product_does_not() -> None:
    rng = np.random.default_rng(3)

    def noisy(models: dict[str, np.ndarray], scale: float) -> dict[str, np.ndarray]:
        return {
            m: v + scale * rng.standard_normal(v.shape).astype(np.float32)
            for m, v in models.items()
        }

    # Held-out text in two "domains": like the fit texts, and noisier (more misses).
    train = noisy(_models(500), NOISE)
    near, far = noisy(_models(300, seed=1), NOISE), noisy(_models(300, seed=2), FAR_NOISE)
    space = build_space(train, {m: m for m in train}, dim=96)
    hub = space.transform(train)
    texts = [f"t{i}" for i in range(len(hub))]
    into = _leg(train["a"], hub, "a", "shared", texts)
    out = _leg(hub, train["c"], "shared", "c", texts)

    def maker(lam: float, s: str, t: str):
        return lambda x, y: ridge_with(x, y, s, t, lam)

    route = calibrate_route(
        into[3],
        out[3],
        maker(into[2], "a", "shared"),
        maker(out[2], "shared", "c"),
        (into[2], out[2]),
        (1.0, 2.0),
    )
    assert route is not None and route.route == ["a", "shared", "c"]
    assert route.facts["texts"] == 500 and 0 < route.facts["top1"] < 1
    legs = [(into[0], into[1].reverse, into[1].folds), (out[0], out[1].reverse, out[1].folds)]
    served, product, hits = [], [], []
    for held in (near, far):
        into_s, out_s, projected = route_signals(legs, held["a"])
        hit = ranks(projected, held["c"]) == 1
        agreement = route.agreement(into_s, out_s)
        served.append(combine(agreement, margin(projected, held["c"]), route.combined_coef))
        product.append(
            into[1].agreement(into[0], held["a"]) * out[1].agreement(out[0], into[0](held["a"]))
        )
        hits.append(hit)
    hit = np.concatenate(hits)
    assert 0.1 < hit.mean() < 0.9  # both hits and misses to tell apart
    assert auc(np.concatenate(served), hit) >= 0.85
    # The legs alone never miss on their own calibration: their product is flat.
    assert np.ptp(np.concatenate(product)) < 0.05


def test_a_route_gate_is_kept_and_used_only_with_the_legs_it_was_made_with(tmp_path: Path) -> None:
    gate = RouteGate(
        ["a", "hub", "b"], [1.0, 2.0], np.arange(7.0) / 10, [0.1, 1.0, 2.0], {"texts": 9}
    )
    gate.save(tmp_path / "r.json")
    again = RouteGate.load(tmp_path / "r.json")
    assert again is not None and again.name == "a->hub->b" and again.facts == {"texts": 9}
    assert np.allclose(again.coef, gate.coef) and again.combined_coef == [0.1, 1.0, 2.0]
    assert again.fresh(1.0, 2.0) and not again.fresh(1.0, 3.0)
    assert RouteGate.load(tmp_path / "missing.json") is None
    s = np.ones((2, 3), np.float32)
    assert again.agreement(s, s).shape == (2,)


def test_a_new_leg_recalibrates_every_route_it_completes() -> None:
    reports = [
        {"source": s, "target": t}
        for s, t in (("a", "hub"), ("b", "hub"), ("hub", "a"), ("hub", "c"))
    ]
    assert routes_through(reports, "hub", "a", "hub") == [("a", "hub", "c")]
    assert routes_through(reports, "hub", "hub", "c") == [("a", "hub", "c"), ("b", "hub", "c")]
    assert routes_through(reports, "hub", "a", "b") == []  # a direct projector: no route


def test_a_nonnegative_calibration_drops_a_weight_against_its_sense() -> None:
    rng = np.random.default_rng(0)
    good = rng.standard_normal(400)
    hit = (good + 0.5 * rng.standard_normal(400) > 0).astype(np.float64)
    noise = -good + 2 * rng.standard_normal(400)  # fitted freely, a negative weight
    features = np.column_stack([good, noise])
    assert logistic(features, hit)[2] < 0
    kept = logistic(features, hit, nonnegative=True)
    assert kept[1] > 0 and kept[2] == 0
    assert np.all(logistic(features, np.ones(400), nonnegative=True)[1:] == 0)  # no misses
