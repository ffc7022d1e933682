"""A GGUF file's architecture and tensor shapes, read from its header only.

`gguf.GGUFReader` builds an object for every element of every metadata array, which takes
seconds for a model's 49k-token vocabulary; checking an adapter needs only the architecture
and the shapes, so this reads just those and skips the rest by length.
"""

from __future__ import annotations

import struct
from pathlib import Path

__all__ = ["read_header"]

_MAGIC = b"GGUF"
# Sizes of the fixed-size GGUF value types, by type id (8 is a string, 9 an array).
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
_INTS = {4: "<I", 5: "<i", 10: "<Q", 11: "<q"}


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


def _parse(data: bytes) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    cursor = _Cursor(data)
    cursor.at = 4
    _, n_tensors, n_kv = cursor.take("<IQQ")
    strings: dict[str, str] = {}
    for _ in range(n_kv):
        key = cursor.string()
        (kind,) = cursor.take("<I")
        if kind == _STRING:
            strings[key] = cursor.string()
        elif kind in _INTS:
            (strings[key],) = (str(v) for v in cursor.take(_INTS[kind]))
        else:
            cursor.skip(kind)
    shapes: dict[str, tuple[int, ...]] = {}
    for _ in range(n_tensors):
        name = cursor.string()
        (n_dims,) = cursor.take("<I")
        dims = cursor.take(f"<{n_dims}Q")
        cursor.take("<IQ")  # type, offset
        shapes[name] = tuple(int(d) for d in reversed(dims))
    if cursor.at > len(data):
        raise IndexError("past the end")
    return strings, shapes
