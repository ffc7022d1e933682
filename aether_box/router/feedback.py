"""The router's decision log and its threshold refit from users' feedback.

Each routing decision is kept (in memory, the newest `KEPT`) with every route's score; a
`feedback {message_id, route, good}` says whether `route` was right for that message. A
piece of feedback is a labelled score for one route: good at score s means that route's
threshold should be at most s; bad means above s. A refit picks, per route with feedback,
the threshold that classifies the most labels right, fitted on 70% of the feedback and
judged on the other 30% (the same rule as a projector's: promoted only if the held-out
accuracy improves and the accuracy on all feedback drops by at most a point).
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from aether_box.errors import NotFound

__all__ = ["DecisionLog", "refit_thresholds"]

KEPT = 5000
MIN_FEEDBACK = 10


@dataclass
class Label:
    route: str
    score: float
    good: bool


class DecisionLog:
    """Routing decisions by message id, and the feedback given on them."""

    def __init__(self) -> None:
        self.decisions: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.labels: list[Label] = []
        self.total = 0
        self.fallbacks = 0
        self.best_score_sum = 0.0  # of every decision's best route score: a window's mean

    def add(self, route: str, scores: dict[str, float], fallback: bool) -> str:
        """Keep a decision; its message id."""
        ident = uuid.uuid4().hex[:16]
        self.decisions[ident] = {"route": route, "scores": scores}
        self.total += 1
        self.fallbacks += fallback
        self.best_score_sum += max(scores.values(), default=0.0)
        while len(self.decisions) > KEPT:
            self.decisions.popitem(last=False)
        return ident

    def feedback(self, message_id: str, route: str, good: bool) -> Label:
        """Record whether `route` was right for message `message_id`."""
        found = self.decisions.get(message_id)
        if found is None:
            raise NotFound(
                f"no routing decision {message_id!r} among the last {KEPT}; send the "
                "message_id a route or chat reply gave"
            )
        if route not in found["scores"]:
            raise NotFound(f"route {route!r} was not scored for {message_id!r}")
        label = Label(route, float(found["scores"][route]), bool(good))
        self.labels.append(label)
        return label


def _accuracy(labels: list[Label], thresholds: dict[str, float]) -> float:
    right = [(label.score >= thresholds[label.route]) == label.good for label in labels]
    return float(np.mean(right)) if right else 0.0


def _best(scores: np.ndarray, good: np.ndarray, current: float) -> float:
    """The threshold classifying most labels right (ties: the one nearest `current`)."""
    points = np.unique(np.concatenate([scores, [current]]))
    candidates = np.concatenate(
        [[points[0] - 1e-3], (points[1:] + points[:-1]) / 2, [points[-1] + 1e-3]]
    )
    right = [((scores >= t) == good).mean() for t in candidates]
    top = max(right)
    tied = [t for t, r in zip(candidates, right, strict=True) if r == top]
    return float(min(tied, key=lambda t: abs(t - current)))


def refit_thresholds(
    labels: list[Label], current: dict[str, float], max_loss: float = 0.01
) -> dict[str, Any]:
    """New per-route thresholds from the feedback, and whether they earn promotion."""
    if len(labels) < MIN_FEEDBACK:
        return {
            "promote": False,
            "verdict": f"not promoted: {len(labels)} pieces of feedback, {MIN_FEEDBACK} needed",
            "before": {"held_out": None, "all": None},
            "after": {"held_out": None, "all": None},
            "thresholds": dict(current),
        }
    order = np.random.default_rng(0).permutation(len(labels))
    n_held = max(3, len(labels) * 3 // 10)
    held = [labels[i] for i in order[:n_held]]
    fit = [labels[i] for i in order[n_held:]]
    new = dict(current)
    for route in {label.route for label in fit}:
        mine = [label for label in fit if label.route == route]
        scores = np.array([label.score for label in mine])
        good = np.array([label.good for label in mine])
        new[route] = round(_best(scores, good, current[route]), 4)
    before = {"held_out": _accuracy(held, current), "all": _accuracy(labels, current)}
    after = {"held_out": _accuracy(held, new), "all": _accuracy(labels, new)}
    words = (
        f"held-out accuracy {before['held_out']:.3f} -> {after['held_out']:.3f}, all "
        f"feedback {before['all']:.3f} -> {after['all']:.3f}"
    )
    if after["held_out"] <= before["held_out"]:
        verdict, promote = f"not promoted: no gain on held-out feedback ({words})", False
    elif before["all"] - after["all"] > max_loss + 1e-9:
        verdict, promote = f"not promoted: loses on all feedback ({words})", False
    else:
        verdict, promote = f"promoted: {words}", True
    return {"promote": promote, "verdict": verdict, "before": before, "after": after,
            "thresholds": new}  # fmt: skip
