"""The `federation` service: link, unlink and list peers; links are kept across restarts.

A link is one-way: this box becomes a client of the peer's bus and offers the peer's services
here as `peer/service`. Over tcp to a peer with CURVE, this box presents its own keypair
(keys/server.key), so the peer admits it by that public key in its keys/authorized/.
"""

from __future__ import annotations

from typing import Any, ClassVar

import anyio
import anyio.abc

from aether_box.bus.security import CurveKeys, server_keys
from aether_box.bus.service import OpService, Request, require, require_name
from aether_box.context import BoxContext
from aether_box.contract import PeerDirectory
from aether_box.errors import BadRequest, NotFound
from aether_box.federation.book import PeerBook, PeerRecord, default_name
from aether_box.federation.link import PeerLink
from aether_box.federation.settings import FederationSettings

__all__ = ["FederationComponent"]

_ITSELF = (
    "{endpoint} is this box's own bus (or key): a box cannot link to itself; give another "
    "box's endpoint and keys/server.key (`aether-box status` there shows its endpoint)"
)


class FederationComponent(OpService, PeerDirectory):
    """Serves `federation` and runs one PeerLink per linked peer."""

    name: ClassVar[str] = "federation"
    settings_class: ClassVar[type | None] = FederationSettings
    status_key: ClassVar[str] = "peers"

    def __init__(self, ctx: BoxContext) -> None:
        self.ctx = ctx
        self.settings = ctx.config.get(FederationSettings)
        assert self.settings.peers_file is not None
        self.book = PeerBook(self.settings.peers_file)
        self.links: dict[str, PeerLink] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._keys: CurveKeys | None = None

    async def serve(
        self,
        ctx: BoxContext,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        await anyio.to_thread.run_sync(self.book.load)
        self._keys = await anyio.to_thread.run_sync(server_keys, ctx.data_dir)
        async with anyio.create_task_group() as tg:
            self._tg = tg
            for record in self.book.peers.values():
                self._start(record)
            ctx.add_service("federation", self)
            task_status.started()
            await anyio.sleep_forever()  # links made later run in this task group too

    def describe(self) -> dict[str, Any]:
        """The `peers` section of `status`."""
        invalid = [
            {"name": name, "state": "invalid", "error": why, "services": [], "models": []}
            for name, why in self.book.invalid.items()
        ]
        return {"peers": [link.describe() for link in self.links.values()] + invalid}

    def status_section(self) -> dict[str, Any]:
        return self.describe()

    def peer_for_model(self, service: str, model: str) -> PeerLink | None:
        """A linked peer that answers now and offers `service` with `model` installed."""
        for link in self.links.values():
            if link.state == "up" and service in link.services and model in link.models:
                return link
        return None

    async def op_peers(self, request: Request) -> dict[str, Any]:
        return self.describe()

    async def op_link(self, request: Request) -> dict[str, Any]:
        endpoint = require(request.body, "endpoint", str)
        name = request.body.get("name") or default_name(endpoint)
        key = request.body.get("server_key")
        record = PeerRecord(str(name), endpoint, key if isinstance(key, str) else None)
        name = record.name  # checked: a short plain name
        if self._keys is not None and record.server_key == self._keys.public.decode():
            raise BadRequest(_ITSELF.format(endpoint=endpoint))
        if name in self.book.peers:
            raise BadRequest(
                f"a peer named {name!r} is already linked ({self.book.peers[name].endpoint}); "
                "unlink it first, or choose another --name"
            )
        taken = next(
            (s for s in sorted(self.ctx.view.broker.services) if s.startswith(f"{name}/")), None
        )
        if taken is not None:  # a grid member's (or a worker's): a link would take it over
            raise BadRequest(
                f"{taken} is already served here (by a grid member or a worker named "
                f"{name!r}); choose another --name"
            )
        for other in self.book.peers.values():
            if other.endpoint == record.endpoint:  # two names for one peer: twice the work
                raise BadRequest(
                    f"{record.endpoint} is already linked as {other.name!r}; to call it "
                    f"{name!r}, unlink {other.name!r} first (`aether-box link --remove "
                    f"{other.name}`)"
                )
        self.book.peers[record.name] = record
        await anyio.to_thread.run_sync(self.book.save)
        link = self._start(record)
        # Give the first look a moment, so the reply can already say whether it answers.
        with anyio.move_on_after(self.settings.refresh_s + 1):
            await link.first_look.wait()
        if link.itself:  # kept, it would offer this box's services to itself
            await self._remove(name)
            raise BadRequest(_ITSELF.format(endpoint=endpoint))
        return {"linked": link.describe()}

    async def op_unlink(self, request: Request) -> dict[str, Any]:
        name = require_name(request.body, "name")
        if self.book.invalid.pop(name, None) is not None:  # saved, never started: forget it
            await anyio.to_thread.run_sync(self.book.save)
            return {"unlinked": name}
        if name not in self.book.peers:
            raise NotFound(f"no linked peer {name!r}; linked: {sorted(self.book.peers)}")
        await self._remove(name)
        self.ctx.events.publish("peer.removed", {"name": name})
        return {"unlinked": name}

    async def _remove(self, name: str) -> None:
        """Forget peer `name` and stop its link; its services are gone when this returns."""
        del self.book.peers[name]
        await anyio.to_thread.run_sync(self.book.save)
        link = self.links.pop(name, None)
        if link is not None:
            link.close()
            with anyio.move_on_after(self.settings.refresh_s + 1):
                await link.closed.wait()

    def _start(self, record: PeerRecord) -> PeerLink:
        assert self._tg is not None
        link = self.links[record.name] = PeerLink(
            self.ctx,
            record,
            self._keys,
            refresh_s=self.settings.refresh_s,
            request_timeout_s=self.settings.request_timeout_s,
        )
        self._tg.start_soon(link.run)
        return link
