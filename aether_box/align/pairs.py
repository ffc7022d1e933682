"""Pairs: the same texts embedded by two models, cached on disk so a rerun is free.

Vectors are cached per model and per corpus, under ``<data_dir>/align/vectors/<model key>/``,
where the model key names the model and a digest of its weights (the manifest's sha256 for
kit models; path, size and mtime for a user's own file) and of the embedding options. So a pair
A->B and a pair A->C share A's vectors, and a different model file never reuses stale ones.
Embedding is done in chunks and checkpointed after each, so an interrupted run resumes.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from aether_box.align.corpus import corpus_hash
from aether_box.errors import BadRequest
from aether_box.private import child_path

__all__ = ["EmbedFn", "PairSet", "VectorCache", "embed_texts", "make_pairs", "model_key"]

# (model, texts) -> float32 (len(texts), dim), unit rows.
EmbedFn = Callable[[str, list[str]], Awaitable[np.ndarray]]
# (model, done, total): called after each chunk.
ProgressFn = Callable[[str, int, int], Awaitable[None] | None]

CHUNK = 128


def model_key(name: str, digest: str, options: Mapping[str, Any] | None = None) -> str:
    """The cache key of one model's vectors: name, weights digest and embedding options."""
    extra = json.dumps(dict(options or {}), sort_keys=True)
    tail = hashlib.sha256(f"{digest}\x00{extra}".encode()).hexdigest()[:16]
    return f"{name}-{tail}"


