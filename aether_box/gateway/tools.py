"""OpenAI function calling on the llm service's schema-constrained generation.

A chat request's ``tools`` and ``tool_choice`` become one ``json_schema`` for the llm service
(no engine of its own): a named function's ``parameters`` (the reply is its arguments);
``"required"``: any of ``{"name": N, "arguments": parameters_N}``; ``"auto"`` (the default
with tools): those, or ``{"content": "..."}``, a plain answer. A short list of the tools goes
into the system prompt so the model's choice is informed. The reply's JSON is then read back
into OpenAI's ``tool_calls`` (one call: ``parallel_tool_calls`` is taken as false) or into
ordinary content; streamed, a plain answer's text goes out as it is written (AnswerStream),
a call once it is whole. Earlier turns' calls and results (assistant ``tool_calls``, role ``tool``)
are written as text any chat template takes: the call as the same JSON, the result as a user
turn. Ollama's ``/api/chat`` uses the same plan ("auto": it has no ``tool_choice``) and reading
(see aether_box.gateway.ollama).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from aether_box.errors import BadRequest

__all__ = [
    "AnswerStream",
    "ToolPlan",
    "ToolReading",
    "history_message",
    "read_reply",
    "tool_call",
    "tool_plan",
    "with_system_note",
]

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names
_NO_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}}
_ANSWER: dict[str, Any] = {
    "type": "object",
    "properties": {"content": {"type": "string"}},
    "required": ["content"],
}
# How a plain answer's JSON opens; the grammar allows one space around each token.
_ANSWER_OPENING = re.compile(r'\s*\{\s*"content"\s*:\s*"')
_HIGH_SURROGATE = re.compile(r"\\u[dD][89abAB]")
_DESCRIPTION_CHARS = 200  # per tool in the system prompt: a tiny model's context is small
_TOOL_SHAPE = '{"type": "function", "function": {"name", "description"?, "parameters"?}}'


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class ToolPlan:
    """What a request's tools ask of the model: the schema, and how to read its reply."""

    tools: tuple[Tool, ...]
    mode: str  # "auto", "required", or "named" (a call to `name`)
    schema: dict[str, Any]  # the llm service's json_schema
    name: str = ""

    @property
    def named(self) -> bool:
        return self.mode == "named"

    def prompt(self) -> str:
        """The system prompt's note on the tools: what there is, and how to answer."""
        lines = ["You can call these tools:"]
        lines += [f"- {_signature(t)}" for t in self.tools]
        if self.named:
            lines.append(f"Call {self.name} now: answer with its arguments as a JSON object.")
        else:
            lines.append('To call a tool, answer {"name": tool, "arguments": {...}}.')
            if self.mode == "auto":
                lines.append('To answer without a tool, answer {"content": "your answer"}.')
        return "\n".join(lines)


def tool_plan(body: Mapping[str, Any]) -> ToolPlan | None:
    """The request's tool plan; None when it has no tools or ``tool_choice`` is "none"."""
    tools = _tools(body.get("tools"))
    choice = body.get("tool_choice")
    if not tools:
        if choice not in (None, "none", "auto"):
            raise BadRequest(
                f"field 'tool_choice' is {choice!r} but no 'tools' were sent: send the tools, "
                "or leave 'tool_choice' out"
            )
        return None
    mode, name = _choice(choice, tools)
    if mode == "none":
        return None
    if mode == "named":
        (tool,) = [t for t in tools if t.name == name]
        return ToolPlan(tools, mode, tool.parameters, name)
    calls = [_call_schema(t) for t in tools]
    options = calls + [_ANSWER] if mode == "auto" else calls
    return ToolPlan(tools, mode, {"anyOf": options})


@dataclass(frozen=True)
class ToolReading:
    """A constrained reply read back: a call (name and arguments as JSON text) or content."""

    name: str | None = None
    arguments: str = ""
    content: str | None = None


