"""The `router` service: pick a route for a message by meaning, and chat through it.

Ops:
- ``route``: ``{"text"}`` -> ``{"route", "model", "score", "scores": {route: cosine},
  "message_id"}``. A route's score is the best cosine between the message and one of its
  examples (embedded once with ``router.embed_model``); a route whose score is below its
  threshold (``router.min_score`` unless refitted) is not taken; none left: the default.
- ``chat``: ``{"messages" | "text", "stream"?, ...sampling}`` -> the llm chat reply of the
  chosen route's model (its system prompt first, if it has one), plus ``route``, ``score``
  and ``message_id``.
- ``feedback``: ``{"message_id", "route", "good"}``: whether `route` was right for it.
- ``refit``: new per-route thresholds from the feedback (aether_box.router.feedback), not
  applied: ``{promote, verdict, before, after, min_score: {route: threshold}}``.
- ``threshold``: ``{"min_score": number | {route: number}}`` applies thresholds now ->
  ``{"previous"}``; they are kept in ``<data dir>/router-thresholds.json`` and hold after a
  restart (for the routes the config still has).
- ``routes``: the configured routes and the thresholds in force.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, ClassVar

import anyio
import anyio.abc
import numpy as np

from aether_box.bus.service import OpService, Request, require
from aether_box.context import BoxContext
from aether_box.engines.services import chat_for
from aether_box.errors import BadRequest, NotFound
from aether_box.models.files import atomic_writer
from aether_box.router.feedback import DecisionLog, refit_thresholds
from aether_box.router.settings import RouterSettings

__all__ = ["RouterComponent", "choose"]

log = logging.getLogger(__name__)

# Thresholds set by the `threshold` op (by hand or by the tuner), kept across restarts.
THRESHOLDS_FILE = "router-thresholds.json"

# Fields of a router `chat` request that are the router's, not sampling for the model.
OWN_FIELDS = ("op", "text", "messages")


def choose(
    query: np.ndarray,
    examples: dict[str, np.ndarray],
    min_score: float | dict[str, float],
    default: str,
) -> tuple[str, float, dict[str, float]]:
    """(route, score, every route's score) for one L2-normalised query vector; `min_score`
    is one threshold for all routes or one per route."""
    scores = {
        name: float((vectors @ query).max()) if len(vectors) else float("-inf")
        for name, vectors in examples.items()
    }

    def limit(name: str) -> float:
        return min_score if isinstance(min_score, int | float) else min_score[name]

    passing = {name: s for name, s in scores.items() if s >= limit(name)}
    best = max(passing, key=passing.__getitem__, default=default)
    score = scores.get(best, float("-inf"))
    shown = {name: round(s, 4) for name, s in scores.items() if s != float("-inf")}
    return best, round(score, 4) if score != float("-inf") else 0.0, shown


class RouterComponent(OpService):
    """Serves `router`; route examples are embedded on first use and kept."""

    name: ClassVar[str] = "router"
    settings_class: ClassVar[type | None] = RouterSettings

    def __init__(self, ctx: BoxContext) -> None:
        self.ctx = ctx
        self.settings = ctx.config.get(RouterSettings)
        self._examples: dict[str, np.ndarray] | None = None
        self._embedding = anyio.Lock()
        self.log = DecisionLog()
        self.thresholds = {name: self.settings.min_score for name in self.settings.routes}
        self._kept = ctx.data_dir / THRESHOLDS_FILE

    async def serve(
        self,
        ctx: BoxContext,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        kept = await anyio.to_thread.run_sync(_read_thresholds, self._kept)
        self.thresholds.update({k: v for k, v in kept.items() if k in self.thresholds})
        scored = self.settings.scored_routes()
        for name in sorted(set(self.settings.routes) - {*scored, self.settings.default}):
            log.warning(
                "[router.routes.%s] has no examples, so no message is routed to it (only "
                "router.default, %r, takes what matches nothing); give it examples",
                name,
                self.settings.default,
            )
        ctx.add_service("router", self)
        task_status.started()

    async def op_routes(self, request: Request) -> dict[str, Any]:
        return {
            "routes": self.settings.routes,
            "default": self.settings.default,
            "embed_model": self.settings.embed_model,
            "min_score": self.settings.min_score,
            "thresholds": dict(self.thresholds),
        }

    async def op_feedback(self, request: Request) -> dict[str, Any]:
        body = request.body
        good = body.get("good")
        if not isinstance(good, bool):
            raise BadRequest("'good' must be true or false")
        route = require(body, "route", str)
        scored = self.settings.scored_routes()
        if route not in self.settings.routes:
            raise NotFound(f"no route {route!r}; feedback names one of the routes {scored}")
        if route not in scored:  # nothing to fit: a route without examples has no score
            raise BadRequest(
                f"route {route!r} has no examples, so it has no score or threshold to learn; "
                f"feedback names one of the routes {scored} (good: false when it was wrong)"
            )
        label = self.log.feedback(require(body, "message_id", str), route, good)
        return {"route": label.route, "score": round(label.score, 4), "good": label.good,
                "feedback": len(self.log.labels)}  # fmt: skip

    async def op_refit(self, request: Request) -> dict[str, Any]:
        found = refit_thresholds(list(self.log.labels), self.thresholds)
        found["min_score"] = found.pop("thresholds")
        return found

    async def op_threshold(self, request: Request) -> dict[str, Any]:
        wanted = request.body.get("min_score")
        if isinstance(wanted, int | float) and not isinstance(wanted, bool):
            wanted = {name: float(wanted) for name in self.thresholds}
        if not isinstance(wanted, dict) or not all(
            name in self.thresholds and isinstance(v, int | float) and -1 <= v <= 1
            for name, v in wanted.items()
        ):
            raise BadRequest(
                f"'min_score' must be a cosine from -1 to 1, or a map from routes "
                f"{sorted(self.thresholds)} to one"
            )
        previous = dict(self.thresholds)
        chosen = {**self.thresholds, **{k: float(v) for k, v in wanted.items()}}
        # On disk before it is in force: an acknowledged change survives a crash.
        await anyio.to_thread.run_sync(_write_thresholds, self._kept, chosen)
        self.thresholds = chosen
        return {"previous": previous, "min_score": dict(self.thresholds)}

    def status_section(self) -> dict[str, Any]:
        """The "router" section of `status`: decisions, fallbacks, feedback, thresholds."""
        return {
            "decisions": self.log.total,
            "fallbacks": self.log.fallbacks,
            "best_score_sum": round(self.log.best_score_sum, 4),
            "feedback": len(self.log.labels),
            "min_score": dict(self.thresholds),
            # Routes a message can be scored against (the rest have no examples).
            "scored_routes": len(self.settings.scored_routes()),
        }

    async def op_route(self, request: Request) -> dict[str, Any]:
        return await self._route(require(request.body, "text", str))

    async def op_chat(self, request: Request) -> dict[str, Any]:
        body = request.body
        if "messages" in body:
            messages = require(body, "messages", list)
            users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
            if not users or not isinstance(users[-1].get("content"), str):
                raise BadRequest("messages need a user message with text content to route on")
            text = users[-1]["content"]
        else:
            text = require(body, "text", str)
            messages = [{"role": "user", "content": text}]
        chosen = await self._route(text)
        name = chosen["route"]
        route = self.settings.routes[name]
        if route.get("system"):
            messages = [{"role": "system", "content": route["system"]}, *messages]
        try:
            reply = await chat_for(
                self.ctx,
                request,
                route["model"],
                messages,
                OWN_FIELDS,
                adapters=route.get("adapters"),
            )
        except NotFound as exc:  # a route's model or adapter: the fix is in the config
            raise NotFound(
                f"route {name!r} chose model {route['model']!r}: {exc.message}; or change "
                f"[router.routes.{name}] in config.toml"
            ) from exc
        return {
            **reply,
            "route": chosen["route"],
            "score": chosen["score"],
            "message_id": chosen["message_id"],
        }

    async def _route(self, text: str) -> dict[str, Any]:
        examples = await self._example_vectors()
        (query,) = await self._embed([text])
        route, score, scores = choose(query, examples, self.thresholds, self.settings.default)
        model = self.settings.routes[route]["model"]
        fallback = route == self.settings.default and not any(
            s >= self.thresholds[name] for name, s in scores.items()
        )
        ident = self.log.add(route, scores, fallback)
        return {"route": route, "model": model, "score": score, "scores": scores,
                "message_id": ident}  # fmt: skip

    async def _example_vectors(self) -> dict[str, np.ndarray]:
        async with self._embedding:  # the first requests wait for one embedding, not several
            if self._examples is None:
                examples = {}
                for name, route in self.settings.routes.items():
                    texts = route["examples"]
                    examples[name] = (
                        await self._embed(texts) if texts else np.zeros((0, 1), np.float32)
                    )
                self._examples = examples  # only once all are embedded: a failure retries
        return self._examples

    async def _embed(self, texts: list[str]) -> np.ndarray:
        body = {"op": "embed", "model": self.settings.embed_model, "texts": texts}
        reply = await self.ctx.call("embed", body)
        return np.asarray(reply["vectors"], dtype=np.float32)


def _read_thresholds(path: Path) -> dict[str, float]:
    """The thresholds kept by an earlier `threshold` op ({} when none or unreadable)."""
    try:
        found = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        log.warning("%s is unreadable: the router uses router.min_score", path)
        return {}
    if not isinstance(found, dict):
        return {}
    return {
        k: float(v)
        for k, v in found.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and -1 <= v <= 1
    }


def _write_thresholds(path: Path, thresholds: dict[str, float]) -> None:
    with atomic_writer(path) as handle:
        handle.write(json.dumps(thresholds, indent=1).encode())
