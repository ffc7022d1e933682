"""One link to a peer box: a client of its bus, a regular look at its status, and forwarding.

While the peer answers, each of its own services is offered here as `name/service`: a request
to `lab/llm` goes to the peer `lab`'s `llm`, partial replies included, and a cancel here
cancels it there. When the peer stops answering, those services stay listed but answer
`unavailable` with the reason, and the link keeps looking until the peer is back.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import anyio
import zmq

from aether_box.bus.protocol import ROUTED
from aether_box.bus.security import CurveKeys
from aether_box.bus.service import Request
from aether_box.client import AsyncClient
from aether_box.contract import PeerForwarder
from aether_box.errors import BoxError, ServiceUnavailable, Timeout
from aether_box.federation.book import PeerRecord

if TYPE_CHECKING:
    from aether_box.context import BoxContext

__all__ = ["PeerLink"]

log = logging.getLogger(__name__)
# A peer's services that stay its own business: managing its links and its grid membership.
LOCAL_ONLY = frozenset({"federation", "grid"})


class PeerLink(PeerForwarder):
    """Keeps one peer's services reachable from this box's bus.

    `_look` is how it watches the peer (here: its status every `refresh_s`); a grid member
    link (aether_box.grid.link) watches by heartbeats instead and keeps the rest.
    """

    def __init__(
        self,
        ctx: BoxContext,
        record: PeerRecord,
        keys: CurveKeys | None,
        *,
        refresh_s: float,
        request_timeout_s: float,
    ) -> None:
        self.ctx = ctx
        self.record = record
        self.refresh_s = refresh_s
        self.request_timeout_s = request_timeout_s
        self.keys = keys
        self.state = "connecting"
        self.first_look = anyio.Event()  # set once the state is up or down, not connecting
        self.closed = anyio.Event()  # set once closed and its services are withdrawn
        self.error: str | None = None
        self.itself = False  # the endpoint turned out to be this box's own bus
        self.last_seen: float | None = None
        self.services: list[str] = []  # the peer's own services, as it last reported them
        self.models: list[str] = []  # the models installed there
        self._forwarders: dict[str, Any] = {}  # local service name -> its handler here
        self._client: AsyncClient | None = None
        self._scope = anyio.CancelScope()
        self._forwarding: set[anyio.CancelScope] = set()  # ended when the peer goes away

    @property
    def name(self) -> str:
        return self.record.name

    def describe(self) -> dict[str, Any]:
        """This link as the `peers` status section lists it."""
        return {
            "name": self.name,
            "endpoint": self.record.endpoint,
            "state": self.state,
            "last_seen_s": None
            if self.last_seen is None
            else round(time.monotonic() - self.last_seen, 1),
            "services": self.services,
            "models": self.models,
            "error": self.error,
            "curve": self.record.server_key is not None,
        }

    async def run(self) -> None:
        """Watch the peer until `close()`; then withdraw its services."""
        try:
            with self._scope:
                try:
                    curve = self._curve()
                except BoxError as exc:  # cannot even try: say why, stay listed until unlinked
                    self._down(str(exc))
                    await anyio.sleep_forever()
                try:
                    await self._watch(curve)
                except zmq.ZMQError as exc:  # an endpoint zmq refuses: report, never crash-loop
                    self._down(f"cannot connect to {self.record.endpoint[:80]!r}: {exc.strerror}")
                    await anyio.sleep_forever()
        finally:
            self._client = None
            for local, handler in self._forwarders.items():  # ours only: a new link
                self.ctx.remove_service(local, handler)  # may have the names now
            self.closed.set()

    def close(self) -> None:
        self._scope.cancel()

    async def _watch(self, curve: tuple[CurveKeys, bytes] | Literal[False]) -> None:
        while True:  # a peer that is down now may come back: keep watching
            async with AsyncClient(
                self.record.endpoint, timeout=self.refresh_s, curve=curve, check=False
            ) as client:
                self._client = client
                while True:
                    if not await self._look(client):
                        break  # this connection is no good: make a new one
                    await anyio.sleep(self.refresh_s)
            await anyio.sleep(self.refresh_s)

    def _curve(self) -> tuple[CurveKeys, bytes] | Literal[False]:
        if self.record.server_key is None:
            return False  # a peer without CURVE (loopback or ipc)
        if self.keys is None:
            raise ServiceUnavailable(
                f"peer {self.name} uses CURVE but this box has no keys; run `aether-box keys "
                "init`, then authorise this box's keys/server.key on the peer"
            )
        return self.keys, self.record.server_key.encode()

    async def _look(self, client: AsyncClient) -> bool:
        """Look at the peer once; False to look again through a new connection."""
        try:
            with anyio.fail_after(self.refresh_s + 1):
                report = await client.status(timeout=self.refresh_s)
        except (BoxError, TimeoutError) as exc:
            self._down(_why(exc, self.record))
            # No answer: ZeroMQ does not retry a CURVE handshake the peer refused, so a
            # fresh connection is what lets a key authorised there later get through.
            return not isinstance(exc, (Timeout, TimeoutError))
        if self._is_this_box(report):
            self.itself = True
            self._down(
                f"{self.record.endpoint} is this box's own bus: a box cannot link to itself; "
                f"`aether-box link --remove {self.name}`"
            )
            return True
        installed = (report.get("models") or {}).get("installed", [])
        self._offer(
            list(report.get("services", {})),
            [m["name"] for m in installed if isinstance(m, dict) and "name" in m],
        )
        return True

    def _is_this_box(self, report: Mapping[str, Any]) -> bool:
        """Whether a status report is this box's own (the same process, data dir and bus)."""
        bus = (report.get("endpoints") or {}).get("bus")
        return (
            report.get("pid") == os.getpid()
            and report.get("data_dir") == str(self.ctx.data_dir)
            and bus == list(self.ctx.view.broker.bound)
        )

    def _offer(self, reported: list[str], models: list[str]) -> None:
        """The peer answered with these services and models: offer them here, mark it up."""
        self.last_seen = time.monotonic()
        services = sorted(
            name
            for name in reported
            # Not the peer's own forwards (no loops), nor its link or grid management.
            if "/" not in name and name not in LOCAL_ONLY
        )
        for service in set(services) - set(self.services):
            local = self._local_name(service)
            self.ctx.remove_service(local)  # a just-unlinked peer's, not yet withdrawn
            forwarder = self._forwarder(service)
            try:
                self.ctx.add_service(local, forwarder)
                self._forwarders[local] = forwarder
            except ValueError:  # an external worker took the name: it keeps it
                log.warning(
                    "peer %s: %s is served by a worker here; not forwarding it", self.name, local
                )
        for service in set(self.services) - set(services):
            local = self._local_name(service)
            if (handler := self._forwarders.pop(local, None)) is not None:
                self.ctx.remove_service(local, handler)
        self.services = services
        self.models = sorted(models)
        self.first_look.set()
        if self.state != "up":
            self.state, self.error = "up", None
            log.info("peer %s is up at %s", self.name, self.record.endpoint)
            self.ctx.events.publish("peer.up", {"name": self.name, "services": services})

    def _down(self, why: str) -> None:
        if self.state != "down":
            log.warning("peer %s is unreachable: %s", self.name, why)
            self.ctx.events.publish("peer.down", {"name": self.name, "error": why})
        self.state, self.error = "down", why
        self.first_look.set()
        for scope in self._forwarding:  # their replies will not come: fail them now
            scope.cancel()

    def _local_name(self, service: str) -> str:
        return f"{self.name}/{service}"

    def _forwarder(self, service: str):
        async def forward(request: Request) -> Mapping[str, Any]:
            return await self.forward(service, request)

        return forward

    async def forward(
        self, service: str, request: Request, *, routed: bool = False
    ) -> Mapping[str, Any]:
        """Serve `request` with the peer's `service`, passing partial replies on.

        `routed` marks a request this box sends on by itself (a model it lacks): the peer
        then serves it or fails, never sends it further, so routing cannot loop.
        """
        if self.state != "up" or self._client is None:
            raise ServiceUnavailable(
                f"peer {self.name} is unreachable ({self.error or 'not connected yet'}); "
                f"this box looks again every {self.refresh_s:g} s"
            )
        body = {**request.body, ROUTED: True} if routed else request.body
        last: Mapping[str, Any] = {}
        with anyio.CancelScope() as scope:
            self._forwarding.add(scope)
            try:
                # Every reply but the last is a partial: pass each on once the next arrives.
                async for part in self._client.stream(
                    service, body, timeout=self.request_timeout_s
                ):
                    if last:
                        await request.partial(last)
                    last = part
            finally:
                self._forwarding.discard(scope)
        if scope.cancelled_caught:
            raise ServiceUnavailable(
                f"peer {self.name} stopped answering mid-request ({self.error}); retry "
                "when `aether-box status` shows it up"
            )
        return last


def _why(exc: BaseException, record: PeerRecord) -> str:
    if isinstance(exc, BoxError) and not isinstance(exc, Timeout):
        return str(exc)
    hint = (
        "is this box's keys/server.key in the peer's keys/authorized/, and is --server-key "
        "the peer's keys/server.key?"
        if record.server_key
        else "is it running, and if it uses CURVE, did you give its --server-key?"
    )
    return f"no answer from {record.endpoint}; {hint}"
