"""Baked copies of hot adapter sets: the file's fidelity to the runtime adapter, and the
generator serving a hot set from its copy while the base stays exactly the base."""

from __future__ import annotations

from typing import Any

import pytest
from fixtures_adapters import TRAINED, random_lora, write_random
from fixtures_box import wait_for

from aether_box.adapters.bake import bake
from aether_box.adapters.gguf_header import read_layout
from aether_box.adapters.lora_file import write_lora
from aether_box.adapters.peft import convert_peft
from aether_box.adapters.probe import Divergence, probe_prompts
from aether_box.engines.baked import BakePolicy
from aether_box.engines.generation import AdapterRef, GenerationParams, adapter_key
from aether_box.engines.generator import LlamaGenerator
from aether_box.errors import BadRequest
from aether_box.monitor.metrics import _model_families
from aether_box.testing import run_job
from aether_box.tui.view import baked_rows


def test_baked_copy_matches_the_runtime_adapter(tmp_path, smollm2_path):
    lora = convert_peft(TRAINED, smollm2_path)
    write_lora(tmp_path / "trained.gguf", lora)
    refs = [AdapterRef(str(tmp_path / "trained.gguf"), "t" * 64, 1.0)]
    report = bake(smollm2_path, [(lora, 1.0)], tmp_path / "baked.gguf", label="pirate")
    assert report.types == {"Q8_0": len(lora.factors)}
    assert 0.0 < report.rounding_to_delta < 0.5
    strings, layout = read_layout(report.path)
    _, base_layout = read_layout(smollm2_path)
    assert strings["aether_box.baked_adapters"] == "pirate"
    assert strings["general.architecture"] == "llama"
    for ours, theirs in zip(layout.tensors, base_layout.tensors, strict=True):
        assert (ours.name, ours.dims) == (theirs.name, theirs.dims)
        assert ours.type == (8 if ours.name in lora.factors else theirs.type)
    assert not list(tmp_path.glob(".*.tmp"))

    engine = LlamaGenerator.load(smollm2_path, n_ctx=256, n_threads=1, n_gpu_layers=0, parallel=1)
    copy = LlamaGenerator.load(report.path, n_ctx=256, n_threads=1, n_gpu_layers=0, parallel=1)
    try:
        effect, error = Divergence(), Divergence()
        for text in probe_prompts()[:2]:
            tokens = engine.prompt_tokens(text)
            plain = run_job(engine, lambda d, t=tokens: engine.prepare_score(t, [], d))
            runtime = run_job(engine, lambda d, t=tokens: engine.prepare_score(t, refs, d))
            baked = run_job(copy, lambda d, t=tokens: copy.prepare_score(t, [], d))
            effect.add(plain, runtime)
            error.add(runtime, baked)
    finally:
        copy.close()
        engine.close()
    # Measured: the adapter's effect 1.09 nats/token, the copy's error 0.008.
    assert effect.summary()["kl_mean"] > 0.3
    assert error.summary()["kl_mean"] < 0.05
    assert error.summary()["top1"] > 0.85


def test_requantising_to_the_base_4_bit_type_rounds_more_than_the_adapter_changes(
    tmp_path, smollm2_path
):
    # Why q8_0 is the default: Q4_1's steps are coarser than a LoRA's change of a weight.
    lora = random_lora(smollm2_path, rank=16, std=0.02, alpha=32.0)
    report = bake(smollm2_path, [(lora, 1.0)], tmp_path / "same.gguf", keep="same")
    assert report.types == {"Q4_1": len(lora.factors)}
    assert report.rounding_to_delta > 1.0
    # Same size but for one more metadata key (and the alignment after it).
    assert 0 < report.bytes - smollm2_path.stat().st_size <= 45 + 32


def test_a_failed_bake_leaves_no_file(tmp_path, smollm2_path):
    lora = random_lora(smollm2_path)
    lora.factors["blk.99.attn_q.weight"] = next(iter(lora.factors.values()))
    with pytest.raises(BadRequest, match="no weight 'blk.99.attn_q.weight'"):
        bake(smollm2_path, [(lora, 1.0)], tmp_path / "bad.gguf")
    assert list(tmp_path.iterdir()) == []


