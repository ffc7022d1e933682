"""The tuner's loop on a projector: a collection drifts, the tuner refits the projector from
the collection's texts, promotes it only by the rule, and a rollback restores the old one."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from fixtures_box import BoxInThread, wait_for

from aether_box.align.corpus import load_set
from aether_box.align.refit import judge

FIT_TEXTS = 120
ALIGN = {"mlp_epochs": 4, "mlp_hidden": 32, "test_pairs": 24, "max_pairs": 96,
         "embed_chunk": 60, "methods": ["ridge"]}  # fmt: skip
MONITOR = {"observe_s": 0.2, "drift_min_texts": 40}
# On 24 standard pairs one text is 4 points: allow two, or the test would hang on one text.
TUNER = {"check_s": 0.2, "refit_projector": "auto", "refit_max_loss": 0.09}


def test_a_drifting_collection_gets_a_refitted_projector_that_rolls_back(models_dir: Path):
    data_dir = Path(tempfile.mkdtemp(prefix="abx-"))
    config = {"models": {"dir": str(models_dir)}, "align": ALIGN, "monitor": MONITOR,
              "tuner": TUNER}  # fmt: skip
    box = BoxInThread(data_dir, config)
    glosses, docs = load_set("glosses"), load_set("docs")
    try:
        with box.client(timeout=600) as client:
            fit = {"op": "fit", "from": "smollm2", "to": "minilm", "texts": glosses[:FIT_TEXTS]}
            served = client.request("align", fit, timeout=600)
            client.request("memory", {"op": "create", "collection": "kb", "model": "minilm"})
            # The collection's own domain first (its drift reference), then a far one.
            home = glosses[FIT_TEXTS : FIT_TEXTS + 40]
            client.request("memory", {"op": "add", "collection": "kb", "texts": home})
            wait_for(lambda: _drift(client) is not None, 60, "the drift watch's first look")
            client.request("memory", {"op": "add", "collection": "kb", "texts": docs[:80]})

            def decided() -> dict | None:
                found = client.request("tuner", {"op": "log", "action": "refit_projector"})
                done = [d for d in found["decisions"] if d["state"] not in ("applying",)]
                return done[0] if done else None

            wait_for(lambda: decided() is not None, 600, "the tuner's refit")
            decision = decided()
            assert decision is not None
            assert (
                decision["signal"]["kind"] == "drift" and decision["subject"] == "smollm2->minilm"
            )
            assert decision["signal"]["figures"]["p_value"] <= 0.01
            after = decision["after"]
            promote, _ = judge(after["before"], after["after"], TUNER["refit_max_loss"])
            # The log's outcome is the rule's verdict on the logged figures.
            assert decision["state"] == ("applied" if promote else "rejected")
            assert promote, decision["outcome"]  # 80 docs the projector never saw: it gains
            assert after["after"]["new"]["top1"] > after["before"]["new"]["top1"]
            now = client.request("align", {"op": "fidelity", "from": "smollm2", "to": "minilm"})
            assert now["created"] != served["created"] and now["refit"]["verdict"].startswith(
                "promoted"
            )
            # Rolling back serves the projector fitted first, exactly.
            client.request("tuner", {"op": "rollback", "id": decision["id"]})
            back = client.request("align", {"op": "fidelity", "from": "smollm2", "to": "minilm"})
            assert back["created"] == served["created"]
            logged = client.request("tuner", {"op": "log"})["decisions"]
            assert next(d for d in logged if d["id"] == decision["id"])["state"] == "rolled_back"
    finally:
        box.stop(timeout=30)
        shutil.rmtree(data_dir, ignore_errors=True)


def _drift(client) -> dict | None:
    """The drift watch's reading of collection kb (it reads the reference at its first look)."""
    signals = client.request("tuner", {"op": "status"})["signals"]
    return next((s for s in signals if (s["kind"], s["subject"]) == ("drift", "kb")), None)


def test_the_promotion_rule():
    before = {"new": {"top1": 0.4, "recall_at_10": 0.8}, "standard": {"top1": 0.90}}
    better = {"new": {"top1": 0.7, "recall_at_10": 0.95}, "standard": {"top1": 0.895}}
    assert judge(before, better, 0.01)[0]
    worse_home = {**better, "standard": {"top1": 0.88}}
    promote, why = judge(before, worse_home, 0.01)
    assert not promote and "loses 2.0 points" in why
    no_recall = {**better, "new": {"top1": 0.7, "recall_at_10": 0.8}}
    assert not judge(before, no_recall, 0.01)[0]
    full = {"new": {"top1": 0.4, "recall_at_10": 1.0}, "standard": {"top1": 0.9}}
    assert judge(full, {**better, "new": {"top1": 0.5, "recall_at_10": 1.0}}, 0.01)[0]
