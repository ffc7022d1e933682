"""A learned hub: a shared space fitted from its founding models' vectors of the same texts.

Each founder's vectors (unit rows) are centred, scaled per dimension and weighted by
1/sqrt(dim), so that every model counts the same whatever its width, and set side by side;
the shared space is the top `dim` principal directions of that concatenation (a generalised
CCA without the whitening, which measured worse). A text's hub vector is its founders'
vectors mapped that way, unit length: the space is defined for any text, so it "embeds" like
a model (by embedding with every founder) and projectors into and out of it are fitted on
pairs like any other.

Why not a model's own space: an encoder's 384-d space does not pin down a decoder's, so the
way out of MiniLM's space into Gemma's or SmolLM2's is the weak leg, and composing through
it lost up to 9 points against a direct projector. A space holding every founder's
directions loses nothing: A -> shared -> B is as good as a direct A -> B (README).

The space is fixed once built: a model that joins later fits its two projectors against it
(its own vectors against the stored map of the founders' vectors), and nothing fitted
before changes. Rebuilding it changes its key and so every projector's recorded recipe.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aether_box.align.projectors import normalise
from aether_box.errors import BadRequest, NotFound
from aether_box.models.files import atomic_writer

__all__ = ["DEFAULT_DIM", "SHARED", "SharedSpace", "build_space"]

SHARED = "shared"  # the hub name ([align] hub) that means the learned space
DEFAULT_DIM = 512  # measured: 256 to 960 all match direct maps at 1,200 pairs; 128 loses 3 pts


@dataclass
class SharedSpace:
    """The founders, their standardisation and the map into the shared space."""

    founders: list[str]
    keys: list[str]  # each founder's vector-cache key (weights and recipe), in order
    means: list[np.ndarray]  # per founder (d_m,)
    scales: list[np.ndarray]  # per founder (d_m,): std * sqrt(d_m)
    basis: np.ndarray  # (sum d_m, dim): the principal directions
    n_texts: int

    @property
    def dim(self) -> int:
        return int(self.basis.shape[1])

    @property
    def digest(self) -> str:
        """Names this exact space (its founders' keys and its map), for recipes and caches."""
        h = hashlib.sha256(json.dumps(self.keys).encode())
        h.update(np.ascontiguousarray(self.basis, np.float32).tobytes())
        return h.hexdigest()[:16]

    def transform(self, vectors: dict[str, np.ndarray]) -> np.ndarray:
        """Hub vectors (n, dim), unit rows, of texts given every founder's vectors of them."""
        missing = [m for m in self.founders if m not in vectors]
        if missing:
            raise BadRequest(f"the shared space needs vectors from {missing} too")
        parts = [
            (normalise(vectors[m]) - mean) / scale
            for m, mean, scale in zip(self.founders, self.means, self.scales, strict=True)
        ]
        return normalise(np.concatenate(parts, axis=1) @ self.basis)

    def save(self, path: Path) -> None:
        """One .npz, written atomically."""
        arrays = {f"mean{i}": m for i, m in enumerate(self.means)}
        arrays |= {f"scale{i}": s for i, s in enumerate(self.scales)}
        meta = {"founders": self.founders, "keys": self.keys, "n_texts": self.n_texts}
        with atomic_writer(path) as handle:
            np.savez(handle, basis=self.basis, meta=np.array(json.dumps(meta)), **arrays)

    @classmethod
    def load(cls, path: Path) -> SharedSpace:
        """Read a space written by `save`; NotFound saying how to build one."""
        if not path.is_file():
            raise NotFound(
                "the shared hub space is not built yet; build it from the models it should "
                "hold: `aether-box align hub --models smollm2,gemma3-270m,minilm`"
            )
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            n = len(meta["founders"])
            return cls(
                meta["founders"],
                meta["keys"],
                [data[f"mean{i}"] for i in range(n)],
                [data[f"scale{i}"] for i in range(n)],
                data["basis"],
                int(meta["n_texts"]),
            )


def build_space(
    vectors: dict[str, np.ndarray], keys: dict[str, str], dim: int = DEFAULT_DIM
) -> SharedSpace:
    """Fit the shared space on the founders' vectors of the same texts (module docstring)."""
    founders = list(vectors)
    if len(founders) < 2:
        raise BadRequest("a shared space needs at least two models to share")
    n = {len(v) for v in vectors.values()}
    if len(n) != 1:
        raise BadRequest("the founders' vectors must be of the same texts")
    means, scales, parts = [], [], []
    for model in founders:
        x = normalise(vectors[model]).astype(np.float64)
        mean = x.mean(0)
        scale = np.maximum(x.std(0), 1e-6) * np.sqrt(x.shape[1])
        means.append(mean.astype(np.float32))
        scales.append(scale.astype(np.float32))
        parts.append((x - mean) / scale)
    joined = np.concatenate(parts, axis=1)
    _, _, vt = np.linalg.svd(joined, full_matrices=False)
    k = max(1, min(dim, len(vt) - 1))  # the last direction of centred rows carries nothing
    return SharedSpace(
        founders,
        [keys[m] for m in founders],
        means,
        scales,
        np.ascontiguousarray(vt[:k].T, np.float32),
        n.pop(),
    )
