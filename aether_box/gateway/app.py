"""The gateway's Starlette app: routes, API keys, and errors in each API's own shape.

Every route that reaches a model is one bus call through `BoxContext.call` (the broker's
limiter, counters and cancellation, as a socket request), made by an `Exchange` (streamed,
and cancelled when the client hangs up). Keys are checked on the event loop against the
in-memory `KeyRing` (a sha256 and a dict lookup); the component keeps it in step with the
keys file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from aether_box import __version__
from aether_box.bus.settings import BusSettings
from aether_box.context import BoxContext
from aether_box.errors import BadRequest, BoxError, ServiceUnavailable, TooLarge
from aether_box.gateway import ollama, openai
from aether_box.gateway.exchange import Exchange, Reply, http_status
from aether_box.gateway.keys import ApiKey, KeyRing
from aether_box.gateway.openai import ROUTER_MODEL, Target
from aether_box.gateway.stats import ANONYMOUS, GatewayStats

__all__ = ["Gateway"]

MCP_ROUTE = "/mcp"

# Builds (bus target, reply writer) from a request's JSON body.
Translate = Callable[[dict[str, Any]], tuple[Target, Reply]]
ErrorBody = Callable[[BoxError], bytes]


class Gateway:
    """The routes over one box's context, its key ring and its counters."""

    def __init__(
        self,
        ctx: BoxContext,
        keyring: KeyRing,
        *,
        require_key: bool,
        mcp_app: ASGIApp | None = None,
    ) -> None:
        self.ctx = ctx
        self.keyring = keyring
        self.require_key = require_key
        self.stats = GatewayStats()
        # A body becomes one bus message: held to the bus's limit for socket clients, read
        # no further than that (an unbounded body would be held whole in the box's memory).
        self.max_body = ctx.config.get(BusSettings).max_message_bytes
        # The box as an MCP server (aether_box.tools.mcp_server), behind the same keys.
        mcp_routes = (
            [Route(MCP_ROUTE, _Keyed(self, mcp_app), methods=["GET", "POST", "DELETE"])]
            if mcp_app is not None
            else []
        )
        self.app = Starlette(
            routes=[
                *mcp_routes,
                Route("/", self.root, methods=["GET", "HEAD"]),
                Route("/v1/models", self.openai_models, methods=["GET"]),
                Route("/v1/models/{model:path}", self.openai_model, methods=["GET"]),
                Route("/v1/chat/completions", self.openai_chat, methods=["POST"]),
                Route("/v1/completions", self.openai_completions, methods=["POST"]),
                Route("/v1/embeddings", self.openai_embeddings, methods=["POST"]),
                Route("/api/version", self.ollama_version, methods=["GET"]),
                Route("/api/tags", self.ollama_tags, methods=["GET"]),
                Route("/api/show", self.ollama_show, methods=["POST"]),
                Route("/api/ps", self.ollama_ps, methods=["GET"]),
                Route("/api/chat", self.ollama_chat, methods=["POST"]),
                Route("/api/generate", self.ollama_generate, methods=["POST"]),
                Route("/api/embed", self.ollama_embed, methods=["POST"]),
                Route("/api/embeddings", self.ollama_embeddings, methods=["POST"]),
            ]
        )

    # -- OpenAI ------------------------------------------------------------------------

    async def openai_chat(self, request: Request) -> Any:
        def translate(body: dict[str, Any]) -> tuple[Target, Reply]:
            target = openai.chat_target(body)
            return target, openai.ChatReply(target)

        return await self._bus_route(request, "/v1/chat/completions", openai.error_body, translate)

    async def openai_completions(self, request: Request) -> Any:
        def translate(body: dict[str, Any]) -> tuple[Target, Reply]:
            target = openai.completion_target(body)
            return target, openai.CompletionReply(target)

        return await self._bus_route(request, "/v1/completions", openai.error_body, translate)

    async def openai_embeddings(self, request: Request) -> Any:
        def translate(body: dict[str, Any]) -> tuple[Target, Reply]:
            target, encoding = openai.embeddings_target(body)
            return target, openai.EmbeddingsReply(target, encoding)

        return await self._bus_route(request, "/v1/embeddings", openai.error_body, translate)

    async def openai_models(self, request: Request) -> Response:
        async def answer(key: ApiKey | None) -> bytes:
            return openai.models_body([m["name"] for m in await self._models(key)])

        return await self._local_route(request, "/v1/models", openai.error_body, answer)

    async def openai_model(self, request: Request) -> Response:
        name = request.path_params["model"]

        async def answer(key: ApiKey | None) -> bytes:
            return openai.model_body(name, [m["name"] for m in await self._models(key)])

        return await self._local_route(request, "/v1/models/{model}", openai.error_body, answer)

    # -- Ollama ------------------------------------------------------------------------

    async def ollama_chat(self, request: Request) -> Any:
        def translate(body: dict[str, Any]) -> tuple[Target, Reply]:
            target = ollama.chat_target(body)
            return target, ollama.ChatReply(target)

        return await self._bus_route(request, "/api/chat", ollama.error_body, translate)

    async def ollama_generate(self, request: Request) -> Any:
        def translate(body: dict[str, Any]) -> tuple[Target, Reply]:
            target = ollama.generate_target(body)
            return target, ollama.GenerateReply(target)

        return await self._bus_route(request, "/api/generate", ollama.error_body, translate)

    async def ollama_embed(self, request: Request) -> Any:
        def translate(body: dict[str, Any]) -> tuple[Target, Reply]:
            target = ollama.embed_target(body)
            return target, ollama.EmbedReply(target)

        return await self._bus_route(request, "/api/embed", ollama.error_body, translate)

    async def ollama_embeddings(self, request: Request) -> Any:
        def translate(body: dict[str, Any]) -> tuple[Target, Reply]:
            target = ollama.embeddings_target(body)
            return target, ollama.EmbeddingsReply(target)

        return await self._bus_route(request, "/api/embeddings", ollama.error_body, translate)

    async def ollama_show(self, request: Request) -> Response:
        async def answer(key: ApiKey | None) -> bytes:
            name = ollama.show_name(await _json_body(request, self.max_body))
            facts = await self._model_facts(key)
            ollama.require_installed(name, facts)  # (one this key may use)
            card = await self.ctx.call("llm", {"op": "show", "model": name})
            return ollama.show_body(facts, card)

        return await self._local_route(request, "/api/show", ollama.error_body, answer)

    async def ollama_ps(self, request: Request) -> Response:
        async def answer(key: ApiKey | None) -> bytes:
            return ollama.ps_body(await self._model_facts(key))

        return await self._local_route(request, "/api/ps", ollama.error_body, answer)

    async def ollama_tags(self, request: Request) -> Response:
        async def answer(key: ApiKey | None) -> bytes:
            return ollama.tags_body(await self._models(key))

        return await self._local_route(request, "/api/tags", ollama.error_body, answer)

    async def ollama_version(self, request: Request) -> Response:
        async def answer(key: ApiKey | None) -> bytes:
            return orjson.dumps({"version": __version__})

        return await self._local_route(request, "/api/version", ollama.error_body, answer)

    async def root(self, request: Request) -> Response:
        # Ollama clients and health checks look here first; no key needed to learn that.
        return PlainTextResponse("Aether Box is running\n")

    # -- shared ------------------------------------------------------------------------

    async def _bus_route(
        self, request: Request, route: str, error_body: ErrorBody, translate: Translate
    ) -> Any:
        """Check the key, translate the body, and answer with one bus call (an Exchange)."""
        started = time.perf_counter()
        key_name = ANONYMOUS
        try:
            key = self._authorize(request)
            key_name = key.name if key is not None else ANONYMOUS
            target, reply = translate(await _json_body(request, self.max_body))
            _check_allowed(key, target.service, target.model)
            if not self.ctx.view.broker.accepting:
                # As the bus does for socket requests: the box is finishing what it has.
                raise ServiceUnavailable("the box is shutting down; retry once it is back")
        except BoxError as exc:
            return self._refuse(route, key_name, started, exc, error_body)
        ctx = self.ctx

        async def call(on_partial: Any) -> dict[str, Any]:
            return await ctx.call(target.service, target.body, on_partial=on_partial)

        def done(status: int, seconds: float) -> None:
            self.stats.finished(route, key_name, status, seconds)

        return Exchange(call, reply, stream=target.stream, done=done, started=started)

    async def _local_route(
        self,
        request: Request,
        route: str,
        error_body: ErrorBody,
        answer: Callable[[ApiKey | None], Any],
    ) -> Response:
        """Check the key and answer from the box's state (a quick call, not streamed)."""
        started = time.perf_counter()
        key_name = ANONYMOUS
        try:
            key = self._authorize(request)
            key_name = key.name if key is not None else ANONYMOUS
            body = await answer(key)
        except BoxError as exc:
            return self._refuse(route, key_name, started, exc, error_body)
        self.stats.finished(route, key_name, 200, time.perf_counter() - started)
        return Response(body, media_type="application/json")

    def _refuse(
        self, route: str, key_name: str, started: float, exc: BoxError, error_body: ErrorBody
    ) -> Response:
        status = http_status(exc)
        self.stats.finished(route, key_name, status, time.perf_counter() - started)
        headers = {"www-authenticate": "Bearer"} if status == 401 else None
        return Response(error_body(exc), status, headers, media_type="application/json")

    def _authorize(self, request: Request) -> ApiKey | None:
        """The request's live key; 401 when keys are required and it has none.

        Where keys are optional (loopback without http.require_key), an unknown key is
        ignored: OpenAI clients always send one, often a placeholder.
        """
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        key = self.keyring.check(token) if token else None
        if key is None and self.require_key:
            why = (
                "this API key is not valid (unknown or revoked)"
                if token
                else "an API key is required: send 'Authorization: Bearer <key>'"
            )
            raise BoxError(
                f"{why}; the box's owner makes keys with `aether-box keys api create NAME`",
                code="unauthorized",
            )
        return key

    async def _models(self, key: ApiKey | None) -> list[dict[str, Any]]:
        """The installed models this key may use, and the router when it runs."""
        models: list[dict[str, Any]] = (await self._model_facts(key))["installed"]
        if self.ctx.has_service("router") and (key is None or key.allows_model(ROUTER_MODEL)):
            models.append({"name": ROUTER_MODEL, "kind": "router"})
        return models

    async def _model_facts(self, key: ApiKey | None) -> dict[str, Any]:
        """The llm service's ``models`` reply (installed, loaded, n_ctx, ...), its lists cut
        to the models this key may use."""
        reply = dict(await self.ctx.call("llm", {"op": "models"}))
        for field in ("installed", "loaded"):
            models = reply.get(field, [])
            reply[field] = [m for m in models if key is None or key.allows_model(m["name"])]
        return reply


