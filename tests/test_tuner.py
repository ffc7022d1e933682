"""The tuner: idle models unloaded (never mid-request) and reloaded, proposals applied and
rolled back, every decision logged and published."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fixtures_box import BoxInThread
from fixtures_engines import Streamer, loaded, wait_for
from prometheus_client.parser import text_string_to_metric_families

from aether_box.client import BadRequest
from aether_box.monitor.statistics import SpikeRule, drift, mmd2
from aether_box.monitor.watches import AdapterWatch, RouterWatch, Signals

FAST = {"observe_s": 0.1}


@contextmanager
def tuned_box(models_dir: Path, **sections: dict[str, Any]) -> Iterator[BoxInThread]:
    """A box over the test models with these config sections overridden."""
    data_dir = Path(tempfile.mkdtemp(prefix="abx-"))
    running = BoxInThread(data_dir, {"models": {"dir": str(models_dir)}, **sections})
    try:
        yield running
    finally:
        running.stop(timeout=30)
        shutil.rmtree(data_dir, ignore_errors=True)


def decisions(client: Any, **filters: Any) -> list[dict[str, Any]]:
    return client.request("tuner", {"op": "log", **filters})["decisions"]


def test_an_idle_model_is_unloaded_never_mid_request_and_reloads(models_dir: Path):
    with (
        tuned_box(
            models_dir, engines={"keep_alive": 0.3}, monitor=FAST, tuner={"check_s": 0.1}
        ) as box,
        box.client(timeout=60) as client,
    ):
        events = client.events("tuner.action", timeout=60)
        # A long answer, streamed: the model is in use far longer than keep_alive.
        count = [{"role": "user", "content": "Count from 1 to 200, separated by commas."}]
        body = {"op": "chat", "model": "smollm2", "messages": count, "max_tokens": 96,
                "temperature": 0.0, "stream": True}  # fmt: skip
        stream = Streamer(box, body)
        stream.start()
        stream.join(300)
        assert stream.error is None
        final = stream.replies[-1]
        assert final["finish_reason"] == "length" and final["usage"]["completion_tokens"] == 96
        took = stream.times[-1] - stream.times[0]
        assert took > 0.3, "the answer must outlast keep_alive for this test to mean anything"
        # Once idle past keep_alive, the tuner unloads it, logged and published.
        topic, event = next(events)
        assert (event["action"], event["subject"]) == ("unload", "smollm2:generate")

        def unloaded() -> list[dict[str, Any]]:
            return [
                d
                for d in decisions(client, action="unload")
                if d["subject"] == "smollm2:generate" and d["state"] == "applied"
            ]

        wait_for(lambda: unloaded(), 30, f"unload ({decisions(client)})")
        decision = unloaded()[-1]
        assert decision["created"] > time.time() - took - 60
        assert decision["signal"]["figures"]["idle_s"] >= 0.3
        assert "(engines.keep_alive 0.3 s)" in decision["signal"]["message"]  # not "0 s"
        assert decision["after"]["freed_mb"] > 0
        # Nothing was unloaded while the request ran: its decision came after the last token.
        assert decision["created"] >= stream_end_wall(stream)
        assert ("smollm2", "generate") not in loaded(client)
        # The next request loads it again; the log records how long that took.
        client.request("llm", {"op": "complete", "model": "smollm2", "prompt": "Hi",
                               "max_tokens": 2, "temperature": 0.0})  # fmt: skip
        wait_for(
            lambda: (unloaded()[-1].get("after") or {}).get("reload_s"),
            30,
            "the reload time in the log",
        )
        counts = client.status()["tuner"]["counts"]["unload"]
        assert counts["applied"] >= 1
        # Prometheus counts the tuner's decisions per action and state.
        with urllib.request.urlopen(client.status()["metrics"]["url"], timeout=10) as response:
            text = response.read().decode()
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        applied = (("action", "unload"), ("state", "applied"))
        assert samples[("aether_box_tuner_actions_total", applied)] >= 1


def stream_end_wall(stream: Streamer) -> float:
    """The wall-clock time of the stream's last reply."""
    assert stream.finished_at is not None
    return time.time() - (time.monotonic() - stream.times[-1])


