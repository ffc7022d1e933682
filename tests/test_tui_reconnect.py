"""The dashboard says plainly when the box is not there, and reconnects by itself."""

from __future__ import annotations

import signal
from functools import partial

import anyio.to_thread
import pytest
from fixtures_box import BoxInThread, BoxProcess
from fixtures_tui import screen_text, wait_until

from aether_box.tui.app import BoxApp
from aether_box.tui.link import BoxLink
from aether_box.tui.widgets.health import HealthPanel

pytestmark = pytest.mark.anyio
SIZE = (140, 44)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # Textual runs on asyncio


def make_app(data_dir) -> BoxApp:
    endpoint = f"ipc://{data_dir}/bus.sock"
    return BoxApp(BoxLink(endpoint, data_dir, timeout_s=1.5, retry_min_s=0.2, retry_max_s=1.0))


def log_text(app: BoxApp) -> str:
    """Every line of the log tail, scrolled out of view or not (the new box logs a lot)."""
    return "\n".join(line.text for line in app.log_tail.lines)


def box_pid(app: BoxApp) -> int | None:
    return app.report.get("pid") if app.connected else None


async def test_starts_without_a_box_then_connects_when_one_runs(data_dir):
    app = make_app(data_dir)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: "DISCONNECTED" in screen_text(app), what="disconnected")
        text = screen_text(app)
        assert "no box is running at" in text and "reconnecting in" in text
        assert not app.connected
        box = await anyio.to_thread.run_sync(BoxInThread, data_dir)
        try:
            await wait_until(pilot, lambda: app.connected, timeout=15, what="connection")
            await wait_until(pilot, lambda: "● connected" in screen_text(app), what="the banner")
            assert "DISCONNECTED" not in screen_text(app)
        finally:
            await anyio.to_thread.run_sync(box.stop)


async def test_box_goes_away_and_comes_back(data_dir):
    first = await anyio.to_thread.run_sync(BoxProcess, data_dir)
    app = make_app(data_dir)
    second = None
    try:
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(
                pilot, lambda: box_pid(app) == first.process.pid, timeout=15, what="the first box"
            )

            # A graceful stop (SIGTERM): the dashboard notices within its poll timeout.
            await anyio.to_thread.run_sync(partial(first.stop, signal.SIGTERM))
            await wait_until(
                pilot,
                lambda: "DISCONNECTED" in screen_text(app),
                timeout=10,
                what="the disconnected banner",
            )
            assert not app.connected
            assert "disconnected:" in screen_text(app)  # and the log tail records it
            assert "_Lost" not in screen_text(app)  # words, not a Python class name

            # A new box on the same data dir: the dashboard finds it without any key press.
            second = await anyio.to_thread.run_sync(BoxProcess, data_dir)
            await wait_until(
                pilot, lambda: box_pid(app) == second.process.pid, timeout=20, what="the second box"
            )
            assert "● connected" in screen_text(app)
            assert app.query_one(HealthPanel).report["pid"] == second.process.pid
            # A different box answers: the log says so (its counters started over).
            restarted = f"the box restarted (pid {first.process.pid} -> {second.process.pid})"
            await wait_until(pilot, lambda: restarted in log_text(app), what="the restart note")

            # A crash (SIGKILL): no goodbye; the client finds the box gone within a second.
            await anyio.to_thread.run_sync(partial(second.stop, signal.SIGKILL))
            await wait_until(
                pilot,
                lambda: "DISCONNECTED" in screen_text(app),
                timeout=10,
                what="disconnect after a crash",
            )
            assert "no box is running" in screen_text(app)
    finally:
        for box in (first, second):
            if box is not None:
                box.stop()
