"""The NLL signal per model and adapter set: answers under a real LoRA adapter are judged
against that adapter's own usual figures, so a spike under it is its own, not the model's."""

from __future__ import annotations

import shutil
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from fixtures_adapters import write_random
from fixtures_box import BoxInThread
from fixtures_engines import wait_for
from prometheus_client.parser import text_string_to_metric_families

from aether_box.engines.registry import nll_key

TOPICS = ["lighthouses", "bread", "trains"]
ADAPTED = "smollm2+calm:0.5"


def test_the_key_is_the_model_and_its_adapter_set_in_name_order():
    assert nll_key("smollm2", None) == "smollm2"
    assert nll_key("smollm2", [{"name": "b"}, {"name": "a", "scale": 0.25}]) == (
        "smollm2+a:0.25+b:1"
    )


def answer(client: Any, topic: str, adapters: list[dict[str, Any]] | None, **sampling: Any) -> dict:
    ask = [{"role": "user", "content": f"Write a short paragraph about {topic}."}]
    body = {"op": "chat", "model": "smollm2", "messages": ask, "max_tokens": 12,
            "temperature": 0.0, **sampling}  # fmt: skip
    if adapters:
        body["adapters"] = adapters
    return client.request("llm", body, timeout=600)


def nll_readings(client: Any) -> dict[str, dict[str, Any]]:
    signals = client.request("tuner", {"op": "status"})["signals"]
    return {s["subject"]: s for s in signals if s["kind"] == "nll"}


@pytest.mark.timeout(900)  # 7 short answers and a one-prompt probe
def test_an_nll_spike_under_an_adapter_is_that_adapters(models_dir: Path, smollm2_path: Path):
    data_dir = Path(tempfile.mkdtemp(prefix="abx-nll-"))
    overrides = {
        "models": {"dir": str(models_dir)},
        "adapters": {"probe_prompts": 1},
        "engines": {"n_threads": 1},
        "monitor": {"observe_s": 0.1, "nll_after": 3},
        "tuner": {"check_s": 0.1},
    }
    box = BoxInThread(data_dir, overrides)
    try:
        path = write_random(data_dir / "calm.gguf", smollm2_path, seed=3)
        with box.client(timeout=600) as client:
            client.request("adapters", {"op": "add", "path": str(path), "base": "smollm2"})
            probed = client.request("adapters", {"op": "wait", "name": "calm"}, timeout=600)
            assert probed["verdict"] != "prune", probed
            calm = [{"name": "calm", "scale": 0.5}]
            # Usual answers with and without the adapter, each seen by the observer.
            for seen, topic in enumerate(TOPICS, 1):
                for key, adapters in (("smollm2", None), (ADAPTED, calm)):
                    assert answer(client, topic, adapters)["usage"]["completion_tokens"] >= 8
                    wait_for(
                        lambda k=key, n=seen: (
                            nll_readings(client).get(k, {}).get("figures", {}).get("answers") == n
                        ),
                        60,
                        f"the observer's look at {key}'s answer {seen}",
                    )
            readings = nll_readings(client)
            assert set(readings) == {"smollm2", ADAPTED}
            assert readings[ADAPTED]["figures"]["adapters"] == "calm:0.5"
            assert not any(r["triggered"] for r in readings.values())
            # Text the model finds unlikely (temperature 2, no truncation), under the adapter.
            hot = answer(client, "rivers", calm, temperature=2.0, top_k=0, top_p=1.0,
                         min_p=0.0, seed=1)  # fmt: skip
            assert hot["usage"]["completion_tokens"] >= 8

            def proposals() -> dict[str, dict[str, Any]]:
                found = client.request("tuner", {"op": "log", "action": "heavy"})["decisions"]
                return {d["subject"]: d for d in found if d["state"] == "proposed"}

            wait_for(lambda: f"model:{ADAPTED}" in proposals(), 60, "the adapter's proposal")
            spike = proposals()[f"model:{ADAPTED}"]
            assert spike["signal"]["figures"]["nll"] > spike["signal"]["figures"]["limit"]
            assert "under adapters calm:0.5" in spike["params"]["advice"]
            # The model alone is calm: its readings saw none of the adapter's answers.
            readings = nll_readings(client)
            assert not readings["smollm2"]["triggered"]
            assert readings["smollm2"]["figures"]["answers"] == len(TOPICS)
            assert "model:smollm2" not in proposals()
            alerts = [a for a in client.status()["alerts"] if a["kind"] == "nll"]
            assert [a["subject"] for a in alerts] == [ADAPTED]
            # Status and /metrics give each adapter set its own figure.
            (entry,) = [m for m in client.status()["models"]["loaded"] if m["role"] == "generate"]
            assert entry["nll"][ADAPTED]["answers"] == len(TOPICS) + 1
            url = client.status()["metrics"]["url"]
            with urllib.request.urlopen(url, timeout=10) as response:
                text = response.read().decode()
            nll = {
                s.labels["adapter"]: s.value
                for f in text_string_to_metric_families(text)
                for s in f.samples
                if s.name == "aether_box_model_nll"
            }
            assert nll == {
                "": entry["nll"]["smollm2"]["last"],
                "calm:0.5": entry["nll"][ADAPTED]["last"],
            }
    finally:
        box.stop(timeout=30)
        shutil.rmtree(data_dir, ignore_errors=True)
