"""Router routes a user got wrong in config.toml: a model that is not installed, a route
with no examples. The box says which route and what to change."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fixtures_box import BoxInThread

from aether_box.client import BadRequest, NotFound

ROUTES = {
    "general": {"model": "smollm2"},
    "code": {
        "model": "no-such-model",
        "examples": ["write a python function that reverses a string"],
    },
    "empty": {"model": "smollm2", "examples": []},
}


@contextmanager
def router_box(data_dir: Path, models_dir: Path) -> Iterator[BoxInThread]:
    box = BoxInThread(data_dir, {"models": {"dir": str(models_dir)}, "router": {"routes": ROUTES}})
    try:
        yield box
    finally:
        box.stop(timeout=30)


def test_a_route_no_message_can_take_is_named_at_start(data_dir, models_dir, caplog):
    caplog.set_level(logging.WARNING, logger="aether_box.router")
    with router_box(data_dir, models_dir):
        warned = [r.getMessage() for r in caplog.records if r.name.startswith("aether_box.router")]
    # Only router.default may go without examples: another such route is never taken.
    assert any("[router.routes.empty] has no examples" in w for w in warned), warned
    assert not any("routes.general" in w for w in warned)


def test_a_route_to_a_missing_model_names_the_route_to_fix(data_dir, models_dir):
    with router_box(data_dir, models_dir) as box, box.client(timeout=120) as client:
        text = "write a python function that sorts a list"
        assert client.request("router", {"op": "route", "text": text})["route"] == "code"
        with pytest.raises(NotFound) as refused:
            client.request("router", {"op": "chat", "text": text, "max_tokens": 4})
        message = str(refused.value)
        assert message.startswith("route 'code' chose model 'no-such-model': model")
        assert "not installed" in message and "[router.routes.code] in config.toml" in message
        refit = client.request("router", {"op": "refit"})  # the thresholds, under one name
        assert "thresholds" not in refit and refit["min_score"]["code"] == 0.2


def test_feedback_on_a_route_without_examples_or_an_unknown_one_says_which_can_take_it(
    data_dir, models_dir
):
    with router_box(data_dir, models_dir) as box, box.client(timeout=120) as client:
        routed = client.request("router", {"op": "route", "text": "tell me a joke"})
        ask = {"op": "feedback", "message_id": routed["message_id"], "good": True}
        with pytest.raises(BadRequest, match=r"route 'general' has no examples.*\['code'\]"):
            client.request("router", {**ask, "route": "general"})
        with pytest.raises(NotFound, match=r"no route 'nope'; .*\['code'\]"):
            client.request("router", {**ask, "route": "nope"})
        assert client.request("router", {**ask, "route": "code"})["feedback"] == 1
