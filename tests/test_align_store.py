"""The projector store's swap: a refit replaces the served dir whole, and recovery after a
kill at any step of the swap leaves one whole projector (real files, real fits in numpy).

The vectors are the built-in glosses embedded by MiniLM through the ONNX encoder, so the
projectors are real ones, fitted MiniLM -> MiniLM-int8 (two spaces of one model family).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from aether_box.align.corpus import load_set
from aether_box.align.fit import ridge_with
from aether_box.align.gate import fit_gate
from aether_box.align.store import ProjectorStore
from aether_box.engines.onnx import OnnxEncoder


@pytest.fixture(scope="module")
def vectors(models_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    texts = load_set("glosses")[:100]
    plain = OnnxEncoder.load(models_dir / "minilm", device="cpu", threads=1)
    small = OnnxEncoder.load(models_dir / "minilm", device="cpu", threads=1, int8=True)
    return plain.embed(texts), small.embed(texts)


def _save(store: ProjectorStore, x: np.ndarray, y: np.ndarray, tag: str) -> Path:
    projector = ridge_with(x, y, "a", "b", 1.0)
    gate, _ = fit_gate(projector, x, y, 1.0)
    return store.save({"ridge": projector}, gate, {"best": "ridge", "name": "a->b", "tag": tag})


def _tag(store: ProjectorStore) -> str:
    return json.loads((store.root / "a__b" / "report.json").read_text())["tag"]


def test_a_refit_replaces_the_pair_dir_whole_and_keeps_its_history(tmp_path, vectors):
    x, y = vectors
    store = ProjectorStore(tmp_path)
    _save(store, x[:60], y[:60], "first")
    (store.root / "a__b" / "history" / "v1").mkdir(parents=True)
    _save(store, x[60:], y[60:], "second")
    assert _tag(store) == "second"
    assert (store.root / "a__b" / "history" / "v1").is_dir()  # the history moved along
    assert [p.name for p in store.root.iterdir()] == ["a__b"]  # no leftovers
    assert store.projector("a", "b", "ridge").din == x.shape[1]


def test_recovery_after_a_kill_between_the_renames_serves_the_old_one(tmp_path, vectors):
    x, y = vectors
    store = ProjectorStore(tmp_path)
    _save(store, x[:60], y[:60], "old")
    # The state a kill leaves after the first rename of the swap: the old dir moved aside,
    # the new one complete beside it, nothing served.
    os.replace(store.root / "a__b", store.root / ".a__b.old-1234")
    store.root.joinpath(".a__b.new-1234").mkdir()
    assert store.reports() == []
    done = store.recover()
    assert _tag(store) == "old" and len(done) == 2
    assert [p.name for p in store.root.iterdir()] == ["a__b"]


def test_recovery_after_a_kill_mid_write_keeps_the_old_and_drops_the_new(tmp_path, vectors):
    x, y = vectors
    store = ProjectorStore(tmp_path)
    _save(store, x[:60], y[:60], "old")
    half = store.root / ".a__b.new-5678"
    half.mkdir()
    (half / "ridge.npz").write_bytes(b"half a file")
    assert [r["tag"] for r in store.reports()] == ["old"]  # the half-written dir is not listed
    store.recover()
    assert _tag(store) == "old"
    assert [p.name for p in store.root.iterdir()] == ["a__b"]


def test_recovery_after_the_swap_keeps_the_new_one_and_the_old_history(tmp_path, vectors):
    x, y = vectors
    store = ProjectorStore(tmp_path)
    _save(store, x[:60], y[:60], "new")
    old = store.root / ".a__b.old-9abc"
    (old / "history" / "v0").mkdir(parents=True)
    store.recover()
    assert _tag(store) == "new"
    assert (store.root / "a__b" / "history" / "v0").is_dir()
    assert [p.name for p in store.root.iterdir()] == ["a__b"]


def test_the_coherence_report_judges_both_legs_of_a_joined_model(tmp_path, vectors):
    from aether_box.align.coherence import coherence
    from aether_box.align.pairs import PairSet

    x, y = vectors
    store = ProjectorStore(tmp_path)
    texts = [f"t{i}" for i in range(len(x))]
    for source, target, a, b in (("a", "hub", x, y), ("hub", "a", y, x)):
        projector = ridge_with(a[:80], b[:80], source, target, 1.0)
        gate, _ = fit_gate(projector, a[:80], b[:80], 1.0)
        held = PairSet(source, target, texts[80:], a[80:], b[80:])
        report = {"best": "ridge", "name": f"{source}->{target}", "source": source,
                  "target": target, "methods": {"ridge": {}}}  # fmt: skip
        store.save({"ridge": projector}, gate, report, {"in_domain": held})
    found = coherence(store, "hub", 0.8)
    assert found["models"] == ["hub", "a"]
    rows = {(r["from"], r["to"]): r for r in found["pairs"]}
    assert set(rows) == {("a", "hub"), ("hub", "a")}
    assert rows[("a", "hub")]["in"]["n"] == len(x) - 80
    assert rows[("a", "hub")]["in"]["top1"] > 0.5  # the int8 copy is nearly the same space


def test_a_vector_made_with_another_recipe_is_refused():
    from aether_box.align.recipes import Recipe, check_recipe
    from aether_box.errors import RecipeMismatch

    made = Recipe("smollm2", "abc", 'say "{text}"', "last")
    report = {"name": "smollm2->minilm", "source": "smollm2",
              "recipes": {"source": made.as_dict()}}  # fmt: skip
    check_recipe(made.id, report)
    check_recipe({"prompt": 'say "{text}"', "pooling": "last"}, report)
    check_recipe(None, report)  # unstated: the caller vouches for it
    with pytest.raises(RecipeMismatch, match="last"):
        check_recipe("plain", report)
    with pytest.raises(RecipeMismatch):
        check_recipe({"pooling": "last"}, report)  # the prompt is missing
    old = {"name": "smollm2->minilm", "source": "smollm2"}  # fitted before recipes
    check_recipe("plain", old)
    with pytest.raises(RecipeMismatch):
        check_recipe(made.id, old)
