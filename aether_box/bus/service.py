"""What an in-process service sees: one `Request`, and `OpService` to dispatch on ``op``."""

from __future__ import annotations

import reprlib
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio.from_thread

from aether_box.errors import BadRequest, NotFound

__all__ = [
    "MAX_NAME_CHARS",
    "Handler",
    "InlineHandler",
    "OpService",
    "PartialSender",
    "Request",
    "ThreadProgress",
    "require",
    "require_name",
    "shown",
]

# Names (models, sessions, peers, projectors) are short words: anything longer is a bad request,
# refused before it reaches a log line, a file name or a database.
MAX_NAME_CHARS = 256
# How much of a value a user sees quoted back in an error message.
SHOWN_CHARS = 80

_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = SHOWN_CHARS
_SHORT.maxlevel = 2

PartialSender = Callable[[Mapping[str, Any]], Awaitable[None]]


class Request:
    """One request to an in-process service: its body and a way to stream partial replies."""

    __slots__ = ("service", "body", "_send_partial")

    def __init__(self, service: str, body: dict[str, Any], send_partial: PartialSender) -> None:
        self.service = service
        self.body = body
        self._send_partial = send_partial

    async def partial(self, body: Mapping[str, Any]) -> None:
        """Send one PARTIAL reply; cancels the request if the client has gone away."""
        await self._send_partial(body)


class ThreadProgress:
    """PARTIAL replies from work running in a thread (`anyio.to_thread`), at most one every
    `every_s` seconds and always the last: a progress bar moves, the client is not flooded."""

    def __init__(self, request: Request, every_s: float = 0.5) -> None:
        self.request = request
        self.every_s = every_s
        self._sent = 0.0

    def __call__(self, body: Mapping[str, Any], *, last: bool = False) -> None:
        now = time.monotonic()
        if last or now - self._sent >= self.every_s:
            self._sent = now
            anyio.from_thread.run(self.request.partial, body)


Handler = Callable[[Request], Awaitable[Mapping[str, Any] | None]]
# A plain function run on the broker's receive loop; see Broker.add_service(inline=True).
InlineHandler = Callable[[Request], Mapping[str, Any] | None]


class OpService:
    """A service whose requests name an ``op``, each served by an ``op_<name>`` coroutine."""

    name: str = ""

    def ops(self) -> list[str]:
        """The ops this service answers."""
        return sorted(a[3:] for a in dir(self) if a.startswith("op_"))

    async def __call__(self, request: Request) -> Mapping[str, Any] | None:
        op = request.body.get("op")
        if not isinstance(op, str):
            raise BadRequest(f"{self.name}: the body needs an 'op'; one of {self.ops()}")
        method = getattr(self, f"op_{op}", None)
        if method is None:
            raise NotFound(f"{self.name} has no op {shown(op)}; ops: {self.ops()}")
        return await method(request)


def require(body: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    """The value of a required body field, checked for type, or a BadRequest naming it."""
    if key not in body:
        raise BadRequest(f"missing field {key!r}")
    value = body[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int to Python, but never a valid count or size on the wire.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise BadRequest(f"field {key!r} must be {names}, got {type(value).__name__}")
    return value


def require_name(body: Mapping[str, Any], key: str) -> str:
    """A required name field: a non-empty string of at most MAX_NAME_CHARS characters."""
    value = require(body, key, str)
    if not 1 <= len(value) <= MAX_NAME_CHARS:
        raise BadRequest(
            f"field {key!r} must be a name of 1 to {MAX_NAME_CHARS} characters, "
            f"got {len(value)} ({shown(value)})"
        )
    return value


def shown(value: Any) -> str:
    """`value` as an error message quotes it: its repr, cut to SHOWN_CHARS characters."""
    text = _SHORT.repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."
