"""The `router` service: pick a route for a message by meaning, and chat through it.

Ops:
- ``route``: ``{"text"}`` -> ``{"route", "model", "score", "scores": {route: cosine}}``. A
  route's score is the best cosine between the message and one of its examples (embedded
  once with ``router.embed_model``); below ``router.min_score`` everywhere, the default route.
- ``chat``: ``{"messages" | "text", "stream"?, ...sampling}`` -> the llm chat reply of the
  chosen route's model (its system prompt first, if it has one), plus ``route`` and ``score``.
- ``routes``: the configured routes.
"""

from __future__ import annotations

from typing import Any, ClassVar

import anyio
import anyio.abc
import numpy as np

from aether_box.bus.service import OpService, Request, require
from aether_box.context import BoxContext
from aether_box.engines.services import chat_for
from aether_box.errors import BadRequest
from aether_box.router.settings import RouterSettings

__all__ = ["RouterComponent", "choose"]

# Fields of a router `chat` request that are the router's, not sampling for the model.
OWN_FIELDS = ("op", "text", "messages")


def choose(
    query: np.ndarray, examples: dict[str, np.ndarray], min_score: float, default: str
) -> tuple[str, float, dict[str, float]]:
    """(route, score, every route's score) for one L2-normalised query vector."""
    scores = {
        name: float((vectors @ query).max()) if len(vectors) else float("-inf")
        for name, vectors in examples.items()
    }
    best = max(scores, key=scores.__getitem__, default=default)
    if scores.get(best, float("-inf")) < min_score:
        best = default
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

    async def serve(
        self,
        ctx: BoxContext,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        ctx.add_service("router", self)
        task_status.started()

    async def op_routes(self, request: Request) -> dict[str, Any]:
        return {
            "routes": self.settings.routes,
            "default": self.settings.default,
            "embed_model": self.settings.embed_model,
            "min_score": self.settings.min_score,
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
        route = self.settings.routes[chosen["route"]]
        if route.get("system"):
            messages = [{"role": "system", "content": route["system"]}, *messages]
        reply = await chat_for(
            self.ctx, request, route["model"], messages, OWN_FIELDS, adapters=route.get("adapters")
        )
        return {**reply, "route": chosen["route"], "score": chosen["score"]}

    async def _route(self, text: str) -> dict[str, Any]:
        examples = await self._example_vectors()
        (query,) = await self._embed([text])
        route, score, scores = choose(
            query, examples, self.settings.min_score, self.settings.default
        )
        model = self.settings.routes[route]["model"]
        return {"route": route, "model": model, "score": score, "scores": scores}

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
