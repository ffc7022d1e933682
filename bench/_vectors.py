"""The memory benchmark's vectors: shaped like real text embeddings, or uniformly random.

Why not only random: uniformly random unit vectors in 384-d have no neighbourhood structure
(a query's 2nd to 10th nearest rows are barely closer than any other row), which no real
embedding collection looks like, and which rewards nothing but a full scan. So the default
data is generated to reproduce the statistics of real MiniLM embeddings:

1. Real embeddings: all-MiniLM-L6-v2 (the box's own ONNX export) embeds the 12,000 texts the
   box ships (aether_box/align/corpus: 8,000 WordNet glosses, 2,000 WordNet usage sentences,
   2,000 Python-docs sentences). Cached under ~/.cache/aether-box/bench/ (about 2 minutes to
   make on 2 cores).
2. `clustered(n)`: each vector is a real embedding chosen at random (its topic) plus Gaussian
   noise with the real embeddings' own covariance (their mean offset and anisotropic spectrum:
   participation ratio ~140 of 384 dimensions) scaled by SIGMA, then normalised. SIGMA = 0.85
   matches the real set's median nearest-neighbour cosine at the real set's size (0.58 real,
   0.58 generated); the 10th neighbour is further in the generated set than in the real one
   (0.33 against 0.44), so the generated data is, if anything, harder than real text.
   Queries are fresh draws of the same generator (new texts on known topics), never rows.
3. `random_unit(n)` (`--data random`): the earlier benchmark's data, kept for comparison;
   its queries are a row plus noise of half its length.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from aether_box.align.corpus import load_set

__all__ = ["SIGMA", "clustered", "neighbour_cosines", "random_unit", "real_embeddings", "unit"]

SIGMA = 0.85
_SETS = ("glosses", "examples", "docs")
_BLOCK = 100_000


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def real_embeddings(minilm_dir: Path) -> np.ndarray:
    """MiniLM embeddings of the shipped texts (float32, unit length), cached by content."""
    texts = [t for name in _SETS for t in load_set(name)]
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    cache = Path(os.path.expanduser("~/.cache/aether-box/bench")) / f"minilm-corpus-{digest}.npy"
    if cache.is_file():
        return np.load(cache)
    from aether_box.engines.onnx import OnnxEncoder

    print(f"embedding {len(texts):,} shipped texts with {minilm_dir} (cached for later runs)")
    encoder = OnnxEncoder.load(minilm_dir, device="cpu")
    vectors = encoder.embed(texts)
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(".partial.npy")
    np.save(partial, vectors)
    partial.replace(cache)
    return vectors


def clustered(n: int, real: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """n vectors around the real embeddings, with their covariance (see the module doc)."""
    centred = real - real.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(centred.T))
    shape = (eigenvectors * np.sqrt(np.maximum(eigenvalues, 0))).astype(np.float32).T
    out = np.empty((n, real.shape[1]), np.float32)
    for start in range(0, n, _BLOCK):
        m = min(_BLOCK, n - start)
        topics = real[rng.integers(0, len(real), m)]
        noise = rng.standard_normal((m, real.shape[1]), dtype=np.float32) @ shape
        out[start : start + m] = unit(topics + np.float32(SIGMA) * noise)
    return out


def random_unit(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, _BLOCK):
        m = min(_BLOCK, n - start)
        out[start : start + m] = unit(rng.standard_normal((m, dim), dtype=np.float32))
    return out


def neighbour_cosines(data: np.ndarray, queries: np.ndarray) -> dict[str, float]:
    """Median cosine of each query's 1st and 10th nearest row, and the mean cosine overall."""
    scores = queries @ data.T
    top = -np.sort(-scores, axis=1)[:, :10]
    return {
        "nn1_cos": round(float(np.median(top[:, 0])), 3),
        "nn10_cos": round(float(np.median(top[:, 9])), 3),
        "mean_cos": round(float(scores.mean()), 3),
    }
