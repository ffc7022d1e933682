"""The `llm` and `embed` services, and the engines component that serves them.

``llm`` ops:
- ``chat``: ``{"model", "messages": [{"role", "content"}], ...sampling}``; the prompt is
  rendered with the GGUF's own chat template.
- ``complete``: ``{"model", "prompt", ...sampling}``: raw completion.
  Sampling fields, all optional: ``max_tokens`` (int >= 1, default 256), ``temperature``
  (0..2, default 0.8; 0 is greedy), ``top_p`` (0 < p <= 1, default 0.95), ``top_k`` (int >= 0,
  default 40; 0 = off), ``min_p`` (0..1, default 0.05), ``seed`` (int, default random),
  ``stop`` (a string or a list of strings), ``repeat_penalty`` (> 0, default 1.0 = off; over
  the last 64 generated tokens), ``stream`` (bool, default false).
  ``session`` (a string): the conversation's id; when another request takes its slot, its KV
  state is saved to disk, and a later request of the session whose prompt starts with exactly
  those tokens gets it back instead of re-reading them.
  ``adapters``: ``[{"name", "scale"?: float (default 1.0), "force"?: bool}]``, LoRA adapters
  kept by the `adapters` service for this model, applied to this request only (the model stays
  loaded; see aether_box.adapters). An adapter the fusion log judged ``prune`` is refused
  unless ``force`` is true.
  Constrained output: ``grammar`` (GBNF text, root rule ``root``) or ``json_schema`` (a JSON
  schema map): the reply follows the grammar; with a schema it is JSON that fits it (unless
  ``max_tokens`` cuts it short: finish_reason "length").
  With ``stream``, the text arrives in PARTIALs ``{"token": str}`` as it is generated, at most
  one each STREAM_GAP_S (the tokens sampled meanwhile go together; bytes of a multi-byte
  character wait for the rest, and text that may begin a stop sequence waits until it cannot). FINAL: ``{"model", "text", "finish_reason" ("stop" or
  "length"), "usage": {"prompt_tokens", "completion_tokens"}, "cached_tokens", "tokens_per_s",
  "ttft_s"}``; ``cached_tokens`` are prompt tokens found in the model's KV cache (a
  conversation's earlier turns), not computed again.
  Requests run ``engines.parallel`` at a time per model, batched together; up to
  ``engines.max_queue`` more wait, and beyond that a request fails at once with code ``busy``.
  Cancelling the request (or disconnecting) stops the generation within a token.
- ``models``: what is installed and loaded (the same map as status's "models" section).
- ``show``: ``{"model"}`` -> what its file says (aether_box.models.card): ``architecture``,
  ``size_label``, ``quantization``, ``context_length`` (as trained), ``chat_template``.
- ``load``: ``{"model", "role"?: "generate" | "embed"}`` loads it now; ``unload``: ``{"model"}``.

``embed`` op ``embed``: ``{"model", "texts": [str, ...], "prompt"?, "pooling"?}`` ->
``{"model", "dim", "vectors": float32 (n, dim), "pooling", "prompt"}``, L2-normalised; GGUF
models mean-pool their last layer, ONNX encoders pool as they were trained to. For GGUF models
``prompt`` (a template holding ``{text}``) wraps each text first and ``pooling`` is "mean"
(default) or "last" (the last token's vector); the models manifest names each model's measured
recipe for alignment (aether_box.align.recipes).

A model this box lacks is served by a linked peer that has it: whichever component
implements `PeerDirectory` (see aether_box.contract; the federation component does).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import anyio
import anyio.abc
import numpy as np

from aether_box.bus.protocol import ROUTED
from aether_box.bus.service import OpService, Request, require, require_name
from aether_box.context import BoxContext
from aether_box.contract import (
    AdapterCatalog,
    AdapterHost,
    AdapterLease,
    Grid,
    ModelCatalog,
    ModelResidency,
    PeerDirectory,
    TextScorer,
)
from aether_box.engines.generation import AdapterRef, Generation, GenerationParams
from aether_box.engines.onnx import cuda_unavailable_reason
from aether_box.engines.registry import (
    ROLES,
    EngineSettings,
    LoadedModel,
    ModelRegistry,
    gpu_present,
    nll_key,
    probe_llama_gpu,
)
from aether_box.engines.relay import Relay
from aether_box.errors import BadRequest, BoxError, ServiceUnavailable, TooLarge
from aether_box.models.card import model_card
from aether_box.models.settings import ModelsSettings
from aether_box.models.store import ModelStore

__all__ = ["EmbedService", "EnginesComponent", "LlmService", "generation_params"]

log = logging.getLogger(__name__)

# A model's usual speed (status, the observer's drift alert) comes from answers at least this
# long: a two-token answer's rate is mostly fixed costs, not a sign of a slow model.
MIN_TOKENS_FOR_SPEED = 16
# A streamed reply's PARTIALs go at most this often (the pieces sampled meanwhile go together):
# 40 a second reads as smooth, and the loop wakes far less often than once a token.
STREAM_GAP_S = 0.025
# The NLL signal (aether_box/monitor/watches.py) judges answers of at least this many tokens.
MIN_TOKENS_FOR_NLL = 8

MAX_STOPS = 16
REFRESH_S = 10.0


class EnginesComponent(ModelCatalog, ModelResidency, TextScorer, AdapterHost):
    """Registers `llm` and `embed`, and the "models" status section."""

    name: ClassVar[str] = "engines"
    settings_class: ClassVar[type | None] = EngineSettings
    status_key: ClassVar[str] = "models"

    def __init__(self, ctx: BoxContext) -> None:
        self.settings = ctx.config.get(EngineSettings)
        self.models_dir = ctx.config.get(ModelsSettings).dir
        self.registry: ModelRegistry | None = None
        self._cuda_note: str | None = None
        self._repacking = "on"

    async def serve(
        self,
        ctx: BoxContext,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        # Reading the manifest, looking for a GPU and loading llama.cpp's library touch files.
        store, gpu, threads, llama_gpu = await anyio.to_thread.run_sync(self._probe)
        self.registry = ModelRegistry(
            self.settings, store, gpu=gpu, threads=threads, llama_gpu=llama_gpu
        )
        await self._refresh()
        ctx.add_service("llm", LlmService(self.registry, ctx))
        ctx.add_service("embed", EmbedService(self.registry, ctx))
        task_status.started()
        try:
            while True:  # notice models pulled or added while the box runs
                await anyio.sleep(REFRESH_S)
                await self._refresh()
        finally:
            with anyio.CancelScope(shield=True):
                await self.registry.close()

    def status_section(self) -> dict[str, Any] | None:
        """The "models" section of `status`: installed and loaded models, the budget, why
        ONNX runs on the CPU when it does, and whether llama.cpp repacks weights (llama_cpu)."""
        if self.registry is None:
            return None
        return {
            **self.registry.status(),
            "onnx_cuda": self._cuda_note or "available",
            "llama_repacking": self._repacking,
        }

    def installed(self) -> list[str]:
        return [] if self.registry is None else self.registry.installed_names()

    def loads(self) -> dict[str, dict[str, Any]]:
        return {} if self.registry is None else self.registry.loads()

    async def has_model(self, model: str) -> bool:
        return self.registry is not None and await self.registry.has(model)

    async def require_model(self, model: str) -> None:
        if self.registry is None:
            raise ServiceUnavailable("the engines are still starting; retry in a moment")
        if not await self.registry.has(model):
            await self.registry.info(model)  # raises the store's NotFound: installed, how to add

    async def score(
        self, model: str, texts: Sequence[str], adapters: Sequence[AdapterRef]
    ) -> list[np.ndarray]:
        """Teacher-forced logits of each text under `adapters` (see TextScorer)."""
        if self.registry is None:
            raise ServiceUnavailable("the engines are still starting; retry in a moment")
        registry = self.registry
        out = []
        async with registry.use(model, "generate") as entry:
            engine = entry.engine
            for text in texts:
                tokens = await registry.run(engine.prompt_tokens, text)
                out.append(await _score(registry, engine, tokens, adapters))
        return out

    def release_adapter(self, sha256: str) -> int:
        """Free a removed adapter in every loaded model (see AdapterHost)."""
        if self.registry is None:
            return 0
        engines = self.registry.engines()
        return sum(
            1 for e in engines if hasattr(e, "release_adapter") and e.release_adapter(sha256)
        )

    def residency(self) -> list[dict[str, Any]]:
        if self.registry is None:
            return []
        return [
            {
                "name": e["name"],
                "role": e["role"],
                "memory_mb": e["memory_mb"],
                "idle_s": e["idle_s"],
                "in_use": e["in_use"],
                "requests": e["requests"],
                "load_s": e["load_s"],
            }
            for e in self.registry.status()["loaded"]
        ]

    async def unload_if_idle(self, model: str, role: str, idle_s: float) -> int | None:
        if self.registry is None:
            return None
        return await self.registry.unload_if_idle(model, role, idle_s)

    def _probe(self) -> tuple[ModelStore, bool, int, bool]:
        import aether_box.engines.llama  # noqa: F401  (loads libllama once, here)
        from aether_box.engines.llama_cpu import repacking

        gpu = gpu_present()
        store = ModelStore(self.models_dir)
        self._cuda_note = cuda_unavailable_reason()
        self._repacking = repacking()  # reads /proc/cpuinfo: here, off the loop
        return store, gpu, self.settings.probe_threads(), probe_llama_gpu(self.settings, gpu)

    async def _refresh(self) -> None:
        assert self.registry is not None
        try:
            await self.registry.refresh_installed()
        except BoxError as exc:  # e.g. a broken registry.toml: keep serving, say why
            log.warning("cannot list installed models: %s", exc)


async def chat_for(
    ctx: BoxContext,
    request: Request,
    model: str,
    messages: list[dict[str, Any]],
    own_fields: tuple[str, ...],
    session: str | None = None,
    adapters: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """`llm` chat on behalf of another service's request: its fields other than `own_fields`
    are the sampling (``stream``, ``max_tokens``...), and its partial replies go to that request.
    `session` names the conversation, so the model may keep its KV state between turns.
    `adapters` are the default LoRA adapters (a session's, a route's), used unless the
    request names its own (an empty list: none).
    """
    sampling = {k: v for k, v in request.body.items() if k not in own_fields}
    chat = {**sampling, "op": "chat", "model": model, "messages": messages}
    if session is not None:
        chat["session"] = session
    if adapters and "adapters" not in chat:
        chat["adapters"] = adapters
    return await ctx.call("llm", chat, on_partial=request.partial)


async def _score(
    registry: ModelRegistry, engine: Any, tokens: list[int], adapters: Sequence[AdapterRef]
) -> np.ndarray:
    """One scoring job through the model's scheduler, its logits posted back to this loop."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()

    def post(item: Any) -> None:  # in the scheduler's thread
        try:
            loop.call_soon_threadsafe(lambda: done.done() or done.set_result(item))
        except RuntimeError:  # the loop has closed (shutdown): nobody is listening
            pass

    job = await registry.run(engine.prepare_score, tokens, adapters, post)
    engine.submit(job)
    try:
        result = await done
    finally:
        job.cancel()
    if isinstance(result, BaseException):
        raise result
    if not isinstance(result, np.ndarray):
        raise BoxError(f"scoring ended as {getattr(result, 'finish_reason', result)!r}")
    return result


