"""The `orchestrate` service: do a task with tools; pick by meaning, fill under the schema.

Request: ``{"task", "tools"?: [names], "model"?, "max_steps"?, "session"?, "answer"?,
"max_tokens"?}``. The task is split into steps ("... and then ...", "...; ..."), at most
``max_steps`` (default ``tools.max_steps``). For each step:

1. pick the tool by meaning: MiniLM cosine between the step and each tool's description and
   examples (aether_box.tools.select, the router's machinery); below ``tools.min_score``
   (a floor fitted on bench/data/tools_suite.json) the step needs no tool;
2. the model fills the tool's arguments under its JSON Schema, as a grammar (llm's
   ``json_schema``), so the JSON always parses and fits; the tools service checks it again;
3. the tool is called and the step streams as a PARTIAL ``{"step", "tool", "arguments",
   "result"}`` (``"failed": {"code", "message"}`` instead of ``"result"`` when the call
   failed; ``"blocked"`` when the safety rule kept a tool out).

Then the model answers with the results in its prompt. FINAL: ``{"answer", "steps",
"model"}`` (``answer`` is omitted with ``"answer": false``). With ``session``, the task, each
step and the answer are kept in that session's history.

``{"op": "select", "task", "tools"?}`` only picks: ``{"tool", "score", "scores", "no_tool"}``
(``no_tool``: the task's best cosine with ``tools.no_tool_examples``).

Safety: once a private tool's result (memory, sessions) is in the task's context, a step
that picks a tool that sends data out is blocked (and says so), unless
``tools.allow_private_send`` is true.
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar

import anyio
import anyio.abc

from aether_box.bus.service import Request, require
from aether_box.context import BoxContext
from aether_box.contract import ToolCatalog
from aether_box.errors import BadRequest, BoxError, NotAllowed, NotFound, ServiceUnavailable
from aether_box.tools.select import NO_TOOL, ToolChooser
from aether_box.tools.settings import ToolsSettings
from aether_box.tools.spec import Tool

__all__ = ["OrchestratorComponent", "fill_schema", "split_task"]

# Where a task is cut into steps: "and then", "then", "after that", ";".
STEP_BREAK = re.compile(r"\s*(?:;|\band then\b|\bafter that\b|,?\s*\bthen\b)\s*", re.IGNORECASE)
FILL_TOKENS = 160  # enough for any filled schema: strings are capped below
STRING_CAP = 120
RESULT_CHARS = 1200  # of each tool result in the answer prompt
ANSWER_TOKENS = 128


def split_task(task: str, max_steps: int) -> list[str]:
    """The task's steps, in order; the last one keeps whatever is beyond `max_steps`."""
    parts = [p.strip(" ,.") for p in STEP_BREAK.split(task) if p and p.strip(" ,.")]
    if not parts:
        return [task]
    if len(parts) > max_steps:
        parts = [*parts[: max_steps - 1], " ".join(parts[max_steps - 1 :])]
    return parts


