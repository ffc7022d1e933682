"""The `status` service and the `status.heartbeat` event: how the box describes itself."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import psutil

from aether_box import __version__
from aether_box.bus.service import Request
from aether_box.errors import NotFound

if TYPE_CHECKING:
    from aether_box.box import Box

__all__ = ["StatusComponent"]


class StatusComponent:
    """Answers `status` and publishes a heartbeat event every second.

    `status` runs inline on the broker's loop (it only reads counters), so it answers at
    once even while every other service is busy.
    """

    name = "status"

    def __init__(self, box: Box) -> None:
        self.box = box
        self.started = time.time()
        self._process = psutil.Process(os.getpid())
        self._process.cpu_percent(None)  # first call primes the CPU counter
        # psutil reads /proc files: done once a second in a worker thread, never on the loop.
        self._figures = self._read_process()
        # Other components add their own sections to the status reply here.
        self.sections: dict[str, Callable[[], Any]] = {}

    async def serve(self, *, task_status: anyio.abc.TaskStatus = anyio.TASK_STATUS_IGNORED) -> None:
        self.box.broker.add_service("status", self.handle, inline=True)
        task_status.started()
        while True:
            await anyio.sleep(1.0)
            self._figures = await anyio.to_thread.run_sync(self._read_process)
            self.box.events.publish("status.heartbeat", self.summary())

    def handle(self, request: Request) -> dict[str, Any]:
        op = request.body.get("op", "get")  # a bare request asks for everything
        if op == "get":
            return self.report()
        if op == "summary":
            return self.summary()
        raise NotFound(f"status has no op {op!r}; ops: ['get', 'summary']")

    def report(self) -> dict[str, Any]:
        """Everything: process, endpoints, services, counters and component sections."""
        report = {**self.summary(), **self.box.broker.snapshot()}
        report["endpoints"] = {"bus": self.box.broker.bound, "events": self.box.events.bound}
        report["events"] = {
            "published": self.box.events.published,
            "dropped": dict(self.box.events.dropped),
        }
        report["data_dir"] = str(self.box.config.data_dir)
        report["curve"] = self.box.broker.curve is not None
        report["components"] = {
            name: {"restarts": s.restarts, "services": sorted(s.services)}
            for name, s in self.box.supervisors.items()
        }
        for name, section in self.sections.items():
            try:
                report[name] = section()
            except Exception as exc:  # one broken section must not hide the rest
                report[name] = {"error": repr(exc)}
        return report

    def summary(self) -> dict[str, Any]:
        """The small part sent with every heartbeat."""
        return {
            "version": __version__,
            "ready": self.box.ready,
            "pid": self._process.pid,
            "uptime_s": round(time.time() - self.started, 3),
            **self._figures,
            "in_flight": self.box.broker.in_flight,
            "rejected_total": sum(self.box.broker.rejected.values()),
        }

    def _read_process(self) -> dict[str, Any]:
        with self._process.oneshot():
            return {
                "cpu_percent": self._process.cpu_percent(None),
                "rss_mb": round(self._process.memory_info().rss / 2**20, 1),
                "threads": self._process.num_threads(),
            }
