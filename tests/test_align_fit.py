"""Projector maths: fits, fidelity figures, the gate and the ONNX export (numpy and ORT, no box)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aether_box.align.export import OnnxProjector, to_onnx
from aether_box.align.fidelity import evaluate, ranks, retrieval
from aether_box.align.fit import (
    FitOptions,
    fit_mlp,
    fit_procrustes,
    fit_ridge,
    mlp_loss,
    split_validation,
)
from aether_box.align.gate import calibrate, fit_gate
from aether_box.align.projectors import Projector, normalise

RNG = np.random.default_rng(42)
D_IN, D_OUT = 48, 24
# A fixed nonlinear "second model": what a projector has to learn.
MIX = RNG.standard_normal((D_IN, D_OUT)) / np.sqrt(D_IN)


def spaces(n: int, noise: float = 0.15, shift: float = 0.0, seed: int = 0):
    """Pairs (a, b): b is a noisy nonlinear function of a, both unit rows."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, D_IN)) + shift
    b = np.tanh(2 * a @ MIX) + noise * rng.standard_normal((n, D_OUT))
    return normalise(a), normalise(b)


OPTIONS = FitOptions(mlp_epochs=15, mlp_hidden=64, mlp_batch=128)


def test_ranks_count_what_beats_the_true_target() -> None:
    target = np.eye(4, dtype=np.float32)
    # Row 0 points at its own target, row 1 at target 2, row 2 between 2 and 3, row 3 away.
    pred = np.array([[1, 0, 0, 0], [0, 0.5, 1, 0], [0, 0, 1, 0.9], [1, 1, 1, -1]], np.float32)
    assert ranks(pred, target).tolist() == [1, 2, 1, 4]
    r = retrieval(pred, target)
    assert r["top1"] == 0.5 and r["mean_rank"] == 2.0 and r["recall_at_10"] == 1.0


