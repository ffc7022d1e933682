"""The Ollama API on the bus, enough for front-ends that expect an Ollama server.

Routes (see aether_box.gateway.app): ``GET /api/tags``, ``GET /api/version``, ``POST
/api/show`` (one model's facts, as far as the box knows them), ``GET /api/ps`` (the models
loaded now), ``POST /api/chat``, ``POST /api/generate``, ``POST /api/embed`` and the legacy
``POST /api/embeddings`` (``{"model", "prompt"}`` -> ``{"embedding"}``). Facts the box does
not keep (digests, dates) are empty strings, as Ollama leaves unknown fields; family, size
and quantisation come from the GGUF's header in ``/api/show`` (the lists leave them empty). As Ollama does, chat and generate
stream by default (``"stream": false`` for one object), as NDJSON: one JSON object a line,
the last with ``"done": true`` and the counts. ``options`` map onto the llm service's
sampling (``num_predict`` is ``max_tokens``), and ``format`` (``"json"`` or a JSON schema) onto
its ``json_schema``; generate without ``raw`` goes through the model's chat template, as
Ollama's does. Chat takes ``tools`` as Ollama does (``"auto"``: it has no ``tool_choice``),
through the same schema-constrained generation as OpenAI's (aether_box.gateway.tools): a call
comes back as ``message.tool_calls: [{"function": {"name", "arguments": {...}}}]`` with
``content`` "", streamed as one line before the ``done`` line (a plain answer streams as
without tools); earlier calls and ``tool``
results reach the model as text. Errors are ``{"error": "..."}``. Box extra: chat
and generate take ``adapters: [{"name", "scale"?, "force"?}]``, LoRA adapters kept by the box,
passed to the llm service as they are.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from aether_box.errors import BadRequest, BoxError, NotFound
from aether_box.gateway.exchange import WholeReply
from aether_box.gateway.openai import JSON_OBJECT, Target, adapters_field
from aether_box.gateway.tools import (
    AnswerStream,
    history_message,
    read_reply,
    tool_plan,
    with_system_note,
)

__all__ = [
    "ChatReply",
    "EmbedReply",
    "EmbeddingsReply",
    "GenerateReply",
    "chat_target",
    "embed_target",
    "embeddings_target",
    "error_body",
    "generate_target",
    "ps_body",
    "require_installed",
    "show_body",
    "show_name",
    "tags_body",
]

EPOCH = "1970-01-01T00:00:00Z"  # for dates the box keeps none of
OPTIONS = ("temperature", "top_p", "top_k", "min_p", "seed", "stop", "repeat_penalty")


def error_body(exc: BoxError) -> bytes:
    return orjson.dumps({"error": exc.message})


def chat_target(body: Mapping[str, Any]) -> Target:
    """`POST /api/chat` as llm chat."""
    model = _model(body)
    messages = _messages(body.get("messages"))
    stream = _stream(body)
    options = _options(body)
    chat = {"op": "chat", "model": model, "messages": messages, **options, "stream": stream}
    plan = tool_plan({"tools": body.get("tools")})  # Ollama has no tool_choice: "auto"
    if plan is not None:  # held to the plan's schema (see ChatReply)
        if "json_schema" in options:
            raise BadRequest("send 'tools' or 'format', not both: the reply is held to one schema")
        note = with_system_note(messages, plan.prompt())
        chat |= {"messages": note, "json_schema": plan.schema}
    return Target("llm", chat | adapters_field(body), model, stream, tools=plan)


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise BadRequest("field 'messages' must be a non-empty list of {role, content} objects")
    out: list[dict[str, str]] = []
    calls: dict[str, str] = {}  # tool call ids seen so far (Ollama's calls mostly have none)
    for i, message in enumerate(value):
        content = message.get("content") if isinstance(message, dict) else None
        if (
            not isinstance(message, dict)
            or not isinstance(message.get("role"), str)
            or not isinstance(content, str | None)
        ):
            raise BadRequest(f"messages[{i}] must be an object with string role and content")
        out.append(history_message(message, content or "", calls))
    return out


def generate_target(body: Mapping[str, Any]) -> Target:
    """`POST /api/generate`: raw completion with ``raw``, else a one-turn chat."""
    model = _model(body)
    prompt = body.get("prompt", "")
    system = body.get("system")
    if not isinstance(prompt, str) or not isinstance(system, str | None):
        raise BadRequest("fields 'prompt' and 'system' must be strings")
    stream = _stream(body)
    if not prompt:  # Ollama's way to load a model ahead of use
        return Target("llm", {"op": "load", "model": model, "role": "generate"}, model, stream)
    sampling = {**_options(body), "stream": stream, **adapters_field(body)}
    if body.get("raw"):
        return Target(
            "llm", {"op": "complete", "model": model, "prompt": prompt, **sampling}, model, stream
        )
    messages = [{"role": "user", "content": prompt}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    chat = {"op": "chat", "model": model, "messages": messages, **sampling}
    return Target("llm", chat, model, stream)


def embed_target(body: Mapping[str, Any]) -> Target:
    """`POST /api/embed` as embed."""
    model = _model(body)
    texts = body.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise BadRequest("field 'input' must be a string or a list of strings")
    if not texts:  # as OpenAI's 400: an empty list back would break the client's parsing
        raise BadRequest("field 'input' is an empty list: send at least one text")
    return Target("embed", {"op": "embed", "model": model, "texts": texts}, model)


def embeddings_target(body: Mapping[str, Any]) -> Target:
    """The legacy `POST /api/embeddings` (one ``prompt``) as embed."""
    model = _model(body)
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise BadRequest(
            f"field 'prompt' must be the text to embed (a non-empty string), got {prompt!r}"
        )
    return Target("embed", {"op": "embed", "model": model, "texts": [prompt]}, model)


def show_name(body: Mapping[str, Any]) -> str:
    """The model `POST /api/show` asks about: ``model``, or the older ``name``."""
    return _model({"model": body.get("model") or body.get("name")})


def require_installed(name: str, facts: Mapping[str, Any]) -> None:
    """NotFound naming the models there are, unless `name` is among `facts`' installed."""
    installed = sorted(m["name"] for m in facts.get("installed", []))
    if name not in installed:
        raise NotFound(f"model {name!r} is not installed; models: {installed}")


