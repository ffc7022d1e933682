"""The `[memory]` config section."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aether_box.config import section
from aether_box.errors import ConfigError
from aether_box.memory.store import VEC0_CHUNK

__all__ = ["MemorySettings", "METRICS", "INDEXES"]

METRICS = ("cosine", "l2", "dot")
# "memory": an exact float32 copy of every collection in RAM (numpy), SQLite stays the truth.
# "sqlite-vec": search sqlite-vec's vec0 tables directly (slower, no RAM copy).
INDEXES = ("memory", "sqlite-vec")
SYNCHRONOUS = ("full", "normal")


@section("memory")
@dataclass
class MemorySettings:
    """Where the memory database lives and the limits the `memory` service enforces."""

    # "{data_dir}" is replaced by the box's data dir.
    db: str = "{data_dir}/memory.db"
    max_batch: int = 10_000
    max_k: int = 1_000
    default_metric: str = "cosine"
    index: str = "memory"
    # "full": every acknowledged write is on disk (fsync per commit); "normal" trades that
    # guarantee on power loss (never on a crash of the box) for speed.
    synchronous: str = "full"
    readers: int = 4
    max_metadata_bytes: int = 65_536
    # Indexes of collections with at least this many vectors are saved beside the database
    # when the box closes, so the next start loads them instead of rebuilding from SQLite.
    snapshot_min_rows: int = 10_000
    # Collections of at least this many vectors are searched through an int8 scan whose
    # shortlist is re-scored exactly in float32; smaller ones by a float32 scan alone.
    quantized_min_rows: int = 16_384
    # Threads one int8 scan is split across (0: one per core). A scan is bound by memory
    # bandwidth, which one core alone does not draw in full; chunks are 32k rows at least.
    scan_threads: int = 0
    # Collections of at least this many vectors also keep one sign bit per component, and
    # scan those first (Hamming distance, a candidate budget re-scored exactly) where a
    # calibration on their own rows shows recall@10 of at least 0.997; 0 turns it off.
    bit_scan_min_rows: int = 65_536
    # Vectors per sqlite-vec chunk in the tables of collections created from now on (a
    # multiple of 8, at most 4096): smaller chunks ingest faster, larger ones make vec0's own search
    # ("index": "sqlite-vec") a little faster. See VEC0_CHUNK in store.py.
    vec0_chunk: int = VEC0_CHUNK

    def resolve(self, data_dir: Path) -> None:
        """Fill the data dir into the db path and check the choices."""
        self.db = str(Path(self.db.replace("{data_dir}", str(data_dir))).expanduser())
        for key, value, allowed in (
            ("default_metric", self.default_metric, METRICS),
            ("index", self.index, INDEXES),
            ("synchronous", self.synchronous, SYNCHRONOUS),
        ):
            if value not in allowed:
                raise ConfigError(f"memory.{key} must be one of {list(allowed)}, got {value!r}")
        if not 8 <= self.vec0_chunk <= 4_096 or self.vec0_chunk % 8:
            raise ConfigError(
                "memory.vec0_chunk must be a multiple of 8 from 8 to 4096 (sqlite-vec's "
                f"limits), got {self.vec0_chunk}; the default is {VEC0_CHUNK}"
            )
        for key in ("max_batch", "max_k", "readers", "max_metadata_bytes"):
            if getattr(self, key) < 1:
                raise ConfigError(f"memory.{key} must be at least 1, got {getattr(self, key)}")

        for key in (
            "snapshot_min_rows",
            "quantized_min_rows",
            "scan_threads",
            "bit_scan_min_rows",
        ):
            if getattr(self, key) < 0:
                raise ConfigError(f"memory.{key} must be 0 or more, got {getattr(self, key)}")

    @property
    def db_path(self) -> Path:
        return Path(self.db)
