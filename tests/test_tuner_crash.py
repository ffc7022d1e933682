"""kill -9 while the tuner promotes a refitted projector: after a restart the tuner's log and
the served projector agree (the old one and an interrupted decision, or the new one and an
applied decision), and the log's SQLite file is sound."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import apsw
import pytest
from fixtures_box import BoxProcess, wait_for

from aether_box.align.corpus import load_set

FIT_TEXTS = 80
SETTINGS = {
    "align.max_pairs": 60, "align.test_pairs": 20, "align.embed_chunk": 40,
    "align.methods": '["ridge"]',
    "monitor.observe_s": 0.2, "monitor.drift_min_texts": 30,
    "tuner.check_s": 0.2, "tuner.refit_projector": '"auto"', "tuner.refit_max_loss": 0.1,
}  # fmt: skip


def _box(data_dir: Path, models_dir: Path) -> BoxProcess:
    sets = ["--set", f"models.dir={models_dir}"]
    for key, value in SETTINGS.items():
        sets += ["--set", f"{key}={value}"]
    return BoxProcess(data_dir, *sets)


def _kill_when_promoting(box: BoxProcess, pair: Path, timeout: float) -> None:
    """SIGKILL the box the moment the refit's candidate is whole (its report.json, written
    last): the tuner's promotion follows within milliseconds, so the kill lands just before
    it, inside it or just after it, polling without pause to land as early as it can."""
    wait_for(lambda: (pair / "candidates").is_dir(), timeout, "the refit's candidate")
    deadline = time.monotonic() + timeout
    while not any((pair / "candidates").glob("*/report.json")) and not (pair / "history").exists():
        assert box.process.poll() is None, "the box died before promoting"
        assert time.monotonic() < deadline, "no promotion within the timeout"
    box.process.send_signal(signal.SIGKILL)
    box.process.wait(10)


@pytest.mark.timeout(900)
def test_kill_9_while_promoting_leaves_log_and_projector_agreeing(data_dir: Path, models_dir: Path):
    glosses, docs = load_set("glosses"), load_set("docs")
    pair = data_dir / "align" / "projectors" / "smollm2__minilm"
    box = _box(data_dir, models_dir)
    try:
        with box.client(timeout=600) as client:
            fit = {"op": "fit", "from": "smollm2", "to": "minilm", "texts": glosses[:FIT_TEXTS]}
            first = client.request("align", fit, timeout=600)
            client.request("memory", {"op": "create", "collection": "kb", "model": "minilm"})
            home = glosses[FIT_TEXTS : FIT_TEXTS + 30]
            client.request("memory", {"op": "add", "collection": "kb", "texts": home})
            wait_for(
                lambda: any(
                    (s["kind"], s["subject"]) == ("drift", "kb")
                    for s in client.request("tuner", {"op": "status"})["signals"]
                ),
                60,
                "the drift watch's first look",
            )
            client.request("memory", {"op": "add", "collection": "kb", "texts": docs[:60]})
        _kill_when_promoting(box, pair, 600)
    finally:
        box.stop()

    conn = apsw.Connection(str(data_dir / "tuner.db"))
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
    restarted = _box(data_dir, models_dir)
    try:
        with restarted.client(timeout=60) as client:

            def settled() -> dict | None:
                found = client.request("tuner", {"op": "log", "action": "refit_projector"})
                (decision,) = found["decisions"]
                return decision if decision["state"] != "applying" else None

            wait_for(lambda: settled() is not None, 60, "the interrupted decision settled")
            decision = settled()
            assert decision is not None
            served = client.request("align", {"op": "fidelity", "from": "smollm2", "to": "minilm"})
            listed = client.request("align", {"op": "list"})["projectors"]
            assert [p["name"] for p in listed] == ["smollm2->minilm"]
            if decision["state"] == "applied":  # the new projector, whole
                assert served["created"] != first["created"]
                assert served["refit"]["verdict"].startswith("promoted")
                if "served_created" in decision["after"]:  # settled at the restart
                    assert decision["after"]["served_created"] == served["created"]
                else:  # the kill came after the log noted the promotion
                    assert decision["after"]["previous"]
            else:  # the old one, whole, and the log says nothing of it took effect
                assert decision["state"] == "failed" and "interrupted" in decision["outcome"]
                assert served["created"] == first["created"]
            projected = client.request(
                "align", {"op": "project", "from": "smollm2", "to": "minilm", "vector": [0.1] * 576}
            )
            assert len(projected["vector"]) == 384
            # The status counts the settled state once, like any other.
            counts = client.status()["tuner"]["counts"]["refit_projector"]
            assert counts.get(decision["state"]) == 1
    finally:
        restarted.stop()
