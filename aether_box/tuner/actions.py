"""What the tuner can do, and which signal calls for which action.

Each action applies a logged decision and can roll it back; `plans_for` turns one triggered
signal (aether_box.monitor.watches) into the decisions it calls for. Heavy actions are advice:
logged and shown with their evidence, never carried out by the box.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from aether_box.context import BoxContext
from aether_box.contract import AdapterCatalog, ModelPins, ModelResidency
from aether_box.errors import BadRequest, BoxError, NotFound, ServiceUnavailable
from aether_box.router.feedback import MIN_FEEDBACK

__all__ = ["Action", "Plan", "plans_for", "settle_interrupted"]

INTERRUPTED = "interrupted: the box stopped while it ran; nothing of it is in effect"
Progress = Callable[[Mapping[str, Any]], Awaitable[None]]
Result = dict[str, Any]  # {"state": applied | rejected | failed, "after"?, "outcome"?}


class Action:
    """One kind of action: applies a decision, and undoes an applied one."""

    kind: ClassVar[str]
    heavy: ClassVar[bool] = False  # advice only: never applied by the box
    exclusive: ClassVar[bool] = False  # at most one at a time (it takes the cores)
    _kinds: ClassVar[dict[str, type[Action]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Action._kinds[cls.kind] = cls

    @staticmethod
    def named(kind: str) -> Action:
        found = Action._kinds.get(kind)
        if found is None:
            raise NotFound(f"the tuner has no action {kind!r}; actions: {sorted(Action._kinds)}")
        return found()

    async def apply(self, ctx: BoxContext, decision: dict[str, Any], progress: Progress) -> Result:
        raise NotImplementedError

    async def rollback(self, ctx: BoxContext, decision: dict[str, Any]) -> str:
        raise BadRequest(f"a {self.kind} decision cannot be rolled back")

    async def settle(self, ctx: BoxContext, decision: dict[str, Any]) -> Result:
        """The state of a decision a stop cut short, from what the box serves after it."""
        return {"state": "failed", "outcome": INTERRUPTED}


@dataclass
class Plan:
    """A decision to log: the action, its subject, the evidence and the figures before."""

    action: Action
    subject: str
    signal: dict[str, Any]
    params: dict[str, Any]
    before: dict[str, Any] | None = None


class Unload(Action):
    """Unload an idle model instance; it reloads on its next request. Never one a request
    holds or waits for, nor one a session pinned (the decision is rejected, saying which)."""

    kind = "unload"

    async def apply(self, ctx: BoxContext, decision: dict[str, Any], progress: Progress) -> Result:
        residency = ctx.get(ModelResidency)
        if residency is None:
            return {"state": "failed", "outcome": "no engines component runs"}
        p = decision["params"]
        pins = ctx.get(ModelPins)
        pinned_by = pins.pinned_by(p["model"]) if pins is not None else []
        if pinned_by:  # the tuner looks again once the pins are gone (see TunerComponent)
            return {
                "state": "rejected",
                "after": {"pinned_by": pinned_by},
                "outcome": f"skipped: pinned by session {', '.join(pinned_by)}; it stays "
                "loaded until they unpin, end or lapse (sessions.pin_expiry_s)",
            }
        freed = await residency.unload_if_idle(p["model"], p["role"], p["idle_s"])
        if freed is None:
            return {"state": "rejected", "outcome": "in use (or unloaded) since: kept as it is"}
        return {
            "state": "applied",
            "after": {"freed_mb": round(freed / 2**20, 1)},
            "outcome": "unloaded; it reloads on its next request",
        }

    async def rollback(self, ctx: BoxContext, decision: dict[str, Any]) -> str:
        p = decision["params"]
        reply = await ctx.call("llm", {"op": "load", "model": p["model"], "role": p["role"]})
        return f"loaded again in {reply['load_s']} s"


class RefitProjector(Action):
    """Refit a projector from a collection's texts; promote it only if it is better."""

    kind = "refit_projector"
    exclusive = True

    async def apply(self, ctx: BoxContext, decision: dict[str, Any], progress: Progress) -> Result:
        from aether_box.tuner.settings import TunerSettings

        p, settings = decision["params"], ctx.config.get(TunerSettings)
        ask = {
            "op": "refit",
            "from": p["from"],
            "to": p["to"],
            "collection": p["collection"],
            "holdout": settings.refit_holdout,
            "max_loss": settings.refit_max_loss,
        }
        report = await ctx.call("align", ask, on_partial=progress)
        figures = {"before": report["before"], "after": report["after"]}
        if not report["promote"]:
            return {"state": "rejected", "after": figures, "outcome": report["verdict"]}
        await progress({"stage": "promote", "fraction": 1.0})
        promoted = await ctx.call(
            "align",
            {"op": "promote", "from": p["from"], "to": p["to"], "candidate": report["candidate"]},
        )
        figures["previous"] = promoted["previous"]
        figures["loop_s"] = report.get("took_s")
        return {"state": "applied", "after": figures, "outcome": report["verdict"]}

    async def rollback(self, ctx: BoxContext, decision: dict[str, Any]) -> str:
        p, after = decision["params"], decision["after"] or {}
        if not after.get("previous"):
            raise BadRequest(f"decision {decision['id']} kept no previous projector to restore")
        await ctx.call(
            "align",
            {"op": "rollback", "from": p["from"], "to": p["to"], "version": after["previous"]},
        )
        return f"projector {p['from']}->{p['to']} restored to {after['previous']}"

    async def settle(self, ctx: BoxContext, decision: dict[str, Any]) -> Result:
        """Promoted or not: the served projector's fit time tells (the plan noted the one
        served when it was decided)."""
        p, before = decision["params"], decision["before"] or {}
        if not ctx.has_service("align"):  # not up yet: the tuner asks again at its next look
            raise ServiceUnavailable("the align service is not running yet")
        try:
            report = await ctx.call("align", {"op": "fidelity", "from": p["from"], "to": p["to"]})
        except NotFound:
            return {
                "state": "failed",
                "outcome": f"interrupted: no whole projector {p['from']}->{p['to']} is served "
                f"after the stop; fit it again (`aether-box align fit`)",
            }
        if report["created"] == before.get("served_created"):
            return {"state": "failed", "outcome": f"{INTERRUPTED} (the projector served before)"}
        figures = {**(report.get("refit") or {}), "served_created": report["created"]}
        figures.pop("verdict", None)
        return {
            "state": "applied",
            "after": {**figures, "previous": None},
            "outcome": "promoted; the box stopped before the log noted it (settled at restart; "
            "the previous version is under the projector's history/)",
        }