class ModelService(OpService):
    """An OpService whose requests name a `model`; one this box lacks goes to a linked peer.

    A peer that reports the model installed (see aether_box.federation) serves the request,
    partial replies included; without one, the local service answers (and says what is
    installed here). A request another box routed here is never routed on.
    """

    def __init__(self, registry: ModelRegistry, ctx: BoxContext | None = None) -> None:
        self.registry = registry
        self.ctx = ctx

    # The ops that do a model's work: in a grid they go where the wait is shortest.
    placed_ops: frozenset[str] = frozenset()

    async def __call__(self, request: Request) -> Mapping[str, Any] | None:
        routed = request.body.pop(ROUTED, False)
        model = request.body.get("model")
        if not routed and isinstance(model, str) and self.ctx is not None:
            here = await self.registry.has(model)
            grid = self.ctx.get(Grid)
            if (
                grid is not None
                and request.body.get("op") in self.placed_ops
                and grid.places(self.name, model)
            ):
                serve_here = super().__call__ if here else None
                return await grid.place(self.name, model, request, serve_here)
            peers = self.ctx.get(PeerDirectory)
            if peers is not None and not here:
                peer = peers.peer_for_model(self.name, model)
                if peer is not None:
                    return await peer.forward(self.name, request, routed=True)
        return await super().__call__(request)


