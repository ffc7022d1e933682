"""The dashboard against a real running box: what it shows, how often, and what its keys do."""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from typing import Any, ClassVar

import anyio
import pytest
from fixtures_box import BoxInThread, pipeline_echo, wait_for
from fixtures_tui import hit_routes, screen_text, table_rows, wait_until

from aether_box.box import load_components
from aether_box.bus.security import init_keys
from aether_box.monitor.observer import ObserverComponent
from aether_box.tui.app import BoxApp
from aether_box.tui.link import BoxLink
from aether_box.tui.screens.chat import ChatScreen
from aether_box.tui.screens.help import HelpScreen
from aether_box.tui.screens.prompt import PromptScreen
from aether_box.tui.screens.search import SearchScreen
from aether_box.tui.view import memory_rows, model_rows, peer_rows, projector_rows
from aether_box.tui.widgets.health import HealthPanel
from aether_box.tui.widgets.section import SectionTable

pytestmark = pytest.mark.anyio
SIZE = (140, 44)
# dashboard panel -> the status section it shows
ROWS_OF = {
    "models": model_rows,
    "memory": memory_rows,
    "projectors": projector_rows,
    "peers": peer_rows,
}
OPTIONAL_SECTIONS = {
    "models": "models",
    "memory": "memory",
    "projectors": "align",
    "peers": "peers",
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # Textual runs on asyncio


def make_app(box) -> BoxApp:
    return BoxApp(BoxLink(box.endpoint, box.data_dir, timeout_s=2.0, retry_max_s=1.0))


def box_status(box) -> dict:
    with box.client(timeout=5) as client:
        return client.status()


def services(app: BoxApp) -> dict[str, list[str]]:
    return table_rows(app.query_one("#services", SectionTable).table)


async def test_services_health_and_sections_show_the_real_box(box):
    def requests() -> dict:  # a blocking client: in a thread, never on the app's loop
        with box.client(timeout=5) as client:
            for i in range(7):
                client.request("echo", {"i": i})
            return client.status()

    status = await anyio.to_thread.run_sync(requests)
    app = make_app(box)
    async with app.run_test(size=SIZE) as pilot:
        rows = await wait_until(pilot, lambda: services(app).get("echo"), what="the echo row")
        assert rows[0] == "echo" and rows[1] == "local"
        assert rows[4] == "7", rows  # requests
        assert rows[5] == "0"  # errors
        assert float(rows[8]) >= 0 and float(rows[9]) >= float(rows[8])  # p50, p95 ms
        assert "status" in services(app)
        text = screen_text(app)
        assert "● connected" in text
        assert f"pid {os.getpid()}" in text  # the box runs in this process's thread
        assert str(box.data_dir) in text
        assert box.tcp_endpoint in text  # endpoints, tcp included
        assert "CPU" in text and "RSS" in text
        assert "set [tools] enabled = true" in text  # the hint whole, not read as markup
        # Sections other components add: a table when the box reports one, else "not available".
        for widget_id, key in OPTIONAL_SECTIONS.items():
            panel = app.query_one(f"#{widget_id}", SectionTable)
            if key in status:
                expected = ROWS_OF[widget_id](status[key])
                assert set(table_rows(panel.table)) == set(expected), widget_id
                assert panel.table.display == bool(expected)
                if not expected:  # the note wraps in a narrow panel: its first words
                    assert panel.empty.split(";")[0] in text, widget_id
            else:
                assert f"this box reports no {key}" in text, widget_id
                assert not panel.table.display


async def test_shows_http_routes_metrics_router_and_tool_runs(box):
    """What `status` reports about the gateway (each route, the newer /api/show, /api/ps and
    /v1/models/{model} included), /metrics, the router and the orchestrator is on screen."""
    report = await anyio.to_thread.run_sync(box_status, box)
    await anyio.to_thread.run_sync(hit_routes, report["http"]["url"])
    app = make_app(box)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: "http /api/ps" in services(app), what="the route rows")
        rows = services(app)
        assert rows["http /api/ps"][1:2] + rows["http /api/ps"][4:6] == ["http", "1", "0"]
        assert rows["http /api/show"][4:6] == ["1", "1"]  # a 404: no such model
        assert rows["http /v1/models/{model}"][4:6] == ["1", "1"]
        text = screen_text(app)
        assert f"metrics  {report['metrics']['url']}" in text
        assert "router   0 decisions, 0 fell back, 0 feedback" in text
        assert "         0 runs, 0 steps, 0 without a tool" in text
        assert str(box.data_dir) in text  # the rows above it leave it room


async def test_empty_panels_and_search_say_what_to_do(box):
    """A box with no models, collections, projectors or peers: each panel says how to get
    some, and a search with no collection to name says so instead of "missing field"."""
    app = make_app(box)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.reports_seen, what="a report")
        text = screen_text(app)
        for words in (
            "no models installed; pull one with",
            "no collections; create one with",
            "no projectors yet; fit one with",
            "no linked peers; link one with",
        ):
            assert words in text, (words, text)
        await pilot.press("s", *"kittens", "enter")
        status = app.screen.query_one("#search-status")
        await wait_until(pilot, lambda: "no collections yet" in str(status.content), what="hint")
        assert "aether-box memory create NAME" in screen_text(app)


