"""Reads a GGUF file's header (version, metadata, tensor table) to refuse a broken file early.

`models add` registers a file the box will later hand to llama.cpp; a truncated download or a
corrupt file would only fail then, in the middle of a request. Reading the header is enough to
catch both: every count and length is checked against the file's size, and the tensor data
the table describes must lie inside the file.
GGUF layout: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from aether_box.errors import CorruptModel

__all__ = ["GgufHeader", "read_gguf_header"]

MAGIC = b"GGUF"
VERSIONS = (2, 3)
MAX_COUNT = 1 << 24  # tensors or metadata keys: far more than any real model has
DEFAULT_ALIGNMENT = 32

# Metadata value types: (struct format, size) for the fixed-size ones.
_SCALARS = {
    0: ("<B", 1),
    1: ("<b", 1),
    2: ("<H", 2),
    3: ("<h", 2),
    4: ("<I", 4),
    5: ("<i", 4),
    6: ("<f", 4),
    7: ("<?", 1),
    10: ("<Q", 8),
    11: ("<q", 8),
    12: ("<d", 8),
}
_STRING, _ARRAY = 8, 9
# ggml tensor types: (values per block, bytes per block), for the check of the data's end.
_BLOCKS = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    9: (32, 36), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176),
    14: (256, 210), 15: (256, 292), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8),
    28: (1, 8), 30: (1, 2),
}  # fmt: skip


@dataclass(frozen=True)
class GgufHeader:
    """What the header says: version, counts, the model's architecture and name."""

    version: int
    tensors: int
    metadata: dict[str, Any]

    @property
    def architecture(self) -> str | None:
        value = self.metadata.get("general.architecture")
        return value if isinstance(value, str) else None


def read_gguf_header(path: Path) -> GgufHeader:
    """The header of the GGUF file at `path`; CorruptModel says what is wrong with it."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        reader = _Reader(handle, size, path)
        if reader.take(4) != MAGIC:
            raise CorruptModel(f"{path} is not a GGUF file (it does not start with b'GGUF')")
        version = reader.unpack("<I", 4)
        if version not in VERSIONS:
            raise CorruptModel(
                f"{path} is GGUF version {version}; this box reads versions {VERSIONS}"
            )
        tensors = reader.count("tensors")
        keys = reader.count("metadata keys")
        metadata: dict[str, Any] = {}
        for _ in range(keys):
            key = reader.string()
            metadata[key] = reader.value(reader.unpack("<I", 4), summary=True)
        ends = [reader.tensor_end() for _ in range(tensors)]
        alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0:
            raise CorruptModel(f"{path}: general.alignment is {alignment!r}; the file is corrupt")
        data_start = -(-reader.position // alignment) * alignment
        needed = data_start + max(ends) if ends else reader.position  # no tensors: no data
        if needed > size:
            raise CorruptModel(
                f"{path} is truncated: its tensors need {needed} bytes, the file has {size}; "
                "download it again"
            )
    return GgufHeader(version, tensors, metadata)


class _Reader:
    """Sequential reads that fail as CorruptModel, never past the end of the file."""

    def __init__(self, handle: BinaryIO, size: int, path: Path) -> None:
        self.handle, self.size, self.path = handle, size, path
        self.position = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.position + n > self.size:
            raise CorruptModel(
                f"{self.path} is truncated or corrupt: its header runs past the end of the "
                f"file ({self.size} bytes); download it again"
            )
        data = self.handle.read(n)
        self.position += n
        return data

    def unpack(self, fmt: str, n: int) -> Any:
        return struct.unpack(fmt, self.take(n))[0]

    def count(self, what: str) -> int:
        value = int(self.unpack("<Q", 8))
        if value > MAX_COUNT:
            raise CorruptModel(f"{self.path} claims {value} {what}; the file is corrupt")
        return value

    def string(self) -> str:
        raw = self.take(self.unpack("<Q", 8))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptModel(f"{self.path} holds a string that is not UTF-8; corrupt") from None

    def value(self, kind: int, *, summary: bool = False) -> Any:
        if kind in _SCALARS:
            return self.unpack(*_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, length = self.unpack("<I", 4), self.unpack("<Q", 8)
            if item in _SCALARS:  # skipped whole: a tokenizer's scores are 50,000 floats
                self.take(length * _SCALARS[item][1])
                return f"[{length} values]"
            values = [self.value(item) for _ in range(length)]
            return f"[{length} values]" if summary else values
        raise CorruptModel(f"{self.path}: unknown metadata type {kind}; the file is corrupt")

    def tensor_end(self) -> int:
        """Read one tensor's description; the end of its data, from the data section's start."""
        self.string()
        dims = self.unpack("<I", 4)
        if dims > 8:
            raise CorruptModel(f"{self.path}: a tensor with {dims} dimensions; corrupt")
        shape = [self.unpack("<Q", 8) for _ in range(dims)]
        kind, offset = self.unpack("<I", 4), self.unpack("<Q", 8)
        count = 1
        for n in shape:
            count *= n
        per_block, block_bytes = _BLOCKS.get(kind, (1, 0))  # unknown type: its start only
        return offset + -(-count // per_block) * block_bytes
