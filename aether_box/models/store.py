"""The models dir: which models are installed, where their files are, and user-added models.

Layout: ``<dir>/<name>/`` holds a kit model's files (a GGUF, or an encoder's checkpoint,
tokenizer and exported ONNX); ``<dir>/registry.toml`` lists models a user added from
their own files, which stay where they are.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from aether_box.errors import BadRequest, BoxError, NotFound
from aether_box.models.files import PARTIAL_PREFIX, is_gguf
from aether_box.models.gguf import read_gguf_header
from aether_box.models.manifest import Manifest, ModelSpec

__all__ = ["ModelInfo", "ModelStore", "REGISTRY"]

REGISTRY = "registry.toml"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class ModelInfo:
    """An installed model. `path` is what an engine loads: the GGUF file or the encoder dir."""

    name: str
    kind: str  # "gguf" or "onnx-encoder"
    path: Path
    size: int  # bytes on disk
    source: str = "kit"  # "kit" (pulled from the manifest) or "user" (models add)
    description: str = ""
    dim: int | None = None


class ModelStore:
    """The installed models under one models dir."""

    def __init__(self, dir: str | Path, manifest: Manifest | None = None) -> None:
        self.dir = Path(dir).expanduser()
        self.manifest = manifest if manifest is not None else Manifest.load()

    # -- lookup --------------------------------------------------------------------------

    def path(self, name: str) -> Path:
        """The path an engine loads for `name`; NotFound (listing installed models) if absent."""
        return self.info(name).path

    def info(self, name: str) -> ModelInfo:
        """The installed model called `name`, or NotFound listing the installed ones."""
        found = next((m for m in self.installed() if m.name == name), None)
        if found is not None:
            return found
        entry = self._registry().get(name)
        if entry is not None and name not in self.manifest.models:
            raise NotFound(
                f"model {name!r} is registered in {self.dir / REGISTRY} but its file "
                f"{entry['path']} is gone; put the file back there, or remove the entry and "
                "add the model again with `aether-box models add PATH`"
            )
        installed = ", ".join(m.name for m in self.installed()) or "none"
        hint = (
            f"pull it with `aether-box models pull {name}`"
            if name in self.manifest.models
            else "add your own with `aether-box models add PATH`"
        )
        raise NotFound(
            f"model {name!r} is not installed in {self.dir} (installed: {installed}); {hint}"
        )

    def installed(self) -> list[ModelInfo]:
        """Every usable model: pulled kit models first (manifest order), then user-added ones."""
        models = [self._kit_info(spec) for spec in self.manifest.models.values()]
        found = [m for m in models if m is not None]
        for name, entry in self._registry().items():
            path = Path(entry["path"])
            if path.exists() and name not in self.manifest.models:
                found.append(
                    ModelInfo(
                        name,
                        entry["kind"],
                        path,
                        _size(path),
                        "user",
                        entry.get("description", ""),
                        entry.get("dim"),
                    )
                )
        return found

    def model_dir(self, name: str) -> Path:
        """Where a kit model's files live."""
        return self.dir / name

    def kit_path(self, spec: ModelSpec) -> Path:
        """What an engine loads for a kit model: its GGUF file, or an encoder's dir."""
        if spec.kind == "gguf":
            return self.model_dir(spec.name) / spec.files[0].name
        return self.model_dir(spec.name)

    def _kit_info(self, spec: ModelSpec) -> ModelInfo | None:
        # Files only reach their final name after their sha256 checked out (see pull), so
        # presence with the right size means installed; pull re-hashes to re-verify.
        base = self.model_dir(spec.name)
        for f in spec.files:
            target = base / f.name
            if not target.is_file() or target.stat().st_size != f.size:
                return None
        path = self.kit_path(spec)
        return ModelInfo(spec.name, spec.kind, path, _size(base), "kit", spec.description, spec.dim)

    # -- user models ---------------------------------------------------------------------

    def add(
        self,
        path: str | Path,
        name: str | None = None,
        *,
        tokenizer: str | Path | None = None,
        max_length: int = 512,
    ) -> ModelInfo:
        """Register a user's own GGUF file or ONNX encoder (with its tokenizer.json) in place."""
        source = Path(path).expanduser().resolve()
        if not source.is_file():
            raise NotFound(f"{source} is not a file; give the path of a .gguf or .onnx model")
        name = name or _default_name(source)
        if not _NAME.match(name):
            raise BadRequest(
                f"model name {name!r} must be lower-case letters, digits, '.', '_' or '-' "
                "(at most 64); choose one with --name"
            )
        if name in self.manifest.models:
            raise BadRequest(f"{name!r} is a starter-kit model name; choose another with --name")
        if name in self._registry():
            raise BadRequest(
                f"a model called {name!r} is already registered; choose another with --name"
            )
        if is_gguf(source):
            read_gguf_header(source)  # a truncated or corrupt file is refused, not registered
            entry = {"kind": "gguf", "path": str(source)}
        elif _looks_like_onnx(source):
            from aether_box.models.encoders import register_encoder

            encoder_dir = self.model_dir(name)
            dim = register_encoder(source, encoder_dir, tokenizer=tokenizer, max_length=max_length)
            entry = {
                "kind": "onnx-encoder",
                "path": str(encoder_dir),
                "onnx": str(source),
                "dim": dim,
            }
        else:
            raise BadRequest(
                f"{source} is neither a GGUF model (it does not start with b'GGUF') nor an ONNX "
                "model; `models add` takes .gguf files and ONNX sentence encoders"
            )
        entry["added"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        registry = self._registry()
        registry[name] = entry
        self.dir.mkdir(parents=True, exist_ok=True)
        from aether_box.models.files import atomic_writer

        with atomic_writer(self.dir / REGISTRY) as handle:
            handle.write(tomli_w.dumps({"models": registry}).encode())
        return self.info(name)

    def _registry(self) -> dict[str, dict]:
        path = self.dir / REGISTRY
        if not path.exists():
            return {}
        import tomllib

        # The file lists the user's own models: a damaged one is reported, never replaced.
        redo = "fix it, or move it aside and add your models again with `aether-box models add`"
        try:
            models = tomllib.loads(path.read_text("utf-8")).get("models", {})
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise BoxError(f"{path} is not valid TOML ({exc}); {redo}") from exc
        for name, entry in models.items() if isinstance(models, dict) else [("models", None)]:
            if not (
                isinstance(entry, dict)
                and isinstance(entry.get("kind"), str)
                and isinstance(entry.get("path"), str)
            ):
                raise BoxError(f"{path}: entry {name!r} needs a kind and a path; {redo}")
        return models


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(
        p.stat().st_size
        for p in path.rglob("*")
        if p.is_file() and not p.name.startswith(PARTIAL_PREFIX)
    )


def _default_name(path: Path) -> str:
    stem = re.sub(r"[^a-z0-9._-]+", "-", path.stem.lower()).strip("-.")
    return stem[:64] or "model"


def _looks_like_onnx(path: Path) -> bool:
    # An ONNX file is a protobuf ModelProto; writers put ir_version (field 1, varint) first.
    with open(path, "rb") as handle:
        return handle.read(1) == b"\x08"
