"""Signals the tuner answers with a proposal: a model whose answers' per-token NLL spikes,
and a model slowed on purpose. The box runs as its own process, so it can be slowed."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fixtures_box import BoxProcess, wait_for

from aether_box.client import BadRequest
from aether_box.testing import throttled

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


@dataclass
class UsualBox:
    """A box process that has answered the usual prompts, one observer look per answer."""

    box: BoxProcess
    replies: list[dict[str, Any]]


@pytest.fixture(scope="module")
def usual(models_dir: Path) -> Iterator[UsualBox]:
    data_dir = Path(tempfile.mkdtemp(prefix="abx-"))
    box = BoxProcess(
        data_dir,
        "--set", f"models.dir={models_dir}",
        "--set", "monitor.observe_s=0.1",
        "--set", "monitor.alert_speed_after=4",
        "--set", "monitor.nll_after=5",
        "--set", "tuner.check_s=0.1",
        "--set", "tuner.cooldown_s=0",  # a proposal dismissed below may come again at once
    )  # fmt: skip
    try:
        replies = []
        with box.client(timeout=600) as client:
            for seen, topic in enumerate(TOPICS, 1):
                replies.append(complete(client, topic))
                assert replies[-1]["usage"]["completion_tokens"] >= 16, "speed needs 16 tokens"
                wait_for(
                    lambda n=seen: any(
                        r["figures"]["answers"] >= n for r in readings(client, "nll")
                    ),
                    30,
                    "the observer's look at the answer",
                )
        yield UsualBox(box, replies)
    finally:
        box.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.mark.timeout(900)  # 7 short answers: seconds on a quiet machine, minutes on a busy one
def test_an_nll_spike_raises_an_alert_and_a_proposal(usual: UsualBox):
    with usual.box.client(timeout=600) as client:
        (nll,) = readings(client, "nll")
        assert not nll["triggered"] and nll["figures"]["limit"] is not None
        median = nll["figures"]["median"]
        assert 0 < median < 3, "greedy answers are the model's likely tokens"
        # Text the model finds unlikely (sampled at temperature 2, no truncation) spikes.
        hot = complete(client, "libraries", temperature=2.0, top_k=0, top_p=1.0, min_p=0.0,
                       seed=1)  # fmt: skip
        assert hot["usage"]["completion_tokens"] >= 8
        wait_for(lambda: "model:smollm2" in proposals(client), 30, "the NLL proposal")
        spike = proposals(client)["model:smollm2"]["signal"]["figures"]
        assert spike["nll"] > spike["limit"] > median
        assert any(a["kind"] == "nll" for a in client.status()["alerts"])
        # Heavy proposals are advice: the box refuses to apply them itself; a user dismisses.
        ident = proposals(client)["model:smollm2"]["id"]
        with pytest.raises(BadRequest, match="does not carry out by itself"):
            client.request("tuner", {"op": "apply", "id": ident})
        assert client.request("tuner", {"op": "dismiss", "id": ident})["state"] == "dismissed"
        sched = client.status()["models"]["loaded"][0]["scheduler"]
        assert sched["nll_overhead_percent"] is not None and sched["nll_overhead_percent"] < 1.0


# The box process is stopped 95% of the wall-clock time (SIGSTOP/SIGCONT): a real stall of
# the process. The stop lasts 19 times as long as the box actually ran, so the ratio holds
# even when this thread wakes late on a loaded host (fixed sleeps did not: at load average 12
# the box ran through the late wake-ups at its usual speed). A 10x stall was not enough where
# the host's load swung between the usual answers and this one (0.36-1.89 tokens/s usual,
# 0.73 stalled). 16 tokens: a few seconds on a quiet machine.
@pytest.mark.timeout(900)
def test_a_deliberate_slowdown_raises_an_alert_and_a_proposal(usual: UsualBox):
    with usual.box.client(timeout=900) as client:
        with throttled(usual.box.process.pid):
            slowed = complete(client, "painting")
        # A speed reading needs 16 tokens (engines' MIN_TOKENS_FOR_SPEED), as the usual ones had.
        assert slowed["usage"]["completion_tokens"] >= 16, slowed
        speeds = sorted(r["tokens_per_s"] for r in usual.replies)
        assert slowed["tokens_per_s"] < 0.5 * speeds[len(speeds) // 2], (slowed, speeds)

        def proposed_for_the_slowdown() -> bool:
            # On a busy host a usual answer may itself have been slow enough to be proposed
            # on; that stale proposal is dismissed so the one for this slowdown can come.
            advice = proposals(client).get("speed:smollm2")
            if advice is None:
                return False
            # status rounds a speed to 0.1 token/s
            if advice["signal"]["figures"]["tokens_per_s"] == pytest.approx(
                slowed["tokens_per_s"], abs=0.06
            ):
                return True
            client.request("tuner", {"op": "dismiss", "id": advice["id"]})
            return False

        wait_for(proposed_for_the_slowdown, 30, "the slowdown proposal")
        alerts = client.status()["alerts"]
        assert any(a["kind"] == "slow" and a["subject"] == "smollm2" for a in alerts)
        advice = proposals(client)["speed:smollm2"]
        assert "engines.parallel" in advice["params"]["advice"]