def show_body(facts: Mapping[str, Any], card: Mapping[str, Any]) -> bytes:
    """`POST /api/show`: what the box knows of a model: `card` (the llm service's ``show``
    reply: what the model's file says) and `facts` (its ``models`` reply)."""
    embedding = card.get("kind") != "gguf"  # the box's other kind: ONNX sentence encoders
    arch = card.get("architecture") or "aether"
    info: dict[str, Any] = {"general.architecture": arch}
    # The context a request gets here (engines.n_ctx), else the trained one: clients size
    # their prompts by it.
    context = (facts.get("n_ctx") if not embedding else None) or card.get("context_length")
    if context:
        info[f"{arch}.context_length"] = context
    if card.get("dim"):
        info[f"{arch}.embedding_length"] = card["dim"]
    # Any model the box generates with can call tools: the gateway holds its reply to them.
    capabilities = ["embedding"] if embedding else ["completion", "tools"]
    body = {
        "modelfile": "",
        "parameters": f"num_ctx {facts['n_ctx']}" if facts.get("n_ctx") and not embedding else "",
        "template": card.get("chat_template", ""),
        "details": _details(card),
        "model_info": info,
        "capabilities": capabilities,
        "modified_at": EPOCH,
    }
    return orjson.dumps(body)


def ps_body(facts: Mapping[str, Any]) -> bytes:
    """`GET /api/ps`: the models loaded now, one entry per name (its instances added up)."""
    installed = {m["name"]: m for m in facts.get("installed", [])}
    models: dict[str, dict[str, Any]] = {}
    for loaded in facts.get("loaded", []):
        name = loaded["name"]
        size = int(loaded.get("memory_mb", 0) * 2**20)
        vram = size if loaded.get("device", "cpu") != "cpu" else 0
        entry = models.setdefault(
            name,
            {
                "name": name,
                "model": name,
                "size": 0,
                "size_vram": 0,
                "digest": "",
                "details": _details(installed.get(name, {"kind": loaded.get("kind", "")})),
            },
        )
        entry["size"] += size
        entry["size_vram"] += vram
    return orjson.dumps({"models": list(models.values())})


def tags_body(installed: list[dict[str, Any]]) -> bytes:
    """`GET /api/tags`: the installed models, in Ollama's shape."""
    models = [
        {
            "name": m["name"],
            "model": m["name"],
            "modified_at": EPOCH,
            "size": int(m.get("size_mb", 0) * 2**20),
            "digest": "",
            "details": _details(m),
        }
        for m in installed
    ]
    return orjson.dumps({"models": models})


def _details(model: Mapping[str, Any]) -> dict[str, Any]:
    """Ollama's ``details`` of a model: its format, and what its card says (`/api/show`;
    the lists leave them empty rather than read every file)."""
    family = model.get("architecture", "")
    return {
        "format": model.get("kind", ""),
        "family": family,
        "families": [family] if family else None,
        "parameter_size": model.get("size_label", ""),
        "quantization_level": model.get("quantization", ""),
    }


def _model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest(f"field 'model' must be a model name, got {model!r}")
    return model.removesuffix(":latest")  # Ollama clients add the tag; box models have none


def _stream(body: Mapping[str, Any]) -> bool:
    stream = body.get("stream", True)
    if not isinstance(stream, bool):
        raise BadRequest(f"field 'stream' must be true or false, got {stream!r}")
    return stream


def _options(body: Mapping[str, Any]) -> dict[str, Any]:
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise BadRequest("field 'options' must be an object")
    out = {k: options[k] for k in OPTIONS if options.get(k) is not None}
    predict = options.get("num_predict")
    if predict is not None and predict != -1:  # -1: until the model stops (box default)
        out["max_tokens"] = predict
    schema = _format_schema(body.get("format"))
    if schema is not None:
        out["json_schema"] = schema
    return out


