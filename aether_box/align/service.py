"""The `align` bus service and its component.

Ops (body ``{"op": ..., ...}``; vectors are float32 arrays, sent as raw frames)::

    project   from, to, vector (d,) | vectors (n, d), [text], [collection], [gate], [recipe],
              [target_recipe]
              -> {vector (d_to,) | vectors (n, d_to), agreement, accepted, gate,
                  projector, method, recipe, [combined_coef]}
              agreement: the gate's probability that the projection finds the native top-1
              (float, or an (n,) float32 array for `vectors`; see gate.py); accepted: agreement >= gate (the [align]
              gate, or the request's own `gate`): a bool, or an (n,) uint8 array for
              `vectors`. With no direct projector, A -> hub -> B (hub.py; projector names
              the route). `recipe` (an id, or {prompt, pooling}) states how the vector was
              made: another recipe than the projector's is refused (RecipeMismatch; see
              recipes.py), never projected; so is a `target_recipe` ({prompt, pooling} of the
              vectors the projection will be compared with, e.g. a collection's) unlike the
              projector's target side. combined_coef: the calibration of the combined gate
              (agreement and collection margin, gate.combine) that memory's cross-model search
              applies once it has searched. NotFound when no projector was fitted.
    list      -> {projectors: [summary], gate}
    fidelity  from, to -> the full fit report (every method, held-out figures, gate calibration)
    pairs     from, to, [texts | corpus | collection] -> {n, cached, corpus, from_key, to_key}
    fit       from, to, [texts | corpus | collection], [methods], [max_pairs], [test_pairs],
              [out_of_domain] -> the fit report (see `aether_box.align.fitting.fit_pair`),
              with `routes`: the routes through the hub the new leg completes, each with its
              gate calibrated anew ({route: {texts, folds, top1}}; routes.py)
    refit     from, to, collection, [holdout], [max_loss] -> {candidate, before, after,
              promote, verdict, pairs, took_s}: a candidate fitted on the served projector's
              pairs plus the collection's new texts, judged by aether_box.align.refit's rule
    hub       models, [dim], [texts | corpus], [max_pairs], [test_pairs] -> {hub, founders, dim,
              texts, digest, served}: build the shared hub space (space.py) from the models'
              vectors of the fit texts (the standard glosses split by default); `[align] hub = "shared"` serves it, and each model then
              joins it by fitting its two projectors (`fit` from/to "shared")
    report    -> {hub, models, gate, pairs: [{from, to, via, in|out|far: {top1, recall_at_10,
              mean_cosine, gate_auc, proxy_share, combined_top1, [direct_top1, hub_gap]}}]}:
              every pair through the hub judged on the stored held-out pairs (coherence.py)
    promote   from, to, candidate -> {projector, previous, routes}: serve it; the old one is
              kept; a leg of the hub recalibrates the routes through it (routes.py)
    rollback  from, to, version -> {projector, restored, previous, routes}: serve a kept
              version (routes as for promote)
    delete    from, to -> {removed, method}: forget a projector, its kept versions and
              candidates, and the route calibrations through it (admin)

`pairs` and `fit` stream PARTIAL progress: ``{"stage": "embed", "model", "done", "total"}``
and ``{"stage": "fit", "step", "fraction"}``. Texts come from `texts` (a list), a built-in
`corpus` ("glosses", "examples", "docs"; the default is the standard glosses split) or a
memory `collection` (its own vectors are reused when `to` is its model).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import anyio
import anyio.abc
import anyio.from_thread
import anyio.to_thread
import numpy as np

from aether_box.align.coherence import coherence
from aether_box.align.corpus import BUILTIN_SETS, load_set
from aether_box.align.export import OnnxProjector
from aether_box.align.fitting import TextPlan, fit_options, fit_pair, held_out_sets, plan_texts
from aether_box.align.gate import FEATURES as SIGNALS
from aether_box.align.pairs import PairSet, VectorCache, embed_texts, make_pairs, model_key
from aether_box.align.recipes import (
    Recipe,
    check_recipe,
    check_target_recipe,
    model_recipe,
    options_of,
    recipe_of_report,
)
from aether_box.align.refit import refit, split_new
from aether_box.align.routes import RouteGate, calibrate_stored, routes_through, stored_route
from aether_box.align.settings import AlignSettings
from aether_box.align.space import SHARED, SharedSpace, build_space
from aether_box.align.store import ProjectorStore, pair_name
from aether_box.bus.service import OpService, Request, ThreadProgress, require_name
from aether_box.context import BoxContext
from aether_box.errors import BadRequest, BoxError, NotFound, RecipeMismatch, TooLarge

__all__ = ["AlignComponent", "AlignService"]

log = logging.getLogger(__name__)

# Up to this many rows are projected on the event loop itself: ~100 us of ONNX Runtime, less
# than the hop to a worker thread would cost. Bigger batches go to a thread. The one blocking
# call the box makes on its loop on purpose: the README says why, and the tests' blockbuster
# allows it on this path only (tests/blockbuster_rules.py).
INLINE_ROWS = 64
MAX_ROWS = 100_000
PROGRESS_EVERY_S = 0.5
RECENT = 0.05  # weight of the newest projection in the running (exponential) agreement


@dataclass
class Served:
    """One loaded projector and its counters."""

    name: str
    method: str
    engine: OnnxProjector
    report: dict[str, Any]
    projections: int = 0
    accepted: int = 0
    agreement_sum: float = 0.0
    agreement_recent: float | None = None

    def count(self, agreement: np.ndarray, accepted: np.ndarray) -> None:
        """Add one call's projections to the counters."""
        self.projections += len(agreement)
        self.accepted += int(accepted.sum())
        self.agreement_sum += float(agreement.sum())
        for value in agreement[-32:]:
            prior = self.agreement_recent
            self.agreement_recent = (
                float(value) if prior is None else ((1 - RECENT) * prior + RECENT * float(value))
            )

    def summary(self) -> dict[str, Any]:
        """The status view of this projector."""
        return {
            **_figures(self.report),
            "projections": self.projections,
            "accepted": self.accepted,
            "proxied": self.projections - self.accepted,
            "agreement_mean": (
                round(self.agreement_sum / self.projections, 4) if self.projections else None
            ),
            "agreement_recent": (
                round(self.agreement_recent, 4) if self.agreement_recent is not None else None
            ),
        }


