"""The OpenAI API on the bus: request bodies to bus bodies, bus replies to OpenAI's shapes.

Routes (see aether_box.gateway.app): ``GET /v1/models`` (and ``/v1/models/{id}``), ``POST
/v1/chat/completions``, ``POST /v1/completions``, ``POST /v1/embeddings``. Sampling fields map
one to one onto the llm service's (``max_tokens`` or ``max_completion_tokens``,
``temperature``, ``top_p``, ``seed``, ``stop``, and the box's own ``top_k`` and ``min_p``);
``response_format`` (``json_object``, or ``json_schema`` with its ``schema``) becomes the llm
service's ``json_schema``, so the reply is JSON that fits it; other fields are ignored, as
OpenAI ignores what it does not know. Box extras: ``model: "router"`` routes by meaning
(the router service), ``session: "<id>"`` continues a box session (the session service:
only the newest user message is sent, the box keeps the history), and ``adapters: [{"name",
"scale"?, "force"?}]`` runs the request with LoRA adapters kept by the box (passed to the llm
service as they are; a session or a route names its own default adapters instead).
``tools`` and ``tool_choice`` (function calling) become a ``json_schema`` too, and the reply
is read back into ``tool_calls``: see aether_box.gateway.tools.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from aether_box.errors import BadRequest, BoxError, NotFound
from aether_box.gateway.exchange import WholeReply, http_status
from aether_box.gateway.tools import (
    AnswerStream,
    ToolPlan,
    history_message,
    read_reply,
    tool_call,
    tool_plan,
    with_system_note,
)

__all__ = [
    "ChatReply",
    "CompletionReply",
    "EmbeddingsReply",
    "Encoding",
    "Target",
    "adapters_field",
    "chat_target",
    "completion_target",
    "embeddings_target",
    "error_body",
    "model_body",
    "models_body",
]

ROUTER_MODEL = "router"
SAMPLING = ("temperature", "top_p", "top_k", "min_p", "seed", "stop")
SSE_DONE = b"data: [DONE]\n\n"
# What `json_object` output (and Ollama's `format: "json"`) is held to: any JSON object.
JSON_OBJECT: dict[str, Any] = {"type": "object"}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


@dataclass
class Target:
    """Where a request goes on the bus, and what the reply needs to know."""

    service: str
    body: dict[str, Any]
    model: str  # as the client named it (checked against the key's models)
    stream: bool = False
    include_usage: bool = False
    tools: ToolPlan | None = None  # a chat whose reply is read back as a tool call


def error_body(exc: BoxError, param: str | None = None) -> bytes:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    status = http_status(exc)
    kind = _ERROR_TYPES.get(status, "server_error")
    error = {"message": exc.message, "type": kind, "param": param, "code": exc.code}
    return orjson.dumps({"error": error})


# -- requests ----------------------------------------------------------------------------


def chat_target(body: Mapping[str, Any]) -> Target:
    """`POST /v1/chat/completions` as a bus call: llm chat, router chat or session say."""
    model = _field(body, "model", str)
    messages = _messages(body.get("messages"))
    stream, include_usage = _stream(body)
    sampling = _sampling(body)
    plan = tool_plan(body)
    if plan is not None:
        target = Target("llm", {}, model, stream, include_usage, plan)
        return _tools_target(body, target, messages, sampling)
    session = body.get("session")
    if session is not None:
        if not isinstance(session, str):
            raise BadRequest(f"field 'session' must be a session id (a string), got {session!r}")
        users = [m for m in messages if m["role"] == "user"]
        if not users:
            raise BadRequest("a session continues with a user message; none was sent")
        _no_adapters(body, "a session uses the adapters it was created with")
        say = {"op": "say", "session": session, "text": users[-1]["content"], **sampling}
        return Target("session", {**say, "stream": stream}, model, stream, include_usage)
    if model == ROUTER_MODEL:
        _no_adapters(body, "a route names its own adapters")
        chat = {"op": "chat", "messages": messages, **sampling, "stream": stream}
        return Target("router", chat, model, stream, include_usage)
    chat = {"op": "chat", "model": model, "messages": messages, **sampling, "stream": stream}
    return Target("llm", chat | adapters_field(body), model, stream, include_usage)


def _tools_target(
    body: Mapping[str, Any],
    target: Target,
    messages: list[dict[str, str]],
    sampling: dict[str, Any],
) -> Target:
    """`target` (with its tool plan) given its llm chat body, the reply held to the plan's
    schema (streamed: a plain answer's text as it comes, a call once whole; see ChatReply)."""
    plan = target.tools
    assert plan is not None
    if body.get("session") is not None or target.model == ROUTER_MODEL:
        where = "a box session" if body.get("session") is not None else "the router"
        raise BadRequest(
            f"field 'tools' cannot be used with {where} (its reply is not held to the tools); "
            "name a model and send the conversation's messages"
        )
    if "json_schema" in sampling:
        raise BadRequest(
            "send 'tools' or a JSON 'response_format', not both: the reply is held to one schema"
        )
    chat = {
        "op": "chat",
        "model": target.model,
        "messages": with_system_note(messages, plan.prompt()),
        **sampling,
        "json_schema": plan.schema,
        "stream": target.stream,
    }
    target.body = chat | adapters_field(body)
    return target


def completion_target(body: Mapping[str, Any]) -> Target:
    """`POST /v1/completions` as llm complete (one prompt)."""
    model = _field(body, "model", str)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequest("field 'prompt' must be a string (or a list of exactly one string)")
    stream, include_usage = _stream(body)
    complete = {"op": "complete", "model": model, "prompt": prompt, **_sampling(body)}
    complete |= adapters_field(body)
    return Target("llm", {**complete, "stream": stream}, model, stream, include_usage)


@dataclass
class Encoding:
    """How an embeddings answer is written: as base64 or floats, and the size it must be."""

    as_base64: bool = False
    dimensions: int | None = None  # the size the client asked for (None: the model's)


def embeddings_target(body: Mapping[str, Any]) -> tuple[Target, Encoding]:
    """`POST /v1/embeddings` as embed, and how its vectors go back."""
    model = _field(body, "model", str)
    texts = body.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise BadRequest(
            "field 'input' must be a string or a list of strings (token arrays are not "
            "supported: send the text)"
        )
    if not texts:  # OpenAI's 400 too; an empty list back would break the client's parsing
        raise BadRequest("field 'input' is an empty list: send at least one text")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise BadRequest(f"field 'encoding_format' must be 'float' or 'base64', got {encoding!r}")
    dimensions = body.get("dimensions")
    if dimensions is not None and (
        not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1
    ):
        raise BadRequest(f"field 'dimensions' must be a positive integer, got {dimensions!r}")
    target = Target("embed", {"op": "embed", "model": model, "texts": texts}, model)
    return target, Encoding(encoding == "base64", dimensions)


def models_body(names: list[str]) -> bytes:
    """`GET /v1/models`: the models a client may name."""
    return orjson.dumps({"object": "list", "data": [_model(n) for n in names]})


def model_body(name: str, names: list[str]) -> bytes:
    """`GET /v1/models/{name}` (the client's `models.retrieve`): one of `names`, or 404."""
    if name not in names:
        raise NotFound(f"model {name!r} is not one this box serves to you; models: {names}")
    return orjson.dumps(_model(name))


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "aether-box"}


