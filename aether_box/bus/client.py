"""Client library for local apps: `Client` (blocking) and `AsyncClient` (anyio).

Both speak MDP/0.2 as RFC 18 writes it. Each request carries a request id (``_rid`` in the
body map) so replies are matched even when calls overlap or a timed-out reply arrives
late; a reply without one (a foreign worker's) goes to the oldest waiting call.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import anyio
import msgpack
import numpy as np
import zmq
import zmq.asyncio
from anyio.streams.memory import MemoryObjectReceiveStream

from aether_box.bus.discovery import check_listening, published_curve, read_endpoints
from aether_box.bus.protocol import (
    CANCEL_SERVICE,
    CLIENT,
    RID,
    ClientCmd,
    FrameBytes,
    decode_body,
    encode_body,
    raise_if_error,
    recv_frames,
    send_frames,
)
from aether_box.bus.security import client_keys, configure_curve_client
from aether_box.config import data_dir_from
from aether_box.errors import ProtocolError, Timeout

__all__ = ["AsyncClient", "Client", "resolve_endpoint"]

ENDPOINT_ENV = "AETHER_BOX_ENDPOINT"
DEFAULT_TCP = "tcp://127.0.0.1:7745"
_rids = itertools.count(1)


def resolve_endpoint(endpoint: str | None = None, data_dir: str | os.PathLike | None = None) -> str:
    """The bus endpoint: explicit, $AETHER_BOX_ENDPOINT, else where the data dir's box listens.

    That is its ipc socket, else the first endpoint it published; only the default data dir
    falls back to tcp://127.0.0.1:7745, so a client of another data dir never reaches the
    default box by mistake.
    """
    if endpoint:
        return endpoint
    if os.environ.get(ENDPOINT_ENV):
        return os.environ[ENDPOINT_ENV]
    home = data_dir_from(data_dir)
    ipc = home / "bus.sock"
    if ipc.exists():
        return f"ipc://{ipc}"
    published = list((read_endpoints(home) or {}).get("bus", {}))
    if published:
        return published[0]
    return DEFAULT_TCP if home == data_dir_from(None) else f"ipc://{ipc}"


def start_hint(data_dir: str | os.PathLike | None = None) -> str:
    """The command that starts a box for this data dir (for 'no box' messages)."""
    home = data_dir_from(data_dir)
    return "aether-box run" if home == data_dir_from(None) else f"aether-box --data-dir {home} run"


def _texts(texts: list[str]) -> list[str]:
    """`texts` as a list; a lone str goes as it is, for the box to refuse (not as characters)."""
    return texts if isinstance(texts, str) else list(texts)


def _llm_body(op: str, model: str, **fields: Any) -> dict[str, Any]:
    return {"op": op, "model": model, **fields}


class _Session:
    """What both clients share: endpoint, keys, framing and reply parsing."""

    def __init__(
        self,
        endpoint: str | None,
        data_dir: str | os.PathLike | None,
        timeout: float,
        curve: tuple[Any, bytes] | Literal[False] | None,
    ) -> None:
        self.data_dir = data_dir_from(data_dir)
        self.endpoint = resolve_endpoint(endpoint, self.data_dir)
        self.timeout = timeout
        if curve is None and self.endpoint.startswith("tcp"):
            # Local tools use the data dir's client keys where its box speaks CURVE (a box
            # with keys keeps loopback tcp plain unless bus.curve is "on": it says which).
            if published_curve(self.data_dir, self.endpoint) is not False:
                curve = client_keys(Path(self.data_dir))
        self.curve = curve or None  # False: plain, even where the data dir has keys

    def check_box(self) -> None:
        """Fail at once, saying how to start one, when no box listens at a local endpoint."""
        check_listening(self.endpoint, start_hint(self.data_dir))

    def connect(self, socket: zmq.Socket, endpoint: str | None = None) -> None:
        """Connect to the bus (or another of the box's endpoints), with CURVE over tcp."""
        endpoint = endpoint or self.endpoint
        socket.linger = 0
        if self.curve is not None and endpoint.startswith("tcp"):
            keys, server_public = self.curve
            configure_curve_client(socket, keys, server_public)
        socket.connect(endpoint)

    @staticmethod
    def request_frames(service: str, body: Mapping[str, Any] | None, rid: int) -> list[Any]:
        return [
            CLIENT,
            ClientCmd.REQUEST,
            service.encode(),
            *encode_body({**(body or {}), RID: rid}),
        ]

    @staticmethod
    def parse(frames: list[FrameBytes]) -> tuple[bool, dict[str, Any]]:
        """(is_final, body) of one reply."""
        if (
            len(frames) < 3
            or frames[0] != CLIENT
            or frames[1] not in (ClientCmd.PARTIAL, ClientCmd.FINAL)
        ):
            raise ProtocolError(f"the box sent a reply that is not MDP/0.2: {frames[:2]!r}")
        final = frames[1] == ClientCmd.FINAL
        body_frames = frames[3:]
        if body_frames and body_frames[0] in (b"200", b"404", b"501"):  # MMI replies are bare codes
            return final, {"mmi": body_frames[0].decode()}
        return final, decode_body(body_frames)

    def timeout_error(self, service: str, timeout: float) -> Timeout:
        return Timeout(
            f"no reply from {service!r} within {timeout:g} s at {self.endpoint}, so the box was "
            "told to stop the work; a slow request needs a longer `timeout` (per call, or the "
            "client's own); a box that never answers may be stopped or at another endpoint"
        )

    def events_timeout_error(self, prefixes: tuple[str, ...], timeout: float) -> Timeout:
        return Timeout(
            f"no event on {list(prefixes) or 'any topic'} within {timeout:g} s from the box at "
            f"{self.endpoint}; pass a longer `timeout`, or None to wait for as long as it takes"
        )

    def event_endpoint(self, published: list[str]) -> str:
        """The event endpoint that matches how this client reaches the bus."""
        bus = urlsplit(self.endpoint)
        for candidate in published:
            parts = urlsplit(candidate)
            if parts.scheme != bus.scheme:
                continue
            if parts.scheme == "tcp":
                return f"tcp://{bus.hostname}:{parts.port}"
            return candidate
        raise ProtocolError(f"the box publishes no {bus.scheme} event endpoint (has {published})")


class Client:
    """A blocking client; use it as a context manager or call close() (twice does no harm).

    Not thread-safe: use one per thread (a zmq socket shared between threads can mix up
    replies or crash the process; nothing detects it). `AsyncClient` takes overlapping calls.

    `endpoint`: None finds the box (see `resolve_endpoint`): $AETHER_BOX_ENDPOINT, else the
    data dir's ipc socket or published endpoint, else tcp://127.0.0.1:7745 for the default
    data dir. `timeout` (seconds, default 30) bounds the wait for each reply; every call
    also takes its own. A call that times out or a stream left early has the box stop the
    work, and its late reply never reaches a later call.
    `curve`: (client keys, the box's public key) for CURVE over tcp; None uses the data
    dir's client keys when it has them; False connects without CURVE. A local endpoint
    with nothing listening raises `NoBox` at once, as the client opens and when a call finds
    the box gone (`check=False` skips that look: calls then wait for a box, up to `timeout`).

    Errors are the typed exceptions of `aether_box.client`, all `BoxError` with a `code`:
    `NotFound` (service, model, op), `BadRequest`, `TooLarge`, `Overloaded` (retry later),
    `Cancelled`, `ServiceUnavailable`/`NoBox`, `Timeout`; their message says what to do.
    A body that msgpack cannot carry raises TypeError before anything is sent.
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        data_dir: str | os.PathLike | None = None,
        timeout: float = 30.0,
        curve: tuple[Any, bytes] | Literal[False] | None = None,
        check: bool = True,
    ) -> None:
        self._session = _Session(endpoint, data_dir, timeout, curve)
        self.endpoint = self._session.endpoint
        self._check = check
        if check:
            self._session.check_box()
        self._context = zmq.Context.instance()
        self._socket = self._context.socket(zmq.DEALER)
        self._session.connect(self._socket)
        self._wait_ms: int | None = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._socket.close(linger=0)

    def request(
        self, service: str, body: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> dict[str, Any]:
        """Send one request and return its final reply; errors raise typed exceptions."""
        reply: dict[str, Any] = {}
        for part in self.stream(service, body, timeout=timeout):
            reply = part  # partials, if any, lead up to the final reply
        return reply

    def stream(
        self, service: str, body: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> Iterator[dict[str, Any]]:
        """Yield every reply (partials, then the final one). `timeout` bounds the wait for each."""
        rid = next(_rids)
        wait = self._session.timeout if timeout is None else timeout
        frames = self._session.request_frames(service, body, rid)
        try:
            send_frames(self._socket, frames)
        except zmq.Again:  # no usable connection yet: wait for one, within the timeout
            if not self._socket.poll(wait * 1000, zmq.POLLOUT):
                raise self._session.timeout_error(service, wait) from None
            send_frames(self._socket, frames)
        except zmq.ZMQError:
            if self._socket.closed:
                raise RuntimeError("this Client is closed; open a new one") from None
            raise
        finished = False
        try:
            while True:
                final, reply = self._receive(rid, service, wait)
                reply.pop(RID, None)
                finished = final
                raise_if_error(reply)
                yield reply
                if final:
                    return
        finally:
            if not finished:  # timed out or the caller stopped iterating: stop the work
                with contextlib.suppress(zmq.Again):  # no connection: nothing to cancel
                    self._socket.send_multipart(
                        self._session.request_frames(CANCEL_SERVICE, {"rid": rid}, 0),
                        flags=zmq.NOBLOCK,
                    )

    def _receive(self, rid: int, service: str, timeout: float) -> tuple[bool, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            # A blocking receive bounded by RCVTIMEO: a poll per reply costs more than the reply.
            self._set_wait(left)
            try:
                frames = recv_frames(self._socket, wait=True)
            except zmq.Again:  # a second without a reply: is the box still there?
                if self._check:
                    self._session.check_box()  # it stopped: say so now, not at the deadline
                continue
            final, reply = self._session.parse(frames)
            if reply.get(RID, rid) == rid:
                return final, reply
            # A late reply to an earlier call that timed out, or a cancel acknowledgement.
        raise self._session.timeout_error(service, timeout)

    def _set_wait(self, seconds: float) -> None:
        ms = min(1000, math.ceil(seconds * 1000))  # seconds > 0; waits of 1 s at most
        if ms != self._wait_ms:  # most calls reuse the last timeout: skip the setsockopt
            self._socket.rcvtimeo = self._wait_ms = ms

    def status(self, *, timeout: float | None = None) -> dict[str, Any]:
        """The box's status report."""
        return self.request("status", {"op": "get"}, timeout=timeout)

    def chat(self, model: str, messages: list[dict[str, str]], **params: Any) -> dict[str, Any]:
        """A chat reply {"text", "finish_reason", "usage", ...}; params: max_tokens, seed, ..."""
        timeout = params.pop("timeout", None)
        return self.request(
            "llm", _llm_body("chat", model, messages=messages, **params), timeout=timeout
        )

    def chat_stream(
        self, model: str, messages: list[dict[str, str]], **params: Any
    ) -> Iterator[str]:
        """The reply's text, piece by piece, as the model writes it."""
        timeout = params.pop("timeout", None)
        body = _llm_body("chat", model, messages=messages, stream=True, **params)
        for part in self.stream("llm", body, timeout=timeout):
            if "token" in part:
                yield part["token"]

    def complete(self, model: str, prompt: str, **params: Any) -> dict[str, Any]:
        """A raw completion of `prompt` (for base models)."""
        timeout = params.pop("timeout", None)
        return self.request(
            "llm", _llm_body("complete", model, prompt=prompt, **params), timeout=timeout
        )

    def embed(self, model: str, texts: list[str], *, timeout: float | None = None) -> np.ndarray:
        """L2-normalised float32 vectors, one row per text."""
        return self.request(
            "embed", {"op": "embed", "model": model, "texts": _texts(texts)}, timeout=timeout
        )["vectors"]

    def events(
        self, *prefixes: str, timeout: float | None = None
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield (topic, body) for published events whose topic starts with one of `prefixes`."""
        endpoint = self._session.event_endpoint(self.status(timeout=timeout)["endpoints"]["events"])
        socket = self._context.socket(zmq.SUB)
        try:
            for prefix in prefixes or ("",):
                socket.subscribe(prefix)
            self._session.connect(socket, endpoint)
            while True:
                if timeout is not None and not socket.poll(timeout * 1000):
                    raise self._session.events_timeout_error(prefixes, timeout)
                topic, payload = socket.recv_multipart()
                yield topic.decode(), msgpack.unpackb(payload)
        finally:
            socket.close(linger=0)


class AsyncClient:
    """An anyio client; many calls may overlap. Use as ``async with AsyncClient() as client``.

    Calls before entering it or after leaving it raise RuntimeError. Endpoint, `timeout`,
    `curve` and errors are as for `Client`. Entering it raises `NoBox` at once when nothing
    listens at a local endpoint, and so does a call that waits a second without a reply and
    finds the box gone (a look in a worker thread each such second), not at its `timeout`.
    A watcher that waits for a box to come (a federation link) passes `check=False`: no
    look, and calls wait for a box, up to `timeout`. Leave an `async for` over `stream`
    early with `break` and the generator's cleanup (or ``aclose()``, or
    `contextlib.aclosing`) tells the box to stop.
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        data_dir: str | os.PathLike | None = None,
        timeout: float = 30.0,
        curve: tuple[Any, bytes] | Literal[False] | None = None,
        check: bool = True,
    ) -> None:
        # Finding the endpoint and keys may read files, and the look for a box may wait up to
        # a second: both done as the client opens, in a thread.
        self._session_args = (endpoint, data_dir, timeout, curve)
        self._check = check
        self._session: _Session
        self.endpoint = endpoint or "(default endpoint)"
        self._socket: zmq.asyncio.Socket | None = None
        self._waiting: dict[int, anyio.abc.ObjectSendStream] = {}
        self._tg: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> AsyncClient:
        self._session = await anyio.to_thread.run_sync(_Session, *self._session_args)
        self.endpoint = self._session.endpoint
        if self._check:
            await anyio.to_thread.run_sync(self._session.check_box)
        self._socket = zmq.asyncio.Context.instance().socket(zmq.DEALER)
        self._session.connect(self._socket)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._read_replies)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        tg, socket = self._tg, self._socket
        if tg is None or socket is None:  # never entered, or closed already
            return
        self._tg = self._socket = None
        try:
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)
        finally:  # also when the caller itself is being cancelled
            socket.close(linger=0)

    async def _read_replies(self) -> None:
        socket = self._socket
        assert socket is not None
        while True:
            frames = await socket.recv_multipart()
            try:
                final, reply = self._session.parse(frames)
            except ProtocolError:
                continue
            rid = reply.get(RID)
            if rid is None and self._waiting:
                rid = next(iter(self._waiting))  # a foreign worker's reply: oldest call
            sink = self._waiting.get(rid)
            if sink is not None:
                sink.send_nowait((final, reply))

    async def request(
        self, service: str, body: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> dict[str, Any]:
        """Send one request and return its final reply."""
        reply: dict[str, Any] = {}
        async for part in self.stream(service, body, timeout=timeout):
            reply = part  # partials, if any, lead up to the final reply
        return reply

    async def stream(
        self, service: str, body: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield every reply (partials, then the final one). `timeout` bounds the wait for each."""
        socket = self._socket
        if socket is None:
            raise RuntimeError(
                "the AsyncClient is not open (or closed already): "
                "call it inside `async with AsyncClient() as client:`"
            )
        rid = next(_rids)
        wait = self._session.timeout if timeout is None else timeout
        send, receive = anyio.create_memory_object_stream[tuple[bool, dict[str, Any]]](float("inf"))
        self._waiting[rid] = send
        finished = False
        try:
            with anyio.move_on_after(wait) as scope:
                await socket.send_multipart(self._session.request_frames(service, body, rid))
            if scope.cancelled_caught:
                raise self._session.timeout_error(service, wait)
            while not finished:
                final, reply = await self._receive(receive, service, wait)
                reply.pop(RID, None)
                finished = final
                raise_if_error(reply)
                yield reply
        finally:
            del self._waiting[rid]
            send.close()
            receive.close()
            if not finished and not socket.closed:  # timed out or left early: stop the work
                frames = self._session.request_frames(CANCEL_SERVICE, {"rid": rid}, 0)
                sent = socket.send_multipart(frames, flags=zmq.NOBLOCK)
                sent.add_done_callback(lambda f: f.exception())  # no connection: nothing to cancel

    async def _receive(
        self,
        replies: MemoryObjectReceiveStream[tuple[bool, dict[str, Any]]],
        service: str,
        timeout: float,
    ) -> tuple[bool, dict[str, Any]]:
        """The call's next reply, within `timeout`; with `check`, a look for the box each
        second without one (in a worker thread: it may block up to 1 s)."""
        deadline = anyio.current_time() + timeout
        while (left := deadline - anyio.current_time()) > 0:
            with anyio.move_on_after(min(1.0, left) if self._check else left):
                return await replies.receive()
            if self._check:  # a second without a reply: is the box still there?
                await anyio.to_thread.run_sync(self._session.check_box)  # gone: NoBox now
        with contextlib.suppress(anyio.WouldBlock):  # one that came during the last look
            return replies.receive_nowait()
        raise self._session.timeout_error(service, timeout)

    async def status(self, *, timeout: float | None = None) -> dict[str, Any]:
        """The box's status report."""
        return await self.request("status", {"op": "get"}, timeout=timeout)

    async def chat(
        self, model: str, messages: list[dict[str, str]], **params: Any
    ) -> dict[str, Any]:
        """A chat reply: {"text", "finish_reason", "usage", ...}."""
        timeout = params.pop("timeout", None)
        return await self.request(
            "llm", _llm_body("chat", model, messages=messages, **params), timeout=timeout
        )

    async def chat_stream(
        self, model: str, messages: list[dict[str, str]], **params: Any
    ) -> AsyncIterator[str]:
        """The reply's text, piece by piece, as the model writes it."""
        timeout = params.pop("timeout", None)
        body = _llm_body("chat", model, messages=messages, stream=True, **params)
        async for part in self.stream("llm", body, timeout=timeout):
            if "token" in part:
                yield part["token"]

    async def complete(self, model: str, prompt: str, **params: Any) -> dict[str, Any]:
        """A raw completion of `prompt` (for base models)."""
        timeout = params.pop("timeout", None)
        body = _llm_body("complete", model, prompt=prompt, **params)
        return await self.request("llm", body, timeout=timeout)

    async def embed(
        self, model: str, texts: list[str], *, timeout: float | None = None
    ) -> np.ndarray:
        """L2-normalised float32 vectors, one row per text."""
        body = {"op": "embed", "model": model, "texts": _texts(texts)}
        return (await self.request("embed", body, timeout=timeout))["vectors"]

    async def events(
        self, *prefixes: str, timeout: float | None = None
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Yield (topic, body) for published events whose topic starts with one of `prefixes`."""
        published = (await self.status(timeout=timeout))["endpoints"]["events"]
        endpoint = self._session.event_endpoint(published)
        socket = zmq.asyncio.Context.instance().socket(zmq.SUB)
        try:
            for prefix in prefixes or ("",):
                socket.subscribe(prefix)
            self._session.connect(socket, endpoint)
            while True:
                with anyio.move_on_after(timeout if timeout is not None else float("inf")) as scope:
                    topic, payload = await socket.recv_multipart()
                if scope.cancelled_caught:
                    raise self._session.events_timeout_error(prefixes, timeout or 0)
                yield topic.decode(), msgpack.unpackb(payload)
        finally:
            socket.close(linger=0)
