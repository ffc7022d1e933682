"""The `embed` service: batched, normalised float32 vectors from ONNX encoders and GGUF models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fixtures_engines import engines_box

from aether_box.engines.llama_cpu import cpu_has_amx
from aether_box.engines.onnx import OnnxEncoder
from aether_box.errors import BadRequest, NotFound, TooLarge
from aether_box.models.store import ModelStore

TEXTS = [
    "The cat sat on the mat.",
    "A cat is sitting on a rug.",
    "Stock markets fell sharply today.",
    "Shares dropped across the exchanges this morning.",
]


def embed(client: Any, model: str, texts: list[Any]) -> dict[str, Any]:
    return client.request("embed", {"op": "embed", "model": model, "texts": texts}, timeout=120)


@pytest.mark.parametrize("model, dim", [("minilm", 384), ("smollm2", 576)])
def test_vectors_are_normalised_float32_rows_one_per_text(llm_box, model, dim):
    with llm_box.client() as client:
        reply = embed(client, model, TEXTS)
        alone = np.vstack([embed(client, model, [t])["vectors"] for t in TEXTS])
    vectors = reply["vectors"]
    assert reply["model"] == model and reply["dim"] == dim
    # Raw frames decode straight to an array (never a list of floats).
    assert isinstance(vectors, np.ndarray) and vectors.dtype == np.float32
    assert vectors.shape == (len(TEXTS), dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Batching changes nothing: each row is what the text gets on its own.
    np.testing.assert_allclose((vectors * alone).sum(1), 1.0, atol=1e-4)
    # Paraphrases are nearer each other than unrelated sentences.
    sims = vectors @ vectors.T
    assert sims[0, 1] > sims[0, 2] and sims[2, 3] > sims[1, 3]


def test_onnx_vectors_match_the_encoder_called_directly(llm_box, model_store: ModelStore):
    with llm_box.client() as client:
        served = embed(client, "minilm", TEXTS)["vectors"]
    direct = OnnxEncoder.load(model_store.path("minilm")).embed(TEXTS)
    np.testing.assert_allclose(served, direct, atol=1e-6)


def test_big_requests_are_split_in_batches_and_keep_their_order(models_dir: Path):
    texts = [f"sentence number {i} is about {'cats' if i % 2 else 'stocks'}" for i in range(23)]
    with engines_box(models_dir, embed_batch=5) as box, box.client() as client:
        vectors = embed(client, "minilm", texts)["vectors"]
        assert vectors.shape == (23, 384)
        for i in (0, 7, 22):
            alone = embed(client, "minilm", [texts[i]])["vectors"][0]
            assert float(vectors[i] @ alone) > 0.9999
        models = client.status()["models"]
        entry = next(m for m in models["loaded"] if m["name"] == "minilm")
        assert entry["requests"] == 5 + 3  # 23 texts in batches of 5, then 3 single texts
        # Where it runs, and on a machine without CUDA, why: one plain line, no traceback.
        assert entry["device"] == ("cuda" if models["onnx_cuda"] == "available" else "cpu")
        assert models["onnx_cuda"] == "available" or models["onnx_cuda"].endswith(
            "ONNX models run on the CPU"
        )
        # llama.cpp's weight repacking: off, with the reason, exactly where the CPU has AMX.
        assert models["llama_repacking"].startswith("off: this CPU has AMX") == cpu_has_amx()


def test_no_texts_gives_an_empty_matrix(llm_box):
    with llm_box.client() as client:
        reply = embed(client, "minilm", [])
    assert reply["vectors"].shape == (0, 384) and reply["dim"] == 384


@pytest.mark.parametrize(
    "texts, error, words",
    [
        ("just a string", BadRequest, "texts"),
        ([1, 2], BadRequest, r"texts\[0\]"),
        (["ok", None], BadRequest, r"texts\[1\]"),
        ([""], BadRequest, r"texts\[0\] is empty"),
    ],
)
def test_bad_texts_are_refused(llm_box, texts, error, words):
    with llm_box.client() as client:
        with pytest.raises(error, match=words):
            embed(client, "smollm2", texts)
        assert embed(client, "smollm2", ["still fine"])["vectors"].shape == (1, 576)


def test_unknown_model_lists_the_installed_ones(llm_box):
    with llm_box.client() as client:
        with pytest.raises(NotFound, match="smollm2") as caught:
            embed(client, "no-such-encoder", ["x"])
    assert "minilm" in caught.value.message


def test_limits_on_text_count_and_length(models_dir: Path):
    with engines_box(models_dir, max_texts=3, embed_n_ctx=16) as box, box.client() as client:
        with pytest.raises(TooLarge, match="max_texts"):
            embed(client, "minilm", ["a"] * 4)
        long_text = "many words in a row " * 10
        with pytest.raises(BadRequest, match=r"texts\[1\] is \d+ tokens.*embed_n_ctx"):
            embed(client, "smollm2", ["short", long_text])
        assert embed(client, "smollm2", ["short"])["vectors"].shape == (1, 576)
