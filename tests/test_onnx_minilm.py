"""MiniLM exported to ONNX by the box: same vectors as sentence-transformers, export caching,
user-added encoders, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from aether_box.engines.onnx import CPU, OnnxEncoder
from aether_box.engines.quality import retrieval_top1
from aether_box.errors import BadRequest, CorruptModel
from aether_box.models.bert_export import (
    ENCODER_JSON,
    build_bert_graph,
    build_packed_graph,
    ensure_exported,
)
from aether_box.models.store import ModelStore

REFERENCE = Path(__file__).parent / "data" / "minilm_reference.npz"
EXPORT_FILES = ["model.safetensors", "tokenizer.json", "config.json", "sentence_bert_config.json"]


@pytest.fixture(scope="module")
def minilm(model_store: ModelStore) -> OnnxEncoder:
    return OnnxEncoder.load(model_store.path("minilm"))


def test_vectors_match_sentence_transformers(minilm: OnnxEncoder) -> None:
    reference = np.load(REFERENCE)
    sentences = [str(s) for s in reference["sentences"]]
    assert len(sentences) >= 20
    vectors = minilm.embed(sentences)
    assert vectors.dtype == np.float32 and vectors.shape == (len(sentences), 384)
    cosines = np.sum(vectors * reference["vectors"], axis=1)  # both sides are unit vectors
    worst = int(np.argmin(cosines))
    assert cosines.min() >= 0.999, f"cosine {cosines[worst]:.5f} for {sentences[worst][:60]!r}"


def test_encoder_contract(minilm: OnnxEncoder) -> None:
    assert minilm.dim == 384
    assert minilm.provider == CPU  # no GPU on the test machines; CUDA is picked when present
    assert 80e6 < minilm.memory_bytes < 120e6
    vectors = minilm.embed(["short", "a much longer sentence " * 20, "mid length text here"])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert minilm.embed([]).shape == (0, 384)


def test_workers_share_a_call_without_changing_its_vectors(model_store: ModelStore) -> None:
    """Three threads each take every third text of the length-sorted call: same rows, in order."""
    one = OnnxEncoder.load(model_store.path("minilm"), threads=1)
    three = OnnxEncoder.load(model_store.path("minilm"), threads=3)
    assert (one.workers, three.workers) == (1, 3)
    texts = [("word " * (i * 7 % 45)).strip() + f" number {i}" for i in range(70)]
    for part in (texts, texts[:1], texts[:2]):
        np.testing.assert_allclose(three.embed(part), one.embed(part), atol=2e-5)
    one.close()
    three.close()


def test_padding_does_not_change_a_vector(minilm: OnnxEncoder) -> None:
    alone = minilm.embed(["The cat sat on the mat."])[0]
    crowd = ["word " * n for n in range(1, 40)] + ["The cat sat on the mat."]
    in_batch = minilm.embed(crowd)[-1]
    np.testing.assert_allclose(in_batch, alone, atol=2e-5)


def test_embed_refuses_what_is_not_a_list_of_strings(minilm: OnnxEncoder) -> None:
    with pytest.raises(BadRequest, match="list of strings"):
        minilm.embed("not a list")  # type: ignore[arg-type]
    with pytest.raises(BadRequest, match="list of strings"):
        minilm.embed(["ok", 3])  # type: ignore[list-item]


def test_export_is_cached_and_redone_when_stale(model_store: ModelStore, tmp_path: Path) -> None:
    source = model_store.path("minilm")
    work = tmp_path / "minilm"
    work.mkdir()
    for name in EXPORT_FILES:
        shutil.copy(source / name, work / name)
    ensure_exported(work)
    onnx_file = work / "model.onnx"
    first = onnx_file.stat().st_mtime_ns

    (work / "model.safetensors").touch()  # same bytes, new mtime: hashed, not re-exported
    ensure_exported(work)
    assert onnx_file.stat().st_mtime_ns == first

    config = json.loads((work / ENCODER_JSON).read_text())
    config["export"]["source_sha256"] = "0" * 64  # as if the checkpoint had been replaced
    (work / ENCODER_JSON).write_text(json.dumps(config))
    (work / "model.safetensors").touch()
    ensure_exported(work)
    assert onnx_file.stat().st_mtime_ns != first

    with open(onnx_file, "r+b") as handle:  # a damaged export is redone on load
        handle.truncate(1000)
    encoder = OnnxEncoder.load(work)
    assert onnx_file.stat().st_size > 80e6 and encoder.embed(["fine"]).shape == (1, 384)


def test_truncated_checkpoint_or_onnx_is_a_clear_error(
    model_store: ModelStore, tmp_path: Path
) -> None:
    source = model_store.path("minilm")
    work = tmp_path / "broken"
    work.mkdir()
    for name in EXPORT_FILES:
        shutil.copy(source / name, work / name)
    with open(work / "model.safetensors", "r+b") as handle:
        handle.truncate(5000)
    with pytest.raises(CorruptModel, match="pull the model again"):
        OnnxEncoder.load(work)
    assert not (work / "model.onnx").exists()

    cut = tmp_path / "cut.onnx"
    cut.write_bytes((source / "model.onnx").read_bytes()[:100_000])
    shutil.copy(source / "tokenizer.json", tmp_path / "tokenizer.json")
    with pytest.raises(CorruptModel, match="truncated or not an encoder"):
        OnnxEncoder.load(cut)


def tiny_bert(where: Path) -> Path:
    """A small random BERT (HF names with the 'bert.' prefix) exported as a user's ONNX file."""
    rng = np.random.default_rng(0)
    hidden, inner, vocab = 8, 16, 30522
    shapes = {
        "embeddings.word_embeddings.weight": (vocab, hidden),
        "embeddings.position_embeddings.weight": (512, hidden),
        "embeddings.token_type_embeddings.weight": (2, hidden),
        "embeddings.LayerNorm.weight": (hidden,),
        "embeddings.LayerNorm.bias": (hidden,),
    }
    for name, shape in {
        "attention.self.query": (hidden, hidden),
        "attention.self.key": (hidden, hidden),
        "attention.self.value": (hidden, hidden),
        "attention.output.dense": (hidden, hidden),
        "intermediate.dense": (inner, hidden),
        "output.dense": (hidden, inner),
    }.items():
        shapes[f"encoder.layer.0.{name}.weight"] = shape
        shapes[f"encoder.layer.0.{name}.bias"] = (shape[0],)
    for name in ("attention.output.LayerNorm", "output.LayerNorm"):
        shapes[f"encoder.layer.0.{name}.weight"] = (hidden,)
        shapes[f"encoder.layer.0.{name}.bias"] = (hidden,)
    weights = {"bert." + k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    config = {"hidden_size": hidden, "num_attention_heads": 2, "num_hidden_layers": 1}
    path = where / "tiny.onnx"
    path.write_bytes(build_bert_graph(weights, config).SerializeToString())
    return path


def test_add_a_users_onnx_encoder(model_store: ModelStore, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    onnx_file = tiny_bert(tmp_path)
    with pytest.raises(BadRequest, match="put its tokenizer.json beside it"):
        store.add(onnx_file, "tiny")
    tokenizer = model_store.path("minilm") / "tokenizer.json"
    info = store.add(onnx_file, "tiny", tokenizer=tokenizer, max_length=64)
    assert (info.kind, info.dim, info.source) == ("onnx-encoder", 8, "user")
    encoder = OnnxEncoder.load(store.path("tiny"))
    vectors = encoder.embed(["hello there", "a different sentence entirely"])
    assert vectors.shape == (2, 8) and encoder.dim == 8
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert abs(float(vectors[0] @ vectors[1])) < 0.9999  # different texts, different vectors


def test_add_refuses_an_onnx_model_that_is_not_an_encoder(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "not_an_encoder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "relu.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    with pytest.raises(BadRequest, match="needs input_ids and attention_mask"):
        ModelStore(tmp_path / "models").add(path)


def test_int8_copy_stays_within_cosine_0_99_and_retrieves_as_well(
    minilm: OnnxEncoder, model_store: ModelStore
) -> None:
    int8 = OnnxEncoder.load(model_store.path("minilm"), int8=True)
    assert int8.int8 and not minilm.int8 and int8.onnx_path != minilm.onnx_path
    reference = np.load(REFERENCE)
    vectors = int8.embed([str(s) for s in reference["sentences"]])
    assert np.sum(vectors * reference["vectors"], axis=1).min() >= 0.99
    # Top-1 on the shipped retrieval set drops by at most half a point.
    assert retrieval_top1(int8, 400) >= retrieval_top1(minilm, 400) - 0.005


def test_export_is_packed_in_plain_ops(model_store: ModelStore) -> None:
    import onnx

    graph = onnx.load(str(model_store.path("minilm") / "model.onnx"), load_external_data=False)
    kinds = {n.op_type for n in graph.graph.node}
    assert {"Softmax", "Gelu", "LayerNormalization"} <= kinds
    # Plain attention ops measured faster than MultiHeadAttention; Add + LayerNorm 5x faster
    # on CPU than SkipLayerNormalization.
    assert not {"MultiHeadAttention", "SkipLayerNormalization"} & kinds
    assert "NonZero" in kinds  # the real tokens are packed out of the padded batch
    int8 = onnx.load(str(model_store.path("minilm") / "model.int8.onnx"))
    weights = {t.name for t in int8.graph.initializer}
    float_dense = [
        n.name for n in int8.graph.node if n.op_type == "MatMul" and n.input[1] in weights
    ]
    assert float_dense == []  # every dense layer of the int8 copy is int8
    assert sum(n.op_type == "DynamicQuantizeMatMul" for n in int8.graph.node) == 6 * 6


def test_packed_graph_matches_the_reference_graph(model_store: ModelStore, tmp_path: Path) -> None:
    """Texts of very different lengths in one padded run: packing must not mix their tokens."""
    from safetensors.numpy import load_file

    source = model_store.path("minilm")
    weights = load_file(str(source / "model.safetensors"))
    config = json.loads((source / "config.json").read_text())
    shutil.copy(source / "tokenizer.json", tmp_path / "tokenizer.json")
    texts = ["a", "word " * 120, "The cat sat on the mat.", "x y z " * 30, "short one"]
    vectors = {}
    for name, build in (("plain", build_bert_graph), ("packed", build_packed_graph)):
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(build(weights, config).SerializeToString())
        vectors[name] = OnnxEncoder.load(path).embed(texts)  # each padded run mixes lengths
    np.testing.assert_allclose(vectors["packed"], vectors["plain"], atol=2e-5)
