"""Runs one component for the box's life, and restarts it when it fails after starting.

A component that cannot start the first time stops the box (its error says why). One that
fails later is logged, published (`status.component_failed`), and served again after a
back-off; meanwhile its bus services answer "unavailable, restarting" instead of vanishing.
The services a component owns are those registered with its name as owner (BoxContext
does that by default), so the supervisor never guesses.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from aether_box.bus.service import Request
from aether_box.errors import ServiceUnavailable

if TYPE_CHECKING:
    from aether_box.bus.broker import Broker
    from aether_box.context import BoxContext
    from aether_box.contract import Component

__all__ = ["Supervisor"]

log = logging.getLogger(__name__)

FIRST_DELAY_S = 1.0
MAX_DELAY_S = 60.0
# A component that ran this long before failing starts again from the first delay.
STABLE_S = 60.0


class Supervisor:
    """Keeps one component serving; see the module docstring."""

    def __init__(self, ctx: BoxContext, broker: Broker, component: Component) -> None:
        self.ctx = ctx
        self.broker = broker
        self.component = component
        self.name: str = component.name
        self.restarts = 0
        self._report_first_start: Callable[[], None] | None = None
        self._started_at: float | None = None

    @property
    def services(self) -> set[str]:
        """The bus services the component owns now."""
        return self.broker.owned_by(self.name)

    async def run(self, *, task_status: anyio.abc.TaskStatus = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve the component, restarting it on failure, until cancelled."""
        self._report_first_start = task_status.started
        delay = FIRST_DELAY_S
        while True:
            self._started_at = None
            try:
                await self.component.serve(self.ctx, task_status=_Status(self._started))
            except Exception as exc:
                if self._report_first_start is not None:
                    raise  # never started: the box cannot run without it
                ran = time.monotonic() - (self._started_at or time.monotonic())
                if ran >= STABLE_S:
                    delay = FIRST_DELAY_S
                self._failed(exc, delay)
            else:
                if self._started_at is None:
                    self._started()  # finished without saying so: it had nothing to run
                return
            await anyio.sleep(delay)
            delay = min(delay * 2, MAX_DELAY_S)
            self.restarts += 1
            for name in self.services:  # the component registers them again as it starts
                self.broker.remove_service(name)

    def _started(self, _: Any = None) -> None:
        self._started_at = time.monotonic()
        if self._report_first_start is not None:  # the box waits for the first start only
            report, self._report_first_start = self._report_first_start, None
            report()
        else:
            log.info("component %s is serving again", self.name)
            self.ctx.events.publish(
                "status.component_restarted", {"component": self.name, "restarts": self.restarts}
            )

    def _failed(self, exc: Exception, delay: float) -> None:
        log.error("component %s failed (%r); restarting it in %g s", self.name, exc, delay)
        self.ctx.events.publish(
            "status.component_failed",
            {"component": self.name, "error": repr(exc), "restart_in_s": delay},
        )
        why = f"{self.name} failed ({exc!r}) and restarts in {delay:g} s; retry then"

        def unavailable(_: Request) -> dict[str, Any]:
            raise ServiceUnavailable(why)

        for name in self.services:
            self.broker.remove_service(name)
            self.broker.add_service(name, unavailable, inline=True, owner=self.name)


class _Status(anyio.abc.TaskStatus[None]):
    """A task_status whose started() the supervisor hears about."""

    def __init__(self, callback: Callable[[Any], None]) -> None:
        self._callback = callback

    def started(self, value: None = None) -> None:
        self._callback(value)
