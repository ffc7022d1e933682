"""`aether-box tuner` on a box that has decided nothing yet, and a router signal the tuner
cannot act on without feedback."""

from __future__ import annotations

from pathlib import Path

import anyio
from click.testing import CliRunner, Result
from fixtures_box import BoxInThread, wait_for

from aether_box.cli import cli
from aether_box.tuner.actions import plans_for


def tuner(data_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--data-dir", str(data_dir), "tuner", *args])


def test_the_log_refuses_an_unknown_state_and_says_when_a_filter_matches_nothing(box):
    typo = tuner(box.data_dir, "log", "--state", "aplied")
    assert typo.exit_code == 1 and "'state' must be one of ['proposed'," in typo.output
    none = tuner(box.data_dir, "log", "--action", "unload", "--state", "applied")
    assert none.exit_code == 0 and none.output.startswith("no decisions match;")


def test_status_says_nothing_was_decided_and_shows_an_nll_reading_without_a_limit(
    data_dir, models_dir
):
    overrides = {"models": {"dir": str(models_dir)}, "monitor": {"observe_s": 0.1}}
    box = BoxInThread(data_dir, overrides)
    try:
        status = tuner(data_dir, "status")
        assert status.exit_code == 0 and "no decisions yet" in status.output
        # One scored answer: an NLL reading with no median or limit yet, said in words.
        with box.client(timeout=120) as client:
            ask = [{"role": "user", "content": "Write a long story about a cat."}]
            chat = {"op": "chat", "model": "smollm2", "messages": ask, "temperature": 0}
            client.request("llm", {**chat, "max_tokens": 12})  # scored from 8 tokens on
            wait_for(
                lambda: any(s["kind"] == "nll" for s in client.status()["tuner"]["signals"]),
                30,
                "an nll reading",
            )
        nll = next(line for line in tuner(data_dir, "status").output.splitlines() if "nll" in line)
        assert "no limit until more answers are scored (1 answer)" in nll and "None" not in nll
    finally:
        box.stop(timeout=30)


def test_no_router_refit_is_proposed_before_there_is_feedback_to_fit():
    def signal(feedback: int) -> dict:
        figures = {"fallback_share": 1.0, "best_score_mean": 0.0, "decisions": 24,
                   "min_score": {"general": 0.2}, "feedback": feedback}  # fmt: skip
        message = "100% of 24 messages fell back to the default route"
        return {"kind": "router", "subject": "router", "figures": figures, "message": message,
                "time": 0.0, "triggered": True, "seq": 1}  # fmt: skip

    async def plans(feedback: int) -> list:
        return await plans_for(signal(feedback), None, 900.0)  # type: ignore[arg-type]

    # Every message falls back where only the default route exists: a refit has nothing to
    # learn from until users say which route was right (`feedback`), so it is not proposed.
    assert anyio.run(plans, 0) == []
    assert anyio.run(plans, 9) == []
    (plan,) = anyio.run(plans, 10)
    assert plan.action.kind == "refit_router" and plan.before["feedback"] == 10


def test_status_counts_each_decision_once_in_the_state_it_is_in(data_dir, models_dir):
    overrides = {
        "models": {"dir": str(models_dir)},
        "engines": {"keep_alive": 0.3},
        "monitor": {"observe_s": 0.1},
        "tuner": {"check_s": 0.1},
    }
    box = BoxInThread(data_dir, overrides)
    try:
        with box.client(timeout=120) as client:
            hello = [{"role": "user", "content": "Hi"}]
            client.request("llm", {"op": "chat", "model": "smollm2", "messages": hello,
                                   "max_tokens": 2})  # fmt: skip

            def unloads() -> list[str]:
                found = client.request("tuner", {"op": "log", "action": "unload"})
                return [d["state"] for d in found["decisions"]]

            wait_for(lambda: unloads() == ["applied"], 60, "the idle model's unload")
        # One decision, applying then applied: counted once, as applied (not also applying).
        lines = tuner(data_dir, "status").output.splitlines()
        assert "  unload: applied 1" in lines, lines
    finally:
        box.stop(timeout=30)
