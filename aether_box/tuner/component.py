"""The tuner component: acts on the observer's signals, and logs every decision.

Every `tuner.check_s` it reads the signals (aether_box.contract.Observations) and, for each
that triggered since its last look, decides an action: `auto` ones are done at once,
`propose` ones are logged and shown until `aether-box tuner apply ID`, `off` ones ignored.
Every decision is a row of the log (aether_box.tuner.log) and a `tuner.action` event.

The `tuner` service::

    log       [limit], [action], [state]      -> {decisions: [...]}
    status                                    -> the "tuner" status section, and `states`
    apply     id                              -> the decision, applied (or why not)
    rollback  id                              -> the decision, undone
    dismiss   id                              -> the proposal, dropped
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

import anyio
import anyio.abc

from aether_box.bus.service import OpService, Request, require
from aether_box.context import BoxContext
from aether_box.contract import ModelPins, ModelResidency, Observations
from aether_box.engines.settings import EngineSettings
from aether_box.errors import BadRequest, BoxError, ServiceUnavailable
from aether_box.tuner.actions import Action, Plan, plans_for, settle_interrupted
from aether_box.tuner.log import STATES, DecisionLog
from aether_box.tuner.settings import ACTIONS, TunerSettings

__all__ = ["TunerComponent"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class TunerService(OpService):
    """The `tuner` service's ops (module docstring), answered by the component."""

    name = "tuner"

    def __init__(self, tuner: TunerComponent) -> None:
        self.tuner = tuner

    async def op_log(self, request: Request) -> dict[str, Any]:
        return await self.tuner.op_log(request)

    async def op_status(self, request: Request) -> dict[str, Any]:
        return await self.tuner.op_status(request)

    async def op_apply(self, request: Request) -> dict[str, Any]:
        return await self.tuner.op_apply(request)

    async def op_rollback(self, request: Request) -> dict[str, Any]:
        return await self.tuner.op_rollback(request)

    async def op_dismiss(self, request: Request) -> dict[str, Any]:
        return await self.tuner.op_dismiss(request)


