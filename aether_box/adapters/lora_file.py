"""LoRA adapters as GGUF files: read, write, and check against the base model they adapt.

The layout is llama.cpp's (convert_lora_to_gguf.py): ``general.type = "adapter"``,
``adapter.type = "lora"``, ``adapter.lora.alpha``, and for each adapted weight ``W`` of the
base (numpy shape ``(n_out, n_in)``) two float tensors ``W.lora_a`` ``(rank, n_in)`` and
``W.lora_b`` ``(n_out, rank)``. llama.cpp adds ``scale * alpha / rank * B @ A`` to ``W``
(``scale`` alone when alpha is 0).

Reading and checking block (they read files): run them in a worker thread.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aether_box.adapters.gguf_header import read_header
from aether_box.errors import BadRequest

__all__ = [
    "AdapterRejected",
    "LoraFile",
    "base_shapes",
    "check_against_base",
    "read_lora",
    "write_lora",
]

SUFFIX_A, SUFFIX_B = ".lora_a", ".lora_b"


class AdapterRejected(BadRequest):
    """An adapter file failed one of the checks made before it is kept (a BadRequest to
    clients, its message naming the check)."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"adapter rejected by the {check!r} check: {message}")
        self.check = check


@dataclass
class LoraFile:
    """An adapter in memory: its architecture, alpha and (A, B) factors by base weight name."""

    architecture: str
    alpha: float
    factors: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def rank(self) -> int:
        """The largest rank among its tensors (they usually share one)."""
        return max((a.shape[0] for a, _ in self.factors.values()), default=0)

    def scale_of(self, name: str) -> float:
        """The factor llama.cpp puts before ``B @ A`` of `name` at request scale 1."""
        rank = self.factors[name][0].shape[0]
        return self.alpha / rank if self.alpha else 1.0

    def delta(self, name: str) -> np.ndarray:
        """The dense weight change of `name` at scale 1 (float32, (n_out, n_in))."""
        a, b = self.factors[name]
        return np.asarray(self.scale_of(name) * (b.astype(np.float32) @ a.astype(np.float32)))


def _field(reader: object, key: str) -> object:
    found = reader.fields.get(key)  # type: ignore[attr-defined]
    return None if found is None else found.contents()


def read_lora(path: Path) -> LoraFile:
    """Parse a GGUF LoRA file; AdapterRejected says which check its format failed."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # gguf raises ValueError, struct errors, ... on garbage
        raise AdapterRejected("gguf", f"{path.name} is not a readable GGUF file ({exc})") from exc
    kind = _field(reader, "general.type")
    if kind != "adapter":
        raise AdapterRejected(
            "general.type",
            f"{path.name} has general.type {kind!r}, not 'adapter' (is it a model rather "
            "than a LoRA? convert a PEFT adapter by passing its directory)",
        )
    if _field(reader, "adapter.type") not in (None, "lora"):
        raise AdapterRejected(
            "adapter.type", f"{path.name} is a {_field(reader, 'adapter.type')!r} adapter, not lora"
        )
    arch = _field(reader, "general.architecture")
    alpha = _field(reader, "adapter.lora.alpha")
    halves: dict[str, dict[str, np.ndarray]] = {}
    for tensor in reader.tensors:
        for suffix in (SUFFIX_A, SUFFIX_B):
            if tensor.name.endswith(suffix):
                base = tensor.name[: -len(suffix)]
                if tensor.tensor_type.name not in ("F32", "F16", "BF16"):
                    raise AdapterRejected(
                        "tensor type",
                        f"{tensor.name} is {tensor.tensor_type.name}; adapters here hold F32 "
                        "or F16 factors",
                    )
                data = np.asarray(tensor.data)
                if tensor.tensor_type.name == "BF16":
                    data = (data.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
                halves.setdefault(base, {})[suffix] = data.reshape(
                    [int(n) for n in reversed(tensor.shape)]
                )
                break
        else:
            raise AdapterRejected("tensor names", f"{tensor.name} is neither a lora_a nor lora_b")
    factors = {}
    for name, pair in halves.items():
        if len(pair) != 2:
            raise AdapterRejected("tensor names", f"{name} has lora_a or lora_b but not both")
        factors[name] = (pair[SUFFIX_A], pair[SUFFIX_B])
    if not factors:
        raise AdapterRejected("tensor names", f"{path.name} holds no lora_a/lora_b tensors")
    meta = {key: str(_field(reader, key)) for key in reader.fields if key.startswith("aether_box.")}
    return LoraFile(str(arch or ""), float(alpha or 0.0), factors, meta)  # type: ignore[arg-type]


def write_lora(path: Path, lora: LoraFile) -> None:
    """Write `lora` as a GGUF adapter llama.cpp loads (F32), atomically."""
    import gguf

    temporary = path.with_name(path.name + ".tmp")
    writer = gguf.GGUFWriter(str(temporary), lora.architecture)
    writer.add_type("adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(lora.alpha))
    for key, value in lora.metadata.items():
        writer.add_string(key, value)
    for name, (a, b) in lora.factors.items():
        writer.add_tensor(name + SUFFIX_A, np.ascontiguousarray(a, dtype=np.float32))
        writer.add_tensor(name + SUFFIX_B, np.ascontiguousarray(b, dtype=np.float32))
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(temporary, path)


def base_shapes(base: Path) -> tuple[str, dict[str, tuple[int, int]]]:
    """The base model's architecture and its 2-d weights' numpy shapes (n_out, n_in)."""
    try:
        strings, shapes = read_header(base)
    except (OSError, ValueError) as exc:
        raise AdapterRejected("base model", f"cannot read the base model {base}: {exc}") from exc
    flat = {name: (shape[0], shape[1]) for name, shape in shapes.items() if len(shape) == 2}
    return strings.get("general.architecture", ""), flat


def check_against_base(lora: LoraFile, base: Path, model: str) -> None:
    """AdapterRejected unless `lora` fits the base model file `base` (named `model`):
    same architecture, every tensor a 2-d weight of the base with matching shapes, and only
    finite values."""
    arch, shapes = base_shapes(base)
    if lora.architecture != arch:
        raise AdapterRejected(
            "architecture",
            f"the adapter is for {lora.architecture or 'an unnamed architecture'!r} but "
            f"{model!r} is {arch!r}",
        )
    for name, (a, b) in lora.factors.items():
        if name not in shapes:
            raise AdapterRejected("tensor names", f"{model!r} has no weight {name!r}")
        n_out, n_in = shapes[name]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise AdapterRejected(
                "tensor shapes",
                f"{name}: lora_a {a.shape} and lora_b {b.shape} do not share a rank "
                "(lora_a must be (rank, n_in), lora_b (n_out, rank))",
            )
        if a.shape[1] != n_in or b.shape[0] != n_out:
            raise AdapterRejected(
                "tensor shapes",
                f"{name}: the adapter changes a ({b.shape[0]}, {a.shape[1]}) weight but "
                f"{model!r}'s is ({n_out}, {n_in}); it was made for another model",
            )
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            raise AdapterRejected("finite values", f"{name} holds NaN or infinite values")
    if not np.isfinite(lora.alpha):
        raise AdapterRejected("finite values", "adapter.lora.alpha is not finite")
