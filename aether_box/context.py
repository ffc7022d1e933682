"""`BoxContext`: the narrow view of the box that each component gets (see aether_box.contract).

A component registers services through it (owned by that component, so the supervisor knows
what to withdraw on a failure), calls other services in-process through the same limiter,
counters and cancellation as a request from a socket, publishes events, reads its config, and
finds other components by the interface they implement. It never sees the `Box` itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from aether_box.bus.service import Handler, InlineHandler, PartialSender
from aether_box.config import Config

if TYPE_CHECKING:
    from aether_box.bus.broker import Broker
    from aether_box.bus.events import Events
    from aether_box.bus.security import AllowList
    from aether_box.contract import Component

__all__ = ["BoxContext", "BoxView"]

T = TypeVar("T")


class BoxView:
    """What the box shares with every context: read-only facts about the whole box.

    The status component reads it to describe the box; other components rarely need it.
    """

    def __init__(
        self,
        broker: Broker,
        events: Events,
        components: Callable[[], Iterable[Component]],
        supervision: Callable[[], dict[str, dict[str, Any]]],
        ready: Callable[[], bool],
        allow_list: AllowList | None = None,
    ) -> None:
        self.broker = broker
        # The CURVE keys the bus admits, changeable while it runs; None without CURVE.
        self.allow_list = allow_list
        self.events = events
        self._components = components
        self._supervision = supervision
        self._ready = ready

    @property
    def ready(self) -> bool:
        """True once every component has started."""
        return self._ready()

    def components(self) -> list[Component]:
        """The running components, in start order."""
        return list(self._components())

    def supervision(self) -> dict[str, dict[str, Any]]:
        """Per component: its restarts and the services it owns."""
        return self._supervision()


class BoxContext:
    """One component's handle on the box; see the module docstring."""

    def __init__(self, config: Config, view: BoxView, owner: str) -> None:
        self.config = config
        self.view = view
        self.owner = owner
        self._found: dict[type, Any] = {}

    @property
    def data_dir(self) -> Path:
        return self.config.data_dir

    @property
    def events(self) -> Events:
        """The box's event publisher (``events.publish(topic, body)``)."""
        return self.view.events

    # ----------------------------------------------------------------- services

    def add_service(
        self,
        name: str,
        handler: Handler | InlineHandler,
        *,
        owner: str | None = None,
        concurrency: int | None = None,
        inline: bool = False,
    ) -> None:
        """Serve `name` with `handler`, owned by `owner` (default: this context's component).

        See Broker.add_service for `concurrency` and `inline`. A name already served raises
        ValueError saying by whom.
        """
        taken = self.view.broker.services.get(name)
        if taken is not None:
            by = f"component {taken.owner!r}" if taken.owner else "an external worker"
            raise ValueError(
                f"component {owner or self.owner!r} cannot serve {name!r}: {by} already "
                "serves it; choose another service name"
            )
        self.view.broker.add_service(
            name, handler, concurrency=concurrency, inline=inline, owner=owner or self.owner
        )

    def remove_service(self, name: str, handler: Handler | InlineHandler | None = None) -> None:
        """Withdraw an in-process service (only if served by `handler`, when given)."""
        self.view.broker.remove_service(name, handler)

    def has_service(self, name: str) -> bool:
        """Whether any service (local or a remote worker's) is registered as `name`."""
        return name in self.view.broker.services

    def service_alive(self, name: str) -> bool:
        """Whether `name` is served now: in-process, or by at least one live worker."""
        return self.view.broker.alive(name)

    def serves_in_process(self, name: str) -> bool:
        """Whether `name` is one of the box's in-process services (not a worker's)."""
        service = self.view.broker.services.get(name)
        return service is not None and service.handler is not None

    async def call(
        self,
        service: str,
        body: Mapping[str, Any],
        *,
        on_partial: PartialSender | None = None,
    ) -> dict[str, Any]:
        """Call a service (in-process, or a remote worker's) and return its final reply.

        Errors are raised.

        It counts in the service's stats, waits for its concurrency limiter, is cancelled
        with the caller and by a shutdown, exactly as a request from a socket would be.
        """
        return await self.view.broker.call(service, body, on_partial)

    # ----------------------------------------------------------------- other components

    def get(self, interface: type[T]) -> T | None:
        """The running component that implements `interface` (a class or a Protocol), if any."""
        found = self._found.get(interface)
        if found is not None and found in self.view.components():
            return found  # type: ignore[no-any-return]
        for component in self.view.components():
            if isinstance(component, interface):
                self._found[interface] = component
                return component
        return None