class TunerComponent:
    """Serves `tuner` and runs the decision loop."""

    name: ClassVar[str] = "tuner"
    settings_class: ClassVar[type | None] = TunerSettings

    def __init__(self, ctx: BoxContext) -> None:
        self.ctx = ctx
        self.settings = ctx.config.get(TunerSettings)
        self.keep_alive = ctx.config.get(EngineSettings).keep_alive
        self.store: DecisionLog | None = None
        self.counts: dict[str, dict[str, int]] = {}
        self.running: dict[int, dict[str, Any]] = {}  # decision id -> progress of its work
        self.recent: list[dict[str, Any]] = []  # newest decisions, for status and the dashboard
        self._handled: dict[tuple[str, str], int] = {}  # signal -> the seq acted on
        self._db = anyio.CapacityLimiter(1)
        self._work: anyio.abc.TaskGroup | None = None
        self._busy: set[str] = set()  # actions with work in progress (one at a time each)
        self._unloaded: dict[tuple[str, str], int] = {}  # model instance -> its decision id
        # Signals whose unload a session's pin held back -> the model: looked at again once
        # no session pins it (a pin is no news in itself: one logged skip per spell).
        self._held: dict[tuple[str, str], str] = {}
        self._states: dict[int, str] = {}  # decision id -> the state last counted

    # ----------------------------------------------------------------- running

    async def serve(
        self,
        ctx: BoxContext,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        assert self.settings.file is not None
        self.store = await anyio.to_thread.run_sync(DecisionLog, self.settings.file)
        try:
            await self._refresh()
            interrupted = await self._db_call(self._log().recent, 10_000, None, "applying")
            async with anyio.create_task_group() as work:
                self._work = work
                ctx.add_service("tuner", TunerService(self))
                task_status.started()
                while True:
                    await anyio.sleep(self.settings.check_s)
                    interrupted = await self._settle(interrupted)
                    await self.check()
        finally:
            self._work = None
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.store.close)

    async def check(self) -> None:
        """One look at the signals: decide on what triggered, note reloads."""
        observer = self.ctx.get(Observations)
        if observer is None:
            return
        signals = observer.signals()
        await self._note_reloads()
        self._release_unpinned()
        for signal in signals:
            key = (signal["kind"], signal["subject"])
            if not signal["triggered"] or self._handled.get(key) == signal["seq"]:
                continue
            self._handled[key] = signal["seq"]
            try:
                for plan in await plans_for(signal, self.ctx, self.keep_alive):
                    await self._decide(plan)
            except BoxError as exc:  # e.g. a service restarting: the next trigger tries again
                log.warning("tuner: cannot act on %s %s: %s", *key, exc)

    async def _decide(self, plan: Plan) -> None:
        mode = self.settings.mode(plan.action.kind)
        if mode == "off":
            return
        if plan.action.heavy and mode == "auto":
            mode = "propose"  # never applied by the box itself
        if mode == "auto" and plan.action.exclusive and plan.action.kind in self._busy:
            mode = "propose"  # one refit at a time: this one waits for `tuner apply`
        if await self._cooling(plan):
            return
        decision = await self._db_call(
            self._log().add,
            plan.action.kind,
            plan.subject,
            mode,
            "proposed" if mode == "propose" else "applying",
            plan.signal,
            plan.params,
            plan.before,
        )
        self._announce(decision)
        if mode == "auto":
            self._start(decision)

    async def _cooling(self, plan: Plan) -> bool:
        """Whether the same action on the same subject was decided too recently."""
        if plan.action.kind == "unload":
            return False  # each idle spell is news: nothing to repeat
        last = await self._db_call(self._log().last_for, plan.action.kind, plan.subject)
        if last is None:
            return False
        pending = last["state"] in ("proposed", "applying")
        return pending or time.time() - last["created"] < self.settings.cooldown_s

    def _start(self, decision: dict[str, Any]) -> None:
        action = Action.named(decision["action"])
        if action.exclusive and action.kind in self._busy:
            raise ServiceUnavailable(
                f"a {action.kind} is already running; wait for it (`aether-box tuner status`)"
            )
        if self._work is None:
            raise ServiceUnavailable("the tuner is stopping; apply it after the next start")
        self._busy.add(action.kind)
        self.running[decision["id"]] = {"stage": "starting", "fraction": 0.0}
        self._work.start_soon(self._apply, decision, action)

    async def _apply(self, decision: dict[str, Any], action: Action) -> None:
        ident = decision["id"]

        async def progress(update: Mapping[str, Any]) -> None:
            self.running[ident] = dict(update)

        try:
            result = await action.apply(self.ctx, decision, progress)
        except BoxError as exc:
            result = {"state": "failed", "outcome": exc.message}
        except Exception as exc:  # an action's bug must not stop the tuner
            log.exception("tuner: %s %s failed", action.kind, decision["subject"])
            result = {"state": "failed", "outcome": f"{type(exc).__name__}: {exc}"}
        finally:
            self._busy.discard(action.kind)
            self.running.pop(ident, None)
        decision = await self._db_call(self._log().update, ident, **result)
        if action.kind == "unload" and decision["state"] == "rejected":
            signal = decision.get("signal") or {}
            key = (signal.get("kind", "idle"), signal.get("subject", decision["subject"]))
            if (decision["after"] or {}).get("pinned_by"):
                self._held[key] = decision["params"]["model"]  # again once unpinned
            else:
                # in use again (or not idle long enough): look at the same spell again
                self._handled.pop(key, None)
        if action.kind == "unload" and decision["state"] == "applied":
            name, role = decision["params"]["model"], decision["params"]["role"]
            self._unloaded[(name, role)] = ident
        self._announce(decision)

    def _release_unpinned(self) -> None:
        """Signals held back by a pin whose model no session pins any more: act on them at
        this look (if they still hold)."""
        pins = self.ctx.get(ModelPins)
        for key, model in list(self._held.items()):
            if pins is None or not pins.pinned_by(model):
                del self._held[key]
                self._handled.pop(key, None)

    async def _settle(self, interrupted: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Decisions a stop cut short (still `applying` in the log): settle each by what the
        box serves now, so the log and the box agree. Returns those still to settle (their
        service is not up yet)."""
        left = []
        for decision in interrupted:
            try:
                result = await settle_interrupted(self.ctx, decision)
            except BoxError as exc:  # e.g. align still starting: look again next time
                log.info("tuner: #%d waits to be settled: %s", decision["id"], exc)
                left.append(decision)
                continue
            self._announce(await self._db_call(self._log().update, decision["id"], **result))
        return left

    async def _note_reloads(self) -> None:
        """A model the tuner unloaded that is loaded again: log how long the reload took."""
        residency = self.ctx.get(ModelResidency)
        if residency is None or not self._unloaded:
            return
        for entry in residency.residency():
            ident = self._unloaded.pop((entry["name"], entry["role"]), None)
            if ident is None:
                continue
            decision = await self._db_call(self._log().get, ident)
            after = {**(decision["after"] or {}), "reload_s": entry["load_s"]}
            self._announce(await self._db_call(self._log().update, ident, after=after))

    def _announce(self, decision: dict[str, Any]) -> None:
        """Publish `tuner.action`, keep it for status, and count it."""
        self.ctx.events.publish("tuner.action", decision)
        self.recent = [decision, *[d for d in self.recent if d["id"] != decision["id"]]][:20]
        log.info(
            "tuner: #%d %s %s: %s%s",
            decision["id"],
            decision["action"],
            decision["subject"],
            decision["state"],
            f" ({decision['outcome']})" if decision.get("outcome") else "",
        )
        if self._states.get(decision["id"]) != decision["state"]:
            by_state = self.counts.setdefault(decision["action"], {})
            by_state[decision["state"]] = by_state.get(decision["state"], 0) + 1
        self._states[decision["id"]] = decision["state"]

    async def _refresh(self) -> None:
        self.counts = await self._db_call(self._log().counts)
        self.recent = await self._db_call(self._log().recent, 20)
        self._states = {d["id"]: d["state"] for d in self.recent}

    # ----------------------------------------------------------------- the service

    async def op_log(self, request: Request) -> dict[str, Any]:
        body = request.body
        limit = body.get("limit", 50)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise BadRequest(f"'limit' must be an integer from 1 to 10000, got {limit!r}")
        action = body.get("action")
        if action is not None and action not in ACTIONS:
            raise BadRequest(f"'action' must be one of {list(ACTIONS)}, got {action!r}")
        state = body.get("state")
        if state is not None and state not in STATES:
            raise BadRequest(f"'state' must be one of {list(STATES)}, got {state!r}")
        found = await self._db_call(self._log().recent, limit, action, state)
        return {"decisions": found}

    async def op_status(self, request: Request) -> dict[str, Any]:
        """The status section, plus ``states``: decisions per action by the state each is in
        now (``counts`` counts every state a decision passed through, as /metrics wants)."""
        states = await self._db_call(self._log().counts)
        return {**self.status_section(), "states": states}

    async def op_apply(self, request: Request) -> dict[str, Any]:
        decision = await self._decision(request)
        if decision["state"] != "proposed":
            raise BadRequest(
                f"decision {decision['id']} is {decision['state']}, not a proposal; "
                "only proposed decisions can be applied"
            )
        action = Action.named(decision["action"])
        if action.heavy:
            raise BadRequest(
                f"decision {decision['id']} is advice the box does not carry out by itself: "
                f"{decision['params'].get('advice', 'see its evidence')}; dismiss it with "
                f"`aether-box tuner dismiss {decision['id']}` once handled"
            )
        decision = await self._db_call(self._log().update, decision["id"], state="applying")
        self._announce(decision)
        self._start(decision)
        return decision

    async def op_rollback(self, request: Request) -> dict[str, Any]:
        decision = await self._decision(request)
        if decision["state"] != "applied":
            raise BadRequest(
                f"decision {decision['id']} is {decision['state']}; only applied ones roll back"
            )
        action = Action.named(decision["action"])
        undone = await action.rollback(self.ctx, decision)
        decision = await self._db_call(
            self._log().update,
            decision["id"],
            state="rolled_back",
            outcome=f"rolled back: {undone}",
        )
        self._announce(decision)
        return decision

    async def op_dismiss(self, request: Request) -> dict[str, Any]:
        decision = await self._decision(request)
        if decision["state"] != "proposed":
            raise BadRequest(f"decision {decision['id']} is {decision['state']}, not a proposal")
        decision = await self._db_call(
            self._log().update, decision["id"], state="dismissed", outcome="dismissed by a user"
        )
        self._announce(decision)
        return decision

    async def _decision(self, request: Request) -> dict[str, Any]:
        ident = require(request.body, "id", int)
        return await self._db_call(self._log().get, ident)

    # ----------------------------------------------------------------- helpers

    def _log(self) -> DecisionLog:
        if self.store is None:
            raise ServiceUnavailable("the tuner's log is still opening; retry in a moment")
        return self.store

    async def _db_call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await anyio.to_thread.run_sync(lambda: func(*args, **kwargs), limiter=self._db)

    def status_section(self) -> dict[str, Any]:
        """The "tuner" section of `status`: modes, how often each action reached each state
        (since the log began: a Prometheus counter), work in progress, the latest decisions."""
        observer = self.ctx.get(Observations)
        return {
            "modes": {a: self.settings.mode(a) for a in ACTIONS},
            "signals": observer.signals() if observer is not None else [],
            "counts": self.counts,
            "running": {str(k): v for k, v in self.running.items()},
            "recent": self.recent[:10],
            "held_by_pins": {f"{k}:{s}": model for (k, s), model in self._held.items()},
            "proposed": [d for d in self.recent if d["state"] == "proposed"],
        }
