"""Components that fail after starting are restarted, and their services say so meanwhile."""

from __future__ import annotations

from typing import Any, ClassVar

import anyio
import pytest
from fixtures_box import BoxInThread, wait_for
from rich.console import Console

from aether_box.box import load_components
from aether_box.client import ServiceUnavailable
from aether_box.context import BoxContext
from aether_box.errors import ConfigError
from aether_box.status_view import render_status


class Flaky:
    """Serves `flaky`; the first run fails when asked to ({"fail": true}), later runs stay up."""

    name: ClassVar[str] = "flaky"
    settings_class: ClassVar[type | None] = None
    runs = 0

    def __init__(self, ctx: BoxContext) -> None:
        self.fail = anyio.Event()

    async def serve(self, ctx: BoxContext, *, task_status: Any) -> None:
        Flaky.runs += 1
        run = Flaky.runs

        def handle(request: Any) -> dict[str, Any]:
            if request.body.get("fail"):
                self.fail.set()
            return {"run": run}

        ctx.add_service("flaky", handle, inline=True)
        task_status.started()
        if run == 1:
            await self.fail.wait()
            raise RuntimeError("the disk went away")
        await anyio.sleep_forever()


class NeverStarts:
    name: ClassVar[str] = "never"
    settings_class: ClassVar[type | None] = None

    def __init__(self, ctx: BoxContext) -> None:
        pass

    async def serve(self, ctx: BoxContext, *, task_status: Any) -> None:
        raise ConfigError("never.setting is wrong; fix it")


def _answer(client: Any) -> Any:
    try:
        return client.request("flaky")
    except ServiceUnavailable as exc:
        return exc


def test_a_failed_component_answers_unavailable_then_serves_again(data_dir):
    Flaky.runs = 0
    running = BoxInThread(data_dir, components=[*load_components(), Flaky])
    try:
        with running.client(timeout=5) as client:
            assert client.request("flaky", {"fail": True}) == {"run": 1}
            # It fails now; the restart waits 1 s, and meanwhile the service says why.
            wait_for(lambda: isinstance(_answer(client), ServiceUnavailable), 5, "the failure")
            with pytest.raises(ServiceUnavailable, match="the disk went away.*restarts in 1 s"):
                client.request("flaky")
            assert client.request("echo", {"ok": 1}) == {"ok": 1}  # the rest of the box serves
            wait_for(lambda: _answer(client) == {"run": 2}, 5, "the restart")
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