def fill_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema the model fills: the required properties (all, when none are), no others,
    strings capped so a reply always ends within FILL_TOKENS."""
    properties = schema.get("properties", {})
    names = schema.get("required") or list(properties)
    kept = {}
    for name in names:
        spec = dict(properties.get(name, {}))
        spec.pop("title", None)
        spec.pop("default", None)
        if spec.get("type") == "string" and "enum" not in spec:
            spec["maxLength"] = min(int(spec.get("maxLength", STRING_CAP)), STRING_CAP)
        kept[name] = spec
    # What its properties' "$ref"s point at (pydantic and MCP SDK schemas nest models so).
    defs: dict[str, Any] = {k: schema[k] for k in ("$defs", "definitions") if k in schema}
    return {
        "type": "object",
        "properties": kept,
        "required": list(kept),
        "additionalProperties": False,
        **defs,
    }


class OrchestratorComponent:
    """Serves `orchestrate`; see the module docstring."""

    name: ClassVar[str] = "orchestrate"
    settings_class: ClassVar[type | None] = None  # reads [tools]

    def __init__(self, ctx: BoxContext) -> None:
        self.ctx = ctx
        self.settings = ctx.config.get(ToolsSettings)
        self.chooser = ToolChooser(ctx.call, self.settings.embed_model)
        self.runs = 0
        self.steps = 0
        self.no_tool = 0

    async def serve(
        self,
        ctx: BoxContext,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        ctx.add_service("orchestrate", self.handle)
        task_status.started()

    def status_section(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "steps": self.steps,
            "no_tool_steps": self.no_tool,
            "min_score": self.settings.min_score,
        }

    async def handle(self, request: Request) -> dict[str, Any]:
        op = request.body.get("op", "run")
        if op == "select":
            return await self.select(request)
        if op == "run":
            return await self.run(request)
        raise NotFound(f"orchestrate has no op {op!r}; ops: ['run', 'select']")

    # ----------------------------------------------------------------- choosing

    def _candidates(self, body: dict[str, Any]) -> list[Tool]:
        catalog = self.ctx.get(ToolCatalog)
        if catalog is None:
            raise ServiceUnavailable("no tools component runs in this box")
        if not self.settings.enabled:
            raise NotAllowed("tools are off; set [tools] enabled = true in config.toml")
        tools = catalog.callable_tools()
        names = body.get("tools")
        if names is not None:
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise BadRequest("field 'tools' must be a list of tool names")
            known = {t.name for t in tools}
            unknown = sorted(set(names) - known)
            if unknown:
                raise NotFound(f"no callable tools {unknown}; see `aether-box tools list`")
            tools = [t for t in tools if t.name in names]
        return tools

    async def select(self, request: Request) -> dict[str, Any]:
        task = require(request.body, "task", str)
        tools = self._candidates(request.body)
        tool, score, scores = await self.chooser.rank(
            task, tools, self.settings.min_score, self.settings.no_tool_examples
        )
        no_tool_score = scores.pop(NO_TOOL, None)
        return {"tool": tool or None, "score": score, "scores": scores, "no_tool": no_tool_score}

    # ----------------------------------------------------------------- running

    async def run(self, request: Request) -> dict[str, Any]:
        body = request.body
        task = require(body, "task", str)
        if not task.strip():
            raise BadRequest("field 'task' is empty")
        model = body.get("model", self.settings.model)
        max_steps = body.get("max_steps", self.settings.max_steps)
        if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 1:
            raise BadRequest("field 'max_steps' must be a whole number of at least 1")
        session = body.get("session")
        if session is not None and not isinstance(session, str):
            raise BadRequest("field 'session' must be a session id")
        candidates = self._candidates(body)
        if session is not None:
            # A NotFound now, before any tool runs, not after the calls (and what they did).
            await self.ctx.call("session", {"op": "history", "session": session})
        catalog = self.ctx.get(ToolCatalog)
        assert catalog is not None
        self.runs += 1
        steps: list[dict[str, Any]] = []
        private_seen = False
        for number, part in enumerate(split_task(task, max_steps), start=1):
            name, score, _ = await self.chooser.rank(
                part, candidates, self.settings.min_score, self.settings.no_tool_examples
            )
            if name == NO_TOOL:
                self.no_tool += 1
                continue
            tool = next(t for t in candidates if t.name == name)
            if private_seen and tool.effect == "send" and not self.settings.allow_private_send:
                step = {"step": number, "tool": name, "score": score, "arguments": {}}
                step["blocked"] = (
                    "it sends data out and this task holds private data; set "
                    "tools.allow_private_send = true to allow it"
                )
            else:
                arguments = await self._fill(model, part, tool, steps)
                step = {"step": number, "tool": name, "score": score, "arguments": arguments}
                try:
                    step["result"] = await catalog.call_tool(name, arguments)
                    private_seen = private_seen or tool.private
                except BoxError as exc:
                    # Not "error": a partial reply with an "error" is the request's own failure.
                    step["failed"] = exc.to_wire()["error"]
                self.steps += 1
            steps.append(step)
            await request.partial(step)
        reply: dict[str, Any] = {"steps": steps, "model": model}
        if body.get("answer", True):
            reply["answer"] = await self._answer(model, task, steps, body)
        if session is not None:
            await self._keep(session, task, steps, reply.get("answer"))
        return reply

    async def _fill(
        self, model: str, task: str, tool: Tool, earlier: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """The tool's arguments for `task`, written by the model under the schema's grammar
        (earlier steps' results in its prompt, so a step can use them)."""
        schema = fill_schema(tool.schema)
        if not schema["properties"]:
            return {}
        fields = ", ".join(schema["properties"])
        results = _results_text(earlier)
        if results:
            task = f"{task}\n\nEarlier results:\n{results}"
        messages = [
            {
                "role": "system",
                "content": f"Fill in the arguments ({fields}) of the tool {tool.name}: "
                f"{tool.description} Copy values from the request. Reply with JSON only.",
            },
            {"role": "user", "content": task},
        ]
        reply = await self.ctx.call(
            "llm",
            {
                "op": "chat",
                "model": model,
                "messages": messages,
                "json_schema": schema,
                "temperature": 0.0,
                "max_tokens": FILL_TOKENS,
            },
        )
        try:
            filled = json.loads(reply["text"])
        except ValueError:  # cut short by max_tokens: send what parsed, the check says why
            return {"_unfinished": reply["text"]}
        return filled if isinstance(filled, dict) else {}

    async def _answer(
        self, model: str, task: str, steps: list[dict[str, Any]], body: dict[str, Any]
    ) -> str:
        results = _results_text(steps)
        content = f"{task}\n\nTool results:\n{results}" if results else task
        messages = [
            {"role": "system", "content": "Answer the request briefly, using the tool results."},
            {"role": "user", "content": content},
        ]
        max_tokens = body.get("max_tokens", ANSWER_TOKENS)
        reply = await self.ctx.call(
            "llm",
            {
                "op": "chat",
                "model": model,
                "messages": messages,
                "max_tokens": max_tokens,
                "temperature": 0.0,
                "repeat_penalty": 1.3,  # a tiny model loops without it
            },
        )
        return str(reply["text"]).strip()

    async def _keep(
        self, session: str, task: str, steps: list[dict[str, Any]], answer: str | None
    ) -> None:
        messages = [{"role": "user", "content": task}]
        messages += [
            {"role": "tool", "content": json.dumps(step, ensure_ascii=False, default=str)}
            for step in steps
        ]
        if answer is not None:
            messages.append({"role": "assistant", "content": answer})
        await self.ctx.call("session", {"op": "append", "session": session, "messages": messages})


def _results_text(steps: list[dict[str, Any]]) -> str:
    """The steps' outcomes as prompt lines: "- tool returned: {...}"."""
    lines = []
    for step in steps:
        outcome = step.get("result", step.get("failed", step.get("blocked")))
        text = json.dumps(outcome, ensure_ascii=False, default=str)[:RESULT_CHARS]
        lines.append(f"- {step['tool']} returned: {text}")
    return "\n".join(lines)
