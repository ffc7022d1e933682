"""One grid member, seen from this box: heartbeats to it, what it pushed here, forwarding.

It is a federation PeerLink (aether_box.federation.link: its services offered here as
`member/service`, forwarding with partial replies, cancelling what it was serving when it
goes down) that watches its member by heartbeats instead of status reports. Each heartbeat
carries this box's load; the member answers whether it needs this box's capabilities
(they changed since it last heard them), and then gets them pushed. The member's own load
and capabilities come the other way, in its heartbeats to this box (see GridComponent).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio

from aether_box.bus.security import CurveKeys
from aether_box.client import AsyncClient
from aether_box.errors import BoxError, ServiceUnavailable
from aether_box.federation.book import PeerRecord
from aether_box.federation.link import PeerLink
from aether_box.grid.settings import GridSettings

if TYPE_CHECKING:
    from aether_box.context import BoxContext

__all__ = ["MemberLink"]

SERVICE = "grid"


class MemberLink(PeerLink):
    """Keeps one member reachable and known; see the module docstring."""

    def __init__(
        self,
        ctx: BoxContext,
        record: PeerRecord,
        keys: CurveKeys | None,
        settings: GridSettings,
        beat: Callable[[], dict[str, Any]],
        capabilities: Callable[[], dict[str, Any]],
    ) -> None:
        super().__init__(
            ctx,
            record,
            keys,
            refresh_s=settings.beat_s,
            request_timeout_s=settings.request_timeout_s,
        )
        self.settings = settings
        self._beat = beat  # this box's heartbeat body (its name, load, capabilities hash)
        self._capabilities = capabilities  # this box's capabilities, pushed when asked
        self.load: dict[str, Any] = {}  # the member's, from its last heartbeat here
        self.load_at: float | None = None
        self.capabilities: dict[str, Any] = {}  # the member's, as it last pushed them
        self.capabilities_hash: str | None = None
        self.placed: Counter[str] = Counter()  # per model: requests placed there, unfinished
        self.down_at: float | None = None  # when it was last seen going down

    def describe(self) -> dict[str, Any]:
        caps = self.capabilities
        return {
            **super().describe(),
            "load": self.load,
            "projectors": caps.get("projectors", []),
            "collections": caps.get("collections", []),
            "adapters": caps.get("adapters", []),
            "key": self.record.server_key,
        }

    async def _look(self, client: AsyncClient) -> bool:
        # After a missed heartbeat the connection is made anew: one refused before this box
        # was admitted there (the introduction racing ahead) is not retried by ZeroMQ.
        wait = self.settings.down_after_s
        try:
            with anyio.fail_after(wait):
                reply = await client.request(SERVICE, self._beat(), timeout=wait)
                if reply.get("need_capabilities"):
                    await client.request(
                        SERVICE, {"op": "capabilities", **self._capabilities()}, timeout=wait
                    )
        except TimeoutError:
            self._down(
                f"no heartbeat answer within {wait:g} s (stopped, unreachable, or this box's "
                "key was revoked there)"
            )
            return False
        except BoxError as exc:  # it answered, but not as a member would (left, revoked us)
            self._down(str(exc))
            return True
        if self.capabilities_hash is not None:
            self._offer(self.capabilities.get("services", []), self.capabilities.get("models", []))
        return True

    def _down(self, why: str) -> None:
        if self.state != "down":
            self.down_at = time.monotonic()
        super()._down(why)

    def heard(self, load: Mapping[str, Any]) -> None:
        """The member's heartbeat arrived with its load."""
        self.load, self.load_at = dict(load), time.monotonic()

    def pushed(self, capabilities: Mapping[str, Any], digest: str) -> None:
        """The member pushed its capabilities: offer its services and models here."""
        self.capabilities, self.capabilities_hash = dict(capabilities), digest
        self._offer(list(capabilities.get("services", [])), list(capabilities.get("models", [])))

    def model_load(self, model: str) -> Mapping[str, Any] | None:
        """The member's last reported load for `model` (None: not loaded there, idle)."""
        models = self.load.get("models") or {}
        found = models.get(model)
        return found if isinstance(found, Mapping) else None

    def has(self, service: str, model: str) -> bool:
        """Whether it is up and offers `service` with `model` installed."""
        return self.state == "up" and service in self.services and model in self.models

    async def request(
        self, service: str, body: Mapping[str, Any], *, timeout: float
    ) -> dict[str, Any]:
        """One request to the member's own `service` (grid messages, memory search)."""
        if self._client is None or self.state == "down":
            raise ServiceUnavailable(f"member {self.name} is down ({self.error})")
        return await self._client.request(service, body, timeout=timeout)
