"""A GGUF file's architecture and tensor shapes, read from its header only.

`gguf.GGUFReader` builds an object for every element of every metadata array, which takes
seconds for a model's 49k-token vocabulary; checking an adapter needs only the architecture
and the shapes, so this reads just those and skips the rest by length.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Layout", "TensorInfo", "read_header", "read_layout"]

_MAGIC = b"GGUF"
# Sizes of the fixed-size GGUF value types, by type id (8 is a string, 9 an array).
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
_INTS = {4: "<I", 5: "<i", 10: "<Q", 11: "<q"}
DEFAULT_ALIGNMENT = 32


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in the header: GGUF dims (innermost first), ggml type, data offset."""

    name: str
    dims: tuple[int, ...]
    type: int
    offset: int


@dataclass(frozen=True)
class Layout:
    """Where a GGUF file's parts lie: the header and metadata end at `kv_end` (the tensor
    entries follow), tensor data starts at `data_start`, each tensor aligned to `alignment`."""

    version: int
    n_kv: int
    kv_end: int
    alignment: int
    data_start: int
    tensors: tuple[TensorInfo, ...]


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, fmt: str) -> tuple[int, ...]:
        values = struct.unpack_from(fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return values

    def string(self) -> str:
        (n,) = self.take("<Q")
        text = self.data[self.at : self.at + n].decode("utf-8", "replace")
        self.at += n
        return text

    def skip(self, kind: int) -> None:
        if kind in _FIXED:
            self.at += _FIXED[kind]
        elif kind == _STRING:
            (n,) = self.take("<Q")
            self.at += n
        elif kind == _ARRAY:
            inner, count = self.take("<IQ")
            if inner in _FIXED:
                self.at += _FIXED[inner] * count
            else:
                for _ in range(count):
                    self.skip(inner)
        else:
            raise ValueError(f"unknown GGUF value type {kind}")


def read_header(path: Path) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """(string and integer metadata, as text; tensor shapes in numpy order) of the GGUF file at `path`.

    ValueError when it is not a GGUF file; the whole header is read, not the tensor data.
    """
    strings, layout = _read(path)
    shapes = {t.name: tuple(reversed(t.dims)) for t in layout.tensors}
    return strings, shapes


def read_layout(path: Path) -> tuple[dict[str, str], Layout]:
    """The metadata (as read_header) and the byte layout of the GGUF file at `path`."""
    return _read(path)


def _read(path: Path) -> tuple[dict[str, str], Layout]:
    with open(path, "rb") as file:
        head = file.read(24)
        if len(head) < 24 or head[:4] != _MAGIC:
            raise ValueError(f"{path.name} is not a GGUF file")
        # The metadata is rarely over a few MB (a vocabulary); read more as needed.
        size = 1 << 22
        data = head + file.read(size)
        while True:
            try:
                return _parse(data)
            except (struct.error, IndexError):
                more = file.read(size)
                if not more:
                    raise ValueError(f"{path.name}: the GGUF header is truncated") from None
                data += more
                size *= 2


def _parse(data: bytes) -> tuple[dict[str, str], Layout]:
    cursor = _Cursor(data)
    cursor.at = 4
    version, n_tensors, n_kv = cursor.take("<IQQ")
    alignment = DEFAULT_ALIGNMENT
    strings: dict[str, str] = {}
    for _ in range(n_kv):
        key = cursor.string()
        (kind,) = cursor.take("<I")
        if kind == _STRING:
            strings[key] = cursor.string()
        elif kind in _INTS:
            (strings[key],) = (str(v) for v in cursor.take(_INTS[kind]))
            if key == "general.alignment":
                alignment = int(strings[key])
        else:
            cursor.skip(kind)
    kv_end = cursor.at
    tensors = []
    for _ in range(n_tensors):
        name = cursor.string()
        (n_dims,) = cursor.take("<I")
        dims = cursor.take(f"<{n_dims}Q")
        kind, offset = cursor.take("<IQ")
        tensors.append(TensorInfo(name, tuple(int(d) for d in dims), int(kind), int(offset)))
    if cursor.at > len(data):
        raise IndexError("past the end")
    data_start = -(-cursor.at // alignment) * alignment
    layout = Layout(version, n_kv, kv_end, alignment, data_start, tuple(tensors))
    return strings, layout