class LlmService(ModelService):
    """Chat and completion with GGUF models."""

    name = "llm"
    placed_ops = frozenset({"chat", "complete"})

    async def op_chat(self, request: Request) -> dict[str, Any]:
        """Reply to `messages` with the model's chat template."""
        body = request.body
        name = require_name(body, "model")
        messages = _messages(body)
        params, stream = generation_params(body)
        async with self.registry.use(name, "generate") as entry:
            engine = entry.engine
            prompt = lambda: engine.chat_tokens(messages, name)  # noqa: E731
            result = await self._generate(request, entry, prompt, params, stream)
        return self._final(name, result)

    async def op_complete(self, request: Request) -> dict[str, Any]:
        """Continue a raw `prompt`."""
        body = request.body
        name = require_name(body, "model")
        prompt = require(body, "prompt", str)
        params, stream = generation_params(body)
        async with self.registry.use(name, "generate") as entry:
            engine = entry.engine
            result = await self._generate(
                request, entry, lambda: engine.prompt_tokens(prompt), params, stream
            )
        return self._final(name, result)

    async def op_models(self, request: Request) -> dict[str, Any]:
        """Installed and loaded models, and the memory budget."""
        await self.registry.refresh_installed()
        return self.registry.status()

    async def op_show(self, request: Request) -> dict[str, Any]:
        """What an installed model's own file says about it (see aether_box.models.card)."""
        name = require_name(request.body, "model")
        store = self.registry.store
        return await anyio.to_thread.run_sync(lambda: model_card(store.info(name)))

    async def op_load(self, request: Request) -> dict[str, Any]:
        """Load a model now rather than on first use."""
        name = require_name(request.body, "model")
        role = request.body.get("role")
        if role is not None and role not in ROLES:
            raise BadRequest(f"field 'role' must be one of {list(ROLES)}, got {role!r}")
        entry = await self.registry.load(name, role)
        return entry.snapshot()

    async def op_unload(self, request: Request) -> dict[str, Any]:
        """Unload every instance of a model (after the requests in progress)."""
        name = require_name(request.body, "model")
        return {"model": name, "unloaded": await self.registry.unload(name)}

    async def _generate(
        self,
        request: Request,
        entry: LoadedModel,
        prompt: Callable[[], list[int]],
        params: GenerationParams,
        stream: bool,
    ) -> Generation:
        """Hand the request to the model's scheduler and stream its text as it comes.

        `prompt` makes the prompt's tokens; it runs in a worker thread, with the sampler's
        set-up (a grammar is parsed there), so the loop never waits on either. The scheduler's
        thread posts text and the result back to this loop; cancelling the request (client
        cancel or disconnect) cancels the job, which leaves its slot within one step.
        """
        engine = entry.engine
        session = _session(request.body)
        lease = await self._adapters(entry.name, request.body)
        refs = lease.refs if lease is not None else ()
        relay = Relay(asyncio.get_running_loop())

        def prepare() -> Any:
            on_text = relay.post if stream else None
            return engine.prepare(prompt(), params, on_text, relay.post, entry.name, session, refs)

        try:
            job = await self.registry.run(prepare)
            engine.submit(job)
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        result: Any = Relay.PENDING
        try:
            while result is Relay.PENDING:
                text, result = await relay.take()
                if text:
                    await request.partial({"token": text})
                    # Pieces sampled meanwhile go out together in the next PARTIAL.
                    await relay.pause(STREAM_GAP_S)
        finally:
            job.cancel()  # a no-op once it has finished
            if lease is not None:
                done = isinstance(result, Generation)
                lease.release(
                    result.completion_tokens if done else 0, result.tokens_per_s if done else 0.0
                )
        if isinstance(result, BaseException):
            raise result
        if result.completion_tokens >= MIN_TOKENS_FOR_SPEED:
            entry.tokens_per_s = result.tokens_per_s or entry.tokens_per_s
        key = nll_key(entry.name, request.body.get("adapters") if lease is not None else None)
        if result.nll is not None and result.completion_tokens >= MIN_TOKENS_FOR_NLL:
            entry.note_nll(key, result.nll)
        if self.ctx is not None:
            self.ctx.events.publish(
                "metrics.llm",
                {
                    "model": entry.name,
                    "nll_key": key,
                    "completion_tokens": result.completion_tokens,
                    "tokens_per_s": round(result.tokens_per_s, 2),
                    "ttft_s": round(result.ttft_s, 4),
                    "nll": None if result.nll is None else round(result.nll, 4),
                },
            )
        return result

    async def _adapters(self, model: str, body: Mapping[str, Any]) -> AdapterLease | None:
        """The lease on the request's ``adapters`` (None without any)."""
        specs = body.get("adapters")
        if specs is None or specs == []:
            return None
        if not isinstance(specs, list):
            raise BadRequest(
                f'field \'adapters\' must be a list of {{"name", "scale"?}} maps, got {specs!r}'
            )
        catalog = self.ctx.get(AdapterCatalog) if self.ctx is not None else None
        if catalog is None:
            raise ServiceUnavailable("this box serves no adapters (the adapters component is off)")
        return await catalog.lease(model, specs)

    @staticmethod
    def _final(name: str, result: Generation) -> dict[str, Any]:
        return {
            "model": name,
            "text": result.text,
            "finish_reason": result.finish_reason,
            "usage": {
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
            },
            "cached_tokens": result.cached_tokens,
            "tokens_per_s": round(result.tokens_per_s, 2),
            "ttft_s": round(result.ttft_s, 4),
        }


