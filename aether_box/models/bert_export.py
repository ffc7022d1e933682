"""Export a BERT-family sentence encoder (safetensors + sentence-transformers config) to ONNX.

BERT (MiniLM) and MPNet (all-mpnet-base-v2) share one graph builder: they differ only in
weight names, token type embeddings, where position ids start and MPNet's relative position
bias (see `LAYOUTS`). No torch: the graph is written op by op with `onnx.helper` and the
weights are read with `safetensors.numpy`. The graph takes ``input_ids`` and
``attention_mask`` (int64, batch x seq) and returns ``sentence_embedding`` (float32, batch x
hidden): mean-pooled over the mask and L2-normalised, as sentence-transformers' Transformer +
Pooling + Normalize do. `build_bert_graph` writes it in standard ONNX ops (the reference).
Both are exported as `build_packed_graph`, the same maths run on the batch's real tokens
only (no work on padding); BERT gets an int8 copy beside it (per-row dynamic int8 with
SmoothQuant, see `int8_copy`) for `engines.onnx_int8`, MPNet none (see `_Layout.int8_copy`).
The export is cached in the model's dir and redone when the checkpoint or the exporter changes.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aether_box.errors import BadRequest
from aether_box.models.encoders import ENCODER_JSON
from aether_box.models.files import atomic_writer, directory_lock, sha256_file

__all__ = [
    "EXPORTER_VERSION",
    "ENCODER_JSON",
    "LAYOUTS",
    "build_bert_graph",
    "build_int8_copy",
    "build_packed_graph",
    "ensure_exported",
]

log = logging.getLogger(__name__)
# Bump when the graph changes, so cached exports are redone.
EXPORTER_VERSION = 8
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
SOURCE = "model.safetensors"
OPSET = 17


def ensure_exported(model_dir: Path) -> Path:
    """The encoder dir, after exporting its checkpoint to ONNX unless a current export exists."""
    model_dir = Path(model_dir)
    if _state(model_dir) == "current":
        return model_dir  # the usual case takes no lock, so read-only model dirs load
    with directory_lock(model_dir):
        state = _state(model_dir)  # another process may have exported meanwhile
        if state == "current":
            return model_dir
        source, onnx_path = model_dir / SOURCE, model_dir / ONNX_FILE
        stat = source.stat()
        # The cheap stamp moved: hash to tell a touched file from a new checkpoint.
        digest = sha256_file(source)
        stamp = _read_json(model_dir / ENCODER_JSON).get("export", {})
        if state == "stale" or stamp.get("source_sha256") != digest:
            _export(model_dir, onnx_path)
        config = _encoder_config(model_dir)
        if not (model_dir / INT8_FILE).is_file():
            config.pop("onnx_int8")
        config["export"] = {
            "exporter": EXPORTER_VERSION,
            "source": SOURCE,
            "source_sha256": digest,
            "source_size": stat.st_size,
            "source_mtime_ns": stat.st_mtime_ns,
            "onnx_size": onnx_path.stat().st_size,
        }
        with atomic_writer(model_dir / ENCODER_JSON) as handle:
            handle.write(json.dumps(config, indent=2).encode())
    return model_dir


def _state(model_dir: Path) -> str:
    """Whether the export is current, only "touched" (checkpoint mtime moved) or stale."""
    stamp = _read_json(model_dir / ENCODER_JSON).get("export", {})
    onnx_path = model_dir / ONNX_FILE
    stat = (model_dir / SOURCE).stat()
    if not (
        onnx_path.is_file()
        and onnx_path.stat().st_size == stamp.get("onnx_size")  # a damaged export is redone
        and stamp.get("exporter") == EXPORTER_VERSION
        and stamp.get("source_size") == stat.st_size
    ):
        return "stale"
    return "current" if stamp.get("source_mtime_ns") == stat.st_mtime_ns else "touched"


def _export(model_dir: Path, onnx_path: Path) -> None:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    from aether_box.errors import CorruptModel

    config = _read_json(model_dir / "config.json")
    if (
        config.get("model_type", "bert") not in LAYOUTS
        or config.get("position_embedding_type", "absolute") != "absolute"
    ):
        raise BadRequest(
            f"{model_dir} is not a BERT or MPNet checkpoint with absolute positions "
            f"(config.json says model_type {config.get('model_type')!r}); the box exports only those"
        )
    try:
        weights = load_file(str(model_dir / SOURCE))
    except (SafetensorError, OSError) as exc:
        raise CorruptModel(
            f"{model_dir / SOURCE} cannot be read ({exc}); pull the model again"
        ) from exc
    model, int8 = _graphs(model_dir, weights, config)
    with atomic_writer(onnx_path) as handle:
        handle.write(model.SerializeToString())
    if int8 is not None:
        with atomic_writer(model_dir / INT8_FILE) as handle:
            handle.write(int8.SerializeToString())
    else:
        (model_dir / INT8_FILE).unlink(missing_ok=True)


def _graphs(
    model_dir: Path, weights: dict[str, np.ndarray], config: dict[str, Any]
) -> tuple[Any, Any]:
    """The float32 graph to serve and its int8 copy (None when there is none)."""
    model = build_packed_graph(weights, config)
    if not LAYOUTS[config.get("model_type", "bert")].int8_copy:
        return model, None
    try:
        return model, build_int8_copy(model, model_dir / "tokenizer.json")
    except Exception as exc:  # e.g. no tokenizer.json beside the checkpoint
        # The int8 copy is an option (engines.onnx_int8); the float32 graph is what counts.
        log.warning("exporting %s without an int8 copy: %r", model_dir, exc)
        return model, None


def build_int8_copy(model: Any, tokenizer_path: Path) -> Any:
    """The int8 copy of an exported float32 graph (`model` is left as it is); see int8_copy."""
    import onnx

    from aether_box.models.int8_copy import calibration_texts, input_ranges, quantize_rows

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return quantize_rows(copy, input_ranges(model, tokenizer_path, calibration_texts()))


def _encoder_config(model_dir: Path) -> dict[str, Any]:
    config = _read_json(model_dir / "config.json")
    sbert = _read_json(model_dir / "sentence_bert_config.json")
    pooling = _read_json(model_dir / "1_Pooling" / "config.json")
    if pooling and not pooling.get("pooling_mode_mean_tokens", True):
        raise BadRequest(f"{model_dir}: only mean pooling is supported")
    return {
        "onnx": ONNX_FILE,
        "tokenizer": "tokenizer.json",
        # sentence-transformers truncates at max_seq_length, not the model's 512 positions.
        "max_length": int(sbert.get("max_seq_length", config.get("max_position_embeddings", 512))),
        "dim": int(config["hidden_size"]),
        "output": "sentence_embedding",
        "onnx_int8": INT8_FILE,
    }


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text("utf-8")) if path.is_file() else {}


class _Graph:
    """A tiny builder: named nodes and float32 initializers."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, kind: str, inputs: list[str], name: str | None = None, **attrs: Any) -> str:
        from onnx import helper

        self._n += 1
        out = name or f"{kind.lower()}_{self._n}"
        self.nodes.append(helper.make_node(kind, inputs, [out], name=f"{kind}_{self._n}", **attrs))
        return out


