"""The `llm` service generates with a real GGUF model: chat, completion, streaming, sampling."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fixtures_engines import engines_box, loaded

from aether_box.engines.services import MIN_TOKENS_FOR_SPEED

MODEL = "smollm2"
PROMPT = "The capital of France is"
# SmolLM2's own chat template (from its GGUF), default system prompt included.
SMOL_CHATML = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)


def complete(client: Any, **fields: Any) -> dict[str, Any]:
    body = {
        "op": "complete",
        "model": MODEL,
        "prompt": PROMPT,
        "temperature": 0.0,
        "max_tokens": 12,
        **fields,
    }
    return client.request("llm", body, timeout=120)


def stream(client: Any, body: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    replies = list(client.stream("llm", {**body, "stream": True}, timeout=120))
    return replies[:-1], replies[-1]


def test_completion_continues_the_prompt(llm_box):
    with llm_box.client() as client:
        reply = complete(client)
    assert reply["model"] == MODEL
    assert reply["text"].startswith(" Paris")
    assert reply["finish_reason"] == "length"
    assert reply["usage"] == {"prompt_tokens": 5, "completion_tokens": 12}
    assert reply["tokens_per_s"] > 0
    assert 0 < reply["ttft_s"] < 60


def test_chat_renders_the_models_own_template(llm_box):
    question = "What is the capital of France?"
    with llm_box.client() as client:
        chat = client.request(
            "llm",
            {
                "op": "chat",
                "model": MODEL,
                "messages": [{"role": "user", "content": question}],
                "temperature": 0.0,
                "max_tokens": 16,
            },
            timeout=120,
        )
        by_hand = complete(client, prompt=SMOL_CHATML.format(question), max_tokens=16)
    assert chat["text"] == by_hand["text"]
    assert chat["usage"] == by_hand["usage"]
    assert "<|im_start|>" not in chat["text"]


def test_streaming_sends_the_text_in_pieces_then_the_final_text(llm_box):
    with llm_box.client() as client:
        partials, final = stream(
            client,
            {
                "op": "complete",
                "model": MODEL,
                "prompt": PROMPT,
                "temperature": 0.0,
                "max_tokens": 12,
            },
        )
        plain = complete(client)
    assert all(set(p) == {"token"} and isinstance(p["token"], str) for p in partials)
    assert "".join(p["token"] for p in partials) == final["text"] == plain["text"]
    # Tokens sampled while a PARTIAL waits its turn go together (see engines/relay.py), so
    # there are at most as many PARTIALs as tokens, and more than one: the text streams.
    assert final["usage"]["completion_tokens"] == 12
    assert 2 <= len(partials) <= 12


def test_max_tokens_bounds_the_reply(llm_box):
    with llm_box.client() as client:
        short = complete(client, max_tokens=3)
        longer = complete(client, max_tokens=9)
    assert short["usage"]["completion_tokens"] == 3
    assert short["finish_reason"] == "length"
    assert longer["text"].startswith(short["text"])
    assert len(longer["text"]) > len(short["text"])


@pytest.mark.parametrize("stream_it", [False, True])
def test_stop_sequences_end_the_reply_and_are_never_sent(llm_box, stream_it):
    body = {
        "op": "complete",
        "model": MODEL,
        "prompt": PROMPT,
        "temperature": 0.0,
        "max_tokens": 24,
    }
    with llm_box.client() as client:
        free = client.request("llm", body, timeout=120)["text"]
        assert "." in free and "United" in free  # " Paris.\n\nThe United States ..."
        for stop, expected in (
            (["."], free[: free.index(".")]),
            (["United States", "zebra"], free[: free.index("United States")]),
        ):
            if stream_it:
                partials, final = stream(client, {**body, "stop": stop})
                assert "".join(p["token"] for p in partials) == expected
            else:
                final = client.request("llm", {**body, "stop": stop}, timeout=120)
            assert final["text"] == expected
            assert final["finish_reason"] == "stop"


def test_greedy_is_deterministic_and_seed_repeats_sampling(llm_box):
    body = {
        "op": "complete",
        "model": MODEL,
        "prompt": "Once upon a time",
        "max_tokens": 8,
        "temperature": 1.0,
    }
    with llm_box.client() as client:
        seeded = [client.request("llm", {**body, "seed": 7}, timeout=120)["text"] for _ in range(2)]
        others = {client.request("llm", {**body, "seed": s}, timeout=120)["text"] for s in (1, 2)}
        greedy = {
            complete(client, prompt="Once upon a time", max_tokens=8, seed=s)["text"]
            for s in (1, 2)
        }
    assert seeded[0] == seeded[1]
    assert len(others | {seeded[0]}) >= 2  # different seeds sample differently
    assert len(greedy) == 1


def test_top_p_and_top_k_narrow_sampling_to_the_likeliest_token(llm_box):
    once = {"prompt": "Once upon a time", "max_tokens": 8}
    with llm_box.client() as client:
        greedy = complete(client, **once)["text"]
        narrow_p = complete(client, **once, temperature=1.8, top_p=0.001, seed=3)["text"]
        narrow_k = complete(client, **once, temperature=1.8, top_k=1, seed=3)["text"]
        wide = {
            complete(client, **once, temperature=1.8, top_p=1.0, top_k=0, min_p=0.0, seed=s)["text"]
            for s in (3, 4)
        }
    assert narrow_p == narrow_k == greedy
    assert wide != {greedy}


def test_status_reports_the_loaded_model_and_its_speed(llm_box):
    with llm_box.client() as client:
        assert complete(client, max_tokens=24)["usage"]["completion_tokens"] >= 16
        models = client.status()["models"]
    assert any(m["name"] == MODEL for m in models["installed"])
    entry = next(m for m in models["loaded"] if m["name"] == MODEL and m["role"] == "generate")
    assert entry["memory_mb"] > 90  # at least the weights
    assert entry["device"] in ("cpu", "cuda", "metal", "vulkan")
    assert entry["tokens_per_s"] > 0
    assert models["used_mb"] >= entry["memory_mb"]
    assert models["budget_mb"] > 0


def test_a_model_speed_comes_from_answers_long_enough_to_measure(models_dir):
    # Its own box: the shared one's model has a speed already.
    with engines_box(models_dir) as box, box.client() as client:
        short = client.complete(MODEL, "1, 2, 3,", max_tokens=2, temperature=0)
        assert short["usage"]["completion_tokens"] == 2
        assert loaded(client)[(MODEL, "generate")]["tokens_per_s"] is None  # not a reading
        long = client.complete(MODEL, "1, 2, 3,", max_tokens=24, temperature=0)
        assert long["usage"]["completion_tokens"] >= MIN_TOKENS_FOR_SPEED
        assert loaded(client)[(MODEL, "generate")]["tokens_per_s"] > 0


def test_client_library_helpers_reach_the_services(llm_box):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    with llm_box.client() as client:
        chat = client.chat(MODEL, messages, max_tokens=6, temperature=0.0, timeout=120)
        pieces = list(client.chat_stream(MODEL, messages, max_tokens=6, temperature=0.0))
        completion = client.complete(MODEL, PROMPT, max_tokens=3, temperature=0.0)
        vectors = client.embed("minilm", ["a", "b", "c"])
    assert "".join(pieces) == chat["text"] and 1 <= len(pieces) <= 6
    assert completion["text"].startswith(" Paris")
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
