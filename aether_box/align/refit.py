"""Refitting a served projector from new texts, and the rule that decides its promotion.

The candidate is fitted on the served projector's own fit pairs plus most of the new texts
(from a memory collection, in the target's space, reusing its stored vectors), with the
served method. Both are judged on the same held-out sets: the new texts kept back
(`holdout`) and the standard split the served projector was judged on. It is promoted only
if, on the new texts, top-1 and recall@10 both improve (recall@10 may stay at 1.0), and on
the standard split top-1 drops by at most `max_loss`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from aether_box.align.fidelity import evaluate
from aether_box.align.fitting import MIN_PAIRS, TextPlan, fit_pair
from aether_box.align.gate import Gate
from aether_box.align.pairs import PairSet
from aether_box.align.projectors import Projector
from aether_box.align.settings import AlignSettings
from aether_box.errors import BadRequest

__all__ = ["FIGURES", "judge", "refit", "split_new"]

FIGURES = ("top1", "recall_at_10", "mean_cosine", "n")
SPLIT_SEED = 11


def split_new(
    texts: list[str], known: set[str], holdout: float, most_held: int
) -> tuple[list[int], list[int]]:
    """Indices (fit, held out) of the texts the served projector has not seen."""
    fresh = [i for i, t in enumerate(texts) if t not in known]
    if len(fresh) < MIN_PAIRS + 5:
        raise BadRequest(
            f"only {len(fresh)} texts are new to the projector; a refit needs at least "
            f"{MIN_PAIRS + 5}"
        )
    order = np.random.default_rng(SPLIT_SEED).permutation(len(fresh))
    n_held = min(most_held, max(5, round(len(fresh) * holdout)))
    held = sorted(fresh[i] for i in order[:n_held])
    fit = sorted(fresh[i] for i in order[n_held:])
    return fit, held


def _figures(report: dict[str, Any]) -> dict[str, Any]:
    return {k: round(float(report[k]), 4) if k != "n" else report[k] for k in FIGURES}


def judge(
    before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]], max_loss: float
) -> tuple[bool, str]:
    """The promotion rule (module docstring): (promote, why) in words a log reader follows."""
    b, a = before["new"], after["new"]
    gained = a["top1"] > b["top1"] and (
        a["recall_at_10"] > b["recall_at_10"] or b["recall_at_10"] >= 1.0
    )
    lost = before["standard"]["top1"] - after["standard"]["top1"]
    words = (
        f"new texts top-1 {b['top1']:.3f} -> {a['top1']:.3f}, recall@10 "
        f"{b['recall_at_10']:.3f} -> {a['recall_at_10']:.3f}; standard split top-1 "
        f"{before['standard']['top1']:.3f} -> {after['standard']['top1']:.3f}"
    )
    if not gained:
        return False, f"not promoted: no gain on the new texts ({words})"
    if lost > max_loss + 1e-9:
        return False, f"not promoted: loses {lost * 100:.1f} points on the standard split ({words})"
    return True, f"promoted: {words}"


def refit(
    served: Projector,
    old_fit: PairSet,
    standard: PairSet,
    new_fit: PairSet,
    new_held: PairSet,
    settings: AlignSettings,
    label: str,
    max_loss: float,
    progress: Callable[[str, float], None] | None = None,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Projector], Gate, dict[str, PairSet]]:
    """Fit and judge a candidate (blocking): (result, its report, projectors, gate, pairs)."""
    started = time.perf_counter()
    fit = PairSet(
        served.source,
        served.target,
        [*old_fit.texts, *new_fit.texts],
        np.concatenate([old_fit.a, new_fit.a]),
        np.concatenate([old_fit.b, new_fit.b]),
    )
    parts = {"fit": fit, "in_domain": standard, "ood:new": new_held}
    plan = TextPlan(label, {name: ps.texts for name, ps in parts.items()})
    report, projectors, gate = fit_pair(parts, plan, settings, [served.method], progress)
    n = settings.test_pairs
    before = {
        "new": _figures(evaluate(served, new_held.a, new_held.b, n=n)),
        "standard": _figures(evaluate(served, standard.a, standard.b, n=n)),
    }
    judged = report["methods"][served.method]
    after = {"new": _figures(judged["out_of_domain"]), "standard": _figures(judged["in_domain"])}
    promote, verdict = judge(before, after, max_loss)
    report["refit"] = {"before": before, "after": after, "verdict": verdict}
    result = {
        "before": before,
        "after": after,
        "promote": promote,
        "verdict": verdict,
        "pairs": {"fit": len(fit), "new_fit": len(new_fit), "new_held": len(new_held)},
        "fit_s": round(time.perf_counter() - started, 2),
    }
    return result, report, projectors, gate, {"fit": fit, "in_domain": standard}
