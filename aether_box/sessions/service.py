"""The `session` service: chat conversations that the box keeps.

Ops:
- ``create``: ``{"model", "system"?, "adapters"?, "pin"?}`` -> ``{"session", "model",
  "adapters", "pinned"}``; ``adapters`` (as for llm chat) are the session's default LoRA
  adapters, used by every ``say`` that names none of its own; ``pin: true`` keeps the model
  loaded for it (below).
- ``pin``: ``{"session", "pin": bool}`` -> ``{"session", "model", "pinned"}``. A pinned
  session's model is not unloaded by the tuner (idle or under memory pressure; the tuner's
  log records each skip) until the session is unpinned, deleted, or unused for
  ``sessions.pin_expiry_s``. Pins show in status (section "sessions").
- ``say``: ``{"session", "text", "stream"?, ...sampling as for llm chat}`` -> the llm chat
  reply plus ``{"session", "messages"}``; with ``stream``, PARTIAL ``{"token"}`` replies first.
  The model sees the system prompt and the newest messages that fit ``sessions.history_chars``.
- ``history``: ``{"session"}`` -> ``{"session", "model", "system", "messages": [{"role",
  "content", "at"}]}``; ``list`` -> ``{"sessions": [...]}``; ``delete``: ``{"session"}``.
- ``append``: ``{"session", "messages": [{"role", "content"}]}`` -> ``{"session", "messages"}``
  keeps messages another service made (an orchestrated task's steps), in one transaction.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import anyio
import anyio.abc

from aether_box.bus.service import OpService, Request, require, require_name
from aether_box.context import BoxContext
from aether_box.contract import Grid, ModelCatalog, ModelPins, PeerDirectory
from aether_box.engines.services import chat_for
from aether_box.errors import BadRequest
from aether_box.sessions.settings import SessionSettings
from aether_box.sessions.store import SessionStore

__all__ = ["SessionsComponent", "history_window"]

# Fields of a `say` request that are the session's, not sampling for the model.
OWN_FIELDS = ("op", "session", "text")


def history_window(messages: list[dict[str, Any]], chars: int) -> list[dict[str, Any]]:
    """The newest messages whose contents fit in `chars` (at least the newest one)."""
    kept: list[dict[str, Any]] = []
    used = 0
    for message in reversed(messages):
        used += len(message["content"])
        if kept and used > chars:
            break
        kept.append(message)
    return kept[::-1]


class SessionsComponent(OpService, ModelPins):
    """Serves `session`; the conversations live in sessions.db."""

    name: ClassVar[str] = "session"
    settings_class: ClassVar[type | None] = SessionSettings
    status_key: ClassVar[str] = "sessions"

    def __init__(self, ctx: BoxContext) -> None:
        self.ctx = ctx
        self.settings = ctx.config.get(SessionSettings)
        self._store: SessionStore | None = None
        self._db = anyio.CapacityLimiter(1)  # one connection: one call at a time
        # Pinned sessions, read without a database call: id -> (model, last used, wall-clock).
        self._pins: dict[str, tuple[str, float]] = {}

    async def serve(
        self,
        ctx: BoxContext,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        assert self.settings.file is not None
        self._store = await anyio.to_thread.run_sync(SessionStore, self.settings.file)
        pinned = await self._run(self._store.pinned)
        self._pins = {p["id"]: (p["model"], p["updated"]) for p in pinned}
        try:
            ctx.add_service("session", self)
            task_status.started()
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await self._run(self._store.close)

    async def _run(self, func: Any, *args: Any) -> Any:
        return await anyio.to_thread.run_sync(func, *args, limiter=self._db)

    @property
    def store(self) -> SessionStore:
        assert self._store is not None
        return self._store

    async def op_create(self, request: Request) -> dict[str, Any]:
        model = require_name(request.body, "model")
        system = require(request.body, "system", str) if "system" in request.body else None
        adapters = request.body.get("adapters") or []
        if not isinstance(adapters, list) or not all(
            isinstance(a, dict) and isinstance(a.get("name"), str) for a in adapters
        ):
            raise BadRequest('field \'adapters\' must be a list of {"name", "scale"?} maps')
        pin = _pin_field(request.body, False)
        await self._check_model(model)
        session = await self._run(self.store.create, model, system, adapters, pin)
        self._note_pin(session)
        return {"session": session["id"], "model": model, "adapters": adapters, "pinned": pin}

    async def op_pin(self, request: Request) -> dict[str, Any]:
        session_id = require_name(request.body, "session")
        pin = _pin_field(request.body, None)
        session = await self._run(self.store.pin, session_id, pin)
        self._note_pin(session)
        return {"session": session_id, "model": session["model"], "pinned": pin}

    def _note_pin(self, session: dict[str, Any]) -> None:
        if session["pinned"]:
            self._pins[session["id"]] = (session["model"], session["updated"])
        else:
            self._pins.pop(session["id"], None)

    def _live_pins(self) -> dict[str, tuple[str, float]]:
        """The pins that have not lapsed (sessions.pin_expiry_s after their last use)."""
        expiry = self.settings.pin_expiry_s
        now = time.time()
        return {
            ident: (model, used)
            for ident, (model, used) in self._pins.items()
            if not expiry or now - used < expiry
        }

    def pinned_by(self, model: str) -> list[str]:
        """The live sessions pinning `model` (see ModelPins)."""
        return sorted(ident for ident, (m, _) in self._live_pins().items() if m == model)

    def status_section(self) -> dict[str, Any]:
        """The "sessions" section of `status`: the live pins, by model and one by one."""
        expiry = self.settings.pin_expiry_s
        now = time.time()
        pins: list[dict[str, Any]] = []
        by_model: dict[str, list[str]] = {}
        for ident, (model, used) in sorted(self._live_pins().items()):
            pins.append(
                {
                    "session": ident,
                    "model": model,
                    "idle_s": round(now - used, 1),
                    "expires_in_s": round(expiry - (now - used), 1) if expiry else None,
                }
            )
            by_model.setdefault(model, []).append(ident)
        return {"pins": pins, "pinned_models": by_model, "pin_expiry_s": expiry}

    async def _check_model(self, model: str) -> None:
        """NotFound (saying what is installed) unless this box, a linked peer or a grid member
        has `model`."""
        models = self.ctx.get(ModelCatalog)
        if models is None or await models.has_model(model):
            return
        peers = self.ctx.get(PeerDirectory)
        if peers is not None and peers.peer_for_model("llm", model) is not None:
            return
        grid = self.ctx.get(Grid)
        if grid is not None and grid.places("llm", model):
            return
        await models.require_model(model)  # raises NotFound: what is installed, how to add

    async def op_say(self, request: Request) -> dict[str, Any]:
        body = request.body
        session_id = require_name(body, "session")
        text = require(body, "text", str)
        session = await self._run(self.store.get, session_id)
        history = await self._run(self.store.messages, session_id)
        messages = [{"role": m["role"], "content": m["content"]} for m in history]
        messages = history_window(
            [*messages, {"role": "user", "content": text}], self.settings.history_chars
        )
        if session["system"]:
            messages.insert(0, {"role": "system", "content": session["system"]})
        reply = await chat_for(
            self.ctx,
            request,
            session["model"],
            messages,
            OWN_FIELDS,
            session=session_id,
            adapters=session["adapters"],
        )
        # Only a finished reply is kept, together with the message it answers.
        turn = [("user", text), ("assistant", reply.get("text", ""))]
        count = await self._run(self.store.append, session_id, turn)
        if session_id in self._pins:  # used now: its pin's expiry starts again
            self._pins[session_id] = (session["model"], time.time())
        return {**reply, "session": session_id, "messages": count}

    async def op_history(self, request: Request) -> dict[str, Any]:
        session_id = require_name(request.body, "session")
        session = await self._run(self.store.get, session_id)
        messages = await self._run(self.store.messages, session_id)
        return {
            "session": session_id,
            "model": session["model"],
            "system": session["system"],
            "messages": messages,
        }

    async def op_append(self, request: Request) -> dict[str, Any]:
        session_id = require(request.body, "session", str)
        messages = require(request.body, "messages", list)
        turn = []
        for message in messages:
            if not (
                isinstance(message, dict)
                and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)
            ):
                raise BadRequest("each message must be a map with a role and a text content")
            turn.append((message["role"], message["content"]))
        await self._run(self.store.get, session_id)  # NotFound for an unknown session
        count = await self._run(self.store.append, session_id, turn)
        return {"session": session_id, "messages": count}

    async def op_list(self, request: Request) -> dict[str, Any]:
        return {"sessions": await self._run(self.store.list)}

    async def op_delete(self, request: Request) -> dict[str, Any]:
        session_id = require_name(request.body, "session")
        deleted = await self._run(self.store.delete, session_id)
        self._pins.pop(session_id, None)  # an ended session pins nothing
        return {"deleted": deleted}


def _pin_field(body: dict[str, Any], default: bool | None) -> bool:
    """The request's ``pin`` flag (required when `default` is None)."""
    pin = body.get("pin", default)
    if not isinstance(pin, bool):
        raise BadRequest(f"field 'pin' must be true or false, got {pin!r}")
    return pin
