"""How the dashboard reaches a box: a live link over the bus, or a fixed report (snapshots).

`BoxLink.run` is one long task (a Textual worker): connect with a fresh `AsyncClient`,
poll `status` every `poll_s` and follow the event stream; when either goes quiet the
link reports the box as gone and tries again with exponential backoff. It never raises:
every outcome reaches the app as a message. Requests from the UI (chat, search, load)
go through `request`/`stream`, which fail at once with a clear error while disconnected.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import anyio
from textual.message import Message

from aether_box.client import AsyncClient, BoxError, ServiceUnavailable, Timeout

__all__ = [
    "BoxEvent",
    "BoxLink",
    "LinkDown",
    "LinkUp",
    "StaticLink",
    "StatusReport",
]

EVENT_TOPICS = ("status.", "log.", "peer.", "metrics.")


class LinkUp(Message):
    """Connected to a box (first report attached)."""

    def __init__(self, endpoint: str, report: dict[str, Any]) -> None:
        super().__init__()
        self.endpoint = endpoint
        self.report = report


class LinkDown(Message):
    """Not connected: why, and when the next attempt starts."""

    def __init__(self, endpoint: str, reason: str, retry_in: float, attempt: int) -> None:
        super().__init__()
        self.endpoint = endpoint
        self.reason = reason
        self.retry_in = retry_in
        self.attempt = attempt


class StatusReport(Message):
    """A fresh `status` report."""

    def __init__(self, report: dict[str, Any], received: float) -> None:
        super().__init__()
        self.report = report
        self.received = received


class BoxEvent(Message):
    """One published event (heartbeat, log line, peer change...)."""

    def __init__(self, topic: str, body: dict[str, Any]) -> None:
        super().__init__()
        self.topic = topic
        self.body = body


Post = Callable[[Message], Any]


class _Lost(Exception):
    """The session with the box ended; the message says why."""


def _describe(exc: BaseException) -> str:
    """Why the session ended, in words; a Python type name only for the unexpected."""
    if isinstance(exc, BoxError):
        return exc.message
    if isinstance(exc, _Lost):
        return str(exc)
    if isinstance(exc, TimeoutError):  # anyio.fail_after: no message of its own
        return "the box did not answer in time (stopped, or stuck on something long)"
    return f"{type(exc).__name__}: {exc}"


class BoxLink:
    """A self-healing connection to one box over the bus."""

    def __init__(
        self,
        endpoint: str | None = None,
        data_dir: str | Path | None = None,
        *,
        poll_s: float = 1.0,
        timeout_s: float = 3.0,
        event_silence_s: float = 5.0,
        retry_min_s: float = 0.5,
        retry_max_s: float = 5.0,
    ) -> None:
        self.endpoint_arg = endpoint
        self.data_dir = data_dir
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.event_silence_s = event_silence_s  # heartbeats come every second
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.client: AsyncClient | None = None
        self.endpoint = endpoint or "(default endpoint)"

    @property
    def connected(self) -> bool:
        return self.client is not None

    async def run(self, post: Post) -> None:
        """Connect, watch, and reconnect forever (until cancelled)."""
        delay = self.retry_min_s
        attempt = 0
        while True:
            try:
                reason, was_up = await self._session(post)
            except Exception as exc:  # noqa: BLE001 - a dashboard shows every failure, never dies of one
                reason, was_up = _describe(exc), False
            if was_up:  # it was up a moment ago: retry quickly
                delay, attempt = self.retry_min_s, 0
            attempt += 1
            post(LinkDown(self.endpoint, reason, delay, attempt))
            await anyio.sleep(delay)
            delay = min(delay * 2, self.retry_max_s)

    async def _session(self, post: Post) -> tuple[str, bool]:
        """One connection, until it is lost: (why it ended, whether it was ever up)."""
        client = AsyncClient(self.endpoint_arg, data_dir=self.data_dir, timeout=self.timeout_s)
        await client.__aenter__()
        try:
            return await self._watch(client, post), True
        finally:
            if self.client is client:  # a newer session (after `r`) may own it already
                self.client = None
            await client.__aexit__(None, None, None)

    async def _watch(self, client: AsyncClient, post: Post) -> str:
        self.endpoint = client.endpoint
        with anyio.fail_after(self.timeout_s + 1):  # bounds the send too, not just the reply
            report = await client.status(timeout=self.timeout_s)
        self.client = client
        post(LinkUp(client.endpoint, report))
        post(StatusReport(report, time.monotonic()))
        reasons: list[str] = []
        async with anyio.create_task_group() as tg:

            async def guard(watch: Callable[[AsyncClient, Post], Any]) -> None:
                try:
                    await watch(client, post)
                except Exception as exc:  # noqa: BLE001 - a lost box, a timeout, a bad reply
                    reasons.append(_describe(exc))
                tg.cancel_scope.cancel()  # one watcher down ends the session

            tg.start_soon(guard, self._poll)
            tg.start_soon(guard, self._follow_events)
        return reasons[0] if reasons else "the connection closed"

    async def _poll(self, client: AsyncClient, post: Post) -> None:
        while True:
            await anyio.sleep(self.poll_s)
            with anyio.fail_after(self.timeout_s + 1):
                report = await client.status(timeout=self.timeout_s)
            post(StatusReport(report, time.monotonic()))

    async def _follow_events(self, client: AsyncClient, post: Post) -> None:
        async for topic, body in client.events(*EVENT_TOPICS, timeout=self.event_silence_s):
            post(BoxEvent(topic, body))
            if topic == "status.stopping":
                raise _Lost("the box is shutting down")

    def _require(self) -> AsyncClient:
        if self.client is None:
            raise ServiceUnavailable(
                "not connected to the box; the dashboard reconnects by itself once it is running"
            )
        return self.client

    async def request(
        self, service: str, body: Mapping[str, Any], timeout: float
    ) -> dict[str, Any]:
        """One request through the live client; fails at once while disconnected."""
        client = self._require()
        try:
            with anyio.fail_after(timeout + 1):  # bounds the send too, not just the reply
                return await client.request(service, body, timeout=timeout)
        except TimeoutError:
            raise Timeout(f"{service!r} did not answer within {timeout:g} s") from None

    async def stream(
        self, service: str, body: Mapping[str, Any], timeout: float
    ) -> AsyncIterator[dict[str, Any]]:
        """Partial replies then the final one; `timeout` bounds the wait for each."""
        client = self._require()
        async for reply in client.stream(service, body, timeout=timeout):
            yield reply


class StaticLink:
    """A link that shows one fixed report and event list (deterministic screenshots, demos)."""

    def __init__(
        self,
        report: dict[str, Any],
        events: Iterable[tuple[str, dict[str, Any]]] = (),
        endpoint: str = "ipc://<data dir>/bus.sock",
    ) -> None:
        self.report = report
        self.events = list(events)
        self.endpoint = endpoint
        self.connected = True

    async def run(self, post: Post) -> None:
        post(LinkUp(self.endpoint, self.report))
        post(StatusReport(self.report, 0.0))
        for topic, body in self.events:
            post(BoxEvent(topic, body))
        await anyio.sleep_forever()

    async def request(
        self, service: str, body: Mapping[str, Any], timeout: float
    ) -> dict[str, Any]:
        raise ServiceUnavailable(f"this is a fixed view; {service!r} cannot be called")

    async def stream(
        self, service: str, body: Mapping[str, Any], timeout: float
    ) -> AsyncIterator[dict[str, Any]]:
        raise ServiceUnavailable(f"this is a fixed view; {service!r} cannot be called")
        yield {}  # pragma: no cover - makes this an async generator