class EmbedService(ModelService):
    """Sentence vectors from ONNX encoders and GGUF models."""

    name = "embed"
    placed_ops = frozenset({"embed"})

    async def op_embed(self, request: Request) -> dict[str, Any]:
        """L2-normalised float32 vectors, one row per text."""
        body = request.body
        name = require_name(body, "model")
        texts = require(body, "texts", list)
        limit = self.registry.settings.max_texts
        if len(texts) > limit:
            raise TooLarge(
                f"{len(texts)} texts in one request; at most {limit} "
                "(engines.max_texts): send them in several requests"
            )
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise BadRequest(f"texts[{i}] must be a string, got {type(text).__name__}")
        prompt, pooling = _recipe_options(body)
        batch = self.registry.settings.embed_batch
        parts: list[np.ndarray] = []
        dim = 0
        started = time.perf_counter()
        # Each batch queues for the model on its own, so a big request shares it fairly.
        for start in range(0, max(len(texts), 1), batch):
            chunk = texts[start : start + batch]
            async with self.registry.use(name, "embed") as entry:
                dim = int(entry.engine.dim)
                if chunk:
                    call = _embed_call(entry, chunk, start, prompt, pooling)
                    parts.append(await self.registry.run(call))
        vectors = np.concatenate(parts) if parts else np.zeros((0, dim), dtype=np.float32)
        if texts:
            entry.items_per_s = len(texts) / max(time.perf_counter() - started, 1e-9)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        return {"model": name, "dim": dim, "vectors": vectors, "pooling": pooling, "prompt": prompt}