def test_identity_is_perfect_and_baseline_needs_equal_dims() -> None:
    a, _ = spaces(200)
    same = Projector("ridge", "a", "a", np.eye(D_IN), np.zeros(D_IN))
    report = evaluate(same, a, a)
    assert report["top1"] == 1.0 and report["mean_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert report["unprojected"]["top1"] == 1.0
    _, b = spaces(200)
    other = Projector("ridge", "a", "b", np.zeros((D_IN, D_OUT)), np.ones(D_OUT))
    assert evaluate(other, a, b)["unprojected"] is None


def test_ridge_learns_the_map_and_chooses_lambda_on_validation() -> None:
    a, b = spaces(1500)
    ta, tb = spaces(400, seed=1)
    ridge = fit_ridge(a, b, "a", "b", OPTIONS)
    report = evaluate(ridge, ta, tb)
    assert report["top1"] >= 0.9
    assert report["top1"] > 50 * report["chance_top1"]
    curve = ridge.params["lambda_curve"]
    assert ridge.params["lambda"] in [c["lambda"] for c in curve] or any(
        abs(c["lambda"] - ridge.params["lambda"]) < 1e-3 for c in curve
    )
    # The chosen lambda is the best on validation, and the grid is not flat.
    assert ridge.params["val_top1"] == max(c["val_top1"] for c in curve)
    assert min(c["val_top1"] for c in curve) < ridge.params["val_top1"]


def test_scrambled_pairs_give_chance_level() -> None:
    a, b = spaces(1000)
    ta, tb = spaces(400, seed=1)
    shuffled = fit_ridge(a, b[np.random.default_rng(3).permutation(len(b))], "a", "b", OPTIONS)
    assert evaluate(shuffled, ta, tb)["top1"] < 0.05


def test_procrustes_recovers_a_rotation_exactly_even_across_dims() -> None:
    a, _ = spaces(500)
    q, _ = np.linalg.qr(RNG.standard_normal((D_IN, D_IN)))
    rotated = normalise(a @ q[:, :D_OUT])  # a semi-orthogonal map into fewer dimensions
    full = a @ q
    proc = fit_procrustes(a, full, "a", "b")
    assert np.abs(proc(a) - normalise(full)).max() < 1e-3
    semi = fit_procrustes(a, rotated, "a", "b")
    w = semi.w0 / semi.params["scale"]
    assert np.allclose(w.T @ w, np.eye(D_OUT), atol=1e-4)  # orthonormal columns
    assert evaluate(semi, a, rotated)["top1"] > 0.9


def test_mlp_gradients_match_finite_differences() -> None:
    rng = np.random.default_rng(1)
    xb = rng.standard_normal((6, 5))
    yb = normalise(rng.standard_normal((6, 4))).astype(np.float64)
    params = [
        rng.standard_normal((5, 4)),
        rng.standard_normal(4),
        rng.standard_normal((5, 3)),
        rng.standard_normal(3),
        rng.standard_normal((3, 4)),
    ]
    _, grads = mlp_loss(params, xb, yb, 0.5, 0.7)
    for p, g in zip(params, grads, strict=True):
        for i in range(p.size):
            old = p.flat[i]
            p.flat[i] = old + 1e-6
            up, _ = mlp_loss(params, xb, yb, 0.5, 0.7)
            p.flat[i] = old - 1e-6
            down, _ = mlp_loss(params, xb, yb, 0.5, 0.7)
            p.flat[i] = old
            assert g.flat[i] == pytest.approx((up - down) / 2e-6, rel=1e-4, abs=1e-7)


def test_mlp_training_lowers_the_loss_and_keeps_its_best_epoch() -> None:
    a, b = spaces(1500, noise=0.8)
    mlp = fit_mlp(a, b, "a", "b", OPTIONS)
    history = mlp.params["loss_history"]
    assert len(history) == OPTIONS.mlp_epochs
    assert history[-1] < history[0]  # the optimiser does descend
    assert 0 <= mlp.params["best_epoch"] <= OPTIONS.mlp_epochs
    assert mlp.hidden == OPTIONS.mlp_hidden and mlp.w2 is not None
    # What it returns is the best validation epoch, the ridge start (epoch 0) included, so
    # it is never worse on validation than that start.
    fit_idx, val_idx = split_validation(len(a), OPTIONS.val_fraction, OPTIONS.seed)
    start = fit_ridge(a[fit_idx], b[fit_idx], "a", "b", OPTIONS)
    assert mlp.params["val_top1"] >= retrieval(start(a[val_idx]), b[val_idx])["top1"] - 1e-9


@pytest.mark.parametrize("method", ["ridge", "procrustes", "mlp"])
def test_onnx_output_equals_numpy(method: str, tmp_path: Path) -> None:
    a, b = spaces(800)
    fitter = {"ridge": fit_ridge, "procrustes": fit_procrustes, "mlp": fit_mlp}[method]
    projector = fitter(a, b, "a", "b", OPTIONS)
    gate, _ = fit_gate(projector, a, b, lam=10.0)
    projector.save(tmp_path / "p.npz")
    loaded = Projector.load(tmp_path / "p.npz")
    path = tmp_path / "p.onnx"
    path.write_bytes(to_onnx(loaded, gate).SerializeToString())
    engine = OnnxProjector(path)
    x = np.random.default_rng(9).standard_normal((300, D_IN)).astype(np.float32) * 3
    out = engine.run(x)
    assert np.abs(out["y"] - projector(x)).max() <= 1e-5
    assert np.abs(out["norm"] - np.linalg.norm(projector.raw(x), axis=1)).max() <= 1e-4
    assert np.abs(out["agreement"] - gate.agreement(projector, x)).max() <= 1e-5
    one = engine.run(x[:1])  # the single-vector path (IO binding) gives the same
    assert np.abs(one["y"] - projector(x[:1])).max() <= 1e-5
    assert one["agreement"].shape == (1,)


def off_manifold(n: int, spread: float, seed: int):
    """Pairs whose sources live near a 12-d subspace (spread small) or all around it."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(np.random.default_rng(7).standard_normal((D_IN, D_IN)))[0]
    a = (rng.standard_normal((n, D_IN)) * np.where(np.arange(D_IN) < 12, 1.0, spread)) @ basis.T
    b = np.tanh(2 * a @ MIX) + 0.3 * rng.standard_normal((n, D_OUT))
    return normalise(a), normalise(b)


def test_gate_predicts_which_projections_are_faithful() -> None:
    a, b = off_manifold(2000, 0.05, 1)
    projector = fit_ridge(a, b, "a", "b", OPTIONS)
    gate, facts = fit_gate(projector, a, b, lam=projector.params["lambda"])
    assert facts["pairs"] == 400 and len(gate.folds) == 4
    # Held-out queries of two kinds: like the fitting data, and off its subspace.
    near_a, near_b = off_manifold(400, 0.05, 3)
    far_a, far_b = off_manifold(400, 1.0, 4)
    x, y = np.concatenate([near_a, far_a]), np.concatenate([near_b, far_b])
    report = calibrate(gate, projector, x, y, combined_coef=facts["combined_coef"])
    assert report["auc_top1"] > 0.7  # it ranks good projections above bad ones
    # The collection margin lifts the agreement (calibrated on near queries only, the two
    # together weigh the agreement more than the far ones here would want: not above the
    # margin alone on this mix).
    assert report["auc_combined"] > report["auc_top1"] + 0.05
    combined = [row["proxy_share"] for row in report["combined_thresholds"]]
    assert combined == sorted(combined)
    assert gate.agreement(projector, far_a).mean() < 0.5 < gate.agreement(projector, near_a).mean()
    shares = [row["proxy_share"] for row in report["thresholds"]]
    assert shares == sorted(shares)  # a stricter gate sends more to the proxy
    at = {row["gate"]: row for row in report["thresholds"]}
    assert at[0.7]["accepted_top1"] > report["top1"]  # what passes is better than average
    assert at[0.7]["combined_top1"] > report["top1"]
