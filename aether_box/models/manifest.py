"""The starter kit's manifest (manifest.toml): each model's files, their sources and checksums."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

from aether_box.errors import ConfigError, NotFound

__all__ = ["EXPORTS", "FileSpec", "Manifest", "ModelSpec", "Part", "KINDS"]

KINDS = ("gguf", "onnx-encoder")
# The architectures pull exports to ONNX (aether_box/models/bert_export.py).
EXPORTS = ("bert", "mpnet")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Part:
    """One member of one wheel; a file is its parts concatenated in order."""

    wheel: str
    version: str
    member: str

    @property
    def requirement(self) -> str:
        return f"{self.wheel}=={self.version}"


@dataclass(frozen=True)
class FileSpec:
    """One file of a model: its name in the model's dir, size, sha256 and parts; or, when
    the wheels hold a zip split in parts, the `member` of that `archive` (parts empty)."""

    name: str
    size: int
    sha256: str
    parts: tuple[Part, ...]
    archive: FileSpec | None = None
    member: str | None = None

    @property
    def wheel_parts(self) -> tuple[Part, ...]:
        """The wheel members this file is made from (its archive's, for an archive member)."""
        return self.archive.parts if self.archive is not None else self.parts


@dataclass(frozen=True)
class ModelSpec:
    """One model of the kit."""

    name: str
    kind: str
    description: str
    licence: str
    default: bool
    dim: int | None
    files: tuple[FileSpec, ...]
    export: str | None = None  # "bert" or "mpnet": pull exports the checkpoint to ONNX
    # GGUF models: the embedding recipe alignment uses (a template with {text}, and "mean"
    # or "last" pooling), chosen by measurement; None: the plain mean over the last layer.
    embed_prompt: str | None = None
    embed_pooling: str | None = None

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def wheels(self) -> list[str]:
        """The wheel requirements this model needs, in first-use order, without repeats."""
        return list(dict.fromkeys(p.requirement for f in self.files for p in f.wheel_parts))


class Manifest:
    """The models a box knows how to pull, by short name."""

    def __init__(self, models: dict[str, ModelSpec], source: str = "manifest") -> None:
        self.models = models
        self.source = source

    @classmethod
    def load(cls, path: str | Path | None = None) -> Manifest:
        """Read a manifest file; by default the one shipped inside the package."""
        if path is None:
            text = resources.files(__package__).joinpath("manifest.toml").read_text("utf-8")
            source = "aether_box/models/manifest.toml"
        else:
            text, source = Path(path).read_text("utf-8"), str(path)
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"model manifest {source} is not valid TOML: {exc}") from exc
        models = {name: _model(name, spec, source) for name, spec in raw.get("models", {}).items()}
        return cls(models, source)

    def get(self, name: str) -> ModelSpec:
        """The model called `name`, or NotFound listing the manifest's models."""
        try:
            return self.models[name]
        except KeyError:
            raise NotFound(
                f"no model {name!r} in the model manifest; it lists: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return list(self.models)

    def defaults(self) -> list[str]:
        """The models a bare `models pull` fetches."""
        return [name for name, spec in self.models.items() if spec.default]


def _model(name: str, raw: dict[str, Any], source: str) -> ModelSpec:
    where = f"{source} [models.{name}]"
    try:
        kind = raw["kind"]
        archives = {n: _file({**a, "name": n}, where) for n, a in raw.get("archives", {}).items()}
        files = tuple(_file(f, where, archives) for f in raw["files"])
        spec = ModelSpec(
            name=name,
            kind=kind,
            description=raw.get("description", ""),
            licence=raw["licence"],
            default=bool(raw.get("default", False)),
            dim=raw.get("dim"),
            files=files,
            export=raw.get("export"),
            embed_prompt=raw.get("embed_prompt"),
            embed_pooling=raw.get("embed_pooling"),
        )
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{where} is missing or mistypes {exc}") from exc
    if kind not in KINDS:
        raise ConfigError(f"{where}: kind {kind!r} is not one of {KINDS}")
    if not files:
        raise ConfigError(f"{where} lists no files")
    if spec.embed_prompt is not None and "{text}" not in spec.embed_prompt:
        raise ConfigError(f"{where}: embed_prompt must hold '{{text}}' where the text goes")
    if spec.export not in (None, *EXPORTS):
        raise ConfigError(f"{where}: export {spec.export!r} is not one of {EXPORTS}")
    if spec.embed_pooling not in (None, "mean", "last"):
        raise ConfigError(f"{where}: embed_pooling must be 'mean' or 'last'")
    return spec


def _file(raw: dict[str, Any], where: str, archives: dict[str, FileSpec] | None = None) -> FileSpec:
    name = raw["name"]
    # Names become paths inside the model's dir: never absolute, never climbing out.
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or not name:
        raise ConfigError(
            f"{where}: file name {name!r} must be a relative path inside the model dir"
        )
    if not _SHA256.match(raw["sha256"]):
        raise ConfigError(f"{where}: {name} has no valid sha256")
    size, sha256 = int(raw["size"]), raw["sha256"]
    if "archive" in raw:
        archive = (archives or {}).get(raw["archive"])
        if archive is None:
            raise ConfigError(
                f"{where}: {name} is in archive {raw['archive']!r}, which the model's "
                "`archives` table does not list"
            )
        return FileSpec(name, size, sha256, (), archive=archive, member=raw["member"])
    parts = tuple(Part(p["wheel"], p["version"], p["member"]) for p in raw["parts"])
    if not parts:
        raise ConfigError(f"{where}: {name} has no parts")
    return FileSpec(name=name, size=size, sha256=sha256, parts=parts)
