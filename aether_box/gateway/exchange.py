"""One bus call as an HTTP response: streamed as it comes, and cancelled if the client goes.

The call runs inside the ASGI response itself, beside a task that waits for
``http.disconnect``: a client that hangs up cancels the call, and so the generation on the
bus (the llm service stops within a token and frees the model). Partial replies are written
to the client from the service's own task as they arrive, with no queue in between. The
response's status and headers wait for the first partial (or the final reply), so an error
found before any text (an unknown model, a bad field) still gets its proper HTTP status.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import anyio
from starlette.types import Receive, Scope, Send

from aether_box.bus.service import PartialSender
from aether_box.errors import BoxError

__all__ = ["CLIENT_GONE", "Exchange", "Reply", "http_status"]

# Counted for a request whose client hung up before the answer (nginx's convention).
CLIENT_GONE = 499

_STATUS = {
    "bad_request": 400,
    "bad_frames": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "adapter_pruned": 409,  # the request names an adapter the box refuses unforced
    "too_large": 413,
    "overloaded": 429,
    "busy": 429,
    "unavailable": 503,
    "cancelled": 503,
    "timeout": 504,
}


def http_status(exc: BoxError) -> int:
    """The HTTP status for a box error code (500 for the box's own failures)."""
    return _STATUS.get(exc.code, 500)


class Reply(Protocol):
    """How one API dialect writes a call's answer (see aether_box.gateway.openai, .ollama)."""

    media_type: str  # of a stream

    def opening(self) -> bytes:
        """The bytes a stream starts with (before the first piece)."""
        ...

    def piece(self, partial: Mapping[str, Any]) -> bytes:
        """One partial reply of the bus call, as stream bytes."""
        ...

    def closing(self, final: Mapping[str, Any]) -> bytes:
        """The bytes that end a stream, from the final reply."""
        ...

    def whole(self, final: Mapping[str, Any]) -> bytes:
        """The JSON body of a non-streamed answer (a BoxError: the request's error instead)."""
        ...

    def error(self, exc: BoxError) -> bytes:
        """An error as a JSON body (before anything was sent) or a stream's last event."""
        ...


class WholeReply:
    """Shared by the answers that are never streamed (embeddings): one JSON body, made by
    `whole` from the final reply."""

    media_type = "application/json"

    def opening(self) -> bytes:
        return b""

    def piece(self, partial: Mapping[str, Any]) -> bytes:
        return b""

    def closing(self, final: Mapping[str, Any]) -> bytes:
        return self.whole(final)

    def whole(self, final: Mapping[str, Any]) -> bytes:
        raise NotImplementedError


BusCall = Callable[[PartialSender | None], Awaitable[dict[str, Any]]]


class Exchange:
    """An ASGI response that makes one bus call; see the module docstring."""

    def __init__(
        self,
        call: BusCall,
        reply: Reply,
        *,
        stream: bool,
        done: Callable[[int, float], None],
        started: float | None = None,
    ) -> None:
        """`call(on_partial)` makes the bus call; `done(status, seconds)` counts the request
        (`seconds` from `started`, a time.perf_counter() value, default now)."""
        self.call = call
        self.reply = reply
        self.stream = stream
        self.done = done
        self.started = time.perf_counter() if started is None else started
        self._sent_start = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        status = CLIENT_GONE
        try:
            status = await self._exchange(receive, send)
        finally:
            self.done(status, time.perf_counter() - self.started)

    async def _exchange(self, receive: Receive, send: Send) -> int:
        reply = self.reply

        async def on_partial(partial: Mapping[str, Any]) -> None:
            body = reply.piece(partial)
            if not self._sent_start:
                await self._start(send, 200, reply.media_type)
                body = reply.opening() + body
            await send({"type": "http.response.body", "body": body, "more_body": True})

        outcome: list[Any] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(_cancel_when_gone, receive, tg.cancel_scope)
            try:
                outcome.append(await self.call(on_partial if self.stream else None))
            except BoxError as exc:
                outcome.append(exc)
            finally:
                tg.cancel_scope.cancel()  # the call is over: stop waiting for a disconnect
        if not outcome:
            return CLIENT_GONE  # the client hung up: the call was cancelled, nobody to tell
        result = outcome[0]
        whole = b""
        if not self.stream and not isinstance(result, BoxError):
            try:  # made before the status is sent: a reply the request cannot take is an error
                whole = reply.whole(result)
            except BoxError as exc:
                result = exc
        if isinstance(result, BoxError):
            status = http_status(result)
            if not self._sent_start:
                await self._start(send, status, "application/json")
                await _end(send, reply.error(result))
                return status
            await _end(send, reply.error(result))  # mid-stream: the stream's last event
            return status
        if not self.stream:
            await self._start(send, 200, "application/json")
            await _end(send, whole)
            return 200
        body = reply.closing(result)
        if not self._sent_start:  # no partial came (an empty answer)
            await self._start(send, 200, reply.media_type)
            body = reply.opening() + body
        await _end(send, body)
        return 200

    async def _start(self, send: Send, status: int, media_type: str) -> None:
        self._sent_start = True
        headers = [(b"content-type", media_type.encode())]
        if media_type != "application/json":
            headers.append((b"cache-control", b"no-cache"))
        await send({"type": "http.response.start", "status": status, "headers": headers})


async def _end(send: Send, body: bytes) -> None:
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _cancel_when_gone(receive: Receive, scope: anyio.CancelScope) -> None:
    """Cancel `scope` when the client disconnects (the request body is already read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return