class RefitRouter(Action):
    """Refit the router's threshold from its logged decisions and users' feedback."""

    kind = "refit_router"
    exclusive = True

    async def apply(self, ctx: BoxContext, decision: dict[str, Any], progress: Progress) -> Result:
        report = await ctx.call("router", {"op": "refit"})
        figures = {"before": report["before"], "after": report["after"]}
        if not report["promote"]:
            return {"state": "rejected", "after": figures, "outcome": report["verdict"]}
        applied = await ctx.call("router", {"op": "threshold", "min_score": report["min_score"]})
        figures["previous"] = applied["previous"]
        return {"state": "applied", "after": figures, "outcome": report["verdict"]}

    async def rollback(self, ctx: BoxContext, decision: dict[str, Any]) -> str:
        previous = (decision["after"] or {}).get("previous")
        if previous is None:
            raise BadRequest(f"decision {decision['id']} kept no previous threshold")
        await ctx.call("router", {"op": "threshold", "min_score": previous})
        return f"router.min_score back to {previous}"


class Adapters(Action):
    """Prune or restore an adapter on its fusion-log verdict (AdapterCatalog.prune/restore).

    A signal of kind "adapter" (subject: the adapter; figures: ``{"op": "prune" | "restore",
    "verdict", "reason", ...}``, see aether_box.monitor.watches.AdapterWatch) becomes a
    decision to call that op; rolling it back calls the other one.
    """

    kind = "adapters"

    async def apply(self, ctx: BoxContext, decision: dict[str, Any], progress: Progress) -> Result:
        catalog = ctx.get(AdapterCatalog)
        if catalog is None:
            return {"state": "failed", "outcome": "no adapters component runs in this box"}
        name, op = decision["subject"], decision["params"]["op"]
        try:
            if op == "prune":
                reply = await catalog.prune(name, decision["params"]["reason"], by="tuner")
            else:
                reply = await catalog.restore(name, by="tuner")
        except NotFound as exc:
            return {"state": "rejected", "outcome": f"gone since: {exc}"}
        return {"state": "applied", "after": reply, "outcome": f"adapter {op}d"}

    async def rollback(self, ctx: BoxContext, decision: dict[str, Any]) -> str:
        catalog = ctx.get(AdapterCatalog)
        if catalog is None:
            raise BoxError("no adapters component runs in this box: nothing to roll back")
        name, op = decision["subject"], decision["params"]["op"]
        if op == "prune":
            await catalog.restore(name, by="tuner rollback")
            return "adapter restored"
        reason = decision["params"].get("reason") or "the tuner's restore was rolled back"
        await catalog.prune(name, reason, by="tuner rollback")
        return "adapter pruned"


