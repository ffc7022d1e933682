"""How well an encoder retrieves: top-1 on a retrieval set built from the shipped corpus.

Used to check that a faster copy of an encoder (the int8 one) retrieves as well as the float32
one. The set: the first `n` WordNet glosses of the built-in alignment corpus are the documents;
each query is its gloss with every other word left out and the rest in reverse order (same
topic, different surface), and the right answer is the gloss it came from.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aether_box.align.corpus import load_set

__all__ = ["retrieval_set", "retrieval_top1"]


def retrieval_set(n: int = 1_000) -> tuple[list[str], list[str]]:
    """(documents, queries): query i is a shortened, reordered gloss i."""
    documents = load_set("glosses")[:n]
    queries = [" ".join(doc.split()[::2][::-1]) for doc in documents]
    return documents, queries


def retrieval_top1(encoder: Any, n: int = 1_000, batch: int = 32) -> float:
    """Share of queries whose nearest document (cosine) is their own gloss."""
    documents, queries = retrieval_set(n)
    docs = np.concatenate([encoder.embed(documents[i : i + batch]) for i in range(0, n, batch)])
    qs = np.concatenate([encoder.embed(queries[i : i + batch]) for i in range(0, n, batch)])
    return float(np.mean(np.argmax(qs @ docs.T, axis=1) == np.arange(n)))