def _field(body: Mapping[str, Any], key: str, kind: type) -> Any:
    value = body.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BadRequest(f"field {key!r} must be a {kind.__name__}, got {value!r}")
    return value


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise BadRequest("field 'messages' must be a non-empty list of {role, content} objects")
    out: list[dict[str, str]] = []
    calls: dict[str, str] = {}  # tool call ids seen so far, to name the tool in its result
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"messages[{i}] must be an object with a string 'role'")
        content = message.get("content")
        if isinstance(content, list):  # content parts: the text ones, joined
            texts = [p.get("text") if isinstance(p, dict) else None for p in content]
            if not all(isinstance(t, str) for t in texts):
                raise BadRequest(f"messages[{i}].content: only text parts are supported")
            content = "".join(t for t in texts if isinstance(t, str))
        elif content is None:
            content = ""
        if not isinstance(content, str):
            raise BadRequest(f"messages[{i}].content must be a string or a list of text parts")
        out.append(history_message(message, content, calls))
    return out


def _stream(body: Mapping[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise BadRequest(f"field 'stream' must be true or false, got {stream!r}")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise BadRequest("field 'stream_options' must be an object")
    n = body.get("n")
    if n is not None and n != 1:
        raise BadRequest(f"field 'n' must be 1 (one choice per request), got {n!r}")
    return stream, bool(options.get("include_usage"))


def adapters_field(body: Mapping[str, Any]) -> dict[str, Any]:
    """``{"adapters": [...]}`` for the llm service when the request names adapters (the
    service checks each one), else nothing."""
    adapters = body.get("adapters")
    if adapters is None:
        return {}
    if not isinstance(adapters, list):
        raise BadRequest(
            f'field \'adapters\' must be a list of {{"name", "scale"?}} objects, got {adapters!r}'
        )
    return {"adapters": adapters}


def _no_adapters(body: Mapping[str, Any], why: str) -> None:
    if body.get("adapters") is not None:
        raise BadRequest(f"field 'adapters' does not apply here: {why}; name a model instead")


def _sampling(body: Mapping[str, Any]) -> dict[str, Any]:
    """The sampling fields the llm service takes (it checks their types and ranges)."""
    out = {k: body[k] for k in SAMPLING if body.get(k) is not None}
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    if max_tokens is not None:
        out["max_tokens"] = max_tokens
    schema = _response_schema(body.get("response_format"))
    if schema is not None:
        out["json_schema"] = schema
    return out


def _response_schema(value: Any) -> dict[str, Any] | None:
    """The JSON schema a ``response_format`` asks for (None for free text). Structured output
    is a promise the client parses by: ignoring it would hand back prose it cannot read."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return JSON_OBJECT
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema", JSON_OBJECT) if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise BadRequest(
                "field 'response_format.json_schema' must be an object with a 'schema' "
                f"(a JSON schema), got {spec!r}"
            )
        return schema
    raise BadRequest(
        'field \'response_format\' must be {"type": "text"}, {"type": "json_object"} '
        f'or {{"type": "json_schema", "json_schema": {{"schema": ...}}}}, got {value!r}'
    )


# -- replies -----------------------------------------------------------------------------


def _usage(final: Mapping[str, Any]) -> dict[str, int]:
    usage = final.get("usage") or {}
    prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _sse(chunk: Mapping[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


class _Stream:
    """What chat and completion replies share: ids, the SSE framing, the usage chunk."""

    media_type = "text/event-stream"
    object = ""
    prefix = ""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.id = self.prefix + secrets.token_hex(12)
        self.created = int(time.time())

    def _chunk(self, choices: list[dict[str, Any]], model: str | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": model or self.target.model,
            "choices": choices,
        }
        if self.target.include_usage:
            chunk["usage"] = None  # as OpenAI: present, null, until the last chunk
        return chunk

    def _end(self, final: Mapping[str, Any], choice: dict[str, Any]) -> bytes:
        model = final.get("model") or self.target.model
        out = _sse(self._chunk([choice], model))
        if self.target.include_usage:
            out += _sse({**self._chunk([], model), "usage": _usage(final)})
        return out + SSE_DONE

    def error(self, exc: BoxError) -> bytes:
        body = error_body(exc)
        return b"data: " + body + b"\n\n" if self.target.stream else body


class ChatReply(_Stream):
    """`chat.completion` and its chunks."""

    object = "chat.completion.chunk"
    prefix = "chatcmpl-"

    def __init__(self, target: Target) -> None:
        super().__init__(target)
        self.answer = AnswerStream() if target.tools is not None else None

    def opening(self) -> bytes:
        # With tools, as OpenAI: no content yet (the reply may be a call).
        delta = {"role": "assistant", "content": None if self.target.tools else ""}
        return _sse(self._chunk([{"index": 0, "delta": delta, "finish_reason": None}]))

    def piece(self, partial: Mapping[str, Any]) -> bytes:
        text = partial.get("token", "")
        if self.answer is not None:  # with tools: only a plain answer's text, as it comes
            text = self.answer.feed(text)
            if not text:
                return b""
        delta = {"content": text}
        return _sse(self._chunk([{"index": 0, "delta": delta, "finish_reason": None}]))

    def closing(self, final: Mapping[str, Any]) -> bytes:
        if self.answer is None or self.answer.answering:  # all its text has gone out
            choice = {"index": 0, "delta": {}, "finish_reason": final.get("finish_reason", "stop")}
            return self._end(final, choice)
        # A call (or JSON cut short by max_tokens): one delta with it, then the end.
        message, finish = self._message(final)
        if message.get("tool_calls"):
            delta = {"tool_calls": [{"index": 0, **message["tool_calls"][0]}]}
        else:
            delta = {"content": message["content"]}
        piece = _sse(self._chunk([{"index": 0, "delta": delta, "finish_reason": None}]))
        return piece + self._end(final, {"index": 0, "delta": {}, "finish_reason": finish})

    def _message(self, final: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
        """The assistant message and finish_reason: a tool call, or text."""
        text, finish = final.get("text", ""), final.get("finish_reason", "stop")
        plan = self.target.tools
        reading = read_reply(plan, text) if plan is not None else None
        if reading is None:  # no tools, or JSON cut short by max_tokens: the text as it is
            return {"role": "assistant", "content": text}, finish
        if reading.name is None:
            return {"role": "assistant", "content": reading.content}, finish
        call = tool_call(reading.name, reading.arguments)
        return {"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls"

    def whole(self, final: Mapping[str, Any]) -> bytes:
        message, finish = self._message(final)
        reply: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": final.get("model") or self.target.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": _usage(final),
        }
        for extra in ("session", "route"):  # the box's own: which session, which route
            if extra in final:
                reply[extra] = final[extra]
        return orjson.dumps(reply)


class CompletionReply(_Stream):
    """`text_completion`, streamed or whole."""

    object = "text_completion"
    prefix = "cmpl-"

    def opening(self) -> bytes:
        return b""

    def piece(self, partial: Mapping[str, Any]) -> bytes:
        choice = {"index": 0, "text": partial.get("token", ""), "logprobs": None}
        return _sse(self._chunk([{**choice, "finish_reason": None}]))

    def closing(self, final: Mapping[str, Any]) -> bytes:
        choice = {"index": 0, "text": "", "logprobs": None}
        return self._end(final, {**choice, "finish_reason": final.get("finish_reason", "stop")})

    def whole(self, final: Mapping[str, Any]) -> bytes:
        choice = {"index": 0, "text": final.get("text", ""), "logprobs": None}
        return orjson.dumps(
            {
                "id": self.id,
                "object": "text_completion",
                "created": self.created,
                "model": final.get("model") or self.target.model,
                "choices": [{**choice, "finish_reason": final.get("finish_reason", "stop")}],
                "usage": _usage(final),
            }
        )


class EmbeddingsReply(WholeReply):
    """The `list` of `embedding` objects; vectors as floats or base64 little-endian float32."""

    def __init__(self, target: Target, encoding: Encoding) -> None:
        self.target = target
        self.encoding = encoding

    def error(self, exc: BoxError) -> bytes:
        return error_body(exc)

    def whole(self, final: Mapping[str, Any]) -> bytes:
        vectors = np.asarray(final["vectors"], dtype="<f4")
        asked, size = self.encoding.dimensions, vectors.shape[-1]
        if asked is not None and asked != size:
            # Cut vectors are only meaningful for models trained for it (OpenAI's 400 too);
            # a silent mismatch would surface later, in the app's vector store.
            raise BadRequest(
                f"model {final.get('model')!r} makes {size}-dimensional vectors and cannot "
                f"shorten them to {asked}: leave 'dimensions' out, or send {size}"
            )
        if self.encoding.as_base64:
            rows: list[Any] = [base64.b64encode(row.tobytes()).decode() for row in vectors]
        else:
            rows = list(vectors)  # orjson writes numpy rows directly
        data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)]
        # The embed service does not count tokens: usage says 0 rather than guess.
        usage = {"prompt_tokens": 0, "total_tokens": 0}
        body = {"object": "list", "data": data, "model": final.get("model"), "usage": usage}
        return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
