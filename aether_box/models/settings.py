"""The `[models]` config section."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aether_box.config import section

__all__ = ["ModelsSettings"]


@section("models")
@dataclass
class ModelsSettings:
    """Where pulled and registered models live."""

    # "{data_dir}" is replaced by the box's data dir.
    dir: Path = Path("{data_dir}/models")

    def resolve(self, data_dir: Path) -> None:
        """Fill the data dir into the models dir template."""
        self.dir = Path(str(self.dir).replace("{data_dir}", str(data_dir))).expanduser()