def read_reply(plan: ToolPlan, text: str) -> ToolReading | None:
    """The call or answer in `text`; None when it is not the JSON asked for (cut short by
    max_tokens: the caller hands the raw text back with finish_reason "length")."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict):
        return None
    if plan.named:
        return ToolReading(plan.name, orjson.dumps(value).decode())
    if isinstance(value.get("name"), str) and isinstance(value.get("arguments"), dict):
        return ToolReading(value["name"], orjson.dumps(value["arguments"]).decode())
    if isinstance(value.get("content"), str):
        return ToolReading(content=value["content"])
    return None


class AnswerStream:
    """A tools reply read as it is generated: once it opens as a plain answer
    (``{"content": "...``), its text comes out token by token, as a chat without tools does;
    a call comes out only when whole (read_reply)."""

    def __init__(self) -> None:
        self.text = ""  # all the reply so far
        self.answering = False  # it opened as a plain answer
        self._next = 0  # where the answer's text not yet given out starts in `text`
        self._closed = False  # the answer's closing quote was read

    def feed(self, token: str) -> str:
        """The answer's text that `token` completes: '' for a call, or while undecided."""
        self.text += token
        if not self.answering:
            opened = _ANSWER_OPENING.match(self.text)
            if opened is None:
                return ""
            self.answering, self._next = True, opened.end()
        if self._closed:
            return ""
        end = self._complete_until()
        written, self._next = self.text[self._next : end], end
        # Escapes decoded as JSON does; a lone surrogate (\ud800) cannot go out as UTF-8.
        decoded: str = json.loads(f'"{written}"', strict=False)
        return decoded.encode("utf-8", "replace").decode()

    def _complete_until(self) -> int:
        """Where the answer's complete characters end: at its closing quote, or before an
        escape whose rest has not come yet."""
        text, at = self.text, self._next
        while at < len(text) and text[at] != '"':
            size = _escape_size(text, at) if text[at] == "\\" else 1
            if at + size > len(text):
                return at
            at += size
        self._closed = at < len(text)
        return at


def _escape_size(text: str, at: int) -> int:
    """The length of the escape at `at`; a high surrogate (\\ud83d) counts with the escape
    after it, its low half, as JSON decodes them together."""
    if text[at + 1 : at + 2] != "u":
        return 2
    if _HIGH_SURROGATE.match(text, at) and text[at + 6 : at + 8] in ("", "\\", "\\u"):
        return 12
    return 6


def tool_call(name: str, arguments: str) -> dict[str, Any]:
    """One entry of OpenAI's ``tool_calls``, with a fresh id."""
    return {
        "id": "call_" + secrets.token_hex(12),
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def history_message(
    message: Mapping[str, Any], content: str, calls: dict[str, str]
) -> dict[str, str]:
    """An earlier turn as plain ``{role, content}``: an assistant's ``tool_calls`` as the JSON
    the model is asked to write, a ``tool`` (or legacy ``function``) result as a user turn
    (not every chat template knows a tool role, and one that refuses a role refuses
    the whole chat). Ollama's shapes too: a call's ``arguments`` as an object, a result
    named by ``tool_name``. `calls` maps call ids seen so far to function names; this adds
    to it."""
    role = message["role"]
    if role == "assistant" and message.get("tool_calls"):
        if not isinstance(message["tool_calls"], list):
            raise BadRequest(
                f"an assistant message's tool_calls must be a list, got {message['tool_calls']!r}"
            )
        written = [_written_call(call, calls) for call in message["tool_calls"]]
        return {"role": "assistant", "content": "\n".join([content, *written]).strip()}
    if role in ("tool", "function"):
        named = message.get("name") or message.get("tool_name") or "the tool"  # Ollama's
        name = calls.get(str(message.get("tool_call_id")), named)
        return {"role": "user", "content": f"Result of {name}: {content}"}
    return {"role": "system" if role == "developer" else role, "content": content}


def _written_call(call: Any, calls: dict[str, str]) -> str:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise BadRequest(
            'an assistant message\'s tool_calls must be [{"id", "type": "function", '
            f'"function": {{"name", "arguments"}}}}], got {call!r}'
        )
    if isinstance(call.get("id"), str):
        calls[call["id"]] = function["name"]
    arguments: Any = function.get("arguments") or "{}"
    try:
        arguments = orjson.loads(arguments) if isinstance(arguments, str) else arguments
    except orjson.JSONDecodeError:
        pass  # written as the client sent it
    return orjson.dumps({"name": function["name"], "arguments": arguments}).decode()


def _tools(value: Any) -> tuple[Tool, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise BadRequest(f"field 'tools' must be a list of {_TOOL_SHAPE}, got {value!r}")
    tools = tuple(_tool(i, t) for i, t in enumerate(value))
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        raise BadRequest(f"field 'tools' names a function twice ({names}): give each its own name")
    return tools


def _tool(i: int, value: Any) -> Tool:
    function = value.get("function") if isinstance(value, dict) else None
    if not isinstance(function, dict) or value.get("type", "function") != "function":
        raise BadRequest(f"tools[{i}] must be {_TOOL_SHAPE}, got {value!r}")
    name = function.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise BadRequest(
            f"tools[{i}].function.name must be the function's name (1 to 64 letters, digits, "
            f"_ or -), got {name!r}"
        )
    parameters = function.get("parameters", _NO_ARGUMENTS)
    if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
        raise BadRequest(
            f"tools[{i}].function.parameters must be a JSON schema of an object "
            f'({{"type": "object", "properties": {{...}}}}), got {parameters!r}'
        )
    description = function.get("description") or ""
    if not isinstance(description, str):
        raise BadRequest(f"tools[{i}].function.description must be a string")
    return Tool(name, description, {"type": "object", **parameters})


def _choice(value: Any, tools: tuple[Tool, ...]) -> tuple[str, str]:
    """(mode, the function's name when the mode is "named") of a ``tool_choice``."""
    names = [t.name for t in tools]
    if value is None:
        return "auto", ""
    if value in ("none", "auto", "required"):
        return str(value), ""
    function = value.get("function") if isinstance(value, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        raise BadRequest(
            'field \'tool_choice\' must be "none", "auto", "required" or '
            f'{{"type": "function", "function": {{"name": ...}}}}, got {value!r}'
        )
    if name not in names:
        raise BadRequest(f"field 'tool_choice' names {name!r}, not one of the tools {names}")
    return "named", name


def _call_schema(tool: Tool) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, "arguments": tool.parameters},
        "required": ["name", "arguments"],
    }


def _signature(tool: Tool) -> str:
    """``name(arg: type, opt?: type): description``, short."""
    properties = tool.parameters.get("properties")
    required = set(tool.parameters.get("required") or ())
    args = []
    for arg, spec in (properties if isinstance(properties, dict) else {}).items():
        kind = spec.get("type", "any") if isinstance(spec, dict) else "any"
        if isinstance(spec, dict) and "enum" in spec:
            kind = "|".join(orjson.dumps(v).decode() for v in spec["enum"])
        args.append(f"{arg}{'' if arg in required else '?'}: {kind}")
    description = tool.description[:_DESCRIPTION_CHARS]
    return f"{tool.name}({', '.join(args)})" + (f": {description}" if description else "")


def with_system_note(messages: list[dict[str, str]], note: str) -> list[dict[str, str]]:
    """`messages` with `note` at the end of the system prompt (a new one if there is none)."""
    if messages and messages[0]["role"] == "system":
        first = messages[0]
        return [{**first, "content": f"{first['content']}\n\n{note}".strip()}, *messages[1:]]
    return [{"role": "system", "content": note}, *messages]
