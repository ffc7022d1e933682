"""The MDP/0.2 broker: one ROUTER socket, in-process services and external workers alike.

Clients speak ``MDPC02`` and workers ``MDPW02`` as ZeroMQ RFC 18 writes them. Peers that
use majortomo's variant (an empty frame first, worker command numbers for clients, no
service frame in client replies) are answered in the framing they used.

In-process services and remote worker processes share one service table, one set of
counters and one reply path; a local handler is simply a worker that never needs a socket.
The receive loop never awaits anything but the socket, so one bad peer cannot stall it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import zmq
import zmq.asyncio

from aether_box.bus.failures import failure_error
from aether_box.bus.protocol import (
    CANCEL_SERVICE,
    CLIENT,
    RID,
    WORKER,
    ClientCmd,
    FrameBytes,
    WorkerCmd,
    decode_body,
    encode_body,
    pop_request_id,
    raise_if_error,
    recv_message,
    send_frames,
)
from aether_box.bus.reply_groups import ReplyGroups
from aether_box.bus.scopes import (
    allows_every_op,
    connection_key,
    connection_scope,
    floor_scope,
    refusal,
)
from aether_box.bus.security import CurveKeys, bind_all
from aether_box.bus.service import Handler, InlineHandler, PartialSender, Request
from aether_box.bus.settings import BusSettings
from aether_box.bus.stats import ServiceStats, error_code
from aether_box.errors import (
    BoxError,
    Cancelled,
    NotFound,
    Overloaded,
    ProtocolError,
    ServiceUnavailable,
    TooLarge,
)

__all__ = ["Broker"]

log = logging.getLogger(__name__)

# How long a reply may wait on a full send queue before it is dropped and counted.
SEND_PATIENCE_S = 5.0
# Service names are short words; anything longer is a malformed request.
MAX_SERVICE_NAME = 255
# Messages handled per wake-up of the receive loop before yielding to other tasks.
DRAIN_BATCH = 256
_POLLIN = int(zmq.POLLIN)  # a plain int: `&` with the PollEvent flag costs ~0.7 us more


def _routed_apart(name: str) -> bool:
    """Whether requests to `name` are the broker's own (MMI, cancel), whatever serves it."""
    return name.startswith("mmi.") or name == CANCEL_SERVICE


async def _ignore_partial(_: Mapping[str, Any]) -> None:
    return None


async def _no_streaming(_: Mapping[str, Any]) -> None:
    raise TypeError("inline services cannot stream; register the service without inline=True")


@dataclass(eq=False)
class Job:
    """A client request waiting for, or held by, a remote worker."""

    client: bytes
    legacy: bool
    service: bytes
    body: list[FrameBytes]
    received: float
    # An in-process caller's reply sink (Broker.call): (final, body frames) go there, not out.
    sink: Callable[[bool, list[FrameBytes]], None] | None = None


@dataclass(eq=False)
class RemoteWorker:
    """A worker process connected over the socket."""

    identity: bytes
    legacy: bool
    service: Service
    expires: float
    job: Job | None = None


@dataclass(eq=False)
class Service:
    """One named service: a local handler, or remote workers with a queue in front."""

    name: str
    handler: Handler | InlineHandler | None = None
    limiter: anyio.CapacityLimiter | None = None
    inline: bool = False
    workers: dict[bytes, RemoteWorker] = field(default_factory=dict)
    idle: deque[RemoteWorker] = field(default_factory=deque)
    queue: deque[Job] = field(default_factory=deque)
    in_flight: int = 0
    stats: ServiceStats = field(default_factory=ServiceStats)
    owner: str | None = None  # the component that registered it (None: a remote worker's)
    # Whether every connection may call every op of it (scopes.allows_every_op at the floor
    # scope): worked out once here, not per message, as it is the same for each.
    open_to_all: bool = False

    def snapshot(self) -> dict[str, Any]:
        local = self.handler is not None
        return {
            "kind": "local" if local else "remote",
            "workers": 1 if local else len(self.workers),
            "idle_workers": None if local else len(self.idle),
            "queued": len(self.queue),
            "in_flight": self.in_flight,
            **self.stats.snapshot(),
        }


