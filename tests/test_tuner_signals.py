"""Signals the tuner answers with a proposal: a model slowed on purpose, and a model whose
answers' per-token NLL spikes. The box runs as its own process, so it can be slowed."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fixtures_box import BoxProcess, wait_for

TOPICS = ["lighthouses", "bread", "trains", "markets", "libraries", "rivers"]


def complete(client: Any, topic: str, **sampling: Any) -> dict[str, Any]:
    ask = [{"role": "user", "content": f"Write a short paragraph about {topic}."}]
    body = {"op": "chat", "model": "smollm2", "messages": ask, "max_tokens": 16,
            "temperature": 0.0, **sampling}  # fmt: skip
    return client.request("llm", body, timeout=600)


def readings(client: Any, kind: str) -> list[dict[str, Any]]:
    signals = client.request("tuner", {"op": "status"})["signals"]
    return [s for s in signals if s["kind"] == kind]


def proposals(client: Any) -> dict[str, dict[str, Any]]:
    found = client.request("tuner", {"op": "log", "action": "heavy"})["decisions"]
    return {d["subject"]: d for d in found if d["state"] == "proposed"}


@pytest.mark.timeout(900)  # 8 short answers: seconds on a quiet machine, minutes on a busy one
def test_a_slowdown_and_an_nll_spike_raise_alerts_and_proposals(data_dir: Path, models_dir: Path):
    box = BoxProcess(
        data_dir,
        "--set", f"models.dir={models_dir}",
        "--set", "monitor.observe_s=0.1",
        "--set", "monitor.alert_speed_after=4",
        "--set", "monitor.nll_after=5",
        "--set", "tuner.check_s=0.1",
    )  # fmt: skip
    try:
        with box.client(timeout=600) as client:
            seen = 0
            usual_replies = []
            for topic in TOPICS:  # the usual: one reading of speed and NLL per answer
                reply = complete(client, topic)
                usual_replies.append(reply)
                assert reply["usage"]["completion_tokens"] >= 16, "speed needs 16 tokens"
                seen += 1
                wait_for(
                    lambda n=seen: any(
                        r["figures"]["answers"] >= n for r in readings(client, "nll")
                    ),
                    30,
                    "the observer's look at the answer",
                )
            nll = readings(client, "nll")[0]
            assert not nll["triggered"] and nll["figures"]["limit"] is not None
            usual = nll["figures"]["median"]
            assert 0 < usual < 3, "greedy answers are the model's likely tokens"

            # A deliberate slowdown: the box is stopped 90% of the time while it answers (a
            # margin that the noise of a shared machine's readings does not cross).
            stop = threading.Event()

            def throttle() -> None:
                while not stop.is_set():
                    os.kill(box.process.pid, signal.SIGSTOP)
                    time.sleep(0.5)
                    os.kill(box.process.pid, signal.SIGCONT)
                    time.sleep(0.05)

            thread = threading.Thread(target=throttle, daemon=True)
            thread.start()
            try:
                slowed = complete(client, "painting")
            finally:
                stop.set()
                thread.join()
                os.kill(box.process.pid, signal.SIGCONT)
            speeds = [r["tokens_per_s"] for r in usual_replies]
            assert slowed["tokens_per_s"] < 0.5 * sorted(speeds)[len(speeds) // 2], (
                f"the throttle did not slow the answer enough: {slowed['tokens_per_s']} "
                f"against {speeds}"
            )
            wait_for(lambda: "speed:smollm2" in proposals(client), 30, "the slowdown proposal")
            alerts = client.status()["alerts"]
            assert any(a["kind"] == "slow" and a["subject"] == "smollm2" for a in alerts)
            advice = proposals(client)["speed:smollm2"]
            assert advice["signal"]["figures"]["tokens_per_s"] == slowed["tokens_per_s"]
            assert "engines.parallel" in advice["params"]["advice"]

            # Text the model finds unlikely (sampled at temperature 2, no truncation) spikes.
            hot = complete(client, "libraries", temperature=2.0, top_k=0, top_p=1.0,
                           min_p=0.0, seed=1)  # fmt: skip
            assert hot["usage"]["completion_tokens"] >= 8
            wait_for(lambda: "model:smollm2" in proposals(client), 30, "the NLL proposal")
            spike = proposals(client)["model:smollm2"]["signal"]["figures"]
            assert spike["nll"] > spike["limit"] > usual
            assert any(a["kind"] == "nll" for a in client.status()["alerts"])
            # A heavy proposal is advice: the box refuses to apply it by itself.
            ident = proposals(client)["model:smollm2"]["id"]
            reply = client.request("tuner", {"op": "dismiss", "id": ident})
            assert reply["state"] == "dismissed"
            sched = client.status()["models"]["loaded"][0]["scheduler"]
            assert sched["nll_overhead_percent"] is not None
            assert sched["nll_overhead_percent"] < 1.0, sched
    finally:
        box.stop()
