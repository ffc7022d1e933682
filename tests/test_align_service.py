"""The `align` service end to end: real SmolLM2 and MiniLM, a real box, a real fit."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fixtures_align import ALIGN_OVERRIDES, FIT_TEXTS, TEST_PAIRS, FittedBox
from fixtures_box import BoxInThread

from aether_box.align.corpus import load_set
from aether_box.align.service import AlignComponent
from aether_box.cli import cli
from aether_box.errors import BadRequest, NotFound, RecipeMismatch
from aether_box.models.manifest import Manifest
from aether_box.monitor.metrics import StatusCollector

NAME = "smollm2->minilm"


def _recipe(model: str) -> dict[str, str]:
    """The `embed` options of `model`'s alignment recipe (the models manifest's)."""
    spec = Manifest.load().models[model]
    options = {"prompt": spec.embed_prompt, "pooling": spec.embed_pooling}
    return {k: v for k, v in options.items() if v is not None}


def _embed(client, model: str, texts: list[str]) -> np.ndarray:
    body = {"op": "embed", "model": model, "texts": texts, **_recipe(model)}
    return client.request("embed", body)["vectors"]


def test_fit_reports_every_method_on_held_out_pairs(fitted_box: FittedBox) -> None:
    report = fitted_box.report
    assert report["name"] == NAME and report["dims"] == [576, 384]
    assert report["pairs"]["fit"] == FIT_TEXTS - TEST_PAIRS
    assert report["pairs"]["in_domain"] == TEST_PAIRS
    chance = 1 / TEST_PAIRS
    for method in ("ridge", "procrustes", "mlp"):
        held = report["methods"][method]["in_domain"]
        assert held["n"] == TEST_PAIRS
        assert held["chance_top1"] == pytest.approx(chance)
        assert held["unprojected"] is None  # 576 vs 384 dimensions: no baseline
        assert 1 <= held["mean_rank"] <= TEST_PAIRS
        assert held["recall_at_10"] >= held["top1"]
        # The served ONNX graph computes what numpy computes.
        assert report["methods"][method]["onnx_max_abs_diff"] <= 1e-5
    ridge = report["methods"]["ridge"]["in_domain"]
    # Fitted on 160 pairs only, ridge must still find most texts among 40 (chance: 0.025).
    assert ridge["top1"] >= 0.4
    assert ridge["mean_rank"] < 5
    best = report["best"]
    assert all(
        report["methods"][best]["in_domain"]["top1"] >= r["in_domain"]["top1"]
        for r in report["methods"].values()
    )
    stages = {p["stage"] for p in fitted_box.partials}
    assert stages == {"embed", "fit"}


def test_projection_lands_next_to_the_native_vector(fitted_box: FittedBox) -> None:
    held_out = load_set("glosses")[FIT_TEXTS : FIT_TEXTS + TEST_PAIRS]  # never fitted on
    with fitted_box.box.client(timeout=120) as client:
        a = _embed(client, "smollm2", held_out)
        b = _embed(client, "minilm", held_out)
        reply = client.request(
            "align", {"op": "project", "from": "smollm2", "to": "minilm", "vectors": a}
        )
    y = reply["vectors"]
    assert y.shape == (len(held_out), 384) and y.dtype == np.float32
    assert np.allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-5)
    # Each projection's nearest native MiniLM vector is mostly its own text's.
    nearest = np.argmax(y @ b.T, axis=1)
    assert np.mean(nearest == np.arange(len(held_out))) >= 0.4
    agreement, accepted = reply["agreement"], reply["accepted"]
    assert agreement.shape == (len(held_out),)
    assert np.all((agreement >= 0) & (agreement <= 1))
    assert np.array_equal(accepted, agreement >= reply["gate"])


def test_single_vector_and_gate_override(fitted_box: FittedBox) -> None:
    with fitted_box.box.client(timeout=120) as client:
        a = _embed(client, "smollm2", ["a small domesticated carnivorous mammal"])[0]
        low = client.request(
            "align", {"op": "project", "from": "smollm2", "to": "minilm", "vector": a, "gate": 0.0}
        )
        high = client.request(
            "align", {"op": "project", "from": "smollm2", "to": "minilm", "vector": a, "gate": 1.0}
        )
    assert low["vector"].shape == (384,)
    assert isinstance(low["agreement"], float)
    assert low["accepted"] is True and low["gate"] == 0.0
    assert high["accepted"] is (high["agreement"] >= 1.0)
    assert np.allclose(low["vector"], high["vector"])


def test_status_counts_projections_per_projector(fitted_box: FittedBox) -> None:
    with fitted_box.box.client(timeout=60) as client:
        before = client.status()["align"]["projectors"].get(NAME, {}).get("projections", 0)
        vectors = np.random.default_rng(0).standard_normal((5, 576)).astype(np.float32)
        reply = client.request(
            "align", {"op": "project", "from": "smollm2", "to": "minilm", "vectors": vectors}
        )
        section = client.status()["align"]
    counters = section["projectors"][NAME]
    assert counters["projections"] == before + 5
    assert counters["accepted"] + counters["proxied"] == counters["projections"]
    assert 0 <= counters["agreement_mean"] <= 1
    assert section["gate"] == 0.8
    assert counters["method"] == fitted_box.report["best"]
    assert reply["projector"] == NAME


def test_list_and_fidelity(fitted_box: FittedBox) -> None:
    with fitted_box.box.client(timeout=60) as client:
        listed = client.request("align", {"op": "list"})
        report = client.request("align", {"op": "fidelity", "from": "smollm2", "to": "minilm"})
    (only,) = listed["projectors"]
    assert only["name"] == NAME and only["method"] == fitted_box.report["best"]
    assert set(only["methods"]) == {"ridge", "procrustes", "mlp"}
    assert report["best"] == fitted_box.report["best"]
    assert report["gate"]["threshold"] == 0.8


def test_pairs_again_come_from_the_cache(fitted_box: FittedBox) -> None:
    with fitted_box.box.client(timeout=120) as client:
        replies = list(
            client.stream(
                "align",
                {"op": "pairs", "from": "smollm2", "to": "minilm", "texts": fitted_box.texts[:50]},
            )
        )
    final = replies[-1]
    # The fit embedded these texts as part of bigger sets; a new set is embedded once...
    assert final["n"] == 50
    with fitted_box.box.client(timeout=120) as client:
        again = client.request(
            "align",
            {"op": "pairs", "from": "smollm2", "to": "minilm", "texts": fitted_box.texts[:50]},
        )
    # ...and a rerun of the same set is served from the cache.
    assert again["cached"] is True and again["from_key"] == final["from_key"]


def test_bad_requests_say_what_to_do(fitted_box: FittedBox) -> None:
    with fitted_box.box.client(timeout=60) as client:
        with pytest.raises(NotFound, match="align fit --from minilm --to smollm2"):
            client.request(
                "align",
                {
                    "op": "project",
                    "from": "minilm",
                    "to": "smollm2",
                    "vector": np.zeros(384, np.float32),
                },
            )
        with pytest.raises(BadRequest, match="576"):
            client.request(
                "align",
                {
                    "op": "project",
                    "from": "smollm2",
                    "to": "minilm",
                    "vector": np.zeros(100, np.float32),
                },
            )
        with pytest.raises(BadRequest, match="NaN"):
            client.request(
                "align",
                {
                    "op": "project",
                    "from": "smollm2",
                    "to": "minilm",
                    "vector": np.full(576, np.nan, np.float32),
                },
            )
        with pytest.raises(BadRequest, match="infinite"):  # a list too large for float32
            client.request(
                "align",
                {"op": "project", "from": "smollm2", "to": "minilm", "vector": [1e300] * 576},
            )
        with pytest.raises(BadRequest, match="gate"):
            client.request(
                "align",
                {
                    "op": "project",
                    "from": "smollm2",
                    "to": "minilm",
                    "vector": np.ones(576, np.float32),
                    "gate": 2,
                },
            )
        with pytest.raises(BadRequest, match="same model"):
            client.request("align", {"op": "fit", "from": "minilm", "to": "minilm"})
        with pytest.raises(NotFound, match="not installed"):
            client.request(
                "align", {"op": "pairs", "from": "no-such-model", "to": "minilm", "texts": ["x"]}
            )


def test_cli_lists_projectors_and_makes_pairs_from_a_file(
    fitted_box: FittedBox, tmp_path: Path
) -> None:
    data_dir = str(fitted_box.box.data_dir)
    runner = CliRunner(env={"COLUMNS": "200"})  # rich fits its tables to the terminal
    listed = runner.invoke(cli, ["--data-dir", data_dir, "align", "list"])
    assert listed.exit_code == 0, listed.output
    assert "smollm2->minilm" in listed.output and fitted_box.report["best"] in listed.output
    corpus = tmp_path / "texts.txt"
    corpus.write_text("\n".join(fitted_box.texts[:50]) + "\n\n")  # blank lines are skipped
    made = runner.invoke(
        cli,
        [
            "--data-dir",
            data_dir,
            "align",
            "pairs",
            "--from",
            "smollm2",
            "--to",
            "minilm",
            "--corpus",
            str(corpus),
        ],
    )
    assert made.exit_code == 0, made.output
    assert "50 pairs smollm2 -> minilm" in made.output
    # Off a terminal (CliRunner's output, as a pipe or a log) the progress is separate lines,
    # the last one complete, as it goes; rich showed nothing there until the end.
    for model in ("smollm2", "minilm"):
        start = f"embedding with {model}: "
        shown = [line for line in made.output.splitlines() if line.startswith(start)]
        assert shown and shown[-1].endswith(" (100%)"), made.output
    missing = runner.invoke(
        cli, ["--data-dir", data_dir, "align", "fit", "--from", "minilm", "--to", "minilm"]
    )
    assert missing.exit_code == 1 and "same model" in missing.output


def test_memory_search_from_another_model_says_which_path(fitted_box: FittedBox) -> None:
    align = fitted_box.box.box.get(AlignComponent).service
    texts = load_set("glosses")[FIT_TEXTS + TEST_PAIRS : FIT_TEXTS + TEST_PAIRS + 30]
    query = texts[3]
    with fitted_box.box.client(timeout=300) as client:
        client.request("memory", {"op": "create", "collection": "notes", "model": "minilm"})
        client.request("memory", {"op": "add", "collection": "notes", "texts": texts})
        vector = _embed(client, "smollm2", [query])[0]
        plain = client.request("embed", {"op": "embed", "model": "smollm2", "texts": [query]})
        body = {
            "op": "search",
            "collection": "notes",
            "vector": plain["vectors"][0],
            "k": 3,
            "query_model": "smollm2",
            "text": query,
        }
        # A plain `embed` vector (mean pooling, no prompt) is not what the projector takes:
        # refused, naming the recipe to use, rather than projected or silently proxied.
        with pytest.raises(RecipeMismatch, match='"pooling": "last"'):
            client.request("memory", body)
        body |= {"vector": vector, "query_recipe": _recipe("smollm2")}
        try:
            align.settings.gate = 0.0  # every projection passes
            through = client.request("memory", body)
            align.settings.gate = 1.0  # none does: the box re-embeds the text with minilm
            proxied = client.request("memory", body)
            # Hybrid scores are fused ranks, no margin: the agreement alone decides there.
            hybrid = client.request("memory", {**body, "hybrid": True})
        finally:
            align.settings.gate = 0.8
        status = client.status()
        section = status["align"]["projectors"]["smollm2->minilm"]
        cross = status["memory"]["cross_model"]
    assert through["path"] == "projector" and through["alignment"]["accepted"] is True
    # The combined gate judged the projection on the search's own two nearest records.
    first, second = through["results"][:2]
    assert through["alignment"]["margin"] == pytest.approx(first["score"] - second["score"], 1e-3)
    assert 0.0 < through["alignment"]["combined"] < 1.0
    assert proxied["path"] == "proxy" and proxied["alignment"]["accepted"] is False
    assert proxied["results"][0]["text"] == query  # the native query finds its own text
    assert hybrid["path"] == "proxy" and "combined" not in hybrid["alignment"]
    assert query in [hit["text"] for hit in through["results"]]
    assert section["proxied"] >= 1 and section["accepted"] >= 1
    assert cross["projector"] >= 1 and cross["proxy"] >= 1 and cross["refused"] >= 1


def test_fit_from_a_collection_reuses_its_vectors(fitted_box: FittedBox) -> None:
    # Runs last: it replaces the module's projector with one fitted on the collection.
    with fitted_box.box.client(timeout=600) as client:
        replies = list(
            client.stream(
                "align",
                {
                    "op": "fit",
                    "from": "smollm2",
                    "to": "minilm",
                    "collection": "notes",
                    "methods": ["ridge"],
                },
                timeout=600,
            )
        )
    report = replies[-1]
    embedded = {p["model"] for p in replies[:-1] if p.get("stage") == "embed"}
    assert embedded == {"smollm2"}  # minilm vectors came from the collection itself
    assert report["pairs"]["corpus"] == "collection:notes"
    assert report["pairs"]["fit"] + report["pairs"]["in_domain"] == 30
    assert report["best"] == "ridge" and set(report["methods"]) == {"ridge"}


def test_projectors_record_both_recipes_and_refuse_another(fitted_box: FittedBox) -> None:
    recipes = fitted_box.report["recipes"]
    assert recipes["source"]["pooling"] == "last" and "{text}" in recipes["source"]["prompt"]
    assert recipes["target"]["pooling"] == "mean" and recipes["target"]["prompt"] is None
    with fitted_box.box.client(timeout=120) as client:
        texts = fitted_box.texts[-3:]
        made = _embed(client, "smollm2", texts)
        plain = client.request("embed", {"op": "embed", "model": "smollm2", "texts": texts})
        assert not np.allclose(made, plain["vectors"])  # the recipe changes the vector
        body = {"op": "project", "from": "smollm2", "to": "minilm", "vector": made[0]}
        ok = client.request("align", {**body, "recipe": recipes["source"]["id"]})
        assert ok["recipe"] == recipes["source"]["id"] and ok["vector"].shape == (384,)
        assert client.request("align", {**body, "recipe": _recipe("smollm2")})["vector"].shape
        with pytest.raises(RecipeMismatch, match="pooling"):
            client.request("align", {**body, "recipe": {"pooling": "mean"}})
        with pytest.raises(RecipeMismatch, match="smollm2"):
            client.request("align", {**body, "recipe": "smollm2:mean:000000000000"})


def test_collections_with_the_alignment_recipe_embed_and_project_that_way(
    fitted_box: FittedBox,
) -> None:
    texts = fitted_box.texts[-2:]
    with fitted_box.box.client(timeout=300) as client:
        body = {"op": "create", "collection": "smol", "model": "smollm2", "recipe": "align"}
        made = client.request("memory", body)["collection"]
        assert made["recipe"] == {"prompt": _recipe("smollm2")["prompt"], "pooling": "last"}
        ids = client.request("memory", {"op": "add", "collection": "smol", "texts": texts})["ids"]
        stored = client.request(
            "memory", {"op": "get", "collection": "smol", "ids": ids, "include_vectors": True}
        )["vectors"]
        assert np.allclose(stored, _embed(client, "smollm2", texts), atol=1e-5)
        # The projector's target (minilm, plain) is not this collection's kind of vector.
        project = {
            "op": "project",
            "from": "smollm2",
            "to": "minilm",
            "vector": stored[0],
            "collection": "smol",
        }
        with pytest.raises(RecipeMismatch, match="collection 'smol'"):
            client.request("align", {**project, "target_recipe": made["recipe"]})
        plain = {"prompt": None, "pooling": "mean"}
        assert client.request("align", {**project, "target_recipe": plain})["vector"].shape


def test_embed_options_are_checked(fitted_box: FittedBox) -> None:
    with fitted_box.box.client(timeout=60) as client:
        base = {"op": "embed", "texts": ["a cat"]}
        with pytest.raises(BadRequest, match="layer"):
            client.request("embed", {**base, "model": "smollm2", "pooling": "layer:3"})
        with pytest.raises(BadRequest, match="{text}"):
            client.request("embed", {**base, "model": "smollm2", "prompt": "no slot"})
        with pytest.raises(BadRequest, match="ONNX encoder"):
            client.request("embed", {**base, "model": "minilm", "pooling": "last"})


def test_the_coherence_report_covers_the_pairs_through_the_hub(fitted_box: FittedBox) -> None:
    with fitted_box.box.client(timeout=600) as client:
        # minilm -> smollm2 on the same texts: every vector is cached, only the fit runs.
        body = {"op": "fit", "from": "minilm", "to": "smollm2", "texts": fitted_box.texts}
        list(client.stream("align", body, timeout=600))
        report = client.request("align", {"op": "report"}, timeout=120)
        status = client.status()
        # The served projector's own held-out figures (an earlier test in this module may
        # have refitted it on other texts): the report reads the same stored legs.
        served = {p["name"]: p for p in client.request("align", {"op": "list"})["projectors"]}
    assert report["hub"] == "minilm" and report["models"] == ["minilm", "smollm2"]
    rows = {(r["from"], r["to"]): r for r in report["pairs"]}
    assert set(rows) == {("minilm", "smollm2"), ("smollm2", "minilm")}
    forward = rows[("smollm2", "minilm")]["in"]
    held = served["smollm2->minilm"]["in_domain"]
    assert forward["n"] == held["n"] and forward["top1"] == pytest.approx(held["top1"], abs=1e-4)
    assert 0 <= forward["proxy_share"] <= 1 and forward["margin_auc"] is not None
    assert status["align"]["coherence"]["smollm2->minilm"]["in"] == forward["top1"]
    # /metrics reads the same: each route's top-1 per held-out set and its gate's AUC.
    families = {f.name: f for f in StatusCollector(lambda: status).collect()}
    top1 = {
        (s.labels["route"], s.labels["set"]): s.value
        for s in families["aether_box_align_route_top1"].samples
    }
    assert top1[("smollm2->minilm", "in")] == forward["top1"]
    auc = {s.labels["route"]: s.value for s in families["aether_box_align_route_gate_auc"].samples}
    assert auc.get("smollm2->minilm") == status["align"]["coherence"]["smollm2->minilm"].get(
        "gate_auc"
    )


# The module's fit (the fixture, minutes of SmolLM2 on busy cores) counts when this runs alone.
@pytest.mark.timeout(900)
def test_a_learned_shared_hub_serves_pairs_through_it(
    fitted_box: FittedBox, models_dir: Path, tmp_path: Path
) -> None:
    # A second box whose hub is the learned space, on the first box's cached vectors: only
    # the space and the fits are computed, nothing is embedded but two query texts.
    shutil.copytree(fitted_box.box.data_dir / "align" / "vectors", tmp_path / "align" / "vectors")
    overrides = {**ALIGN_OVERRIDES, "hub": "shared", "methods": ["ridge", "procrustes"]}
    running = BoxInThread(tmp_path, {"models": {"dir": str(models_dir)}, "align": overrides})
    texts = fitted_box.texts
    routes: dict[tuple[str, str], dict] = {}
    try:
        with running.client(timeout=600) as client:
            fit = {"op": "fit", "from": "smollm2", "to": "shared", "texts": texts}
            with pytest.raises(NotFound, match="align hub --models"):
                client.request("align", fit, timeout=600)
            body = {"op": "hub", "models": ["smollm2", "minilm"], "texts": texts}
            built = client.request("align", body, timeout=600)
            # 160 fit texts span at most 159 directions, fewer than [align] hub_dim's 512.
            assert built["dim"] == FIT_TEXTS - TEST_PAIRS - 1 and built["served"]
            for a, b in (
                ("smollm2", "shared"),
                ("shared", "smollm2"),
                ("minilm", "shared"),
                ("shared", "minilm"),
                ("smollm2", "minilm"),  # a direct one, the yardstick of the hub
            ):
                body = {"op": "fit", "from": a, "to": b, "texts": texts}
                replies = list(client.stream("align", body, timeout=600))
                assert not any(
                    r.get("stage") == "embed" and r["done"] < r["total"] for r in replies
                )
                routes[(a, b)] = replies[-1]["routes"]
            report = client.request("align", {"op": "report"}, timeout=120)
            query = "a small boat with oars, used for fishing on a lake"  # in no fit
            vector = _embed(client, "minilm", [query])[0]
            reply = client.request(
                "align", {"op": "project", "from": "minilm", "to": "smollm2", "vector": vector}
            )
            native = _embed(client, "smollm2", [query])[0]
            # Rebuilt from other texts, the space moves: legs fitted on the old one are refused.
            rebuilt = {"op": "hub", "models": ["smollm2", "minilm"], "texts": texts, "dim": 32}
            assert client.request("align", rebuilt, timeout=600)["dim"] == 32
            with pytest.raises(RecipeMismatch, match="join it again"):
                client.request(
                    "align", {"op": "project", "from": "minilm", "to": "smollm2", "vector": vector}
                )
    finally:
        running.stop(timeout=30)
    assert report["hub"] == "shared" and report["models"] == ["shared", "minilm", "smollm2"]
    rows = {(r["from"], r["to"]): r for r in report["pairs"]}
    # Only model pairs: the space itself holds each model's own directions.
    assert set(rows) == {("minilm", "smollm2"), ("smollm2", "minilm")}
    forward = rows[("smollm2", "minilm")]
    assert forward["via"] == "shared" and forward["in"]["n"] == TEST_PAIRS
    # Through the space about as well as direct: 160 pairs, N = 40, one text is 0.025.
    assert forward["in"]["top1"] >= forward["in"]["direct_top1"] - 0.05
    assert forward["in"]["hub_gap"] == pytest.approx(
        forward["in"]["direct_top1"] - forward["in"]["top1"], abs=1e-3
    )
    assert forward["direct_gate_auc_pooled"] is not None
    # Each route's gate is calibrated when its second leg is fitted (routes.py) and serves
    # (how well it knows: test_align_routes.py and bench/align.py; 40 held-out texts with a
    # few misses are too few to say).
    assert routes[("smollm2", "shared")] == {} and routes[("smollm2", "minilm")] == {}
    assert set(routes[("shared", "minilm")]) == {"smollm2->shared->minilm"}
    assert (
        routes[("shared", "minilm")]["smollm2->shared->minilm"]["texts"] == len(texts) - TEST_PAIRS
    )
    assert forward["route_gate"] and forward["gate_auc_pooled"] is not None
    assert report["gate_auc_routes_pooled"] is not None
    assert reply["route_gate"] and 0 < reply["agreement"] < 1 and len(reply["combined_coef"]) == 3
    assert reply["projector"] == "minilm->shared->smollm2" and len(reply["vector"]) == 576
    assert float(np.dot(reply["vector"], native)) > 0.5