@dataclass(frozen=True)
class _Layout:
    """Where a BERT-family architecture keeps its weights and how it places tokens."""

    query: str
    key: str
    value: str
    attention_out: str
    attention_norm: str  # the module whose LayerNorm follows attention
    token_types: bool  # BERT adds token type 0's embedding to every token
    positions_after_padding: bool  # MPNet (as RoBERTa): position ids start at pad_token_id + 1
    relative_bias: bool  # MPNet: a bucketed relative position bias, shared by every layer
    # Whether the export writes an int8 copy: for MPNet no int8 variant kept every reference
    # vector within cosine 0.99 of float32 (best 0.982), so `engines.onnx_int8` runs it in
    # float32.
    int8_copy: bool


LAYOUTS = {
    "bert": _Layout(
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "attention.output",
        token_types=True,
        positions_after_padding=False,
        relative_bias=False,
        int8_copy=True,
    ),
    "mpnet": _Layout(
        "attention.attn.q",
        "attention.attn.k",
        "attention.attn.v",
        "attention.attn.o",
        "attention",
        token_types=False,
        positions_after_padding=True,
        relative_bias=True,
        int8_copy=False,
    ),
}


def build_bert_graph(weights: dict[str, np.ndarray], config: dict[str, Any]):
    """The ONNX ModelProto of a BERT-family encoder (BERT or MPNet, by config's model_type)
    with mean pooling and L2 normalisation."""

    layout, w = _reader(weights, config)
    hidden, heads, layers, eps = _dimensions(config)
    head_dim = hidden // heads

    g = _Graph()
    f32 = np.float32
    i64 = np.int64
    g.const("axes_0", np.array([0], i64))
    g.const("axes_1", np.array([1], i64))
    g.const("axes_2", np.array([2], i64))
    g.const("index_1", np.array([1], i64))
    g.const("zero_i", np.array([0], i64))
    g.const("one_f", np.array(1.0, f32))
    g.const("half_f", np.array(0.5, f32))
    g.const("sqrt2_f", np.array(math.sqrt(2.0), f32))
    g.const("tiny", np.array(1e-9, f32))
    g.const("norm_eps", np.array(1e-12, f32))
    g.const("split_heads", np.array([0, 0, heads, head_dim], i64))
    g.const("merge_heads", np.array([0, 0, hidden], i64))

    # Embeddings: words + positions (+ token type 0: single sentences only ever use type 0).
    words = g.op(
        "Gather",
        [g.const("word_embeddings", w("embeddings.word_embeddings.weight")), "input_ids"],
        axis=0,
    )
    positions = _position_table(w, layout, config)
    seq_len = g.op("Gather", [g.op("Shape", ["input_ids"]), "index_1"], axis=0)
    pos = g.op("Slice", [g.const("position_embeddings", positions), "zero_i", seq_len, "axes_0"])
    x = _add_and_norm(g, words, pos, "emb_ln", w, "embeddings", eps)

    add_mask = _key_mask(g)
    if layout.relative_bias:
        # MPNet adds the same (1, heads, seq, seq) bias to every layer's scores: add it to the
        # mask once.
        add_mask = g.op("Add", [add_mask, _relative_bias(g, w, config, len(positions))])

    g.const("sqrt_head_dim", np.array(math.sqrt(head_dim), f32))
    for i in range(layers):
        p = f"encoder.layer.{i}."

        def dense(inp: str, name: str, _p: str = p, _i: int = i) -> str:
            return _dense(g, w, inp, _p + name, f"l{_i}_{name}")

        def add_and_norm(
            out: str, residual: str, tag: str, name: str, _p: str = p, _i: int = i
        ) -> str:
            # Residual connection, then LayerNorm with the checkpoint's `name`.LayerNorm weights.
            return _add_and_norm(g, out, residual, f"l{_i}_{tag}_ln", w, _p + name, eps)

        qkv = (dense(x, layout.query), dense(x, layout.key), dense(x, layout.value))
        context = g.op("Reshape", [_attention(g, *qkv, add_mask, "sqrt_head_dim"), "merge_heads"])
        x = add_and_norm(dense(context, layout.attention_out), x, "attn", layout.attention_norm)
        inner = dense(x, "intermediate.dense")
        # Exact GELU, as BERT uses: x * 0.5 * (1 + erf(x / sqrt(2))).
        erf = g.op("Erf", [g.op("Div", [inner, "sqrt2_f"])])
        gelu = g.op("Mul", [g.op("Mul", [inner, g.op("Add", [erf, "one_f"])]), "half_f"])
        x = add_and_norm(dense(gelu, "output.dense"), x, "out", "output")

    return _pooled_model(g, x, hidden)


