"""PEFT LoRA directories (adapter_config.json + adapter_model.safetensors) to GGUF, without torch.

Hugging Face names (``model.layers.3.self_attn.q_proj``) become llama.cpp's (``blk.3.attn_q``),
as llama.cpp's convert_lora_to_gguf.py maps them, and the factors keep PEFT's layout (A is
(rank, n_in), B is (n_out, rank)). llama.cpp stores q and k rows permuted for its RoPE
(convert_hf_to_gguf.py's `permute`, pairs of rotary halves interleaved per head), so the
output rows of B for q and k are permuted the same way; A, on the input side, is not.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from aether_box.adapters.gguf_header import read_header
from aether_box.adapters.lora_file import AdapterRejected, LoraFile

__all__ = ["convert_peft", "rope_permute"]

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")
_NAMES = {
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_output",
    "gate_proj": "ffn_gate",
    "up_proj": "ffn_up",
    "down_proj": "ffn_down",
}


def rope_permute(rows: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order from Hugging Face's (convert_hf_to_gguf.py's `permute`)."""
    shape = rows.shape
    return (
        rows.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)
    )


def convert_peft(directory: Path, base: Path) -> LoraFile:
    """The adapter in PEFT `directory`, for the llama-family GGUF model `base`."""
    config_path = directory / "adapter_config.json"
    weights_path = directory / "adapter_model.safetensors"
    if not config_path.is_file() or not weights_path.is_file():
        raise AdapterRejected(
            "peft files",
            f"{directory} needs adapter_config.json and adapter_model.safetensors "
            "(a .bin adapter: save it again with safe_serialization=True)",
        )
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise AdapterRejected("peft files", f"adapter_config.json is not JSON ({exc})") from exc
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterRejected("peft files", f"a {config.get('peft_type')} adapter is not a LoRA")
    if config.get("use_dora") or config.get("use_rslora"):
        raise AdapterRejected("peft files", "DoRA and rsLoRA adapters are not supported")
    strings, _ = read_header(base)
    arch = strings.get("general.architecture", "")
    n_head, n_head_kv = _heads(base, arch)
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(weights_path))
    except Exception as exc:  # safetensors raises its own errors on damaged files
        raise AdapterRejected("peft files", f"cannot read {weights_path.name}: {exc}") from exc
    halves: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        match = _LAYER.search(key)
        if match is None or match.group(3) not in _NAMES:
            raise AdapterRejected(
                "tensor names", f"{key}: only q/k/v/o and gate/up/down projections convert"
            )
        layer, _, proj, half = match.groups()
        name = f"blk.{layer}.{_NAMES[proj]}.weight"
        data = np.asarray(value, dtype=np.float32)
        if half == "B" and proj == "q_proj":
            data = rope_permute(data, n_head)
        elif half == "B" and proj == "k_proj":
            data = rope_permute(data, n_head_kv)
        halves.setdefault(name, {})[half] = data
    factors = {}
    for name, pair in halves.items():
        if set(pair) != {"A", "B"}:
            raise AdapterRejected("tensor names", f"{name} has lora_A or lora_B but not both")
        factors[name] = (pair["A"], pair["B"])
    alpha = float(config.get("lora_alpha") or config.get("r") or 0)
    ranks = {a.shape[0] for a, _ in factors.values()}
    if config.get("alpha_pattern") or config.get("rank_pattern") or len(ranks) > 1:
        raise AdapterRejected("peft files", "per-layer ranks or alphas are not supported")
    return LoraFile(arch, alpha, factors)


def _heads(base: Path, arch: str) -> tuple[int, int]:
    """The base model's attention heads and KV heads (from its GGUF metadata)."""
    ints = read_header(base)[0]
    try:
        n_head = int(ints[f"{arch}.attention.head_count"])
    except KeyError:
        raise AdapterRejected("architecture", f"the base ({arch!r}) names no head count") from None
    return n_head, int(ints.get(f"{arch}.attention.head_count_kv", n_head))