def _recipe_options(body: Mapping[str, Any]) -> tuple[str | None, str]:
    """The request's `prompt` template and `pooling`, checked."""
    from aether_box.engines.llama import POOLINGS

    prompt = body.get("prompt")
    if prompt is not None and (not isinstance(prompt, str) or "{text}" not in prompt):
        raise BadRequest("'prompt' must be a template string holding '{text}' where the text goes")
    pooling = body.get("pooling", "mean")
    if pooling not in POOLINGS:
        raise BadRequest(
            f"'pooling' must be one of {sorted(POOLINGS)}, got {pooling!r} (a chosen layer "
            "is not offered: llama.cpp's embedding API returns the last layer only)"
        )
    return prompt, pooling


def _embed_call(
    entry: LoadedModel, chunk: list[str], offset: int, prompt: str | None, pooling: str
) -> Any:
    from aether_box.engines.llama import LlamaEmbedder

    engine = entry.engine
    if isinstance(engine, LlamaEmbedder):
        return lambda: engine.embed(chunk, entry.name, offset, prompt, pooling)
    if prompt is not None or pooling != "mean":
        raise BadRequest(
            f"{entry.name!r} is an ONNX encoder: it pools as it was trained to and takes no "
            "'prompt' or 'pooling'; those are for GGUF models"
        )
    return lambda: engine.embed(chunk)