def _relative_bias(
    g: _Graph, w: Callable[[str], np.ndarray], config: dict[str, Any], positions: int
) -> str:
    """MPNet's position bias for this sequence length, (1, heads, seq, seq).

    It depends only on the distance k - q, so a table over every distance a sequence of
    `positions` tokens can have is precomputed, and the graph gathers from it.
    """
    buckets = int(config.get("relative_attention_num_buckets", 32))
    per_bucket = w("encoder.relative_attention_bias.weight")  # (buckets, heads)
    distances = np.arange(-(positions - 1), positions)
    g.const("relative_bias_table", per_bucket[_relative_buckets(distances, buckets)])
    g.const("scalar_0", np.array(0, np.int64))
    g.const("scalar_1", np.array(1, np.int64))
    g.const("distance_offset", np.array(positions - 1, np.int64))
    seq = g.op("Gather", [g.op("Shape", ["input_ids"]), "scalar_1"], axis=0)
    steps = g.op("Range", ["scalar_0", seq, "scalar_1"])
    distance = g.op(
        "Sub", [g.op("Unsqueeze", [steps, "axes_0"]), g.op("Unsqueeze", [steps, "axes_1"])]
    )  # [q, k] = k - q
    bias = g.op("Gather", ["relative_bias_table", g.op("Add", [distance, "distance_offset"])])
    bias = g.op("Transpose", [bias], perm=[2, 0, 1])  # (heads, seq, seq)
    bias = g.op("Unsqueeze", [bias, "axes_0"])
    return bias


