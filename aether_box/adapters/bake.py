"""Baking an adapter set into a copy of its base model: one GGUF whose weights hold the deltas.

llama.cpp applies a LoRA at runtime as extra graph nodes for every adapted weight, every token
(two small matmuls, a scale and an add); on a small model those nodes cost a tenth or more of
a decode step. A baked copy has none: its adapted weights are ``W + sum(scale * delta)``,
computed here with the `gguf` package's numpy (de)quantisers, so it decodes as fast as the
base. It is the same adapter set only up to the rounding of the new weights, which
`BakeReport` states per type and which the caller measures (KL to the runtime stack).

The file is written by copying the base's header and metadata byte for byte (so tokenizer,
template and hyperparameters are the base's), adding one metadata key that names the set,
writing the tensor entries anew (a retyped tensor has another size) and streaming the data;
to a temporary name, fsynced, then renamed: a crash leaves no half file under the real name.

All of it blocks (seconds to a minute, one BLAS thread): run it in a worker thread.
"""

from __future__ import annotations

import functools
import mmap
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from aether_box.adapters.gguf_header import Layout, TensorInfo, read_layout
from aether_box.adapters.lora_file import LoraFile
from aether_box.errors import BadRequest

__all__ = ["BAKE_TYPES", "BakeReport", "bake"]

# What an adapted weight is stored as. "q8_0": 8-bit blocks (an F16/F32 weight stays as it
# is); measured on SmolLM2 Q4_1, rounding 0.32-0.36 of the delta's RMS, tensors 1.7x their
# Q4_1 size. "f16": rounding about 0.01 of the delta, 3.6x. "same": the base's own type when
# the gguf package can write it (Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/BF16; else Q8_0): no bigger, but on
# a 4-bit model the rounding (measured 1.2x the delta) is larger than the adapter's change.
BAKE_TYPES = ("q8_0", "f16", "same")
_KEY = "aether_box.baked_adapters"
_F32, _F16, _Q8_0 = 0, 1, 8


@dataclass
class BakeReport:
    """What was baked: the file, its size, the adapted tensors by type, the rounding error."""

    path: Path
    bytes: int
    tensors: int
    types: dict[str, int] = field(default_factory=dict)  # adapted tensors by stored type
    # Over the adapted tensors: RMS of (stored - exact W + delta) against RMS of the delta,
    # so 1.0 means the rounding is as large as the adapter's own change.
    rounding_to_delta: float = 0.0


@functools.cache
def _requantisable(kind: int) -> bool:
    import gguf

    qtype = gguf.GGMLQuantizationType(kind)
    if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        return True
    try:
        gguf.quants.quantize(np.zeros((1, 256), dtype=np.float32), qtype)
    except (NotImplementedError, KeyError):
        return False
    return True


def _target_type(base_type: int, keep: str) -> int:
    if keep == "f16":
        return _F16
    if keep == "q8_0":
        return _Q8_0 if base_type not in (_F32, _F16) else base_type
    return base_type if _requantisable(base_type) else _Q8_0


def _nbytes(dims: Sequence[int], kind: int) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(kind)]
    n = int(np.prod(dims))
    return n // block * size


def _decode(raw: np.ndarray, kind: int, shape: tuple[int, int]) -> np.ndarray:
    import gguf

    if kind == _F32:
        return raw.view(np.float32).reshape(shape).copy()
    if kind == _F16:
        return raw.view(np.float16).reshape(shape).astype(np.float32)
    rows = raw.reshape(shape[0], -1)
    return np.asarray(gguf.quants.dequantize(rows, gguf.GGMLQuantizationType(kind)), np.float32)


def _encode(weights: np.ndarray, kind: int) -> np.ndarray:
    import gguf

    if kind == _F32:
        return weights.astype(np.float32).view(np.uint8).reshape(-1)
    if kind == _F16:
        return weights.astype(np.float16).view(np.uint8).reshape(-1)
    out = gguf.quants.quantize(weights.astype(np.float32), gguf.GGMLQuantizationType(kind))
    return np.ascontiguousarray(out).view(np.uint8).reshape(-1)


