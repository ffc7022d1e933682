"""The coherence report: for every pair of models through the hub, how well they share memory.

For each ordered pair (A, B) of the models that joined the hub (and the hub itself), the
projection A -> hub -> B (or the one projector when A or B is the hub) is judged on every
held-out set its legs were judged on (in-domain, out-of-domain, far-domain), matched by
text: top-1 and recall@10 among the set, the mean cosine to the native vectors, the gate's
AUC for "finds the native top-1" (the gate memory's cross-model search serves: agreement and
collection margin combined, gate.py, with a route's own calibration through the hub,
routes.py, where it has one (`route_gate`); and each signal's alone), the share of queries the gate
sends to the proxy and the combined top-1; `gate_auc_pooled` is the gate's AUC over the
domains together, and `gate_auc_routes_pooled` over every pair and domain. Where a direct projector A -> B is fitted too, its top-1 is shown beside
the hub's and the gap between them. Everything comes from the stored projectors and held-out
pairs: nothing is embedded again. Blocking (numpy): run it in a thread.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aether_box.align.fidelity import ranks, retrieval
from aether_box.align.gate import auc, combine, margin
from aether_box.align.hub import Composed, composed_pairs
from aether_box.align.pairs import PairSet
from aether_box.align.projectors import Projector
from aether_box.align.routes import RouteGate, route_signals, stored_route
from aether_box.align.space import SHARED
from aether_box.align.store import ProjectorStore
from aether_box.errors import BadRequest, NotFound

__all__ = ["DOMAINS", "coherence"]

DOMAINS = {"in_domain": "in", "out_of_domain": "out", "out_of_domain_docs": "far"}
DIRECT_KEYS = (
    "top1",
    "recall_at_10",
    "gate_auc",
    "agreement_auc",
    "margin_auc",
    "proxy_share",
    "combined_top1",
)


def _leg(store: ProjectorStore, source: str, target: str) -> tuple[Projector, Any, dict[str, Any]]:
    report = store.report(source, target)
    best = report["best"]
    return store.projector(source, target, best), store.gate(source, target), report


def _combined_coef(report: dict[str, Any]) -> list[float] | None:
    coef: list[float] | None = (
        (report.get("gate") or {}).get("calibration", {}).get("combined_coef")
    )
    return coef


def _held(store: ProjectorStore, source: str, target: str, domain: str) -> PairSet | None:
    try:
        return store.pairs(source, target, domain)
    except BadRequest:
        return None
    except FileNotFoundError:
        return None


def _judge(
    legs: list[tuple[Projector, Any]],
    pairs: PairSet,
    gate: float,
    n: int,
    combined_coef: list[float] | None = None,
    route: RouteGate | None = None,
) -> dict[str, Any]:
    """Figures of the chained legs on held-out pairs (the first n). The gate judged is the
    one memory's cross-model search serves: agreement and collection margin combined by the
    route's calibration (routes.py) or the last leg's (gate.combine), or the agreement alone
    for a projector without one."""
    x, y = pairs.a[:n], pairs.b[:n]
    if route is not None:  # a calibrated route: one agreement from both legs' signals
        (into, into_gate), (out, out_gate) = legs
        into_s, out_s, current = route_signals(
            [(into, into_gate.reverse, into_gate.folds), (out, out_gate.reverse, out_gate.folds)],
            x,
        )
        agreement = route.agreement(into_s, out_s).astype(np.float64)
    else:
        agreement = np.ones(len(x), np.float64)
        current = x
        for projector, leg_gate in legs:
            agreement = agreement * leg_gate.agreement(projector, current)
            current = projector(current)
    found = retrieval(current, y)
    hit = ranks(current, y) == 1
    gaps = margin(current, y)
    served = agreement if combined_coef is None else combine(agreement, gaps, combined_coef)
    accepted = served >= gate
    return {
        "n": found["n"],
        "top1": round(found["top1"], 4),
        "recall_at_10": round(found["recall_at_10"], 4),
        "mean_cosine": round(found["mean_cosine"], 4),
        "gate_auc": auc(served, hit),
        "agreement_auc": auc(agreement, hit),
        "margin_auc": auc(gaps, hit),
        "proxy_share": round(float(1 - accepted.mean()), 4),
        "combined_top1": round(float(np.where(accepted, hit, True).mean()), 4),
        "_scores": (served, hit),
    }


def coherence(
    store: ProjectorStore,
    hub: str,
    gate: float,
    n: int = 1000,
    fitted: set[str] | None = None,
) -> dict[str, Any]:
    """Rows of the report (module docstring) and the models that joined the hub; `fitted`:
    the projectors that count (default every one stored; the service leaves out legs fitted
    against another build of the shared space)."""
    reports = [r for r in store.reports() if fitted is None or r["name"] in fitted]
    fitted = {r["name"] for r in reports}
    joined = sorted(
        (
            {r["source"] for r in reports if r["target"] == hub}
            & {r["target"] for r in reports if r["source"] == hub}
        )
        - {SHARED}  # the learned space's legs into a model's space are no model's route
    )
    models = [hub, *joined] if joined else []
    rows = []
    every: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"served": [], "direct": []}
    for a in models:
        for b in models:
            if a == b or (hub == SHARED and hub in (a, b)):
                continue  # the learned space holds each model's own directions: no news
            legs_names = [(a, b)] if hub in (a, b) else [(a, hub), (hub, b)]
            try:
                legs = [_leg(store, s, t) for s, t in legs_names]
            except NotFound:
                continue
            row: dict[str, Any] = {"from": a, "to": b, "via": None if len(legs) == 1 else hub}
            route = None
            if len(legs) > 1:  # the route's own gate, if calibrated with these legs
                created = (legs[0][2]["created"], legs[1][2]["created"])
                route = stored_route(store, a, hub, b, created)
                row["route_gate"] = route is not None
            direct = None
            if len(legs) > 1 and f"{a}->{b}" in fitted:
                direct = _leg(store, a, b)
            scores, direct_scores = [], []
            for domain, short in DOMAINS.items():
                first = _held(store, *legs_names[0], domain)
                last = _held(store, *legs_names[-1], domain)
                if first is None or last is None:
                    continue
                pairs = first if len(legs) == 1 else composed_pairs(first, last)
                if pairs is None or len(pairs) < 5:
                    continue
                coef = route.combined_coef if route is not None else _combined_coef(legs[-1][2])
                figures = _judge([(p, g) for p, g, _ in legs], pairs, gate, n, coef, route)
                scores.append(figures.pop("_scores"))
                own = _held(store, a, b, domain) if direct is not None else None
                if direct is not None and own is not None:
                    # The direct projector on its own held-out pairs (the same texts): what
                    # the route serves when both exist, and the yardstick of the hub's gap.
                    d = _judge([direct[:2]], own, gate, n, _combined_coef(direct[2]))
                    direct_scores.append(d.pop("_scores"))
                    figures["direct"] = {k: d[k] for k in DIRECT_KEYS}
                    figures["direct_top1"] = d["top1"]
                    figures["hub_gap"] = round(d["top1"] - figures["top1"], 4)
                row[short] = figures
            row["gate_auc_pooled"] = _pooled(scores)
            row["direct_gate_auc_pooled"] = _pooled(direct_scores)
            every["served"] += scores
            every["direct"] += direct_scores
            rows.append(row)
    return {
        "hub": hub,
        "models": models,
        "gate": gate,
        "pairs": rows,
        # Over every pair's route through the hub (what a box of 2N fits serves) and every
        # held-out set; and over the direct projectors fitted beside them.
        "gate_auc_routes_pooled": _pooled(every["served"]),
        "gate_auc_direct_pooled": _pooled(every["direct"]),
    }


def _pooled(scores: list[tuple[np.ndarray, np.ndarray]]) -> float | None:
    """The AUC of (gate, hit) pairs pooled over several sets; None when there are none."""
    if not scores:
        return None
    served, hit = (np.concatenate(part) for part in zip(*scores, strict=True))
    return auc(served, hit)


def composed_projector(store: ProjectorStore, a: str, hub: str, b: str) -> Composed:
    """The numpy A -> hub -> B of the served methods."""
    return Composed(_leg(store, a, hub)[0], _leg(store, hub, b)[0])
