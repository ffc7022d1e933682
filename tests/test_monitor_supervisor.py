"""Components that fail after starting are restarted, and their services say so meanwhile."""

from __future__ import annotations

import time

import anyio
import pytest
from fixtures_box import BoxInThread
from rich.console import Console

from aether_box.box import load_components
from aether_box.client import ServiceUnavailable
from aether_box.errors import ConfigError
from aether_box.status_view import render_status


class Flaky:
    """Serves `flaky`; the first run fails a moment after starting, later runs stay up."""

    name = "flaky"
    runs = 0

    def __init__(self, box) -> None:
        self.box = box

    async def serve(self, *, task_status) -> None:
        Flaky.runs += 1
        run = Flaky.runs
        self.box.broker.add_service("flaky", lambda request: {"run": run}, inline=True)
        task_status.started()
        if run == 1:
            await anyio.sleep(0.3)
            raise RuntimeError("the disk went away")
        await anyio.sleep_forever()


class NeverStarts:
    name = "never"

    def __init__(self, box) -> None:
        pass

    async def serve(self, *, task_status) -> None:
        raise ConfigError("never.setting is wrong; fix it")


def test_a_failed_component_answers_unavailable_then_serves_again(data_dir):
    Flaky.runs = 0
    running = BoxInThread(data_dir, components=[*load_components(), Flaky])
    try:
        with running.client(timeout=5) as client:
            assert client.request("flaky") == {"run": 1}
            time.sleep(0.5)  # it has failed; the restart waits 1 s
            with pytest.raises(ServiceUnavailable, match="the disk went away.*restarts in 1 s"):
                client.request("flaky")
            assert client.request("echo", {"ok": 1}) == {"ok": 1}  # the rest of the box serves
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    reply = client.request("flaky")
                    break
                except ServiceUnavailable:
                    time.sleep(0.1)
            assert reply == {"run": 2}
            report = client.status()
        assert report["components"]["flaky"] == {"restarts": 1, "services": ["flaky"]}
        console = Console(record=True, width=200)
        render_status(report, console)  # what `aether-box status` prints
        assert "components restarted after failures: flaky 1x" in console.export_text()
    finally:
        running.stop()


def test_a_component_that_cannot_start_stops_the_box_with_its_reason(data_dir):
    with pytest.raises(ConfigError, match="never.setting is wrong"):
        BoxInThread(data_dir, components=[*load_components(), NeverStarts])