def _gguf_string(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("<Q", len(data)) + data


def bake(
    base: Path,
    adapters: Sequence[tuple[LoraFile, float]],
    out: Path,
    *,
    keep: str = "q8_0",
    label: str = "",
    progress: Callable[[int, int], None] | None = None,
) -> BakeReport:
    """Write to `out` the base model `base` with `adapters` ((adapter, request scale) pairs,
    in order) added into its weights; `keep` is how adapted weights are stored (BAKE_TYPES),
    `label` names the set in the file's metadata. `progress(done, of)` per adapted tensor."""
    if keep not in BAKE_TYPES:
        raise BadRequest(f"bake type must be one of {list(BAKE_TYPES)}, got {keep!r}")
    _, layout = read_layout(base)
    names = {t.name for t in layout.tensors}
    adapted = sorted({n for lora, _ in adapters for n in lora.factors})
    missing = [n for n in adapted if n not in names]
    if missing:
        raise BadRequest(f"the base model has no weight {missing[0]!r} the adapter changes")
    # One BLAS thread: llama.cpp's threads hold the cores (see merge).
    with threadpool_limits(1, user_api="blas"), open(base, "rb") as source:
        view = mmap.mmap(source.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            return _write(view, layout, adapters, adapted, out, keep, label, progress)
        finally:
            view.close()


def _write(
    view: mmap.mmap,
    layout: Layout,
    adapters: Sequence[tuple[LoraFile, float]],
    adapted: list[str],
    out: Path,
    keep: str,
    label: str,
    progress: Callable[[int, int], None] | None,
) -> BakeReport:
    base_bytes = np.frombuffer(view, dtype=np.uint8)
    entries: list[tuple[TensorInfo, int]] = []  # (base entry, stored type)
    for info in layout.tensors:
        kind = _target_type(info.type, keep) if info.name in adapted else info.type
        entries.append((info, kind))
    align = layout.alignment
    temporary = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    report = BakeReport(out, 0, len(adapted))
    rounding, change = 0.0, 0.0
    try:
        with open(temporary, "wb") as file:
            # Header and metadata as they are, with one more metadata key.
            head = bytearray(view[: layout.kv_end])
            struct.pack_into("<Q", head, 16, layout.n_kv + 1)
            file.write(head)
            file.write(_gguf_string(_KEY) + struct.pack("<I", 8) + _gguf_string(label))
            offset = 0
            for info, kind in entries:
                file.write(_gguf_string(info.name))
                file.write(struct.pack("<I", len(info.dims)))
                file.write(struct.pack(f"<{len(info.dims)}Q", *info.dims))
                file.write(struct.pack("<IQ", kind, offset))
                offset += -(-_nbytes(info.dims, kind) // align) * align
            file.write(b"\0" * (-file.tell() % align))
            done = 0
            for info, kind in entries:
                start = layout.data_start + info.offset
                raw = base_bytes[start : start + _nbytes(info.dims, info.type)]
                if info.name in adapted:
                    shape = (info.dims[1], info.dims[0])  # numpy (n_out, n_in)
                    weights = _decode(raw, info.type, shape)
                    delta = np.zeros(shape, dtype=np.float32)
                    for lora, scale in adapters:
                        if info.name in lora.factors:
                            delta += np.float32(scale) * lora.delta(info.name)
                    exact = weights + delta
                    data = _encode(exact, kind)
                    stored = _decode(data, kind, shape)
                    rounding += float(np.square(stored - exact).sum())
                    change += float(np.square(delta).sum())
                    type_name = _type_name(kind)
                    report.types[type_name] = report.types.get(type_name, 0) + 1
                    done += 1
                    if progress is not None:
                        progress(done, len(adapted))
                else:
                    data = raw
                file.write(data.tobytes())  # at most one tensor (tens of MB) at a time
                file.write(b"\0" * (-file.tell() % align))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, out)
    finally:
        temporary.unlink(missing_ok=True)
    report.bytes = out.stat().st_size
    report.rounding_to_delta = float(np.sqrt(rounding / change)) if change else 0.0
    return report


def _type_name(kind: int) -> str:
    import gguf

    return gguf.GGMLQuantizationType(kind).name