def _format_schema(value: Any) -> dict[str, Any] | None:
    """The JSON schema Ollama's ``format`` asks for: ``"json"`` (an object, as Ollama's JSON
    mode), a schema, or nothing (``""`` or absent: free text)."""
    if value is None or value == "":
        return None
    if value == "json":
        return JSON_OBJECT
    if isinstance(value, dict):
        return value
    raise BadRequest(f"field 'format' must be \"json\" or a JSON schema (an object), got {value!r}")


def _line(obj: Mapping[str, Any]) -> bytes:
    return orjson.dumps(obj) + b"\n"


class _Reply:
    media_type = "application/x-ndjson"
    field = ""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.started = time.perf_counter()

    def _now(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def _text(self, text: str) -> dict[str, Any]:
        raise NotImplementedError

    def opening(self) -> bytes:
        return b""

    def piece(self, partial: Mapping[str, Any]) -> bytes:
        head = {"model": self.target.model, "created_at": self._now()}
        return _line({**head, **self._text(partial.get("token", "")), "done": False})

    def _done(self, final: Mapping[str, Any], text: str) -> dict[str, Any]:
        usage = final.get("usage") or {}
        completion = usage.get("completion_tokens", 0)
        rate = final.get("tokens_per_s") or 0
        done = {
            "model": self.target.model,
            "created_at": self._now(),
            **self._text(text),
            "done": True,
            "done_reason": final.get("finish_reason", "load" if "text" not in final else "stop"),
            "total_duration": int((time.perf_counter() - self.started) * 1e9),
            "load_duration": 0,
            "prompt_eval_count": usage.get("prompt_tokens", 0),
            "prompt_eval_duration": int((final.get("ttft_s") or 0) * 1e9),
            "eval_count": completion,
            "eval_duration": int(completion / rate * 1e9) if rate else 0,
        }
        return done

    def closing(self, final: Mapping[str, Any]) -> bytes:
        return _line(self._done(final, ""))

    def whole(self, final: Mapping[str, Any]) -> bytes:
        return orjson.dumps(self._done(final, final.get("text", "")))

    def error(self, exc: BoxError) -> bytes:
        return _line({"error": exc.message}) if self.target.stream else error_body(exc)


class ChatReply(_Reply):
    """With tools, streamed: a plain answer's text as it comes, a call in one line once whole."""

    def __init__(self, target: Target) -> None:
        super().__init__(target)
        self.answer = AnswerStream() if target.tools is not None else None

    def piece(self, partial: Mapping[str, Any]) -> bytes:
        if self.answer is None:
            return super().piece(partial)
        text = self.answer.feed(partial.get("token", ""))
        return super().piece({"token": text}) if text else b""

    def _text(self, text: str) -> dict[str, Any]:
        return {"message": {"role": "assistant", "content": text}}

    def _message(self, final: Mapping[str, Any]) -> dict[str, Any]:
        """A tools reply's message: the call, or the answer (the raw text if cut short)."""
        text = final.get("text", "")
        assert self.target.tools is not None
        reading = read_reply(self.target.tools, text)
        if reading is None or reading.name is None:
            content = text if reading is None else reading.content
            return {"role": "assistant", "content": content}
        call = {"function": {"name": reading.name, "arguments": orjson.loads(reading.arguments)}}
        return {"role": "assistant", "content": "", "tool_calls": [call]}

    def closing(self, final: Mapping[str, Any]) -> bytes:
        if self.answer is None or self.answer.answering:  # all its text has gone out
            return super().closing(final)
        head = {"model": self.target.model, "created_at": self._now()}
        call_or_answer = _line({**head, "message": self._message(final), "done": False})
        return call_or_answer + super().closing(final)

    def whole(self, final: Mapping[str, Any]) -> bytes:
        if self.target.tools is None:
            return super().whole(final)
        return orjson.dumps({**self._done(final, ""), "message": self._message(final)})


class GenerateReply(_Reply):
    def _text(self, text: str) -> dict[str, Any]:
        return {"response": text}


class EmbedReply(WholeReply):
    """Ollama's /api/embed answer: every vector as a list of floats."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.started = time.perf_counter()

    def error(self, exc: BoxError) -> bytes:
        return error_body(exc)

    def whole(self, final: Mapping[str, Any]) -> bytes:
        vectors = np.asarray(final["vectors"], dtype=np.float32)
        body = {
            "model": self.target.model,
            "embeddings": list(vectors),
            "total_duration": int((time.perf_counter() - self.started) * 1e9),
        }
        return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


class EmbeddingsReply(EmbedReply):
    """The legacy /api/embeddings answer: the one vector, as ``{"embedding": [...]}``."""

    def whole(self, final: Mapping[str, Any]) -> bytes:
        vector = np.asarray(final["vectors"], dtype=np.float32)[0]
        return orjson.dumps({"embedding": vector}, option=orjson.OPT_SERIALIZE_NUMPY)
