"""Models load on first use, within a memory budget, least recently used unloaded first."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from fixtures_engines import Streamer, engines_box, loaded, wait_for

from aether_box.engines.llama import gpu_offload_supported
from aether_box.engines.registry import EngineSettings, gpu_present
from aether_box.errors import ConfigError
from aether_box.models.store import ModelStore

MODEL = "smollm2"


def generate(client: Any, model: str = MODEL) -> None:
    client.request(
        "llm",
        {"op": "complete", "model": model, "prompt": "Hi", "max_tokens": 1, "temperature": 0.0},
        timeout=120,
    )


def embed(client: Any, model: str = MODEL) -> None:
    client.request("embed", {"op": "embed", "model": model, "texts": ["hi"]}, timeout=120)


def test_models_load_on_first_use_and_status_says_where(llm_box):
    with llm_box.client() as client:
        client.request("llm", {"op": "unload", "model": MODEL}, timeout=120)
        assert (MODEL, "generate") not in loaded(client)
        generate(client)
        entry = loaded(client)[(MODEL, "generate")]
        models = client.status()["models"]
    assert entry["kind"] == "gguf" and entry["requests"] == 1
    offload = gpu_offload_supported() and gpu_present()
    assert models["llama_gpu_offload"] == offload and models["gpu_present"] == gpu_present()
    if not offload:
        assert entry["device"] == "cpu"
    assert models["n_threads"] >= 1 and models["n_ctx"] == 2048


def test_load_and_unload_ops(llm_box):
    with llm_box.client() as client:
        reply = client.request("llm", {"op": "load", "model": MODEL, "role": "embed"}, timeout=120)
        assert reply["name"] == MODEL and reply["role"] == "embed" and reply["memory_mb"] > 0
        assert (MODEL, "embed") in loaded(client)
        listing = client.request("llm", {"op": "models"}, timeout=30)
        assert {m["name"] for m in listing["installed"]} >= {MODEL, "minilm"}
        unloaded = client.request("llm", {"op": "unload", "model": MODEL}, timeout=120)
        assert "embed" in unloaded["unloaded"]
        assert not [key for key in loaded(client) if key[0] == MODEL]


def test_gpu_off_keeps_llama_on_the_cpu(models_dir: Path):
    with engines_box(models_dir, gpu="off") as box, box.client() as client:
        generate(client)
        assert client.status()["models"]["llama_gpu_offload"] is False
        assert loaded(client)[(MODEL, "generate")]["device"] == "cpu"


def test_least_recently_used_model_is_unloaded_to_fit_the_budget(own_models_dir: Path):
    # A second name for the same GGUF: a third instance to juggle. Generation instances with
    # one slot are ~240 MB here and embedding ones ~250 MB, so 600 MB holds two, not three.
    gguf = next((own_models_dir / MODEL).glob("*.gguf"))
    ModelStore(own_models_dir).add(gguf, name="smol-copy")
    with (
        engines_box(own_models_dir, memory_budget_mb=600, parallel=1) as box,
        box.client() as client,
    ):
        generate(client)  # A
        embed(client)  # B
        assert set(loaded(client)) == {(MODEL, "generate"), (MODEL, "embed")}
        assert client.status()["models"]["used_mb"] <= 600
        generate(client)  # A again: B is now the least recently used
        generate(client, "smol-copy")  # C: needs room
        assert set(loaded(client)) == {(MODEL, "generate"), ("smol-copy", "generate")}
        embed(client)  # B again: A is the least recently used now
        assert set(loaded(client)) == {("smol-copy", "generate"), (MODEL, "embed")}
        assert client.status()["models"]["used_mb"] <= 600


def test_a_busy_model_is_waited_for_not_unloaded(models_dir: Path):
    # 300 MB holds one smollm2 instance with one slot (~240 MB) but not two.
    long = {
        "op": "complete",
        "model": MODEL,
        "prompt": "Once upon a time",
        "stream": True,
        "max_tokens": 2000,
        "temperature": 0.0,
    }
    with (
        engines_box(models_dir, memory_budget_mb=300, parallel=1) as box,
        box.client() as client,
    ):
        generation = Streamer(box, long)
        generation.start()
        assert generation.first.wait(120)

        def embed_once() -> None:
            with box.client() as other:
                embed(other)

        waiter = threading.Thread(target=embed_once, daemon=True)
        waiter.start()
        # The embed request has arrived (it is in flight) and waits for the busy model.
        wait_for(lambda: client.status()["services"]["embed"]["in_flight"] == 1, 60, "embed")
        assert waiter.is_alive(), "the embedding did not wait for the busy model"
        assert set(loaded(client)) == {(MODEL, "generate")}
        assert generation.finished_at is None
        generation.stop()
        waiter.join(120)
        assert not waiter.is_alive()
        assert set(loaded(client)) == {(MODEL, "embed")}


def test_gpu_layer_settings_are_checked_and_shown(models_dir: Path, tmp_path: Path):
    for bad in ("some", -1, True):
        with pytest.raises(ConfigError, match="n_gpu_layers"):
            EngineSettings(n_gpu_layers=bad).resolve(tmp_path)
    with engines_box(models_dir, n_gpu_layers=3) as box, box.client() as client:
        generate(client)
        models = client.status()["models"]
        entry = loaded(client)[(MODEL, "generate")]
    assert models["n_gpu_layers"] == 3 and models["gpu"] == "auto"
    if not models["llama_gpu_offload"]:
        # Nothing offloaded: llama.cpp says "0/N" or nothing at all.
        assert entry["gpu_layers"] is None or entry["gpu_layers"].startswith("0/")
    else:
        assert entry["gpu_layers"].startswith("3/")