class Flaky:
    """Serves `flaky`; its first run fails when asked to, the next stays up."""

    name: ClassVar[str] = "flaky"
    settings_class: ClassVar[type | None] = None

    def __init__(self, ctx: Any) -> None:
        self.fail = anyio.Event()

    async def serve(self, ctx: Any, *, task_status: Any) -> None:
        ctx.add_service("flaky", lambda request: self.fail.set() or {}, inline=True)
        task_status.started()
        if not Flaky.failed:
            await self.fail.wait()
            Flaky.failed = True
            raise RuntimeError("the disk went away")
        await anyio.sleep_forever()

    failed = False


async def test_log_shows_restarts_and_alerts_from_before_it_opened(data_dir):
    """What went wrong before the dashboard came (a component restarted, an alert) is in
    `status`; the log tail shows it too, instead of starting blank."""
    Flaky.failed = False
    box = await anyio.to_thread.run_sync(
        lambda: BoxInThread(data_dir, components=[*load_components(), Flaky])
    )
    try:

        def fail_once() -> None:
            with box.client(timeout=5) as client:
                client.request("flaky")
            wait_for(lambda: box_status(box)["components"]["flaky"]["restarts"], 10, "restart")
            observer = box.box.get(ObserverComponent)
            alert = {"kind": "test", "subject": "disk", "message": "disk [sda1] nearly full"}
            box.portal.call(observer._raise, alert, time.monotonic())

        await anyio.to_thread.run_sync(fail_once)
        app = make_app(box)
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: app.reports_seen, what="a report")
            text = screen_text(app)
            assert "component flaky restarted after failures (1x)" in text
            assert "earlier alert: disk [sda1] nearly full" in text
    finally:
        await anyio.to_thread.run_sync(box.stop)


async def test_health_shows_replies_sent_in_groups(box):
    """A client with many requests in flight gets its replies in groups: the count shows."""
    await anyio.to_thread.run_sync(pipeline_echo, box.endpoint)
    groups = (await anyio.to_thread.run_sync(box_status, box))["reply_groups"]
    assert groups["groups"] > 0
    app = make_app(box)
    async with app.run_test(size=SIZE) as pilot:
        text = await wait_until(
            pilot, lambda: "grouped" in screen_text(app) and screen_text(app), what="the count"
        )
        assert re.search(r"grouped +[\d,]+ replies in [\d,]+ sends", text), text


async def test_health_shows_each_way_ins_scope_and_the_event_queue(box):
    """Access scopes, refusals, and the events' byte bound and drops, as `status` has them."""
    from aether_box.bus.events import MAX_EVENT_BYTES
    from aether_box.client import Client
    from aether_box.errors import Forbidden

    def refuse_one() -> None:  # plain loopback tcp is `use`: dropping a collection is refused
        with Client(box.tcp_endpoint, data_dir=box.data_dir, timeout=5, curve=False) as tcp:
            with pytest.raises(Forbidden):
                tcp.request("memory", {"op": "drop", "collection": "c", "missing_ok": True})

    await anyio.to_thread.run_sync(refuse_one)
    # An event over the byte bound is dropped and counted under its topic.
    huge = {"payload": "x" * MAX_EVENT_BYTES}
    await anyio.to_thread.run_sync(box.portal.call, box.box.events.publish, "flood.huge", huge)
    app = make_app(box)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: "this dashboard" in screen_text(app), what="access")
        text = screen_text(app)
        assert "ipc admin, tcp use, CURVE off" in text
        assert "this dashboard admin; 1 refused" in text
        assert "1 dropped (flood 1)" in text
        assert "at most 15.6 MiB held a subscriber" in text
        assert str(box.data_dir) in text  # the rows above it leave it room


async def test_refreshes_every_second_with_request_rate(box):
    app = make_app(box)
    stop = threading.Event()

    def load() -> None:  # about 20 echo requests a second, from another thread
        with box.client(timeout=5) as client:
            while not stop.is_set():
                client.request("echo", {})
                time.sleep(0.05)

    loader = threading.Thread(target=load)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.connected, what="connection")
        loader.start()
        try:
            first_reports = app.reports_seen
            first_uptime = app.query_one(HealthPanel).report["uptime_s"]
            started = time.monotonic()
            await pilot.pause(3.0)
            elapsed = time.monotonic() - started
            # At least one status report per second (the poll), and heartbeats between them.
            assert app.reports_seen - first_reports >= int(elapsed) - 1, app.reports_seen
            assert app.query_one(HealthPanel).report["uptime_s"] >= first_uptime + 2
            rate = await wait_until(
                pilot,
                lambda: services(app)["echo"][3] != "-" and float(services(app)["echo"][3]) > 0,
                what="an echo request rate",
            )
            assert rate
            assert 5 <= float(services(app)["echo"][3]) <= 40, services(app)["echo"]
        finally:
            stop.set()
            loader.join()


