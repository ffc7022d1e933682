"""What a model's own file says about it: family, size, quantisation, context, chat template.

For a GGUF model these come from its header (aether_box.models.gguf), read on demand (tens of
milliseconds: the tokenizer's arrays are skipped, not decoded). Ollama clients ask for them
(`POST /api/show`) to label a model and to learn its context length and template.
"""

from __future__ import annotations

from typing import Any

from aether_box.models.gguf import read_gguf_header
from aether_box.models.store import ModelInfo

__all__ = ["model_card"]

# llama.cpp's llama_ftype: the type most of a GGUF's tensors were quantised to.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0",
}  # fmt: skip


def model_card(info: ModelInfo) -> dict[str, Any]:
    """`info`'s name and kind, and for a GGUF what its header says (empty when it is silent):
    ``architecture``, ``size_label`` ("135M"), ``quantization`` ("Q4_1"),
    ``context_length`` (as trained), ``chat_template``. Reads the file: call it in a thread."""
    card: dict[str, Any] = {"model": info.name, "kind": info.kind, "dim": info.dim}
    if info.kind != "gguf":
        return card
    metadata = read_gguf_header(info.path).metadata
    arch = metadata.get("general.architecture")
    arch = arch if isinstance(arch, str) else ""
    file_type = metadata.get("general.file_type")
    context = metadata.get(f"{arch}.context_length")
    return card | {
        "architecture": arch,
        "size_label": _text(metadata.get("general.size_label")),
        "quantization": FILE_TYPES.get(file_type, "") if isinstance(file_type, int) else "",
        "context_length": context if isinstance(context, int) else None,
        "chat_template": _text(metadata.get("tokenizer.chat_template")),
    }


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""
