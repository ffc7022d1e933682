"""Registering a user's ONNX sentence encoder: check it, and write the encoder dir that points
at it (``encoder.json``), which aether_box.engines.onnx then runs.

Preparing model files is the model kit's job; running them is the engines'. So this lives
here, and the engines import the model kit, never the other way round.
"""

from __future__ import annotations

import json
from pathlib import Path

from aether_box.errors import BadRequest
from aether_box.models.files import atomic_writer

__all__ = ["ENCODER_JSON", "register_encoder"]

ENCODER_JSON = "encoder.json"


def register_encoder(
    onnx_file: Path,
    encoder_dir: Path,
    *,
    tokenizer: str | Path | None = None,
    max_length: int = 512,
) -> int:
    """Check a user's ONNX encoder and write an encoder dir pointing at it; returns its dim."""
    import onnx
    from tokenizers import Tokenizer

    try:
        model = onnx.load(str(onnx_file), load_external_data=False)
    except Exception as exc:  # protobuf decode errors have no common public type
        raise BadRequest(f"{onnx_file} is not a valid ONNX model ({str(exc)[:200]})") from exc
    inputs = {i.name for i in model.graph.input}
    if not {"input_ids", "attention_mask"} <= inputs or not model.graph.output:
        raise BadRequest(
            f"{onnx_file} takes inputs {sorted(inputs)}; a sentence encoder needs input_ids and "
            "attention_mask and one output (token or sentence embeddings)"
        )
    output = next(
        (o for o in model.graph.output if o.name == "sentence_embedding"), model.graph.output[0]
    )
    dims = output.type.tensor_type.shape.dim
    if len(dims) not in (2, 3) or not dims[-1].dim_value:
        raise BadRequest(
            f"{onnx_file}: output {output.name} must be (batch, [seq,] dim) with a fixed dim"
        )
    tokenizer_path = Path(tokenizer) if tokenizer else onnx_file.parent / "tokenizer.json"
    try:
        Tokenizer.from_file(str(tokenizer_path))
    except Exception as exc:
        raise BadRequest(
            f"no usable tokenizer for {onnx_file.name} at {tokenizer_path} ({str(exc)[:200]}); "
            "put its tokenizer.json beside it or pass --tokenizer"
        ) from exc
    dim = int(dims[-1].dim_value)
    config = {
        "onnx": str(onnx_file.resolve()),
        "tokenizer": str(tokenizer_path.resolve()),
        "max_length": max_length,
        "dim": dim,
        "output": output.name,
    }
    encoder_dir.mkdir(parents=True, exist_ok=True)
    with atomic_writer(encoder_dir / ENCODER_JSON) as handle:
        handle.write(json.dumps(config, indent=2).encode())
    return dim