def _relative_buckets(relative: np.ndarray, buckets: int, max_distance: int = 128) -> np.ndarray:
    """HF MPNet's (T5's) bucket of each relative position k - q: half the buckets for each
    direction, exact up to a quarter of them, then logarithmic up to `max_distance`."""
    half = buckets // 2
    n = -relative
    ret = (n < 0).astype(np.int64) * half
    n = np.abs(n)
    exact = half // 2
    with np.errstate(divide="ignore"):  # log(0) for n == 0, which takes the exact branch
        large = exact + (
            np.log(n.astype(np.float32) / exact) / math.log(max_distance / exact) * (half - exact)
        )
    large = np.minimum(np.where(n < exact, 0, large).astype(np.int64), half - 1)
    return ret + np.where(n < exact, n, large)


def build_packed_graph(weights: dict[str, np.ndarray], config: dict[str, Any]) -> Any:
    """The encoder as `build_bert_graph`'s, run on the batch's real tokens only.

    Same inputs and output. The padded (batch, seq) ids are packed into one (tokens, hidden)
    matrix inside the graph, so every matrix product, layer norm and GELU (nine tenths of the
    work) skips the padding; only attention sees the padded layout (gathered there and back),
    as the reference graph's plain ops and key mask. The rest is plain ONNX on 2-d tensors,
    chosen by measurement on ONNX Runtime's CPU provider: each MatMul + bias Add fuses into one Gemm, and Add + LayerNormalization run
    about 5x faster than the fused SkipLayerNormalization kernel (which 3-d input would get),
    as the Gelu kernel runs faster than BiasGelu; together 8% more texts per CPU-second.
    Padding must be on the right (positions restart at 0 in each row), as the encoder pads.
    """

    layout, w = _reader(weights, config)
    hidden, heads, layers, eps = _dimensions(config)

    g = _Graph()
    i64 = np.int64
    g.const("flat", np.array([-1], i64))
    g.const("axes_0", np.array([0], i64))
    g.const("axes_1", np.array([1], i64))
    g.const("axes_2", np.array([2], i64))
    g.const("index_1", np.array([1], i64))
    g.const("one_i", np.array(1, i64))
    g.const("zero_i", np.array(0, i64))
    g.const("rows_of_hidden", np.array([-1, hidden], i64))
    g.const("split_heads", np.array([0, 0, heads, hidden // heads], i64))
    g.const("tiny", np.array(1e-9, np.float32))
    g.const("norm_eps", np.array(1e-12, np.float32))

    # Packing: `real` lists the (row * seq + col) slots holding tokens, in order; `slot_to_token`
    # maps every padded slot to its token's place in the packed rows (a pad slot to its row's
    # last token: attention masks it by length, and pooling weights it 0).
    shape = g.op("Shape", ["input_ids"])
    seq_len = g.op("Gather", [shape, "index_1"], axis=0)
    padded_shape = g.op("Concat", [shape, "flat"], axis=0)  # (batch, seq, width)
    mask_flat = g.op("Reshape", ["attention_mask", "flat"])
    real = g.op("Squeeze", [g.op("NonZero", [mask_flat]), "axes_0"])
    slot_to_token = g.op(
        "Max", [g.op("Sub", [g.op("CumSum", [mask_flat, "zero_i"]), "one_i"]), "zero_i"]
    )
    key_mask = _key_mask(g)

    def to_padded(packed: str) -> str:
        return g.op("Reshape", [g.op("Gather", [packed, slot_to_token], axis=0), padded_shape])

    table = _position_table(w, layout, config)
    if layout.relative_bias:  # MPNet: the same (1, heads, seq, seq) bias in every layer
        key_mask = g.op("Add", [key_mask, _relative_bias(g, w, config, len(table))])

    # Embeddings: words + positions (+ token type 0: single sentences only ever use type 0).
    ids = g.op("Gather", [g.op("Reshape", ["input_ids", "flat"]), real], axis=0)
    positions = g.op("Mod", [real, seq_len])
    words = g.op(
        "Gather", [g.const("word_embeddings", w("embeddings.word_embeddings.weight")), ids], axis=0
    )
    position_rows = g.op("Gather", [g.const("position_embeddings", table), positions], axis=0)
    # (tokens, hidden) from here on
    x = _add_and_norm(g, words, position_rows, "emb_ln", w, "embeddings", eps)

    for i in range(layers):
        p = f"encoder.layer.{i}."

        def dense(
            inp: str, name: str, tag: str, scale: float = 1.0, _p: str = p, _i: int = i
        ) -> str:
            return _dense(g, w, inp, _p + name, f"l{_i}_{tag}", scale)

        def add_and_norm(
            out: str, residual: str, tag: str, name: str, _p: str = p, _i: int = i
        ) -> str:
            # Residual connection, then LayerNorm with the checkpoint's `name`.LayerNorm weights.
            return _add_and_norm(g, out, residual, f"l{_i}_{tag}_ln", w, _p + name, eps)

        # Attention on the padded layout, as the reference graph's plain MatMuls and Softmax
        # (about 4% more texts per CPU-second than MultiHeadAttention at these lengths), with the
        # 1/sqrt(head size) of the scores folded into the query's weights and bias.
        q_scale = 1.0 / math.sqrt(hidden // heads)
        qkv = (
            to_padded(dense(x, layout.query, "query", q_scale)),
            to_padded(dense(x, layout.key, "key")),
            to_padded(dense(x, layout.value, "value")),
        )
        context = _attention(g, *qkv, key_mask)
        context = g.op("Gather", [g.op("Reshape", [context, "rows_of_hidden"]), real], axis=0)
        attended = dense(context, layout.attention_out, "attn")
        x = add_and_norm(attended, x, "attn", layout.attention_norm)
        # Exact (erf) GELU, as BERT uses; ONNX Runtime's contrib Gelu (opset 20's is the same).
        inner = g.op("Gelu", [dense(x, "intermediate.dense", "inner")], domain="com.microsoft")
        x = add_and_norm(dense(inner, "output.dense", "out"), x, "out", "output")

    return _pooled_model(g, to_padded(x), hidden, contrib_ops=True)


def _pooled_model(g: _Graph, padded: str, hidden: int, *, contrib_ops: bool = False) -> Any:
    """The model whose output is `padded` (batch, seq, hidden) mean-pooled over each text's
    tokens and L2-normalised (x / max(|x|, 1e-12)); `contrib_ops` when the graph uses
    ONNX Runtime's com.microsoft ops."""
    from onnx import TensorProto, helper

    mask_3d = g.op("Unsqueeze", [g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT), "axes_2"])
    summed = g.op("ReduceSum", [g.op("Mul", [padded, mask_3d]), "axes_1"], keepdims=0)
    counts = g.op("Max", [g.op("ReduceSum", [mask_3d, "axes_1"], keepdims=0), "tiny"])
    mean = g.op("Div", [summed, counts])
    # ReduceL2 takes axes as an attribute up to opset 17 (ReduceSum as an input since 13).
    norm = g.op("Max", [g.op("ReduceL2", [mean], axes=[1], keepdims=1), "norm_eps"])
    g.op("Div", [mean, norm], name="sentence_embedding")

    graph = helper.make_graph(
        g.nodes,
        "sentence_encoder",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", hidden])],
        g.inits,
    )
    opsets = [helper.make_opsetid("", OPSET)]
    if contrib_ops:
        opsets.append(helper.make_opsetid("com.microsoft", 1))
    model = helper.make_model(graph, opset_imports=opsets, producer_name="aether-box")
    model.ir_version = 8  # opset 17's IR, readable by every onnxruntime that runs opset 17
    return model


def _add_and_norm(
    g: _Graph,
    out: str,
    residual: str,
    name: str,
    w: Callable[[str], np.ndarray],
    prefix: str,
    eps: float,
) -> str:
    """`out` + `residual`, then LayerNormalization with the checkpoint's
    `prefix`.LayerNorm weights (read through `w`), stored as `name`_w and `name`_b."""
    return g.op(
        "LayerNormalization",
        [
            g.op("Add", [out, residual]),
            g.const(f"{name}_w", w(prefix + ".LayerNorm.weight")),
            g.const(f"{name}_b", w(prefix + ".LayerNorm.bias")),
        ],
        axis=-1,
        epsilon=eps,
    )


def _dimensions(config: dict[str, Any]) -> tuple[int, int, int, float]:
    """(hidden size, heads, layers, layer-norm epsilon) of a checkpoint's config.json."""
    if config.get("hidden_act", "gelu") != "gelu":
        raise BadRequest(f"hidden_act {config.get('hidden_act')!r} is not supported (only gelu)")
    return (
        int(config["hidden_size"]),
        int(config["num_attention_heads"]),
        int(config["num_hidden_layers"]),
        float(config.get("layer_norm_eps", 1e-12)),
    )


def _attention(g: _Graph, q: str, k: str, v: str, mask: str, divisor: str | None = None) -> str:
    """Multi-head attention of (batch, seq, hidden) queries, keys and values, as plain ONNX:
    the scores (batch, heads, seq, seq), divided by `divisor` (None: the scale is already in
    the queries), plus `mask`, softmax, then the values. Returns (batch, seq, heads, head size)."""

    def heads(t: str, perm: list[int]) -> str:
        return g.op("Transpose", [g.op("Reshape", [t, "split_heads"])], perm=perm)

    scores = g.op("MatMul", [heads(q, [0, 2, 1, 3]), heads(k, [0, 2, 3, 1])])
    if divisor is not None:
        scores = g.op("Div", [scores, divisor])
    probs = g.op("Softmax", [g.op("Add", [scores, mask])], axis=-1)
    return g.op("Transpose", [g.op("MatMul", [probs, heads(v, [0, 2, 1, 3])])], perm=[0, 2, 1, 3])


def _reader(
    weights: dict[str, np.ndarray], config: dict[str, Any]
) -> tuple[_Layout, Callable[[str], np.ndarray]]:
    """The checkpoint's layout, and a float32 reader of its weights by their names without the
    architecture's prefix ("bert.", "mpnet.": present in some checkpoints, not in others)."""
    model_type = config.get("model_type", "bert")
    prefix = (
        f"{model_type}." if f"{model_type}.embeddings.word_embeddings.weight" in weights else ""
    )

    def w(name: str) -> np.ndarray:
        return weights[prefix + name].astype(np.float32)

    return LAYOUTS[model_type], w


def _position_table(
    w: Callable[[str], np.ndarray], layout: _Layout, config: dict[str, Any]
) -> np.ndarray:
    """Row t: what the embeddings add to a text's t-th token besides its word."""
    table = w("embeddings.position_embeddings.weight")
    if layout.positions_after_padding:
        # Right-padded rows: token t has position pad_token_id + 1 + t (padding is masked out).
        table = table[int(config.get("pad_token_id", 1)) + 1 :]
    if layout.token_types:
        table = table + w("embeddings.token_type_embeddings.weight")[0]
    return table


def _key_mask(g: _Graph) -> str:
    """The scores' additive mask, (batch, 1, 1, seq): 0 on a text's tokens, float32 min on its
    padding (softmax gives it 0)."""
    from onnx import TensorProto

    mask = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    padding = g.op("Sub", [g.const("mask_one", np.array(1.0, np.float32)), mask])
    lowest = g.const("mask_min", np.array(np.finfo(np.float32).min, np.float32))
    return g.op(
        "Unsqueeze",
        [g.op("Mul", [padding, lowest]), g.const("axes_1_2", np.array([1, 2], np.int64))],
    )


def _dense(
    g: _Graph,
    w: Callable[[str], np.ndarray],
    inp: str,
    module: str,
    name: str,
    scale: float = 1.0,
) -> str:
    """`inp` times the checkpoint's `module` weight plus its bias (both times `scale`), stored
    as `name`_w and `name`_b. Weights are stored (out, in); MatMul wants (in, out)."""
    scaled = np.float32(scale)
    weight = g.const(f"{name}_w", w(module + ".weight").T * scaled)
    bias = g.const(f"{name}_b", w(module + ".bias") * scaled)
    return g.op("Add", [g.op("MatMul", [inp, weight]), bias])
