"""The shipped corpus and the pair cache (with the real MiniLM encoder doing the embedding)."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import anyio
import numpy as np
import pytest

from aether_box.align.corpus import (
    BUILTIN_SETS,
    corpus_hash,
    extract_python_docs,
    is_prose_sentence,
    load_set,
    read_texts,
    standard_split,
)
from aether_box.align.pairs import PairSet, VectorCache, embed_texts, make_pairs, model_key
from aether_box.errors import BadRequest, NotFound


def test_builtin_sets_are_shipped_distinct_and_split_without_overlap() -> None:
    sizes = {name: len(load_set(name)) for name in BUILTIN_SETS}
    assert sizes == {"glosses": 8000, "examples": 2000, "docs": 2000}
    split = standard_split()
    assert len(split.fit) == 5000 and len(split.test_in) == 1000
    assert not set(split.fit) & set(split.test_in)
    assert not set(split.test_out) & set(load_set("glosses"))
    assert len(set(load_set("glosses"))) == 8000  # no duplicates
    assert (Path(__file__).parents[1] / "aether_box/align/corpus/NOTICE.txt").is_file()
    with pytest.raises(NotFound, match="built-in sets"):
        load_set("news")


def test_docs_set_follows_its_extractors_rule_on_any_python() -> None:
    shipped = load_set("docs")
    assert len(set(shipped)) == len(shipped) == 2000
    assert all(is_prose_sentence(sentence) for sentence in shipped)
    # The extractor, run on this Python's own docs, makes a set by the same rule, the same
    # way each time (its sentences differ between Python versions, its rule does not).
    made = extract_python_docs()
    assert len(made) == 2000 and made == extract_python_docs()
    assert all(is_prose_sentence(sentence) for sentence in made)
    assert not is_prose_sentence("x = f(y)  # code, not prose.")
    if sys.version_info[:3] == (3, 11, 7):  # the Python the shipped file was made with
        assert made == shipped


def test_read_texts_skips_blanks_and_duplicates(tmp_path: Path) -> None:
    plain = tmp_path / "t.txt"
    plain.write_text("one\n\n  two  \none\nthree\n")
    assert read_texts(plain) == ["one", "two", "three"]
    packed = tmp_path / "t.txt.gz"
    with gzip.open(packed, "wt", encoding="utf-8") as handle:
        handle.write("alpha\nbeta\n")
    assert read_texts(packed) == ["alpha", "beta"]
    (tmp_path / "long.txt").write_text("x" * 3000)
    with pytest.raises(BadRequest, match="split long documents"):
        read_texts(tmp_path / "long.txt")
    with pytest.raises(NotFound):
        read_texts(tmp_path / "absent.txt")


def test_corpus_hash_depends_on_order_and_boundaries() -> None:
    assert corpus_hash(["a", "b"]) != corpus_hash(["b", "a"])
    assert corpus_hash(["ab"]) != corpus_hash(["a", "b"])
    assert model_key("m", "d1") != model_key("m", "d2")
    assert model_key("m", "d", {"pooling": "mean"}) != model_key("m", "d")


@pytest.fixture(scope="module")
def minilm(models_dir: Path):
    from aether_box.engines.onnx import OnnxEncoder
    from aether_box.models.store import ModelStore

    return OnnxEncoder.load(ModelStore(models_dir).path("minilm"), threads=1)


class Interrupted(Exception):
    """The embedding engine failing in the middle of a corpus."""


def test_embedding_resumes_after_an_interruption(minilm, tmp_path: Path) -> None:
    texts = load_set("examples")[:70]
    calls: list[int] = []

    async def embed(model: str, chunk: list[str]) -> np.ndarray:
        calls.append(len(chunk))
        if len(calls) == 3:
            raise Interrupted  # e.g. the box stopping during the third chunk
        return await anyio.to_thread.run_sync(minilm.embed, chunk)

    cache = VectorCache(tmp_path)
    with pytest.raises(Interrupted):
        anyio.run(lambda: embed_texts(embed, "minilm", "k", texts, cache, chunk=20))
    # Nothing complete yet, but the two chunks done were kept...
    assert cache.load("k", corpus_hash(texts), len(texts)) is None
    assert len(cache.partial("k", corpus_hash(texts))) == 40
    calls.clear()
    vectors, cached = anyio.run(lambda: embed_texts(embed, "minilm", "k", texts, cache, chunk=20))
    # ...so the rerun embeds only the last 30 texts.
    assert calls == [20, 10]
    assert not cached and vectors.shape == (70, 384)
    assert np.allclose(vectors, minilm.embed(texts), atol=1e-5)
    again, cached = anyio.run(lambda: embed_texts(embed, "minilm", "k", texts, cache, chunk=20))
    assert cached and np.array_equal(again, vectors)


def test_pairs_are_saved_and_reused(minilm, tmp_path: Path) -> None:
    texts = load_set("glosses")[:30]
    seen: list[str] = []

    async def embed(model: str, chunk: list[str]) -> np.ndarray:
        seen.append(model)
        vectors = await anyio.to_thread.run_sync(minilm.embed, chunk)
        # A second "model": the same encoder on reversed dimensions, a real other space.
        return vectors[:, ::-1].copy() if model == "b" else vectors

    keys = {"a": model_key("a", "1"), "b": model_key("b", "1")}
    pairs, cached = anyio.run(lambda: make_pairs(embed, "a", "b", texts, tmp_path, keys))
    assert not cached and set(seen) == {"a", "b"} and len(pairs) == 30
    seen.clear()
    again, cached = anyio.run(lambda: make_pairs(embed, "a", "b", texts, tmp_path, keys))
    assert cached and not seen and np.array_equal(again.b, pairs.b)
    saved = next((tmp_path / "pairs" / "a__b").glob("*.npz"))
    loaded = PairSet.load(saved)
    assert loaded.texts == texts and np.array_equal(loaded.a, pairs.a)
    assert loaded.meta["source_key"] == keys["a"]