class AlignService(OpService):
    """Answers the `align` service's ops (see the module docstring)."""

    name = "align"

    def __init__(self, ctx: BoxContext, settings: AlignSettings) -> None:
        assert settings.dir is not None
        self.ctx = ctx
        self.settings = settings
        self.store = ProjectorStore(settings.dir)
        self.served: dict[str, Served] = {}
        self._fit_limiter = anyio.CapacityLimiter(1)  # one fit at a time: they take the cores
        self._load_lock = anyio.Lock()
        self._recipe_by_model: dict[str, Recipe] = {}
        self._coherence: dict[str, Any] = {}  # "A->hub->B": {"in": top-1, ...}, last report
        self._space_cache: SharedSpace | None = None
        self._route_gates: dict[str, RouteGate] = {}  # "A->hub->B": its calibration
        # Every fitted projector's report, loaded or not, for status (read off the loop).
        self.fitted: dict[str, dict[str, Any]] = {}
        # Pairs, fits, refits and hub builds running now, each with its latest step (status).
        self.running: dict[int, dict[str, Any]] = {}

    # ----------------------------------------------------------------- projection

    async def op_project(self, request: Request) -> dict[str, Any]:
        body = request.body
        source, target = require_name(body, "from"), require_name(body, "to")
        single = "vector" in body and body.get("vector") is not None
        raw = body.get("vector") if single else body.get("vectors")
        if raw is None:
            raise BadRequest("project needs a 'vector' (d,) or 'vectors' (n, d) float32 array")
        try:  # a list of numbers works too; too large for float32 becomes inf, refused below
            # errstate is per thread, where catch_warnings would change the whole process's
            # filters; numpy's float32 cast reports its overflow through it.
            with np.errstate(over="ignore", invalid="ignore"):
                x = np.asarray(raw, dtype=np.float32)
        except (TypeError, ValueError, OverflowError):
            raise BadRequest("'vector' / 'vectors' must be float32 arrays (d,) or (n, d)") from None
        if single:
            x = x.reshape(1, -1)
        if x.ndim != 2 or not len(x):
            raise BadRequest(f"'vectors' must be a non-empty (n, d) array, got shape {x.shape}")
        if len(x) > MAX_ROWS:
            raise TooLarge(f"{len(x)} vectors in one request; at most {MAX_ROWS}")
        if not np.all(np.isfinite(x)):
            raise BadRequest("the vectors hold NaN or infinite values")
        gate = body.get("gate", self.settings.gate)
        if isinstance(gate, bool) or not isinstance(gate, int | float) or not 0 <= gate <= 1:
            raise BadRequest(f"'gate' must be a number from 0 to 1, got {gate!r}")
        legs = await self._route(source, target)
        # RecipeMismatch, never projected: a vector made another way than the first leg's
        # source, or a destination (a collection) holding vectors unlike the last leg's target.
        check_recipe(body.get("recipe"), legs[0].report)
        where = f"collection {body['collection']!r}" if body.get("collection") else "the target"
        check_target_recipe(body.get("target_recipe"), legs[-1].report, where)
        route = await self._route_gate(legs)
        out = await self._run_legs(legs, x, route)
        agreement = out["agreement"]
        accepted = agreement >= gate
        for leg in legs:
            leg.count(agreement, accepted)
        served = legs[0] if len(legs) == 1 else _via(legs)
        self.ctx.events.publish(
            "metrics.align",
            {
                "projector": served.name,
                "method": served.method,
                "n": int(len(x)),
                "agreement": round(float(agreement.mean()), 4),
                "accepted": int(accepted.sum()),
                "gate": float(gate),
                "collection": body.get("collection"),
            },
        )
        reply: dict[str, Any] = {
            "projector": served.name,
            "method": served.method,
            "gate": float(gate),
            "recipe": recipe_of_report(legs[0].report, "source").get("id") or "plain",
        }
        if len(legs) > 1:  # whether the route's own gate served (routes.py), or the legs'
            reply["route_gate"] = route is not None
        # The combined gate's calibration (gate.combine), for a caller that searches a
        # collection with the projection (memory): the route's, else the last leg's, as
        # coherence.py judges it.
        combined = (
            route.combined_coef
            if route is not None
            else (legs[-1].report.get("gate") or {}).get("calibration", {}).get("combined_coef")
        )
        if combined is not None:
            reply["combined_coef"] = combined
        if single:
            reply.update(
                vector=out["y"][0], agreement=float(agreement[0]), accepted=bool(accepted[0])
            )
        else:
            # The wire takes numeric arrays only: accepted travels as uint8 (1 = accepted).
            reply.update(vectors=out["y"], agreement=agreement, accepted=accepted.astype(np.uint8))
        return reply

    async def _route(self, source: str, target: str) -> list[Served]:
        """The direct projector, or the two legs through the hub (hub.py)."""
        try:
            return [await self._served(source, target)]
        except NotFound:
            hub = self.settings.hub
            if not hub or hub in (source, target):
                raise
        try:
            return [await self._served(source, hub), await self._served(hub, target)]
        except NotFound:
            raise NotFound(
                f"no projector from {source!r} to {target!r}, direct or through the hub "
                f"{hub!r}; let each model join the hub (`aether-box align join --model "
                f"{source}` and `--model {target}`: two fits each) or fit a direct one "
                f"(`aether-box align fit --from {source} --to {target}`)"
            ) from None

    async def _route_gate(self, legs: list[Served]) -> RouteGate | None:
        """The calibrated gate of a route through the hub (routes.py), if it was made with
        the legs served now and their graphs give the signals it needs; None for one leg."""
        if len(legs) != 2 or not all(leg.engine.has_signals for leg in legs):
            return None
        name = "->".join([legs[0].report["source"], *(leg.report["target"] for leg in legs)])
        created = (legs[0].report["created"], legs[1].report["created"])
        found = self._route_gates.get(name)
        if found is None or not found.fresh(*created):
            a, hub, b = name.split("->")
            found = await anyio.to_thread.run_sync(stored_route, self.store, a, hub, b, created)
            if found is not None:
                self._route_gates[name] = found
        return found

    async def _run_legs(
        self, legs: list[Served], x: np.ndarray, route: RouteGate | None = None
    ) -> dict[str, np.ndarray]:
        """Run the legs in turn; a route's agreement comes from both legs' signals by its own
        calibration (routes.py), or, uncalibrated, is the product of its legs' (hub.py)."""

        def run() -> dict[str, np.ndarray]:
            out = legs[0].engine.run(x)
            if route is not None:
                more = legs[1].engine.run(out["y"])
                into, beyond = (np.stack([o[k] for k in SIGNALS], 1) for o in (out, more))
                return {**more, "agreement": route.agreement(into, beyond)}
            for leg in legs[1:]:
                more = leg.engine.run(out["y"])
                out = {**more, "agreement": out["agreement"] * more["agreement"]}
            return out

        if len(x) * len(legs) <= INLINE_ROWS:
            return run()
        return await anyio.to_thread.run_sync(run)

    async def _served(self, source: str, target: str) -> Served:
        name = pair_name(source, target)
        found = self.served.get(name)
        if found is not None:
            return found
        async with self._load_lock:
            if name not in self.served:
                report = await anyio.to_thread.run_sync(self.store.report, source, target)
                if SHARED in (source, target):
                    await self._check_space_leg(report)
                path = self.store.served_path(source, target)
                engine = await anyio.to_thread.run_sync(OnnxProjector, path)
                if not engine.has_gate:
                    raise BoxError(
                        f"{path} has no gate output; refit it with "
                        f"`aether-box align fit --from {source} --to {target}`"
                    )
                self.served[name] = Served(name, report["best"], engine, report)
            return self.served[name]

    async def _current_legs(self, reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """`reports` less the legs fitted against another build of the shared hub space."""
        if self.settings.hub != SHARED:
            return reports
        try:
            digest = (await self._space()).digest
        except NotFound:
            return [r for r in reports if SHARED not in (r["source"], r["target"])]
        return [r for r in reports if _space_digest(r) in (None, digest)]

    async def _check_space_leg(self, report: Mapping[str, Any]) -> None:
        """Refuse a leg into or out of the shared space fitted against another build of it."""
        side = "target" if report["target"] == SHARED else "source"
        if _space_digest(report) != (await self._space()).digest:
            model = report["source"] if side == "target" else report["target"]
            raise RecipeMismatch(
                f"{report['name']} was fitted against another build of the shared hub space; "
                f"let {model} join it again (`aether-box align join --model {model}`)"
            )

    # ----------------------------------------------------------------- reports

    async def op_list(self, request: Request) -> dict[str, Any]:
        reports = await anyio.to_thread.run_sync(self.store.reports)
        out = []
        for report in reports:
            item = _summary(report)
            served = self.served.get(report["name"])
            if served is not None:
                item["counters"] = served.summary()
            out.append(item)
        return {"projectors": out, "gate": self.settings.gate}

    async def op_fidelity(self, request: Request) -> dict[str, Any]:
        source, target = require_name(request.body, "from"), require_name(request.body, "to")
        return await anyio.to_thread.run_sync(self.store.report, source, target)

    async def op_report(self, request: Request) -> dict[str, Any]:
        """The coherence report (coherence.py): every pair through the hub, per domain."""
        if not self.settings.hub:
            raise BadRequest("no hub is set ([align] hub); set one to see pairs through it")
        reports = await self._current_legs(await anyio.to_thread.run_sync(self.store.reports))
        fitted = {r["name"] for r in reports}
        report = await anyio.to_thread.run_sync(
            lambda: coherence(self.store, self.settings.hub, self.settings.gate, fitted=fitted)
        )
        self._coherence = _compact(report)
        return report

    async def read_fitted(self) -> None:
        """Re-read the fitted projectors' reports (for status)."""
        reports = await anyio.to_thread.run_sync(self.store.reports)
        self.fitted = {r["name"]: r for r in reports}

    def status(self) -> dict[str, Any]:
        """The "align" section of `status` (the hub's last coherence report, compact)."""
        return {
            "gate": self.settings.gate,
            "hub": self.settings.hub or None,
            "shared_space": (
                {"founders": self._space_cache.founders, "dim": self._space_cache.dim}
                if self._space_cache is not None
                else None
            ),
            # Fitted ones not loaded yet too: "none" after a restart sent users to refit.
            "projectors": {
                name: self.served[name].summary()
                if name in self.served
                else _idle(self.fitted[name])
                for name in sorted({*self.fitted, *self.served})
            },
            "coherence": self._coherence,
            "running": [dict(work) for work in self.running.values()],
        }

    # ----------------------------------------------------------------- pairs and fits

    async def op_pairs(self, request: Request) -> dict[str, Any]:
        with self._at_work(request):
            return await self._pairs(request)

    async def _pairs(self, request: Request) -> dict[str, Any]:
        body = request.body
        source, target = _models(body)
        plan = await self._plan(body, target, standard=False)
        texts = plan.all_texts()
        progress = self._progress(request)
        pairs, cached = await make_pairs(
            self._embed,
            source,
            target,
            texts,
            self.settings.dir,
            await self._keys(source, target),
            progress,
            known_target=(
                plan.known_target
                if plan.known_target is not None
                else await self._space_vectors(target, texts, progress)
            ),
            chunk=self.settings.embed_chunk,
            known_source=await self._space_vectors(source, texts, progress),
        )
        return {
            "from": source,
            "to": target,
            "n": len(pairs),
            "cached": cached,
            "corpus": plan.label,
            "from_key": pairs.meta["source_key"],
            "to_key": pairs.meta["target_key"],
        }

    async def op_fit(self, request: Request) -> dict[str, Any]:
        with self._at_work(request):
            return await self._fit(request)

    async def _fit(self, request: Request) -> dict[str, Any]:
        body = request.body
        source, target = _models(body)
        if source == target:
            raise BadRequest("'from' and 'to' name the same model; nothing to align")
        methods = body.get("methods", self.settings.methods)
        if (
            not isinstance(methods, list)
            or not methods
            or any(m not in ("ridge", "procrustes", "mlp") for m in methods)
        ):
            raise BadRequest("'methods' must be a list from ridge, procrustes, mlp")
        plan = await self._plan(body, target, standard=True)
        keys = await self._keys(source, target)
        progress = self._progress(request)
        parts: dict[str, PairSet] = {}
        whole: PairSet | None = None
        cached = []
        if plan.known_target is not None:  # a collection in the target's space: embed A only
            whole, hit = await make_pairs(
                self._embed,
                source,
                target,
                plan.parts["all"],
                self.settings.dir,
                keys,
                progress,
                plan.known_target,
                self.settings.embed_chunk,
            )
            cached.append(hit)
            index = {t: i for i, t in enumerate(whole.texts)}
        for part, texts in plan.parts.items():
            if part == "all":
                continue
            if whole is not None and all(t in index for t in texts):
                parts[part] = whole.subset([index[t] for t in texts])
            else:
                parts[part], hit = await make_pairs(
                    self._embed,
                    source,
                    target,
                    texts,
                    self.settings.dir,
                    keys,
                    progress,
                    await self._space_vectors(target, texts, progress),
                    self.settings.embed_chunk,
                    await self._space_vectors(source, texts, progress),
                )
                cached.append(hit)
        send = self._fit_progress(request)
        async with self._fit_limiter:
            report, projectors, gate = await anyio.to_thread.run_sync(
                lambda: fit_pair(parts, plan, self.settings, methods, send)
            )
            report["pairs"].update(from_key=keys[source], to_key=keys[target], cached=all(cached))
            recipes = self._recipe_by_model
            report["recipes"] = {
                "source": recipes[source].as_dict(),
                "target": recipes[target].as_dict(),
            }
            kept = {"fit": parts["fit"], **held_out_sets(parts)}
            await anyio.to_thread.run_sync(self.store.save, projectors, gate, report, kept)
            self.served.pop(pair_name(source, target), None)  # serve the new one from now on
            self.fitted[report["name"]] = report
            report["routes"] = await self._calibrate_routes(source, target, request)
        return report

    async def _calibrate_routes(
        self, source: str, target: str, request: Request | None = None
    ) -> dict[str, Any]:
        """Calibrate the gate of every route through the hub the new leg completes
        (routes.py); {route: its calibration facts, or None when its legs share too few
        texts}. Called holding the fit limiter."""
        hub = self.settings.hub
        if not hub or hub not in (source, target):
            return {}
        reports = await self._current_legs(await anyio.to_thread.run_sync(self.store.reports))
        done: dict[str, Any] = {}
        todo = routes_through(reports, hub, source, target)
        for i, route in enumerate(todo):
            if request is not None:
                step = {"stage": "fit", "step": f"gate: route {'->'.join(route)}"}
                await request.partial({**step, "fraction": round(i / len(todo), 3)})
            try:
                found = await anyio.to_thread.run_sync(
                    calibrate_stored, self.store, route, fit_options(self.settings)
                )
            except (BadRequest, NotFound) as exc:  # a leg without its fit pairs, say
                log.warning("align: route %s keeps its legs' gates: %s", "->".join(route), exc)
                found = None
            done["->".join(route)] = found.facts if found is not None else None
        return done

    # ----------------------------------------------------------------- refits (the tuner's)

    async def op_refit(self, request: Request) -> dict[str, Any]:
        with self._at_work(request):
            return await self._refit(request)

    async def _refit(self, request: Request) -> dict[str, Any]:
        """Fit a candidate from a collection's new texts and judge it (aether_box.align.refit);
        nothing is served differently until `promote`."""
        body = request.body
        source, target = _models(body)
        name = require_name(body, "collection")
        max_loss = body.get("max_loss", 0.01)
        if isinstance(max_loss, bool) or not isinstance(max_loss, int | float) or max_loss < 0:
            raise BadRequest(f"'max_loss' must be a number >= 0, got {max_loss!r}")
        started = time.monotonic()
        report = await anyio.to_thread.run_sync(self.store.report, source, target)
        served = await anyio.to_thread.run_sync(
            self.store.projector, source, target, report["best"]
        )
        old_fit = await anyio.to_thread.run_sync(self.store.pairs, source, target, "fit")
        standard = await anyio.to_thread.run_sync(self.store.pairs, source, target, "in_domain")
        recipes = await self._recipes(source, target)
        for side, name_ in (("source", source), ("target", target)):
            if recipe_of_report(report, side).get("id") not in (None, recipes[name_].id):
                raise RecipeMismatch(
                    f"{name_}'s embedding recipe changed since {pair_name(source, target)} was "
                    f"fitted (now {recipes[name_].id}); its pairs cannot be mixed with new "
                    f"ones: fit it again (`aether-box align fit --from {source} --to {target}`)"
                )
        texts, vectors, model, kind = await self._collection(name)
        if kind != _recipe_options(recipes[target]):
            raise RecipeMismatch(
                f"collection {name!r} holds vectors made with {kind}, but {target} embeds for "
                f"alignment with {_recipe_options(recipes[target])}, so they cannot be its "
                "targets; refit from texts instead, or from a collection created with "
                '"recipe": "align"'
            )
        if model != target:
            raise BadRequest(
                f"collection {name!r} holds {model!r} vectors, not {target!r}'s; refit "
                f"the projector into {model!r} instead"
            )
        known = set(old_fit.texts) | set(standard.texts)
        holdout = body.get("holdout", 0.2)
        if isinstance(holdout, bool) or not isinstance(holdout, int | float):
            raise BadRequest(f"'holdout' must be a share from 0.05 to 0.5, got {holdout!r}")
        if not 0.05 <= holdout <= 0.5:
            raise BadRequest(f"'holdout' must be a share from 0.05 to 0.5, got {holdout!r}")
        fit_idx, held_idx = split_new(texts, known, float(holdout), self.settings.test_pairs)
        picked = [texts[i] for i in (*fit_idx, *held_idx)]
        keys = await self._keys(source, target)
        pairs, _ = await make_pairs(
            self._embed,
            source,
            target,
            picked,
            self.settings.dir,
            keys,
            self._progress(request),
            vectors[[*fit_idx, *held_idx]],
            self.settings.embed_chunk,
        )
        new_fit = pairs.subset(list(range(len(fit_idx))))
        new_held = pairs.subset(list(range(len(fit_idx), len(picked))))
        send = self._fit_progress(request)
        candidate = time.strftime("%Y%m%d-%H%M%S") + f"-{time.time_ns() % 10**6:06d}"
        async with self._fit_limiter:
            result, report, projectors, gate, kept = await anyio.to_thread.run_sync(
                lambda: refit(
                    served,
                    old_fit,
                    standard,
                    new_fit,
                    new_held,
                    self.settings,
                    f"refit:collection:{name}",
                    float(max_loss),
                    send,
                )
            )
            report["pairs"].update(from_key=keys[source], to_key=keys[target])
            await anyio.to_thread.run_sync(
                lambda: self.store.save(projectors, gate, report, kept, candidate)
            )
        return {
            **result,
            "candidate": candidate,
            "collection": name,
            "took_s": round(time.monotonic() - started, 2),
        }

    async def op_promote(self, request: Request) -> dict[str, Any]:
        """Serve a refit's candidate; the served projector is kept for `rollback`."""
        source, target = _models(request.body)
        candidate = require_name(request.body, "candidate")
        async with self._load_lock:
            previous = await anyio.to_thread.run_sync(self.store.promote, source, target, candidate)
            self.served.pop(pair_name(source, target), None)  # serve the new one from now on
            await self.read_fitted()
        log.info("align: %s promoted candidate %s", pair_name(source, target), candidate)
        async with self._fit_limiter:  # the routes through a promoted leg: their gates anew
            routes = await self._calibrate_routes(source, target)
        return {"projector": pair_name(source, target), "previous": previous, "routes": routes}

    async def op_delete(self, request: Request) -> dict[str, Any]:
        """Forget a projector (store.remove); it is served no more from this reply on."""
        source, target = _models(request.body)
        name = pair_name(source, target)
        async with self._load_lock:
            report = await anyio.to_thread.run_sync(self.store.remove, source, target)
            self.served.pop(name, None)
            self.fitted.pop(name, None)
            for route in list(self._route_gates):
                legs = route.split("->")
                if (source, target) in zip(legs, legs[1:], strict=False):
                    del self._route_gates[route]
        log.info("align: removed the projector %s", name)
        return {"removed": name, "method": report["best"]}

    async def op_rollback(self, request: Request) -> dict[str, Any]:
        """Serve a kept version again (the one served now is kept in its turn)."""
        source, target = _models(request.body)
        version = require_name(request.body, "version")
        async with self._load_lock:
            shelved = await anyio.to_thread.run_sync(self.store.restore, source, target, version)
            self.served.pop(pair_name(source, target), None)
            await self.read_fitted()
        log.info("align: %s rolled back to %s", pair_name(source, target), version)
        async with self._fit_limiter:
            routes = await self._calibrate_routes(source, target)
        return {
            "projector": pair_name(source, target),
            "restored": version,
            "previous": shelved,
            "routes": routes,
        }

    async def _plan(self, body: Mapping[str, Any], target: str, *, standard: bool) -> TextPlan:
        texts, corpus, collection = body.get("texts"), body.get("corpus"), body.get("collection")
        if sum(v is not None for v in (texts, corpus, collection)) > 1:
            raise BadRequest("give at most one of 'texts', 'corpus' and 'collection'")
        max_pairs = _count(body, "max_pairs", self.settings.max_pairs)
        test_pairs = _count(body, "test_pairs", self.settings.test_pairs)
        ood = body.get("out_of_domain")
        if texts is not None:
            if not isinstance(texts, list) or not all(isinstance(t, str) and t for t in texts):
                raise BadRequest("'texts' must be a list of non-empty strings")
            unique, sets = list(dict.fromkeys(texts)), _ood(ood, default=False)
            return await anyio.to_thread.run_sync(
                lambda: plan_texts(unique, "texts", max_pairs, test_pairs, sets, standard=standard)
            )
        if collection is not None:
            if not isinstance(collection, str):
                raise BadRequest("'collection' must be a collection name")
            texts, vectors, model, kind = await self._collection(collection)
            sets = _ood(ood, default=False)
            plan = await anyio.to_thread.run_sync(
                lambda: plan_texts(
                    texts,
                    f"collection:{collection}",
                    max_pairs,
                    test_pairs,
                    sets,
                    standard=standard,
                )
            )
            # The collection's vectors are reused only where they were made with the target's
            # alignment recipe.
            if model == target and kind == _recipe_options((await self._recipes(target))[target]):
                plan.attach_target(texts, vectors)
            return plan
        if corpus is not None and corpus not in BUILTIN_SETS:
            raise BadRequest(
                f"'corpus' must be a built-in set {list(BUILTIN_SETS)}; send your own as 'texts'"
            )
        name = corpus or "glosses"
        sets = _ood(ood, default=name == "glosses")
        # Reading the gzip'd sets is file IO: off the event loop.
        return await anyio.to_thread.run_sync(
            lambda: plan_texts(
                load_set(name),
                f"builtin:{name}",
                max_pairs,
                test_pairs,
                sets,
                standard=standard,
                builtin=name == "glosses",
            )
        )

    async def _collection(self, name: str) -> tuple[list[str], np.ndarray, str, dict[str, Any]]:
        """Texts, vectors, model and recipe ({prompt, pooling}) of a memory collection (paged
        through `memory list`)."""
        info = await self.ctx.call("memory", {"op": "info", "collection": name})
        model = info["collection"]["model"]
        kind = options_of(info["collection"].get("recipe"))
        texts: list[str] = []
        vectors: list[np.ndarray] = []
        cursor = 0
        while cursor is not None:
            page = await self.ctx.call(
                "memory",
                {
                    "op": "list",
                    "collection": name,
                    "limit": 500,
                    "cursor": cursor,
                    "include_vectors": True,
                },
            )
            for record, vector in zip(page["records"], page["vectors"], strict=True):
                if record.get("text"):
                    texts.append(record["text"])
                    vectors.append(vector)
            cursor = page.get("next")
        if not texts:
            raise BadRequest(f"collection {name!r} has no texts to make pairs from")
        unique = dict(zip(texts, vectors, strict=True))  # later duplicates win; order kept
        return list(unique), np.asarray(list(unique.values()), np.float32), model, kind

    async def _embed(self, model: str, texts: list[str]) -> np.ndarray:
        if model == SHARED:  # reached only where a path has no founders' vectors to map
            raise BadRequest(
                f"{SHARED!r} is the learned hub space, not a model: it has no vectors of "
                "its own to refit from; fit its projectors from texts or the built-in corpus"
            )
        recipe = self._recipe_by_model.get(model)
        options = recipe.embed_options() if recipe is not None else {}
        reply = await self.ctx.call(
            "embed", {"op": "embed", "model": model, "texts": texts, **options}
        )
        return np.asarray(reply["vectors"], dtype=np.float32)

    async def _keys(self, *names: str) -> dict[str, str]:
        """Each model's vector-cache key: its weights and its recipe (see recipes.py)."""
        recipes = await self._recipes(*names)
        return {name: model_key(name, r.weights, r.embed_options()) for name, r in recipes.items()}

    async def _recipes(self, *names: str) -> dict[str, Recipe]:
        """The embedding recipe alignment uses for each model (its manifest's, or plain)."""
        from aether_box.models.settings import ModelsSettings
        from aether_box.models.store import ModelStore

        models_dir = self.ctx.config.get(ModelsSettings).dir

        def read() -> dict[str, Recipe]:  # the store reads the manifest: off the loop
            store = ModelStore(models_dir)
            return {name: model_recipe(store, name) for name in names if name != SHARED}

        found = await anyio.to_thread.run_sync(read)
        if SHARED in names:  # the learned space: its "weights" are its map (space.py)
            found[SHARED] = Recipe(SHARED, (await self._space()).digest)
        self._recipe_by_model.update(found)
        return found

    # ----------------------------------------------------------------- the shared hub space

    def _space_path(self) -> Path:
        assert self.settings.dir is not None
        return self.settings.dir / "hub" / f"{SHARED}.npz"

    async def _space(self) -> SharedSpace:
        """The built shared space (space.py), or NotFound saying how to build it."""
        if self._space_cache is None:
            self._space_cache = await anyio.to_thread.run_sync(SharedSpace.load, self._space_path())
        space: SharedSpace = self._space_cache
        return space

    async def _space_vectors(
        self, model: str, texts: list[str], progress: Any = None
    ) -> np.ndarray | None:
        """The shared space's vectors of `texts` when `model` is it (its founders' vectors,
        cached like any model's, mapped into it), else None: `model` embeds as usual."""
        if model != SHARED:
            return None
        space = await self._space()
        keys = await self._keys(*space.founders)
        changed = [m for m, k in zip(space.founders, space.keys, strict=True) if keys[m] != k]
        if changed:
            raise RecipeMismatch(
                f"{changed} embed another way (weights or recipe) than when the shared hub "
                f"space was built from them; rebuild it (`aether-box align hub --models "
                f"{','.join(space.founders)}`) and let every model join it again"
            )
        cache = VectorCache(self.settings.dir)
        vectors = {}
        for founder in space.founders:
            vectors[founder], _ = await embed_texts(
                self._embed,
                founder,
                keys[founder],
                texts,
                cache,
                progress,
                self.settings.embed_chunk,
            )
        return await anyio.to_thread.run_sync(space.transform, vectors)

    async def op_hub(self, request: Request) -> dict[str, Any]:
        with self._at_work(request):
            return await self._hub(request)

    async def _hub(self, request: Request) -> dict[str, Any]:
        """Build the shared hub space from `models` on the standard fit texts (space.py)."""
        body = request.body
        models = body.get("models")
        if (
            not isinstance(models, list)
            or len(set(models)) < 2
            or len(set(models)) != len(models)
            or not all(isinstance(m, str) and m and m != SHARED for m in models)
        ):
            raise BadRequest(
                "'models' must list at least two distinct models to share the space "
                f'(not {SHARED!r} itself), e.g. ["smollm2", "gemma3-270m", "minilm"]'
            )
        dim = _count(body, "dim", self.settings.hub_dim)
        # The fit part of the same split `fit` makes, so the founders' cached vectors serve.
        given = ("texts", "corpus", "max_pairs", "test_pairs")
        plan = await self._plan({k: body[k] for k in given if k in body}, models[0], standard=True)
        texts = plan.parts["fit"]
        keys = await self._keys(*models)
        cache, progress = VectorCache(self.settings.dir), self._progress(request)
        vectors = {}
        for model in models:
            vectors[model], _ = await embed_texts(
                self._embed, model, keys[model], texts, cache, progress, self.settings.embed_chunk
            )
        async with self._fit_limiter:
            space = await anyio.to_thread.run_sync(lambda: build_space(vectors, keys, dim))
            await anyio.to_thread.run_sync(space.save, self._space_path())
        async with self._load_lock:  # legs fitted against an older space are not served
            self._space_cache = space
            for name in [n for n in self.served if SHARED in n.split("->")]:
                del self.served[name]
        log.info("align: built the shared hub space from %s (%d-d)", models, space.dim)
        return {
            "hub": SHARED,
            "founders": models,
            "dim": space.dim,
            "texts": len(texts),
            "digest": space.digest,
            "served": self.settings.hub == SHARED,
        }

    @contextmanager
    def _at_work(self, request: Request) -> Iterator[None]:
        """While `request` runs, status shows it: its op, models and latest step."""
        body = request.body
        work = {k: body.get(k) for k in ("op", "from", "to", "models")}
        self.running[id(request)] = {**work, "step": "starting"}  # its keys fixed from here
        try:
            yield
        finally:
            del self.running[id(request)]

    def _progress(self, request: Request):
        last = [0.0]
        work = self.running.get(id(request), {})

        async def report(model: str, done: int, total: int) -> None:
            work["step"] = f"embedding with {model}: {done}/{total}"
            now = time.monotonic()
            if done in (0, total) or now - last[0] >= PROGRESS_EVERY_S:
                last[0] = now
                await request.partial(
                    {"stage": "embed", "model": model, "done": done, "total": total}
                )

        return report

    def _fit_progress(self, request: Request) -> Callable[[str, float], None]:
        """A fit's progress callback (step, fraction), sent from its thread as PARTIAL replies.
        It ends the fit once the request is cancelled (the client's Ctrl-C): a fit's thread
        runs on otherwise, minutes of cores for nobody, holding the one fit slot every fit
        waits for."""
        send = ThreadProgress(request, PROGRESS_EVERY_S)
        work = self.running.get(id(request), {})

        def report(step: str, fraction: float) -> None:
            anyio.from_thread.check_cancelled()
            work["step"] = f"{step}: {fraction:.0%}"  # one assignment: status reads it anytime
            body = {"stage": "fit", "step": step, "fraction": round(fraction, 3)}
            send(body, last=fraction >= 1.0)

        return report


def _recipe_options(recipe: Recipe) -> dict[str, Any]:
    """{prompt, pooling} of a recipe, as a collection records its own."""
    return {"prompt": recipe.prompt, "pooling": recipe.pooling}


def _space_digest(report: Mapping[str, Any]) -> str | None:
    """The build of the shared space a leg into or out of it was fitted against; None for a
    projector between two models."""
    if SHARED not in (report["source"], report["target"]):
        return None
    side = "target" if report["target"] == SHARED else "source"
    return str(recipe_of_report(report, side).get("weights") or "")


def _figures(report: Mapping[str, Any]) -> dict[str, Any]:
    """The served method of a fit report and its held-out top-1, for status."""
    best = report["methods"][report["best"]]
    return {
        "method": report["best"],
        "top1_in_domain": best["in_domain"]["top1"],
        "top1_out_of_domain": (best.get("out_of_domain") or {}).get("top1"),
    }


def _idle(report: Mapping[str, Any]) -> dict[str, Any]:
    """The status view of a fitted projector no request has loaded yet."""
    counters = {"projections": 0, "accepted": 0, "proxied": 0}
    return {**_figures(report), **counters, "agreement_mean": None, "agreement_recent": None}


def _via(legs: list[Served]) -> Served:
    """A stand-in naming a composed route (its counters live on the legs)."""
    names = [legs[0].report["source"], *(leg.report["target"] for leg in legs)]
    return Served("->".join(names), "+".join(leg.method for leg in legs), legs[-1].engine, {})


def _compact(report: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each route's top-1 per domain ({"in", "out", "far"}), its gate's AUC over them
    (`gate_auc`), the share it proxies in-domain (`proxy_in`) and whether the route has its
    own gate calibration (`route_gate`), for `status` and the dashboard."""
    out = {}
    for row in report["pairs"]:
        via = f"->{row['via']}" if row["via"] else ""
        figures: dict[str, Any] = {
            short: row[short]["top1"] for short in ("in", "out", "far") if short in row
        }
        if row.get("gate_auc_pooled") is not None:
            figures["gate_auc"] = round(row["gate_auc_pooled"], 3)
        if "in" in row:
            figures["proxy_in"] = row["in"]["proxy_share"]
        if "route_gate" in row:
            figures["route_gate"] = row["route_gate"]
        out[f"{row['from']}{via}->{row['to']}"] = figures
    return out


def _models(body: Mapping[str, Any]) -> tuple[str, str]:
    return require_name(body, "from"), require_name(body, "to")


def _count(body: Mapping[str, Any], key: str, default: int) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(f"'{key}' must be a positive integer, got {value!r}")
    return value


def _ood(value: Any, *, default: bool) -> list[str]:
    if value is None:
        value = default
    if value is True:
        return ["examples", "docs"]
    if value is False:
        return []
    if isinstance(value, list) and all(v in BUILTIN_SETS for v in value):
        return list(value)
    raise BadRequest(f"'out_of_domain' must be true, false or a list from {list(BUILTIN_SETS)}")


def _summary(report: Mapping[str, Any]) -> dict[str, Any]:
    """One line of `align list`: the served method's figures and every method's top-1."""
    best = report["methods"][report["best"]]
    return {
        "name": report["name"],
        "from": report["source"],
        "to": report["target"],
        "method": report["best"],
        "pairs": report["pairs"]["fit"],
        "corpus": report["pairs"]["corpus"],
        "in_domain": best["in_domain"],
        "out_of_domain": best.get("out_of_domain"),
        "methods": {m: r["in_domain"]["top1"] for m, r in report["methods"].items()},
        "created": report["created"],
    }


class AlignComponent:
    """Registers `align` and the "align" status section."""

    name: ClassVar[str] = "align"
    settings_class: ClassVar[type | None] = AlignSettings

    def __init__(self, ctx: BoxContext) -> None:
        self.service = AlignService(ctx, ctx.config.get(AlignSettings))

    async def serve(
        self,
        ctx: BoxContext,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        # A fit a kill interrupted is finished or undone before anything is served.
        done = await anyio.to_thread.run_sync(self.service.store.recover)
        for line in done:
            log.warning("align: after an interrupted fit or removal, %s", line)
        await self.service.read_fitted()
        ctx.add_service("align", self.service)
        task_status.started()

    def status_section(self) -> dict[str, Any]:
        """The "align" section of `status`."""
        return self.service.status()