class Broker:
    """Routes MDP requests from clients to services and replies back, counting everything."""

    def __init__(
        self, settings: BusSettings, context: zmq.asyncio.Context, curve: CurveKeys | None = None
    ) -> None:
        self.settings = settings
        self.curve = curve
        self._max_bytes = settings.max_message_bytes
        self.context = context
        self.services: dict[str, Service] = {}
        self.rejected: Counter[str] = Counter()
        self.accepting = True
        self.starting = True  # until the box has started every component (`started()`)
        self._workers: dict[bytes, RemoteWorker] = {}
        # (client identity, request id) -> cancel scope of a running local request.
        self._local: dict[tuple[bytes, Any], anyio.CancelScope] = {}
        # Every running local request, so a shutdown can cancel what outlives its grace.
        self._scopes: set[anyio.CancelScope] = set()
        self._router: zmq.Socket | None = None
        self._peer: zmq.Frame | None = None  # the first frame of the message being handled
        # The least scope a connection can have here: services it allows every op of need
        # no look at a message's metadata (which costs more than routing an echo).
        self._floor_scope = floor_scope(settings.loopback_admin, curve is not None)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        self._recheck_scheduled = False
        # Replies made while a backlog drains go out in groups, one per peer (reply_groups).
        self._replies = ReplyGroups(self._send_now)
        self._tg: anyio.abc.TaskGroup | None = None
        self.bound: list[str] = []
        # CURVE keys (z85) whose messages are dropped (AllowList.revoked; empty without CURVE).
        self.refused: Container[str] = ()
        # Services every connection may call every op of, by their name's bytes as a request
        # carries it: a request to one needs no name decoding and no scope check.
        self._open_routes: dict[bytes, Service] = {}

    # ----------------------------------------------------------------- registry

    def add_service(
        self,
        name: str,
        handler: Handler | InlineHandler,
        *,
        concurrency: int | None = None,
        inline: bool = False,
        owner: str | None = None,
    ) -> None:
        """Serve `name` in-process with `handler`, on behalf of component `owner`.

        An async handler runs as its own task, at most `concurrency` at once. An `inline`
        handler is a plain function run on the receive loop itself: the fast path for work
        that takes microseconds and never blocks (echo, status); it cannot stream.
        """
        if name in self.services:
            raise ValueError(f"service {name!r} is already registered")
        limit = concurrency or self.settings.local_concurrency
        self._add(Service(name, handler, anyio.CapacityLimiter(limit), inline=inline, owner=owner))

    def _add(self, svc: Service) -> Service:
        """Put `svc` in the service table (and the open routes, when it is open to all)."""
        svc.open_to_all = allows_every_op(self._floor_scope, svc.name)
        self.services[svc.name] = svc
        if svc.open_to_all and not _routed_apart(svc.name):
            self._open_routes[svc.name.encode()] = svc
        return svc

    def owned_by(self, owner: str) -> set[str]:
        """The names of the in-process services `owner` registered."""
        return {name for name, svc in self.services.items() if svc.owner == owner}

    def remove_service(self, name: str, handler: Handler | InlineHandler | None = None) -> None:
        """Forget an in-process service (only if served by `handler`, when given).

        Requests it is already serving still finish.
        """
        svc = self.services.get(name)
        if svc is not None and svc.handler is not None and handler in (None, svc.handler):
            del self.services[name]
            self._open_routes.pop(name.encode(), None)

    def snapshot(self) -> dict[str, Any]:
        """Services, workers and counters, as `status` reports them."""
        return {
            "services": {name: s.snapshot() for name, s in sorted(self.services.items())},
            "rejected": dict(self.rejected),
            "in_flight": self.in_flight,
            "reply_groups": self._replies.snapshot(),
        }

    @property
    def in_flight(self) -> int:
        return sum(s.in_flight for s in self.services.values())

    async def call(
        self,
        service: str,
        body: Mapping[str, Any],
        on_partial: PartialSender | None = None,
    ) -> dict[str, Any]:
        """Call a service from in-process (no client socket); partials go to `on_partial`.

        A remote worker's service is queued for its workers like a socket request, and
        its replies come back here. The call counts like a request from a socket: it waits for the service's limiter,
        shows in its in-flight count and stats, and a shutdown that outlives its grace
        cancels it. The caller being cancelled cancels it too; errors are raised.
        """
        svc = self.services.get(service)
        if svc is None:
            raise NotFound(f"no service {service!r}")
        if svc.handler is None:
            return await self._call_remote(svc, body, on_partial)
        if svc.in_flight >= self.settings.queue_limit:
            svc.stats.rejected["overloaded"] += 1
            raise Overloaded(f"{service} has {self.settings.queue_limit} requests waiting")
        request = Request(service, dict(body), on_partial or _ignore_partial)
        started = time.monotonic()
        code: str | None = "internal"  # what the stats count this call as, until it succeeds
        svc.in_flight += 1
        try:
            if svc.inline:
                result = svc.handler(request)
            else:
                assert svc.limiter is not None
                with anyio.CancelScope() as scope:
                    self._scopes.add(scope)
                    try:
                        async with svc.limiter:
                            result = await svc.handler(request)  # type: ignore[misc]
                    finally:
                        self._scopes.discard(scope)
                if scope.cancelled_caught:
                    raise Cancelled(f"{service}: the box shut down before it finished")
            reply = dict(result or {})
            raise_if_error(reply)
            code = None
            return reply
        except BoxError as exc:
            code = exc.code
            raise
        except anyio.get_cancelled_exc_class():
            code = "cancelled"  # the caller stopped waiting
            raise
        finally:
            svc.in_flight -= 1
            svc.stats.finished(time.monotonic() - started, code)

    def alive(self, service: str) -> bool:
        """Whether `service` is served now: in-process, or by at least one live worker."""
        svc = self.services.get(service)
        return svc is not None and (svc.handler is not None or bool(svc.workers))

    async def _call_remote(
        self, svc: Service, body: Mapping[str, Any], on_partial: PartialSender | None
    ) -> dict[str, Any]:
        """Call a remote worker's service from in-process: queued and counted as a socket
        request is, with its replies handed back here instead of sent."""
        if not svc.workers:
            raise ServiceUnavailable(f"no worker serves {svc.name} now; start one and retry")
        if svc.in_flight + len(svc.queue) >= self.settings.queue_limit:
            svc.stats.rejected["overloaded"] += 1
            raise Overloaded(f"{svc.name} has {self.settings.queue_limit} requests waiting")
        send, receive = anyio.create_memory_object_stream[tuple[bool, list[FrameBytes]]](
            float("inf")
        )

        def sink(final: bool, frames: list[FrameBytes]) -> None:
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                send.send_nowait((final, frames))

        job = Job(b"", False, svc.name.encode(), encode_body(body), time.monotonic(), sink)
        svc.in_flight += 1
        svc.queue.append(job)
        self._assign(svc)
        try:
            with send, receive:
                async for final, frames in receive:
                    reply = decode_body(frames)
                    reply.pop(RID, None)
                    raise_if_error(reply)
                    if final:
                        return reply
                    if on_partial is not None:
                        await on_partial(reply)
        finally:
            if job in svc.queue:  # the caller gave up before a worker took it
                svc.queue.remove(job)
                svc.in_flight -= 1
        raise ServiceUnavailable(f"{svc.name}: the reply stream closed early; retry")

    # ----------------------------------------------------------------- lifecycle

    async def serve(self, *, task_status: anyio.abc.TaskStatus = anyio.TASK_STATUS_IGNORED) -> None:
        """Bind, then route messages until cancelled."""
        # A plain socket read from an event-loop reader callback: no futures or tasks per
        # message. pyzmq's FD is edge-triggered, so every send is followed by a re-check.
        router = self.context.socket(zmq.ROUTER, socket_class=zmq.Socket)
        router.linger = 0
        router.router_mandatory = 1
        router.maxmsgsize = self.settings.max_message_bytes
        router.sndhwm = router.rcvhwm = 10_000
        self._router = router
        loop = asyncio.get_running_loop()
        self._loop = loop
        try:
            self.bound = bind_all(
                router,
                self.settings.endpoints,
                self.curve,
                curve_loopback=self.settings.curve_on_loopback,
            )
            async with anyio.create_task_group() as tg:
                self._tg = tg
                loop.add_reader(router.FD, self._on_readable)
                try:
                    tg.start_soon(self._heartbeat_loop)
                    task_status.started()
                    self._on_readable()
                    await anyio.sleep_forever()
                finally:
                    loop.remove_reader(router.FD)
        finally:
            router.close(linger=0)

    def _on_readable(self) -> None:
        """Handle what is queued on the socket, in bounded batches so other tasks get turns.

        Replies made meanwhile to peers with many requests in flight are held in groups
        (`ReplyGroups`), sent when a group fills and when the socket is drained.
        """
        self._recheck_scheduled = False
        self._draining = True
        try:
            for taken in range(DRAIN_BATCH):
                frames = None
                # After one message, ask whether another is queued: most wake-ups bring one
                # (a client that waits for each reply), and the question costs a third of the
                # failed receive it saves. Past that, a backlog ends with one failed receive.
                if taken != 1 or self._router.get(zmq.EVENTS) & _POLLIN:
                    try:
                        frames, self._peer = recv_message(self._router)
                    except zmq.Again:
                        pass
                if frames is None:
                    if self._replies.flush():
                        continue  # a send may consume the socket's read edge: look again
                    self._replies.drained()
                    return
                self._replies.request_from(frames[0])
                if self.refused and connection_key(self._peer) in self.refused:
                    self.rejected["revoked"] += 1  # a key revoked since it connected
                    continue
                try:
                    self._dispatch(frames)
                except Exception:  # a bug here must cost one message, never the broker
                    self.rejected["internal"] += 1
                    log.exception("broker failed on a message; dropped it")
            self._replies.drained()
            self._schedule_recheck()  # the batch ran out: more may be waiting
        finally:
            self._draining = False
            self._replies.flush()  # the batch ran out, or the socket failed: send what is held

    def _schedule_recheck(self) -> None:
        if not self._recheck_scheduled and self._loop is not None:
            self._recheck_scheduled = True
            self._loop.call_soon(self._on_readable)

    def stop_accepting(self) -> None:
        """Refuse new requests (they get 'unavailable'); in-flight ones go on."""
        self.accepting = False

    async def drain(self, timeout: float) -> bool:
        """Wait until nothing is in flight, up to `timeout` seconds; True if drained."""
        with anyio.move_on_after(timeout):
            # in_flight moves in a dozen places on the hot path; a 20 ms look, only while the
            # box stops, costs less than an event set on every request.
            while self.in_flight:  # noqa: ASYNC110
                await anyio.sleep(0.02)
            return True
        return False

    async def abandon_in_flight(self) -> None:
        """Cancel local requests and fail remote ones, telling each client why."""
        for scope in list(self._scopes):
            scope.cancel()
        for worker in list(self._workers.values()):
            if worker.job is not None:
                self._remove_worker(worker, "the box shut down before the worker answered")
        for svc in self.services.values():
            while svc.queue:
                job = svc.queue.popleft()
                svc.in_flight -= 1
                self._reply_error(
                    job.client,
                    job.legacy,
                    job.service,
                    ServiceUnavailable("the box shut down before a worker took this request"),
                )
        await self.drain(0.5)  # let cancelled tasks send their last word

    # ----------------------------------------------------------------- routing

    def _dispatch(self, frames: list[FrameBytes]) -> None:
        if len(frames) < 2:
            self.rejected["short"] += 1
            return
        identity, rest = frames[0], frames[1:]
        legacy = rest[0] == b""
        if legacy:
            rest = rest[1:]
        if not rest:
            self.rejected["short"] += 1
        elif rest[0] == CLIENT:
            self._on_client(identity, legacy, rest[1:])
        elif rest[0] == WORKER:
            self._on_worker(identity, legacy, rest[1:])
        else:
            self.rejected["bad_header"] += 1

    def _on_client(self, client: bytes, legacy: bool, rest: list[FrameBytes]) -> None:
        if len(rest) < 2:
            self.rejected["short"] += 1
            self._reply_error(client, legacy, b"", ProtocolError("a request needs a service frame"))
            return
        command, service, body = rest[0], rest[1], rest[2:]
        if command not in (
            (WorkerCmd.REQUEST, ClientCmd.REQUEST) if legacy else (ClientCmd.REQUEST,)
        ):
            self.rejected["bad_command"] += 1
            self._reply_error(
                client, legacy, service, ProtocolError(f"unknown client command {command!r}")
            )
            return
        if len(service) > MAX_SERVICE_NAME:  # before `service` is a key: a large one is a view
            self.rejected["bad_service"] += 1
            self._reply_error(
                client,
                legacy,
                b"",
                ProtocolError(f"a service name has at most {MAX_SERVICE_NAME} bytes"),
            )
            return
        size = sum(map(len, body))
        if size > self._max_bytes:
            self.rejected["too_large"] += 1
            self._reply_error(
                client,
                legacy,
                service,
                TooLarge(
                    f"request of {size} bytes is over the {self._max_bytes}-byte limit; "
                    "split it, or raise bus.max_message_mb"
                ),
            )
            return
        svc = self._open_routes.get(service) or self._route(client, legacy, service, body)
        if svc is None:
            return
        if not self.accepting:
            svc.stats.rejected["shutting_down"] += 1
            self._reply_error(
                client,
                legacy,
                service,
                ServiceUnavailable("the box is shutting down; retry when it is back"),
            )
            return
        if svc.in_flight + len(svc.queue) >= self.settings.queue_limit:
            svc.stats.rejected["overloaded"] += 1
            self._reply_error(
                client,
                legacy,
                service,
                Overloaded(
                    f"{svc.name} has {self.settings.queue_limit} requests waiting; retry later"
                ),
            )
            return
        if svc.inline:
            self._run_inline(svc, client, legacy, service, body)
            return
        svc.in_flight += 1
        if svc.handler is not None:
            assert self._tg is not None
            self._tg.start_soon(self._run_local, svc, client, legacy, service, body)
        else:
            svc.queue.append(Job(client, legacy, service, body, time.monotonic()))
            self._assign(svc)

    def _route(
        self, client: bytes, legacy: bool, service: bytes, body: list[FrameBytes]
    ) -> Service | None:
        """The service a request not on an open route goes to, once its connection's scope
        allows it; None when the broker answered it itself (refused, MMI, cancel, unknown)."""
        name = service.decode("utf-8", "replace")
        svc = self.services.get(name)
        denied = None if svc is not None and svc.open_to_all else self._refusal(name, body)
        if denied is not None:
            self.rejected["forbidden"] += 1
            self._reply_error(client, legacy, service, denied)
            return None
        if _routed_apart(name):
            answer = self._on_cancel if name == CANCEL_SERVICE else self._on_mmi
            answer(client, legacy, service, body)
            return None
        if svc is None:
            self.rejected["unknown_service"] += 1
            error: BoxError = NotFound(f"no service {name!r}; services: {sorted(self.services)}")
            if self.starting:  # its component may not have registered it yet
                error = ServiceUnavailable(
                    f"the box is still starting (no {name!r} yet); retry in a moment"
                )
            self._reply_error(client, legacy, service, error)
            return None
        return svc

    def _run_inline(
        self, svc: Service, client: bytes, legacy: bool, service: bytes, frames: list[FrameBytes]
    ) -> None:
        started = time.monotonic()
        rid: Any = None
        try:
            body = decode_body(frames)
            rid = pop_request_id(body)
            reply = dict(svc.handler(Request(svc.name, body, _no_streaming)) or {})
        except BoxError as exc:
            reply = exc.to_wire()
        except Exception as exc:
            reply = failure_error(svc.name, exc).to_wire()
        svc.stats.finished(time.monotonic() - started, error_code(reply))
        self._send_nowait(self._final_frames(svc, client, legacy, service, reply, rid))

    def _final_frames(
        self,
        svc: Service,
        client: bytes,
        legacy: bool,
        service: bytes,
        reply: dict[str, Any],
        rid: Any,
    ) -> list[Any]:
        if rid is not None:
            reply[RID] = rid
        try:
            return self._client_frames(client, legacy, service, True, reply)
        except TypeError as exc:  # the handler returned something msgpack cannot carry
            log.error("service %s returned an unencodable reply: %s", svc.name, exc)
            error = BoxError(f"{svc.name} produced a reply that cannot be sent: {exc}").to_wire()
            return self._client_frames(client, legacy, service, True, {**error, RID: rid})

    async def _run_local(
        self, svc: Service, client: bytes, legacy: bool, service: bytes, frames: list[FrameBytes]
    ) -> None:
        started = time.monotonic()
        rid: Any = None
        key: tuple[bytes, Any] | None = None
        client_gone = False
        reply: dict[str, Any]

        async def send_partial(body: Mapping[str, Any]) -> None:
            nonlocal client_gone
            partial = {**body, RID: rid} if rid is not None else dict(body)
            if not await self._send(self._client_frames(client, legacy, service, False, partial)):
                client_gone = True
                scope.cancel()
                await anyio.lowlevel.checkpoint()

        with anyio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                body = decode_body(frames)
                rid = pop_request_id(body)
                if rid is not None:
                    key = (client, rid)
                    self._local[key] = scope
                assert svc.handler is not None and svc.limiter is not None
                async with svc.limiter:
                    reply = dict(await svc.handler(Request(svc.name, body, send_partial)) or {})
            except BoxError as exc:
                reply = exc.to_wire()
            except Exception as exc:
                reply = failure_error(svc.name, exc).to_wire()
        self._scopes.discard(scope)
        if key is not None:
            self._local.pop(key, None)
        svc.in_flight -= 1
        if scope.cancelled_caught:
            if client_gone:
                svc.stats.rejected["client_gone"] += 1
                return
            why = (
                "cancelled by the client"
                if self.accepting
                else "the box shut down before it finished"
            )
            reply = Cancelled(why).to_wire()
        svc.stats.finished(time.monotonic() - started, error_code(reply))
        await self._send(self._final_frames(svc, client, legacy, service, reply, rid))

    def _refusal(self, name: str, body: list[FrameBytes]) -> BoxError | None:
        """The Forbidden error for a request its connection's scope does not allow."""
        if allows_every_op(self._floor_scope, name):
            return None
        assert self._peer is not None
        scope, how = connection_scope(
            self._peer, self.settings.loopback_admin, self.curve is not None
        )
        return refusal(scope, how, name, body[0] if body else b"")

    def _on_cancel(
        self, client: bytes, legacy: bool, service: bytes, body: list[FrameBytes]
    ) -> None:
        try:
            request = decode_body(body)
        except ProtocolError as exc:
            self._reply_error(client, legacy, service, exc)
            return
        try:
            rid = pop_request_id(request, "rid")
        except ProtocolError as exc:
            self._reply_error(client, legacy, service, exc)
            return
        scope = self._local.get((client, rid))
        if scope is not None:
            scope.cancel()
        reply: dict[str, Any] = {"cancelled": scope is not None}
        if RID in request:
            reply[RID] = request[RID]
        self._send_nowait(self._client_frames(client, legacy, service, True, reply))

    def _on_mmi(self, client: bytes, legacy: bool, service: bytes, body: list[FrameBytes]) -> None:
        # RFC 8 (MMI): mmi.service answers "200" if the named service has a worker, else "404".
        if service == b"mmi.service" and body:
            svc = self.services.get(bytes(body[0]).decode("utf-8", "replace"))
            found = svc is not None and (svc.handler is not None or bool(svc.workers))
            code = b"200" if found else b"404"
        else:
            code = b"501"
        self._send_nowait(self._client_frames(client, legacy, service, True, [code]))

    # ----------------------------------------------------------------- remote workers

    def _on_worker(self, identity: bytes, legacy: bool, rest: list[FrameBytes]) -> None:
        if not rest:
            self.rejected["short"] += 1
            return
        command = rest[0]
        worker = self._workers.get(identity)
        if worker is not None:
            worker.expires = self._expiry()
        if command == WorkerCmd.READY:
            self._on_ready(identity, legacy, worker, rest[1:])
        elif command in (WorkerCmd.PARTIAL, WorkerCmd.FINAL):
            self._on_worker_reply(identity, legacy, worker, command == WorkerCmd.FINAL, rest[1:])
        elif command == WorkerCmd.HEARTBEAT:
            if worker is None:
                self._disconnect(identity, legacy)
        elif command == WorkerCmd.DISCONNECT:
            if worker is not None:
                self._remove_worker(worker, "the worker disconnected mid-request")
        else:
            self.rejected["bad_command"] += 1

    def _on_ready(
        self, identity: bytes, legacy: bool, worker: RemoteWorker | None, rest: list[FrameBytes]
    ) -> None:
        name = bytes(rest[0]).decode("utf-8", "replace") if rest else ""
        svc = self.services.get(name)
        if worker is not None or not name or (svc is not None and svc.handler is not None):
            # A second READY, no service name, or a name an in-process service owns.
            self.rejected["bad_ready"] += 1
            if worker is not None:
                self._remove_worker(worker, "the worker re-registered mid-request")
            self._disconnect(identity, legacy)
            return
        if svc is None:
            svc = self._add(Service(name))
        worker = RemoteWorker(identity, legacy, svc, self._expiry())
        self._workers[identity] = svc.workers[identity] = worker
        svc.idle.append(worker)
        log.info("worker %s ready for %s", identity.hex(), name)
        self._assign(svc)

    def _on_worker_reply(
        self,
        identity: bytes,
        legacy: bool,
        worker: RemoteWorker | None,
        final: bool,
        rest: list[FrameBytes],
    ) -> None:
        if worker is None:
            self.rejected["unknown_worker"] += 1
            self._disconnect(identity, legacy)
            return
        job = worker.job
        if job is None or len(rest) < 2 or rest[0] != job.client or rest[1] != b"":
            self.rejected["bad_worker_reply"] += 1
            return
        if job.sink is not None:
            job.sink(final, list(rest[2:]))
        else:
            self._send_nowait(
                self._client_frames(job.client, job.legacy, job.service, final, rest[2:])
            )
        if final:
            svc = worker.service
            svc.in_flight -= 1
            svc.stats.finished(time.monotonic() - job.received)
            worker.job = None
            svc.idle.append(worker)
            self._assign(svc)

    def _assign(self, svc: Service) -> None:
        while svc.queue and svc.idle:
            worker = svc.idle.popleft()
            job = svc.queue.popleft()
            worker.job = job
            self._send_nowait(
                self._worker_frames(
                    worker.identity, worker.legacy, WorkerCmd.REQUEST, [job.client, b"", *job.body]
                )
            )

    def _remove_worker(self, worker: RemoteWorker, why: str) -> None:
        svc = worker.service
        self._workers.pop(worker.identity, None)
        svc.workers.pop(worker.identity, None)
        if worker in svc.idle:
            svc.idle.remove(worker)
        if worker.job is not None:
            job, worker.job = worker.job, None
            svc.in_flight -= 1
            svc.stats.finished(time.monotonic() - job.received, "unavailable")
            self._fail_job(job, ServiceUnavailable(f"{svc.name}: {why}; retry the request"))

    def _disconnect(self, identity: bytes, legacy: bool) -> None:
        self._send_nowait(self._worker_frames(identity, legacy, WorkerCmd.DISCONNECT, []))

    def _expiry(self) -> float:
        return time.monotonic() + self.settings.heartbeat_s * self.settings.heartbeat_liveness

    async def _heartbeat_loop(self) -> None:
        while True:
            await anyio.sleep(self.settings.heartbeat_s)
            now = time.monotonic()
            for worker in list(self._workers.values()):
                if worker.expires < now:
                    log.warning(
                        "worker %s for %s expired", worker.identity.hex(), worker.service.name
                    )
                    self._remove_worker(worker, "the worker stopped answering")
                else:
                    self._send_nowait(
                        self._worker_frames(worker.identity, worker.legacy, WorkerCmd.HEARTBEAT, [])
                    )
            for svc in self.services.values():
                while svc.queue and now - svc.queue[0].received > self.settings.request_expiry_s:
                    job = svc.queue.popleft()
                    svc.in_flight -= 1
                    svc.stats.rejected["expired"] += 1
                    self._fail_job(
                        job,
                        ServiceUnavailable(
                            f"no worker for {svc.name} answered within {self.settings.request_expiry_s:g} s"
                        ),
                    )

    # ----------------------------------------------------------------- sending

    @staticmethod
    def _client_frames(
        client: bytes,
        legacy: bool,
        service: bytes,
        final: bool,
        body: dict[str, Any] | list[FrameBytes],
    ) -> list[Any]:
        # A dict is a body to encode; a list is frames already encoded (a worker's reply).
        payload = encode_body(body) if isinstance(body, dict) else body
        if legacy:  # majortomo: empty frame, worker numbers, no service frame
            return [client, b"", CLIENT, WorkerCmd.FINAL if final else WorkerCmd.PARTIAL, *payload]
        return [client, CLIENT, ClientCmd.FINAL if final else ClientCmd.PARTIAL, service, *payload]

    @staticmethod
    def _worker_frames(
        identity: bytes, legacy: bool, command: bytes, rest: list[FrameBytes]
    ) -> list[FrameBytes]:
        return [identity, *([b""] if legacy else []), WORKER, command, *rest]

    def _fail_job(self, job: Job, error: BoxError) -> None:
        if job.sink is not None:
            job.sink(True, list(encode_body(error.to_wire())))
        else:
            self._reply_error(job.client, job.legacy, job.service, error)

    def _reply_error(self, client: bytes, legacy: bool, service: bytes, error: BoxError) -> None:
        self._send_nowait(self._client_frames(client, legacy, service, True, error.to_wire()))

    def _try_send(self, frames: list[Any]) -> bool | None:
        """Send without waiting: True if sent, False if the peer is gone, None if queue full."""
        assert self._router is not None
        try:
            send_frames(self._router, frames)
        except zmq.Again:
            return None
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self.rejected["unroutable"] += 1
            return False
        finally:
            if not self._draining:
                # A send may consume the socket's read edge: look again from the loop.
                self._schedule_recheck()
        return True

    def _send_nowait(self, frames: list[Any]) -> None:
        """Send without waiting (in a group, while a backlog drains); count it if the peer's
        queue is full."""
        if self._draining:
            self._replies.add(frames)
        else:
            self._send_now(frames)

    def _send_now(self, frames: list[Any]) -> None:
        if self._try_send(frames) is None:
            self.rejected["send_queue_full"] += 1

    async def _send(self, frames: list[Any]) -> bool:
        """Send, waiting up to SEND_PATIENCE_S for room; False if the peer is gone."""
        deadline = time.monotonic() + SEND_PATIENCE_S
        while (sent := self._try_send(frames)) is None:
            if time.monotonic() > deadline:
                self.rejected["send_queue_full"] += 1
                return False
            await anyio.sleep(0.002)
        return sent