def generation_params(body: Mapping[str, Any]) -> tuple[GenerationParams, bool]:
    """Sampling settings and the stream flag of a request, or a BadRequest naming the field."""
    d = GenerationParams()
    max_tokens = _number(body, "max_tokens", d.max_tokens, 1, None, integer=True)
    temperature = _number(body, "temperature", d.temperature, 0.0, 2.0)
    top_p = _number(body, "top_p", d.top_p, 0.0, 1.0, open_low=True)
    top_k = _number(body, "top_k", d.top_k, 0, None, integer=True)
    min_p = _number(body, "min_p", d.min_p, 0.0, 1.0)
    seed = body.get("seed")
    if seed is not None:
        seed = _number(body, "seed", 0, 0, 2**32 - 2, integer=True)
    stop = body.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise BadRequest("field 'stop' must be a non-empty string or a list of them")
    if len(stop) > MAX_STOPS:
        raise BadRequest(f"at most {MAX_STOPS} stop sequences, got {len(stop)}")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest(f"field 'stream' must be true or false, got {stream!r}")
    repeat_penalty = _number(body, "repeat_penalty", d.repeat_penalty, 0.0, 4.0, open_low=True)
    grammar, schema = _constraint(body)
    params = GenerationParams(
        int(max_tokens),
        float(temperature),
        float(top_p),
        int(top_k),
        float(min_p),
        seed,
        tuple(stop),
        float(repeat_penalty),
        grammar,
        schema,
    )
    return params, stream


def _session(body: Mapping[str, Any]) -> str | None:
    """The request's `session` id (whose conversation state may be saved and restored)."""
    session = body.get("session")
    if session is not None and (not isinstance(session, str) or not 0 < len(session) <= 256):
        raise BadRequest("field 'session' must be a string of 1 to 256 characters")
    return session


def _constraint(body: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The request's `grammar` (GBNF) or `json_schema` (as JSON text); at most one of them."""
    grammar, schema = body.get("grammar"), body.get("json_schema")
    if grammar is not None and schema is not None:
        raise BadRequest("send 'grammar' or 'json_schema', not both")
    if grammar is not None and (not isinstance(grammar, str) or not grammar.strip()):
        raise BadRequest("field 'grammar' must be GBNF text (a non-empty string)")
    if schema is None:
        return grammar, None
    if not isinstance(schema, dict):
        raise BadRequest(f"field 'json_schema' must be a map (a JSON schema), got {schema!r}")
    try:
        return None, json.dumps(schema)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"field 'json_schema' is not plain JSON: {exc}") from exc


def _number(
    body: Mapping[str, Any],
    key: str,
    default: float,
    low: float,
    high: float | None,
    *,
    integer: bool = False,
    open_low: bool = False,
) -> float:
    value = body.get(key)
    if value is None:
        return default
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        raise BadRequest(
            f"field {key!r} must be {'an integer' if integer else 'a number'}, got {value!r}"
        )
    too_low = value <= low if open_low else value < low
    if too_low or (high is not None and value > high):
        bounds = f"{'>' if open_low else '>='} {low}"
        if high is not None:
            bounds += f" and <= {high}"
        raise BadRequest(f"field {key!r} must be {bounds}, got {value!r}")
    return value


def _messages(body: Mapping[str, Any]) -> list[dict[str, str]]:
    messages = require(body, "messages", list)
    if not messages:
        raise BadRequest("field 'messages' is empty; send at least one {'role', 'content'} map")
    out = []
    for i, message in enumerate(messages):
        if (
            not isinstance(message, dict)
            or not isinstance(message.get("role"), str)
            or not isinstance(message.get("content"), str)
        ):
            raise BadRequest(f"messages[{i}] must be a map with string 'role' and 'content'")
        out.append({"role": message["role"], "content": message["content"]})
    return out
