"""The `status` service and the `status.heartbeat` event: how the box describes itself."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import psutil

from aether_box import __version__
from aether_box.bus.service import OpService, Request

if TYPE_CHECKING:
    from aether_box.box import Box

__all__ = ["StatusComponent"]


class StatusComponent(OpService):
    """Answers `status` and publishes a heartbeat event every second."""

    name = "status"

    def __init__(self, box: Box) -> None:
        self.box = box
        self.started = time.time()
        self._process = psutil.Process(os.getpid())
        self._process.cpu_percent(None)  # first call primes the CPU counter
        # Other components add their own sections to the status reply here.
        self.sections: dict[str, Callable[[], Any]] = {}

    async def serve(self, *, task_status: anyio.abc.TaskStatus = anyio.TASK_STATUS_IGNORED) -> None:
        self.box.broker.add_service("status", self)
        task_status.started()
        while True:
            await anyio.sleep(1.0)
            self.box.events.publish("status.heartbeat", self.summary())

    async def __call__(self, request: Request) -> dict[str, Any]:
        if "op" not in request.body:
            request.body["op"] = "get"  # a bare request asks for everything
        return await super().__call__(request)

    async def op_get(self, request: Request) -> dict[str, Any]:
        """Everything: process, endpoints, services, counters and component sections."""
        report = {**self.summary(), **self.box.broker.snapshot()}
        report["endpoints"] = {"bus": self.box.broker.bound, "events": self.box.events.bound}
        report["events"] = {"published": self.box.events.published, "dropped": dict(self.box.events.dropped)}
        report["data_dir"] = str(self.box.config.data_dir)
        report["curve"] = self.box.broker.curve is not None
        for name, section in self.sections.items():
            report[name] = section()
        return report

    def summary(self) -> dict[str, Any]:
        """The small part sent with every heartbeat."""
        with self._process.oneshot():
            memory = self._process.memory_info()
            return {
                "version": __version__,
                "pid": self._process.pid,
                "uptime_s": round(time.time() - self.started, 3),
                "cpu_percent": self._process.cpu_percent(None),
                "rss_mb": round(memory.rss / 2**20, 1),
                "threads": self._process.num_threads(),
                "in_flight": self.box.broker.in_flight,
                "rejected_total": sum(self.box.broker.rejected.values()),
            }