class VectorCache:
    """One model's vectors of one corpus, stored as .npy, with a resumable partial file."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _paths(self, key: str, corpus: str) -> tuple[Path, Path]:
        base = child_path(self.root / "vectors", key)
        return base / f"{corpus[:24]}.npy", base / f"{corpus[:24]}.partial.npy"

    def load(self, key: str, corpus: str, n: int) -> np.ndarray | None:
        """The complete vectors, or None."""
        done, _ = self._paths(key, corpus)
        if done.is_file():
            vectors = np.load(done)
            if len(vectors) == n:
                return vectors
        return None

    def partial(self, key: str, corpus: str) -> np.ndarray | None:
        """The rows embedded so far by an interrupted run, or None."""
        _, part = self._paths(key, corpus)
        return np.load(part) if part.is_file() else None

    def checkpoint(self, key: str, corpus: str, vectors: np.ndarray, complete: bool) -> None:
        """Write the rows so far (atomically); on completion, replace the partial file."""
        done, part = self._paths(key, corpus)
        done.parent.mkdir(parents=True, exist_ok=True)
        target = done if complete else part
        tmp = target.with_name(target.name + ".tmp")
        with open(tmp, "wb") as handle:
            np.save(handle, np.ascontiguousarray(vectors, dtype=np.float32))
        tmp.replace(target)
        if complete:
            part.unlink(missing_ok=True)


async def embed_texts(
    embed: EmbedFn,
    model: str,
    key: str,
    texts: list[str],
    cache: VectorCache,
    progress: ProgressFn | None = None,
    chunk: int = CHUNK,
) -> tuple[np.ndarray, bool]:
    """Vectors of `texts` by `model`, from the cache when present; (vectors, were_cached)."""
    corpus = corpus_hash(texts)
    found = await anyio.to_thread.run_sync(cache.load, key, corpus, len(texts))
    if found is not None:
        if progress:
            await _report(progress, model, len(texts), len(texts))
        return found, True
    done = await anyio.to_thread.run_sync(cache.partial, key, corpus)
    parts = [done] if done is not None and 0 < len(done) < len(texts) else []
    start = len(parts[0]) if parts else 0
    if progress:
        await _report(progress, model, start, len(texts))
    last_save = time.monotonic()
    try:
        for begin in range(start, len(texts), chunk):
            vectors = np.asarray(await embed(model, texts[begin : begin + chunk]), np.float32)
            if vectors.ndim != 2 or len(vectors) != len(texts[begin : begin + chunk]):
                raise BadRequest(
                    f"embed returned {vectors.shape} for {model!r}; expected one vector a text"
                )
            parts.append(vectors)
            end = begin + len(vectors)
            if end < len(texts) and time.monotonic() - last_save > 5.0:
                # Every few seconds rather than every chunk: a checkpoint rewrites all rows.
                await anyio.to_thread.run_sync(
                    cache.checkpoint, key, corpus, np.concatenate(parts), False
                )
                last_save = time.monotonic()
            if progress:
                await _report(progress, model, end, len(texts))
    except BaseException:
        # Interrupted (cancelled, Ctrl-C, a failing engine): keep what was embedded, so the
        # next run resumes from here.
        if parts:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(
                    cache.checkpoint, key, corpus, np.concatenate(parts), False
                )
        raise
    result = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
    await anyio.to_thread.run_sync(cache.checkpoint, key, corpus, result, True)
    return result, False


async def _report(progress: ProgressFn, model: str, done: int, total: int) -> None:
    outcome = progress(model, done, total)
    if outcome is not None:
        await outcome


@dataclass
class PairSet:
    """Texts with their vectors in the source space (a) and the target space (b)."""

    source: str
    target: str
    texts: list[str]
    a: np.ndarray
    b: np.ndarray
    corpus: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index: np.ndarray | list[int]) -> PairSet:
        """The pairs at `index`."""
        idx = np.asarray(index, dtype=np.int64)
        return PairSet(
            self.source,
            self.target,
            [self.texts[i] for i in idx],
            self.a[idx],
            self.b[idx],
            "",
            dict(self.meta),
        )

    def save(self, path: Path) -> None:
        """One .npz with texts, both vector sets and how they were made."""
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"source": self.source, "target": self.target, "corpus": self.corpus, **self.meta}
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(
            tmp,
            texts=np.array(self.texts, dtype=np.str_),
            a=self.a,
            b=self.b,
            meta=np.array(json.dumps(meta)),
        )
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> PairSet:
        """Read a pair set written by `save`."""
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            texts = [str(t) for t in data["texts"]]
            a, b = data["a"], data["b"]
        source, target, corpus = meta.pop("source"), meta.pop("target"), meta.pop("corpus")
        return cls(source, target, texts, a, b, corpus, meta)


def pairs_path(root: Path, source: str, target: str, corpus: str) -> Path:
    """Where the pair set of `corpus` (a corpus hash) from source to target is kept."""
    return child_path(Path(root) / "pairs", f"{source}__{target}") / f"{corpus[:24]}.npz"


async def make_pairs(
    embed: EmbedFn,
    source: str,
    target: str,
    texts: list[str],
    root: Path,
    keys: Mapping[str, str],
    progress: ProgressFn | None = None,
    known_target: np.ndarray | None = None,
    chunk: int = CHUNK,
    known_source: np.ndarray | None = None,
) -> tuple[PairSet, bool]:
    """Embed `texts` with both models (cached) and save the pair set; (pairs, all_cached).

    `keys` maps each model name to its `model_key`. `known_target` / `known_source` supply
    one side's vectors when they exist already (a memory collection's own vectors, or the
    shared hub space's, which space.py makes from its founders' vectors).
    """
    if not texts:
        raise BadRequest("no texts to make pairs from")
    cache = VectorCache(root)
    if known_source is not None:
        a, cached_a = np.asarray(known_source, dtype=np.float32), True
    else:
        a, cached_a = await embed_texts(embed, source, keys[source], texts, cache, progress, chunk)
    if known_target is not None:
        b, cached_b = np.asarray(known_target, dtype=np.float32), True
    else:
        b, cached_b = await embed_texts(embed, target, keys[target], texts, cache, progress, chunk)
    corpus = corpus_hash(texts)
    pairs = PairSet(
        source,
        target,
        texts,
        a,
        b,
        corpus,
        {
            "source_key": keys[source],
            "target_key": keys.get(target, target),
            "created": time.time(),
        },
    )
    await anyio.to_thread.run_sync(pairs.save, pairs_path(root, source, target, corpus))
    return pairs, cached_a and cached_b
