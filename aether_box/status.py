"""The `status` service and the `status.heartbeat` event: how the box describes itself."""

from __future__ import annotations

import os
import time
from typing import Any, ClassVar

import anyio
import anyio.abc
import psutil

from aether_box import __version__
from aether_box.bus.events import QUEUE_BYTES
from aether_box.bus.service import Request
from aether_box.context import BoxContext
from aether_box.contract import StatusReporter
from aether_box.errors import NotFound

__all__ = ["StatusComponent"]


class StatusComponent(StatusReporter):
    """Answers `status` and publishes a heartbeat event every second.

    `status` runs inline on the broker's loop (it only reads counters), so it answers at
    once even while every other service is busy. Components add their own sections to the
    report through their `status_section()` (see aether_box.contract).
    """

    name: ClassVar[str] = "status"
    settings_class: ClassVar[type | None] = None

    def __init__(self, ctx: BoxContext) -> None:
        self.ctx = ctx
        self.view = ctx.view
        self.started = time.time()
        self._process: psutil.Process | None = None
        # psutil reads /proc files: done in a worker thread, never on the loop.
        self._figures: dict[str, Any] = {
            "cpu_percent": None,
            "rss_mb": None,
            "threads": None,
            "system_memory_percent": None,
        }

    async def serve(
        self,
        ctx: BoxContext,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        if self._process is None:
            self._process = await anyio.to_thread.run_sync(_open_process)
        self._figures = await anyio.to_thread.run_sync(self._read_process)
        ctx.add_service("status", self.handle, inline=True)
        task_status.started()
        while True:
            await anyio.sleep(1.0)
            self._figures = await anyio.to_thread.run_sync(self._read_process)
            ctx.events.publish("status.heartbeat", self.summary())

    def handle(self, request: Request) -> dict[str, Any]:
        op = request.body.get("op", "get")  # a bare request asks for everything
        if op == "get":
            return self.report()
        if op == "summary":
            return self.summary()
        raise NotFound(f"status has no op {op!r}; ops: ['get', 'summary']")

    def report(self) -> dict[str, Any]:
        """Everything: process, endpoints, services, counters and component sections."""
        view = self.view
        report = {**self.summary(), **view.broker.snapshot()}
        report["endpoints"] = {"bus": view.broker.bound, "events": view.events.bound}
        report["events"] = {
            "published": view.events.published,
            "dropped": dict(view.events.dropped),
            "seq": view.events.seq,  # a subscriber's gap in `seq` is what it missed
            "queue_bytes_max": QUEUE_BYTES,  # what a subscriber that stops reading costs
        }
        report["data_dir"] = str(self.ctx.data_dir)
        report["curve"] = view.broker.curve is not None
        # What each way in may do (aether_box.bus.scopes); refusals: rejected["forbidden"].
        report["access"] = {
            "ipc": "admin",
            "loopback_tcp": "admin" if view.broker.settings.loopback_admin else "use",
            "curve": "the key's scope",
        }
        report["components"] = view.supervision()
        for component in view.components():
            section = getattr(component, "status_section", None)
            if section is None:
                continue
            key = getattr(component, "status_key", component.name)
            try:
                value = section()
            except Exception as exc:  # one broken section must not hide the rest
                value = {"error": repr(exc)}
            if value is not None:
                report[key] = value
        return report

    def summary(self) -> dict[str, Any]:
        """The small part sent with every heartbeat."""
        return {
            "version": __version__,
            "ready": self.view.ready,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started, 3),
            **self._figures,
            "in_flight": self.view.broker.in_flight,
            "rejected_total": sum(self.view.broker.rejected.values()),
        }

    def _read_process(self) -> dict[str, Any]:
        assert self._process is not None
        with self._process.oneshot():
            return {
                "cpu_percent": self._process.cpu_percent(None),
                "rss_mb": round(self._process.memory_info().rss / 2**20, 1),
                "threads": self._process.num_threads(),
                # The machine's, not the box's: the tuner unloads idle models under pressure.
                "system_memory_percent": psutil.virtual_memory().percent,
            }


def _open_process() -> psutil.Process:
    process = psutil.Process(os.getpid())
    process.cpu_percent(None)  # the first call primes the CPU counter
    return process
