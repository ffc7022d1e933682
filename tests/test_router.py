"""The semantic router with the real MiniLM and SmolLM2: routes by meaning, chats through them."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures_box import BoxInThread

from aether_box.client import BadRequest
from aether_box.config import Config
from aether_box.errors import ConfigError
from aether_box.router.service import choose
from aether_box.router.settings import RouterSettings

ROUTES = {
    "general": {
        "model": "smollm2",
        "examples": ["hello, how are you", "tell me a joke", "what is in the news today"],
    },
    "code": {
        "model": "smollm2",
        "system": "You are a programming assistant.",
        "examples": [
            "write a python function that reverses a string",
            "why does my for loop raise an IndexError",
            "how do I read a file line by line in python",
        ],
    },
    "cooking": {
        "model": "smollm2",
        "examples": [
            "how long should I boil an egg",
            "a simple recipe for pancakes",
            "what can I cook with rice and beans",
        ],
    },
}


@pytest.fixture(scope="module")
def box(models_dir, tmp_path_factory):
    overrides = {"models": {"dir": str(models_dir)}, "router": {"routes": ROUTES, "min_score": 0.2}}
    running = BoxInThread(tmp_path_factory.mktemp("router"), overrides)
    yield running
    running.stop(timeout=30)


def test_messages_go_to_the_route_they_mean(box):
    with box.client(timeout=60) as client:

        def route(text):
            return client.request("router", {"op": "route", "text": text})

        assert route("How can I sort a list of numbers in Python?")["route"] == "code"
        assert route("What temperature should I bake bread at?")["route"] == "cooking"
        assert route("My code crashes with a KeyError")["route"] == "code"
        assert route("How much salt goes in a soup?")["route"] == "cooking"
        far = route("The stock market fell sharply this morning.")
        assert (
            far["route"] == "general" and max(far["scores"]["code"], far["scores"]["cooking"]) < 0.2
        )
        assert set(far["scores"]) == {"general", "code", "cooking"}


def test_chat_through_the_router_uses_the_routes_model_and_prompt(box):
    with box.client(timeout=120) as client:
        parts = list(
            client.stream(
                "router",
                {
                    "op": "chat",
                    "text": "Write a python function that adds two numbers.",
                    "stream": True,
                    "max_tokens": 8,
                    "temperature": 0,
                },
            )
        )
        final = parts[-1]
        assert final["route"] == "code" and final["model"] == "smollm2"
        assert "".join(p["token"] for p in parts[:-1]) == final["text"]
        with pytest.raises(BadRequest, match="user message"):
            client.request(
                "router", {"op": "chat", "messages": [{"role": "system", "content": "x"}]}
            )


def test_choose_falls_back_to_the_default_below_the_floor():
    query = np.array([1.0, 0.0], np.float32)
    examples = {"a": np.array([[0.6, 0.8]], np.float32), "b": np.zeros((0, 2), np.float32)}
    assert choose(query, examples, 0.5, "b")[:2] == ("a", 0.6)
    assert choose(query, examples, 0.7, "b")[:2] == ("b", 0.0)


def test_route_config_errors_say_what_to_fix(data_dir):
    bad_default = {"router": {"default": "chat", "routes": {"general": {"model": "m"}}}}
    with pytest.raises(ConfigError, match="router.default"):
        Config(data_dir, bad_default).get(RouterSettings)
    no_model = {"router": {"routes": {"general": {"examples": ["x"]}}}}
    with pytest.raises(ConfigError, match="needs model"):
        Config(data_dir, no_model).get(RouterSettings)