def test_a_hot_set_is_served_from_its_baked_copy_and_the_base_stays_exact(tmp_path, smollm2_path):
    directory = tmp_path / "baked"
    directory.mkdir()
    (directory / ".left-by-a-crash.gguf.1.tmp").write_bytes(b"half")
    path = str(write_random(tmp_path / "r.gguf", smollm2_path, std=0.05, seed=4))
    refs = [AdapterRef(path, "c" * 64, 1.0)]
    key = adapter_key(refs)
    engine = LlamaGenerator.load(
        smollm2_path, n_ctx=256, n_threads=1, n_gpu_layers=0, parallel=2,
        bake=BakePolicy(directory, after=2, keep="q8_0", limit=1),
    )  # fmt: skip
    try:
        assert engine.baked is not None
        assert list(directory.iterdir()) == []  # swept at load
        tokens = engine.prompt_tokens("Once upon a time")
        params = GenerationParams(max_tokens=12, temperature=0.0)

        def complete(adapters: list[AdapterRef]) -> Any:
            return run_job(
                engine, lambda d: engine.prepare(tokens, params, None, d, "t", None, adapters)
            )

        base_before = complete([])
        complete(refs)
        assert engine.stats()["baked"] == []  # one request is not a streak
        complete([])
        complete(refs)
        complete(refs)  # the second in a row: baking starts
        assert engine.stats()["baked"][0]["state"] in ("baking", "ready")
        assert engine.baked.wait(key, 120)
        copy = engine.baked.ready(key)
        assert copy is not None and copy.path.parent == directory
        served = complete(refs)
        stats = engine.stats()
        (baked,) = stats["baked"]
        assert baked["state"] == "ready" and baked["requests"] == 1
        assert baked["scheduler"]["generated_tokens"] == served.completion_tokens
        assert baked["memory_mb"] > 90 and stats["baked_mb"] == baked["memory_mb"]
        assert baked["types"] == {"Q8_0": 60}
        assert engine.extra_memory_bytes == copy.memory_bytes
        shown = {"loaded": [{"name": "smollm2", "role": "generate", "scheduler": stats}]}
        (row,) = baked_rows(shown).values()
        assert row[:3] == ("⤷ smollm2 baked 1", "baked · Q8_0", "ready") and row[7] == key
        metrics = {m.name: m for m in _model_families(shown)}
        (sample,) = metrics["aether_box_model_baked_memory_bytes"].samples
        assert sample.value == baked["memory_mb"] * 2**20
        # Its KV is its own: a second request with the same prompt reuses the copy's cache.
        again = complete(refs)
        assert again.cached_tokens == len(tokens) - 1
        assert again.text == served.text
        assert complete([]).text == base_before.text  # the base context never saw the deltas
        # Removing the adapter drops its copy; its next request runs with runtime adapters.
        assert engine.release_adapter("c" * 64)
        assert engine.stats()["baked"] == []
    finally:
        engine.close()


def test_a_box_bakes_a_hot_set_and_shows_the_copy_in_status(adapter_box):
    chat = {
        "op": "chat",
        "model": "smollm2",
        "messages": [{"role": "user", "content": "What is the tallest mountain?"}],
        "max_tokens": 12,
        "temperature": 0.0,
        "adapters": [{"name": "pirate", "force": True}],
    }

    def copies(client: Any) -> list[dict[str, Any]]:
        (model,) = [m for m in client.status()["models"]["loaded"] if m["role"] == "generate"]
        return list(model["scheduler"].get("baked", []))

    with adapter_box.client(timeout=300) as client:
        client.request(
            "adapters", {"op": "add", "path": str(TRAINED), "base": "smollm2", "name": "pirate"}
        )
        runtime = client.request("llm", chat, timeout=300)["text"]
        assert copies(client) == []
        client.request("llm", chat, timeout=300)  # the second in a row: it is hot now
        assert [c["state"] for c in copies(client)] in (["baking"], ["ready"])
        wait_for(lambda: copies(client)[0]["state"] != "baking", 120, "the bake")
        (copy,) = copies(client)
        assert copy["state"] == "ready", copy
        baked = client.request("llm", chat, timeout=300)["text"]
        assert baked.startswith("Arr, matey") and runtime.startswith("Arr, matey")
        (copy,) = copies(client)
        assert copy["requests"] == 1 and copy["scheduler"]["generated_tokens"] > 0
        models = client.status()["models"]
        (model,) = [m for m in models["loaded"] if m["role"] == "generate"]
        assert model["scheduler"]["baked_mb"] == copy["memory_mb"] > 90
        assert models["used_mb"] >= model["memory_mb"] > copy["memory_mb"]
        assert (adapter_box.data_dir / "baked" / "smollm2").is_dir()
        # Removing the adapter drops its copy too.
        client.request("adapters", {"op": "remove", "name": "pirate"})
        assert copies(client) == []


def test_a_pinned_set_is_baked_on_its_first_request(tmp_path, smollm2_path):
    path = str(write_random(tmp_path / "p.gguf", smollm2_path, seed=6))
    pinned = [AdapterRef(path, "p" * 64, 1.0, pinned=True)]
    unpinned = [AdapterRef(path, "u" * 64, 1.0)]
    engine = LlamaGenerator.load(
        smollm2_path, n_ctx=128, n_threads=1, n_gpu_layers=0, parallel=1,
        bake=BakePolicy(tmp_path / "baked", after=3, keep="q8_0", limit=2),
    )  # fmt: skip
    try:
        assert engine.baked is not None
        tokens = engine.prompt_tokens("Hello")
        params = GenerationParams(max_tokens=2, temperature=0.0)
        for refs in (unpinned, pinned):
            run_job(engine, lambda d, r=refs: engine.prepare(tokens, params, None, d, "t", None, r))
        assert [c["adapters"] for c in engine.stats()["baked"]] == [adapter_key(pinned)]
    finally:
        engine.close()