async def test_ui_stays_responsive_while_the_box_hangs(box):
    """Bus calls never block the UI: its loop ticks and keys work while the box is frozen."""
    app = make_app(box)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.connected, what="connection")
        # Freeze the box's event loop for 3 s (a blocking call on its own thread): status
        # polls now wait on it, and time out.
        freezer = threading.Thread(target=box.portal.call, args=(time.sleep, 3.0))
        freezer.start()
        try:
            gaps = []
            last = time.monotonic()
            while freezer.is_alive():
                await anyio.sleep(0.02)  # runs on the app's own event loop
                now = time.monotonic()
                gaps.append(now - last)
                last = now
            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("escape")
        finally:
            freezer.join()
        # A bus call made on the UI's loop would have stalled it for seconds.
        assert max(gaps) < 1.0, f"the UI loop stalled {max(gaps):.2f} s"
        assert len(gaps) > 20


async def test_log_tail_shows_log_events(box):
    app = make_app(box)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.events_seen > 0, what="first event")
        logging.getLogger("aether_box.test_tui").warning("disk nearly full on %s", "sda1")
        await wait_until(
            pilot, lambda: "disk nearly full on sda1" in screen_text(app), what="the log line"
        )
        text = screen_text(app)
        assert "WARNING" in text and "aether_box.test_tui" in text
        assert "status.heartbeat" not in text  # heartbeats feed the health panel, not the tail


async def test_help_lists_the_keys_and_each_key_does_what_it_says(box):
    app = make_app(box)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.connected, what="connection")

        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        help_text = screen_text(app)
        for keys, what in [
            ("?", "Show this help"),
            ("c", "Chat with a model"),
            ("s", "Search the box's memory"),
            ("l", "Load a model"),
            ("u", "Unload a model"),
            ("r", "Reconnect"),
            ("q", "Quit"),
        ]:
            listed = re.compile(rf"\s{re.escape(keys)}\s.*{re.escape(what)}")
            assert any(listed.search(line) for line in help_text.splitlines()), (keys, help_text)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("f1")  # "? / f1"
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("q")  # closes the help, not the dashboard
        assert not isinstance(app.screen, HelpScreen) and app.return_code is None
        await pilot.press("slash")  # "s / /"
        assert isinstance(app.screen, SearchScreen)
        await pilot.press("escape")
        focused = app.focused
        await pilot.press("tab")  # "Move between tables"
        assert app.focused is not focused

        await pilot.press("c")
        assert isinstance(app.screen, ChatScreen)
        await pilot.press("escape")

        await pilot.press("s")
        assert isinstance(app.screen, SearchScreen)
        await pilot.press("escape")

        # Load asks which model; the box's answer (here: an error) is shown, not swallowed.
        await pilot.press("l")
        assert isinstance(app.screen, PromptScreen)
        await pilot.press(*"no-such-model", "enter")
        await wait_until(
            pilot,
            lambda: "load no-such-model failed" in screen_text(app),
            what="a load error",
        )
        await pilot.press("u")
        assert isinstance(app.screen, PromptScreen)
        await pilot.press("escape")  # cancelled: nothing is sent
        assert not isinstance(app.screen, PromptScreen)

        pid_before = app.reports_seen
        await pilot.press("r")
        await wait_until(pilot, lambda: "reconnecting now" in screen_text(app), what="reconnect")
        await wait_until(
            pilot, lambda: app.connected and app.reports_seen > pid_before, what="reconnected"
        )

        await pilot.press("q")
        await pilot.pause()
        assert app.return_code == 0  # quit ends the app (the box keeps running)
    assert await anyio.to_thread.run_sync(lambda: box_status(box)["pid"]) == os.getpid()


async def test_attaches_over_tcp_with_curve(data_dir):
    """Over tcp the dashboard uses the data dir's CURVE client keys, like any local client."""
    await anyio.to_thread.run_sync(init_keys, data_dir)
    box = await anyio.to_thread.run_sync(
        lambda: BoxInThread(data_dir, overrides={"bus": {"curve": "on"}})
    )
    try:
        app = BoxApp(BoxLink(box.tcp_endpoint, data_dir, timeout_s=2.0))
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: app.connected and app.events_seen > 0, what="link")
            assert app.report["curve"] is True
            assert f"● connected {box.tcp_endpoint}" in screen_text(app)
            assert "ipc admin, tcp use, CURVE on" in screen_text(app)
            assert "this dashboard its key's scope" in screen_text(app)
    finally:
        await anyio.to_thread.run_sync(box.stop)


async def test_a_small_terminal_keeps_every_panel_on_screen(box):
    """At 80 x 24 the box panel gives way (it is cut, not the panels below it): the services,
    models and memory panels all show, as the executable's check at that size expects."""
    app = make_app(box)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: services(app).get("echo"), what="the echo row")
        for panel in ("#services", "#models", "#memory"):
            region = app.query_one(panel).region
            assert region.height >= 3 and region.bottom <= 24, (panel, region)
