"""Reciprocal rank fusion: one ranking from several (vector and keyword search)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["RRF_K", "reciprocal_rank_fusion"]

# The constant from Cormack, Clarke and Buettcher (SIGIR 2009): damps the weight of top ranks.
RRF_K = 60


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[int]], limit: int, c: int = RRF_K
) -> list[tuple[int, float, list[int | None]]]:
    """The best `limit` items as (item, fused score, 1-based rank in each ranking or None)."""
    scores: dict[int, float] = {}
    ranks: dict[int, list[int | None]] = {}
    for which, ranking in enumerate(rankings):
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (c + rank)
            ranks.setdefault(item, [None] * len(rankings))[which] = rank
    # Ties keep the order in which items were first ranked (vector results come first).
    best = sorted(scores, key=lambda item: -scores[item])[:limit]
    return [(item, scores[item], ranks[item]) for item in best]
