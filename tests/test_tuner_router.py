"""The router's thresholds refitted from users' feedback, by the tuner, and rolled back."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from fixtures_box import BoxInThread, temp_box, wait_for

from aether_box.router.feedback import Label, refit_thresholds

ROUTES = {
    "general": {"model": "smollm2", "examples": ["hello, how are you", "tell me a joke"]},
    "cooking": {
        "model": "smollm2",
        "examples": [
            "how long should I boil an egg",
            "a simple recipe for pancakes",
            "what can I cook with rice and beans",
        ],
    },  # fmt: skip
}
COOKING = [
    "How do I make a tomato soup?", "What spices go well with lamb?",
    "How long do I roast a chicken?", "Can I freeze cooked rice?",
    "What is a good vegetarian dinner?", "How do I bake bread at home?",
    "Which oil is best for frying potatoes?", "How do I make fluffy scrambled eggs?",
    "What should I put in a salad dressing?", "How long do beans need to soak?",
    "How do I caramelise onions?", "What can I bake with apples?",
]  # fmt: skip
OTHER = [
    "The stock market fell this morning.", "Who won the football match?",
    "My laptop will not turn on.", "What is the capital of Peru?",
    "How do I renew my passport?", "Explain quantum entanglement.",
    "The train to Berlin is late.", "What is the tallest mountain?",
]  # fmt: skip


def test_feedback_refits_a_threshold_that_rolls_back(models_dir: Path):
    data_dir = Path(tempfile.mkdtemp(prefix="abx-"))
    config = {
        "models": {"dir": str(models_dir)},
        # Too strict on purpose: every message falls back to the default route.
        "router": {"routes": ROUTES, "min_score": 0.7},
        "monitor": {"observe_s": 0.2, "router_min_decisions": 20},
        "tuner": {"check_s": 0.2, "refit_router": "auto"},
    }
    box = BoxInThread(data_dir, config)
    try:
        with box.client(timeout=120) as client:
            for text, good in [*((t, True) for t in COOKING), *((t, False) for t in OTHER)]:
                routed = client.request("router", {"op": "route", "text": text})
                assert routed["route"] == "general"  # fell back
                client.request(
                    "router",
                    {"op": "feedback", "message_id": routed["message_id"], "route": "cooking",
                     "good": good},
                )  # fmt: skip

            def settled() -> dict | None:
                found = client.request("tuner", {"op": "log", "action": "refit_router"})
                done = [d for d in found["decisions"] if d["state"] != "applying"]
                return done[0] if done else None

            wait_for(lambda: settled() is not None, 60, "the router refit")
            decision = settled()
            assert decision is not None and decision["signal"]["kind"] == "router"
            assert decision["state"] == "applied", decision["outcome"]
            after = decision["after"]
            assert after["after"]["held_out"] > after["before"]["held_out"]
            threshold = client.status()["router"]["min_score"]["cooking"]
            assert threshold < 0.7
            again = client.request("router", {"op": "route", "text": "How do I cook pasta?"})
            assert again["route"] == "cooking"
        # The applied threshold holds after a restart, and its rollback still works.
        box.stop(timeout=30)
        box = BoxInThread(data_dir, config)
        with box.client(timeout=120) as client:
            assert client.status()["router"]["min_score"]["cooking"] == threshold
            client.request("tuner", {"op": "rollback", "id": decision["id"]})
            assert client.status()["router"]["min_score"]["cooking"] == 0.7
    finally:
        box.stop(timeout=30)
        shutil.rmtree(data_dir, ignore_errors=True)


def test_a_refit_without_gain_is_not_promoted():
    labels = [Label("a", s, s > 0.5) for s in (0.1, 0.2, 0.3, 0.6, 0.7, 0.8) * 3]
    right = refit_thresholds(labels, {"a": 0.5})
    assert not right["promote"] and "no gain" in right["verdict"]
    wrong = refit_thresholds(labels, {"a": 0.9})
    assert wrong["promote"] and 0.3 < wrong["thresholds"]["a"] <= 0.6
    few = refit_thresholds(labels[:5], {"a": 0.9})
    assert not few["promote"] and "10 needed" in few["verdict"]


def test_with_no_route_to_score_falling_back_is_no_alarm(models_dir: Path):
    # The built-in router has one route and no examples: every message takes it by design.
    # "min_score may be too high" (and a refit proposal) would be advice nobody can follow.
    config = {
        "monitor": {"observe_s": 0.1, "router_min_decisions": 5},
        "tuner": {"check_s": 0.1},
    }
    with temp_box(config, models_dir=models_dir) as box, box.client(timeout=60) as client:
        for text in OTHER[:5]:
            assert client.request("router", {"op": "route", "text": text})["route"] == "general"

        def router_signal() -> dict | None:
            signals = client.request("tuner", {"op": "status"})["signals"]
            return next((s for s in signals if s["kind"] == "router"), None)

        wait_for(lambda: router_signal() is not None, 30, "the observer's look at the router")
        signal = router_signal()
        assert signal is not None and signal["figures"]["fallback_share"] == 1.0
        assert not signal["triggered"], signal
        assert not [a for a in client.status()["alerts"] if a["kind"] == "router"]