class Advice(Action):
    """Something heavier than the box should do by itself: shown with its evidence."""

    kind = "heavy"
    heavy = True


async def plans_for(signal: dict[str, Any], ctx: BoxContext, keep_alive: float) -> list[Plan]:
    """The decisions one triggered signal calls for."""
    kind, subject, figures = signal["kind"], signal["subject"], signal["figures"]
    evidence = {k: signal[k] for k in ("kind", "subject", "figures", "message", "time")}
    if kind == "idle":
        model, role = subject.rsplit(":", 1)
        params = {"model": model, "role": role, "idle_s": keep_alive}
        return [Plan(Unload(), subject, evidence, params, figures)]
    if kind == "memory_pressure":
        if subject == "machine":
            return []  # the sum-up: the readings per model name the ones to unload
        params = {"model": figures["model"], "role": figures["role"], "idle_s": 0.0}
        return [Plan(Unload(), subject, evidence, params, figures)]
    if kind == "drift":
        return await _refits_for_collection(ctx, subject, figures["model"], evidence)
    if kind == "align":
        return await _refits_for_projector(ctx, subject, evidence)
    if kind == "router":
        if figures.get("feedback", 0) < MIN_FEEDBACK:
            return []  # a refit learns only from feedback: without it, it could only be rejected
        return [Plan(RefitRouter(), "router", evidence, {}, figures)]
    if kind == "adapter":
        params = {"op": figures["op"], "reason": signal["message"]}
        return [Plan(Adapters(), subject, evidence, params, figures)]
    if kind == "nll":
        if figures.get("adapters"):
            advice = (
                f"{figures['model']} writes text it finds unlikely under adapters "
                f"{figures['adapters']} only: compare its answers without them, look at their "
                "fusion log (`aether-box adapters list`); prune or retrain the adapter if it "
                "persists"
            )
        else:
            advice = (
                f"{subject} writes text it finds unlikely: check the prompts sent to it or a "
                "changed model file; if it persists, consider another model"
            )
        return [Plan(Advice(), f"model:{subject}", evidence, {"advice": advice}, figures)]
    if kind == "slow":
        advice = (
            f"{subject} generates far below its usual speed: free the machine's cores or "
            "memory, lower engines.parallel, or move the model to a faster machine (a linked "
            "box) or a smaller quantisation"
        )
        return [Plan(Advice(), f"speed:{subject}", evidence, {"advice": advice}, figures)]
    return []


async def _projectors(ctx: BoxContext) -> list[dict[str, Any]]:
    if not ctx.has_service("align"):
        return []
    try:
        return list((await ctx.call("align", {"op": "list"}))["projectors"])
    except BoxError:
        return []


async def _refits_for_collection(
    ctx: BoxContext, collection: str, model: str, evidence: dict[str, Any]
) -> list[Plan]:
    """A drifting collection: refit every projector into its space from its texts."""
    plans = []
    for p in await _projectors(ctx):
        if p["to"] == model:
            params = {"from": p["from"], "to": p["to"], "collection": collection}
            before = _served(p)
            plans.append(Plan(RefitProjector(), p["name"], evidence, params, before))
    return plans


async def _refits_for_projector(ctx: BoxContext, name: str, evidence: dict[str, Any]) -> list[Plan]:
    """A projector whose gate passes few queries: refit it from the biggest collection in
    its target's space (where its queries go)."""
    found = next((p for p in await _projectors(ctx) if p["name"] == name), None)
    if found is None or not ctx.has_service("memory"):
        return []
    listed = (await ctx.call("memory", {"op": "collections"}))["collections"]
    mine = [c for c in listed if c["model"] == found["to"] and c["count"]]
    if not mine:
        return []
    biggest = max(mine, key=lambda c: c["count"])
    params = {"from": found["from"], "to": found["to"], "collection": biggest["name"]}
    return [Plan(RefitProjector(), name, evidence, params, _served(found))]


def _served(projector: dict[str, Any]) -> dict[str, Any]:
    """The figures before a refit: the served projector's, and its fit time (which tells,
    after a stop, whether the refit was promoted)."""
    return {
        "in_domain": projector["in_domain"],
        "out_of_domain": projector.get("out_of_domain"),
        "served_created": projector.get("created"),
    }


async def settle_interrupted(ctx: BoxContext, decision: dict[str, Any]) -> Result:
    """How a decision left `applying` by a stop ended (its action's `settle`)."""
    return await Action.named(decision["action"]).settle(ctx, decision)