def _check_allowed(key: ApiKey | None, service: str, model: str) -> None:
    if key is None:
        return
    if not key.allows_service(service):
        raise BoxError(
            f"API key {key.name!r} may not use the {service} service; it may use "
            f"{list(key.services or [])} (make a key with --services {service} for it)",
            code="forbidden",
        )
    if not key.allows_model(model):
        raise BoxError(
            f"API key {key.name!r} may not use model {model!r}; it may use "
            f"{list(key.models or [])}",
            code="forbidden",
        )


async def _json_body(request: Request, limit: int) -> dict[str, Any]:
    raw = await _read_body(request, limit)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, or TooLarge (413) as soon as it is known to pass `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, limit: int) -> TooLarge:
    return TooLarge(
        f"the request body is {size} bytes or more, over the {limit}-byte limit; send less "
        "(split the texts), or the box's owner raises bus.max_message_mb"
    )


class _Keyed:
    """An ASGI app behind the gateway's key check (and its per-route counters)."""

    def __init__(self, gateway: Gateway, app: ASGIApp) -> None:
        self.gateway = gateway
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        try:
            key = self.gateway._authorize(Request(scope))
        except BoxError as exc:
            status = http_status(exc)
            response = Response(orjson.dumps(exc.to_wire()), status, media_type="application/json")
            await response(scope, receive, send)
            self.gateway.stats.finished(MCP_ROUTE, ANONYMOUS, status, time.perf_counter() - started)
            return
        await self.app(scope, receive, send)
        name = key.name if key is not None else ANONYMOUS
        self.gateway.stats.finished(MCP_ROUTE, name, 200, time.perf_counter() - started)
