"""Routes through the hub and composed held-out pairs (pure functions of hub.py)."""

from __future__ import annotations

import numpy as np

from aether_box.align.hub import composed_pairs, route
from aether_box.align.pairs import PairSet


def test_a_pair_goes_direct_when_fitted_else_through_the_hub() -> None:
    fitted = {"a->hub", "hub->b", "a->b", "b->hub"}
    assert route("a", "b", "hub", fitted) == [("a", "b")]
    assert route("b", "a", "hub", fitted) == []  # hub->a is missing: no way
    assert route("b", "a", "hub", fitted | {"hub->a"}) == [("b", "hub"), ("hub", "a")]
    assert route("b", "a", None, fitted | {"hub->a"}) == []  # no hub: direct only
    assert route("a", "hub", "hub", fitted) == [("a", "hub")]


def test_composed_pairs_match_the_legs_by_text() -> None:
    rng = np.random.default_rng(0)
    into = PairSet("a", "hub", ["x", "y", "z"], rng.random((3, 4)), rng.random((3, 2)))
    out = PairSet("hub", "b", ["z", "x"], rng.random((2, 2)), rng.random((2, 5)))
    both = composed_pairs(into, out)
    assert both is not None and both.texts == ["x", "z"]
    assert np.array_equal(both.a, into.a[[0, 2]]) and np.array_equal(both.b, out.b[[1, 0]])
    assert composed_pairs(into, PairSet("hub", "b", ["w"], out.a[:1], out.b[:1])) is None
