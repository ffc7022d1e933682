"""A request's `adapters` through the HTTP gateway: OpenAI and Ollama bodies reach the llm
service with it (the same text as over the bus), and a pruned adapter's refusal comes back as
a 409 that says why."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fixtures_adapters import write_random
from fixtures_box import temp_box
from fixtures_gateway import GatewayBox

PROMPT = "The capital of France is Paris, and the capital of Italy is"
LOUD = [{"name": "loud", "force": True}]


@pytest.fixture(scope="module")
def box(models_dir: Path, smollm2_path: Path) -> Iterator[GatewayBox]:
    overrides = {
        "http": {"address": "127.0.0.1:0"},
        "adapters": {"probe_prompts": 1},
        "engines": {"n_threads": 1},
    }
    with temp_box(overrides, models_dir=models_dir) as running:
        path = write_random(running.data_dir / "loud.gguf", smollm2_path, std=0.2, seed=7)
        with running.client(timeout=300) as client:
            client.request("adapters", {"op": "add", "path": str(path), "base": "smollm2"})
            client.request("adapters", {"op": "wait", "name": "loud"}, timeout=300)
            # Pruned by hand whatever the probe said: the refusal below is deterministic.
            client.request("adapters", {"op": "prune", "name": "loud", "reason": "too loud"})
        yield GatewayBox(running)


def bus_text(box: GatewayBox, adapters: list[dict] | None) -> str:
    body = {"op": "complete", "model": "smollm2", "prompt": PROMPT, "max_tokens": 8}
    body |= {"temperature": 0.0, **({"adapters": adapters} if adapters else {})}
    with box.client(timeout=300) as client:
        return str(client.request("llm", body, timeout=300)["text"])


def test_openai_and_ollama_requests_pass_their_adapters_to_llm(box):
    base, loud = bus_text(box, None), bus_text(box, LOUD)
    assert base != loud  # the adapter really changes the answer
    sampling = {"max_tokens": 8, "temperature": 0.0}
    with httpx.Client(base_url=box.url, timeout=300) as http:
        body = {"model": "smollm2", "prompt": PROMPT, **sampling}
        reply = http.post("/v1/completions", json={**body, "adapters": LOUD})
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["text"] == loud
        plain = http.post("/v1/completions", json=body)
        assert plain.json()["choices"][0]["text"] == base

        refused = http.post("/v1/completions", json={**body, "adapters": [{"name": "loud"}]})
        assert refused.status_code == 409
        error = refused.json()["error"]
        assert error["code"] == "adapter_pruned" and "too loud" in error["message"]

        chat = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], **sampling}
        chatted = http.post("/v1/chat/completions", json={**chat, "adapters": LOUD})
        assert chatted.status_code == 200, chatted.text
        bad = http.post("/v1/chat/completions", json={**chat, "adapters": "loud"})
        assert bad.status_code == 400 and "list" in bad.json()["error"]["message"]
        session = http.post("/v1/chat/completions", json={**chat, "session": "s", "adapters": LOUD})
        assert session.status_code == 400 and "session" in session.json()["error"]["message"]

        ollama = {"model": "smollm2", "prompt": PROMPT, "raw": True, "stream": False}
        ollama |= {"options": {"num_predict": 8, "temperature": 0.0}}
        generated = http.post("/api/generate", json={**ollama, "adapters": LOUD})
        assert generated.status_code == 200, generated.text
        assert generated.json()["response"] == loud
        refused = http.post("/api/generate", json={**ollama, "adapters": [{"name": "loud"}]})
        assert refused.status_code == 409 and "too loud" in refused.json()["error"]
