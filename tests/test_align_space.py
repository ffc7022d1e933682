"""The learned shared hub space (space.py): built from founders, fixed for later joiners."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aether_box.align.fidelity import retrieval
from aether_box.align.fit import fit_ridge
from aether_box.align.space import SharedSpace, build_space
from aether_box.errors import BadRequest, NotFound


def _models(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Three "models" seeing the same 48 latent factors of n texts through their own
    random maps and noise, at widths 96, 80 and 64 (the last sees only 40 of them)."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n, 48))
    maps = {"a": (48, 96), "b": (48, 80), "c": (40, 64)}
    out = {}
    for i, (name, (k, d)) in enumerate(maps.items()):
        w = np.random.default_rng(100 + i).standard_normal((k, d))
        out[name] = (latent[:, :k] @ w + 0.3 * rng.standard_normal((n, d))).astype(np.float32)
    return out


def _top1(pred: np.ndarray, native: np.ndarray) -> float:
    return float(retrieval(pred, native)["top1"])


def test_composing_through_the_shared_space_matches_direct_maps() -> None:
    train, test = _models(600), _models(200, seed=1)
    keys = {m: f"{m}-key" for m in train}
    space = build_space(train, keys, dim=128)
    assert space.dim == 128 and space.founders == ["a", "b", "c"]
    hub = space.transform(train)
    assert np.allclose(np.linalg.norm(hub, axis=1), 1, atol=1e-5)
    into = {m: fit_ridge(train[m], hub, m, "shared") for m in train}
    out = {m: fit_ridge(hub, train[m], "shared", m) for m in train}
    for a in train:
        for b in train:
            if a == b:
                continue
            direct = _top1(fit_ridge(train[a], train[b], a, b)(test[a]), test[b])
            composed = _top1(out[b](into[a](test[a])), test[b])
            # The floor: within 2 points of the direct projector, on every pair.
            assert composed >= direct - 0.02, (a, b, direct, composed)
            assert composed > 0.5


def test_a_later_model_joins_the_fixed_space_by_its_two_maps(tmp_path: Path) -> None:
    train, test = _models(600), _models(200, seed=1)
    founders = {m: train[m] for m in ("a", "b")}
    space = build_space(founders, {"a": "ka", "b": "kb"}, dim=96)
    space.save(tmp_path / "shared.npz")
    again = SharedSpace.load(tmp_path / "shared.npz")
    assert again.digest == space.digest and again.founders == ["a", "b"]
    hub = again.transform(founders)
    # "c" was not a founder: it fits into and out of the stored space, nothing else changes.
    into_c = fit_ridge(train["c"], hub, "c", "shared")
    out_a = fit_ridge(hub, train["a"], "shared", "a")
    assert _top1(out_a(into_c(test["c"])), test["a"]) > 0.5
    assert space.transform(founders).tobytes() == hub.tobytes()


def test_a_space_needs_two_founders_of_the_same_texts(tmp_path: Path) -> None:
    data = _models(50)
    with pytest.raises(BadRequest, match="at least two"):
        build_space({"a": data["a"]}, {"a": "k"})
    with pytest.raises(BadRequest, match="same texts"):
        build_space({"a": data["a"], "b": data["b"][:40]}, {"a": "k", "b": "k"})
    space = build_space({"a": data["a"], "b": data["b"]}, {"a": "k", "b": "k"})
    assert space.dim == 49  # capped by the texts: 50 centred rows span 49 directions
    with pytest.raises(BadRequest, match=r"\['b'\]"):
        space.transform({"a": data["a"]})
    with pytest.raises(NotFound, match="align hub --models"):
        SharedSpace.load(tmp_path / "missing.npz")