def test_a_proposal_waits_for_apply_and_rolls_back(models_dir: Path):
    tuner = {"check_s": 0.1, "unload": "propose"}
    with (
        tuned_box(models_dir, engines={"keep_alive": 0.3}, monitor=FAST, tuner=tuner) as box,
        box.client(timeout=60) as client,
    ):
        client.embed("minilm", ["a text"])
        wait_for(lambda: decisions(client, state="proposed"), 30, "a proposal")
        (proposal,) = decisions(client)
        assert (proposal["action"], proposal["mode"]) == ("unload", "propose")
        assert ("minilm", "embed") in loaded(client)  # only proposed: nothing done
        assert client.status()["tuner"]["proposed"][0]["id"] == proposal["id"]
        with pytest.raises(BadRequest, match="only applied ones roll back"):
            client.request("tuner", {"op": "rollback", "id": proposal["id"]})
        # The CLI lists it, applies it and rolls it back, as a user would.
        cli = [sys.executable, "-m", "aether_box", "--data-dir", str(box.data_dir), "tuner"]
        listed = subprocess.run([*cli, "log"], capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        assert f"#{proposal['id']}" in listed.stdout and "proposed" in listed.stdout
        subprocess.run([*cli, "apply", str(proposal["id"])], check=True, timeout=60)
        wait_for(lambda: decisions(client)[0]["state"] == "applied", 30, "the applied unload")
        assert ("minilm", "embed") not in loaded(client)
        back = subprocess.run(
            [*cli, "rollback", str(proposal["id"])], capture_output=True, text=True, timeout=60
        )
        assert back.returncode == 0, back.stderr
        assert "rolled back: loaded again" in back.stdout
        assert ("minilm", "embed") in loaded(client)
        assert len(decisions(client, action="unload")) >= 1
        assert (box.data_dir / "tuner.db").is_file()


def test_a_session_keeps_its_conversation_across_an_idle_unload(models_dir: Path):
    """Unloading saves the sessions' KV states: the next turn reloads the model and restores
    the conversation instead of reading it again."""
    with (
        tuned_box(
            models_dir, engines={"keep_alive": 0.5}, monitor=FAST, tuner={"check_s": 0.1}
        ) as box,
        box.client(timeout=120) as client,
    ):
        session = client.request("session", {"op": "create", "model": "smollm2"})["session"]
        say = {"op": "say", "session": session, "max_tokens": 4, "temperature": 0.0}
        client.request("session", {**say, "text": "Name three rivers in Europe."})
        wait_for(lambda: decisions(client, action="unload", state="applied"), 60, "the idle unload")
        (unload,) = decisions(client, action="unload", state="applied")
        assert unload["subject"] == "smollm2:generate"
        assert ("smollm2", "generate") not in loaded(client)
        second = client.request("session", {**say, "text": "And one in Asia?"})
        # Every token of the first turn came back from disk, not from reading it again.
        assert second["cached_tokens"] >= second["usage"]["prompt_tokens"] // 2, second
        (entry,) = [m for m in client.status()["models"]["loaded"] if m["name"] == "smollm2"]
        assert entry["scheduler"]["states_restored"] == 1


def test_the_router_and_adapter_watches_read_their_sections():
    signals = Signals()
    router = RouterWatch(signals, fallback_max=0.5, min_decisions=4)
    router.update({"decisions": 4, "fallbacks": 3, "best_score_sum": 1.6, "min_score": {}})
    (reading,) = signals.all()
    assert reading["triggered"] and reading["figures"]["best_score_mean"] == 0.4
    router.update({"decisions": 8, "fallbacks": 3, "best_score_sum": 4.8, "min_score": {}})
    assert not signals.all()[0]["triggered"] and signals.all()[0]["figures"]["fallback_share"] == 0
    adapters = AdapterWatch(signals)
    kept = [{"name": "a", "verdict": "ok"}, {"name": "b", "verdict": "prune", "kl_mean": 0.9}]
    adapters.update({"adapters": kept})
    verdicts = {s["subject"]: s for s in signals.all() if s["kind"] == "adapter"}
    assert not verdicts["a"]["triggered"] and verdicts["b"]["triggered"]
    assert verdicts["b"]["figures"]["op"] == "prune"
    adapters.update({"adapters": kept[:1]})  # b removed: its reading goes
    assert [s["subject"] for s in signals.all() if s["kind"] == "adapter"] == ["a"]


def test_mmd_tells_a_shifted_sample_from_the_same_one():
    rng = np.random.default_rng(0)
    reference = _unit(rng.standard_normal((150, 16)))
    same = _unit(rng.standard_normal((80, 16)))
    shifted = _unit(rng.standard_normal((80, 16)) + 1.5 * np.eye(16)[0])
    assert mmd2(reference, shifted) > 10 * abs(mmd2(reference, same))
    assert drift(reference, shifted).p_value <= 0.01
    assert drift(reference, same).p_value > 0.05
    assert drift(reference, shifted).centroid_distance > drift(reference, same).centroid_distance


def test_the_spike_rule_is_median_plus_three_mads():
    rule = SpikeRule(window=50, k=3.0, warmup=10)
    readings = [2.0, 2.1, 1.9, 2.05, 1.95, 2.0, 2.1, 1.9, 2.0, 2.02]
    assert not any(rule.add(r) for r in readings)  # warming up, then calm
    limit = rule.limit()
    assert limit is not None and 2.2 < limit < 2.5
    assert not rule.add(2.2)
    assert rule.add(3.5)  # a spike, kept out of the history
    assert rule.median == pytest.approx(2.0, abs=0.03)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)
