"""Bad input to `llm` gets a clear error, and the box keeps serving."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from fixtures_engines import engines_box

from aether_box.errors import BadRequest, BoxError, NotFound
from aether_box.models.store import ModelStore

MODEL = "smollm2"
GOOD = {
    "op": "complete",
    "model": MODEL,
    "prompt": "The capital of France is",
    "temperature": 0.0,
    "max_tokens": 3,
}


def still_serves(client: Any) -> None:
    assert client.request("llm", GOOD, timeout=120)["text"].startswith(" Paris")


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "10"}, "max_tokens"),
        ({"max_tokens": 2.5}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"min_p": 2}, "min_p"),
        ({"seed": -1}, "seed"),
        ({"seed": "7"}, "seed"),
        ({"stop": [""]}, "stop"),
        ({"stop": 5}, "stop"),
        ({"stop": ["x"] * 40}, "stop"),
        ({"stream": "yes"}, "stream"),
        ({"prompt": 42}, "prompt"),
        ({"prompt": None}, "prompt"),
        ({"model": 3}, "model"),
    ],
)
def test_invalid_parameters_are_refused_naming_the_field(llm_box, fields, words):
    body = {**GOOD, **fields}
    with llm_box.client() as client:
        with pytest.raises(BadRequest, match=words):
            client.request("llm", {k: v for k, v in body.items() if v is not None}, timeout=30)


@pytest.mark.parametrize(
    "messages",
    [
        None,
        [],
        "hello",
        [{"role": "user"}],
        [{"role": "user", "content": 5}],
        ["hi"],
    ],
)
def test_malformed_chat_messages_are_refused(llm_box, messages):
    body = {"op": "chat", "model": MODEL}
    if messages is not None:
        body["messages"] = messages
    with llm_box.client() as client:
        with pytest.raises(BadRequest, match="messages"):
            client.request("llm", body, timeout=30)


def test_unknown_model_lists_the_installed_ones(llm_box):
    with llm_box.client() as client:
        with pytest.raises(NotFound) as caught:
            client.request("llm", {**GOOD, "model": "gpt-17"}, timeout=30)
        assert "gpt-17" in caught.value.message
        assert MODEL in caught.value.message and "minilm" in caught.value.message
        still_serves(client)


def test_unknown_op_is_refused(llm_box):
    with llm_box.client() as client:
        with pytest.raises(NotFound, match="chat"):
            client.request("llm", {"op": "dance", "model": MODEL}, timeout=30)


def test_an_encoder_cannot_generate(llm_box):
    with llm_box.client() as client:
        with pytest.raises(BadRequest, match="encoder"):
            client.request("llm", {**GOOD, "model": "minilm"}, timeout=30)


def test_prompt_over_the_context_is_refused_and_long_replies_are_cut(models_dir):
    with engines_box(models_dir, n_ctx=64) as box, box.client() as client:
        long_prompt = "one two three four five six seven eight nine ten " * 12
        with pytest.raises(BadRequest, match="context") as caught:
            client.request("llm", {**GOOD, "prompt": long_prompt}, timeout=120)
        assert "engines.n_ctx" in caught.value.message
        with pytest.raises(BadRequest, match="context"):
            client.request(
                "llm",
                {
                    "op": "chat",
                    "model": MODEL,
                    "max_tokens": 3,
                    "messages": [{"role": "user", "content": long_prompt}],
                },
                timeout=120,
            )
        # A reply that would run past the context stops at its end.
        reply = client.request(
            "llm", {**GOOD, "prompt": "one two three " * 15, "max_tokens": 500}, timeout=120
        )
        used = reply["usage"]["prompt_tokens"] + reply["usage"]["completion_tokens"]
        assert used == 64 or reply["finish_reason"] == "stop"
        still_serves(client)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_broken_model_file_gets_a_clear_error(models_dir, own_models_dir, tmp_path, damage):
    gguf = next((models_dir / MODEL).glob("*.gguf"))
    broken = tmp_path / "broken.gguf"
    shutil.copyfile(gguf, broken)
    # `models add` refuses a damaged file, so the damage comes after it was added (a disk
    # error, a file overwritten in place): the engines must still fail cleanly.
    ModelStore(own_models_dir).add(broken, name="broken")
    if damage == "truncated":
        with open(gguf, "rb") as source:
            broken.write_bytes(source.read(gguf.stat().st_size // 2))
    else:
        broken.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    with engines_box(own_models_dir) as box, box.client() as client:
        with pytest.raises(BoxError) as caught:
            client.request("llm", {**GOOD, "model": "broken"}, timeout=120)
        assert caught.value.code == "corrupt_model"
        assert "broken.gguf" in caught.value.message and "pull it again" in caught.value.message
        # Nothing was left loaded, and the next request for it fails the same way.
        assert not [m for m in client.status()["models"]["loaded"] if m["name"] == "broken"]
        with pytest.raises(BoxError, match="could not load"):
            client.request("embed", {"op": "embed", "model": "broken", "texts": ["x"]}, timeout=120)
        still_serves(client)


# 50 MB: less than the weights; 200 MB: more than the first guess, less than the real size.
@pytest.mark.parametrize("budget", [50, 200])
def test_budget_smaller_than_the_model_is_a_clear_error(models_dir: Path, budget: int):
    with engines_box(models_dir, memory_budget_mb=budget) as box, box.client() as client:
        for _ in range(2):
            with pytest.raises(BoxError, match="memory_budget_mb") as caught:
                client.request("llm", GOOD, timeout=120)
            assert caught.value.code == "too_large"
            assert client.status()["models"]["loaded"] == []
            assert client.status()["models"]["used_mb"] == 0
