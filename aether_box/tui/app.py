"""The dashboard app: box health, services, models, memory, projectors, peers and the log.

All data arrives as messages from the link (a Textual worker doing the bus I/O), so the
UI never waits on the box. Actions (load/unload, chat, search) run in their own workers
with timeouts and report back through notifications or their panes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.widgets import Footer, Header

from aether_box.client import BoxError
from aether_box.tui.link import BoxEvent, BoxLink, LinkDown, LinkUp, StaticLink, StatusReport
from aether_box.tui.screens.chat import ChatScreen
from aether_box.tui.screens.help import HelpScreen, key_rows
from aether_box.tui.screens.prompt import PromptScreen
from aether_box.tui.screens.search import SearchScreen
from aether_box.tui.view import (
    History,
    RateTracker,
    adapter_rows,
    baked_rows,
    grid_rows,
    http_routes,
    memory_rows,
    model_rows,
    peer_rows,
    projector_rows,
    route_rows,
    scalars,
    service_rows,
    tuner_rows,
    with_pins,
)
from aether_box.tui.widgets.health import HealthPanel
from aether_box.tui.widgets.logtail import LogTail
from aether_box.tui.widgets.models import ModelsPanel
from aether_box.tui.widgets.section import SectionTable

__all__ = ["BoxApp"]

SERVICE_COLUMNS = (
    "service",
    "kind",
    "wrk",
    "req/s",
    "requests",
    "errors",
    "queued",
    "active",
    "p50 ms",
    "p95 ms",
)
MEMORY_COLUMNS = ("collection", "model", "dim", "count", "index")
PROJECTOR_COLUMNS = ("projector", "method", "top-1 in", "top-1 out", "uses", "proxied", "agreement")
PEER_COLUMNS = ("peer", "state", "endpoint", "seen s", "services")
TUNER_COLUMNS = ("decision", "action", "subject", "state", "outcome")
DEFAULT_CHAT_MODEL = "smollm2"
# What an empty panel says: that it is empty, and how to fill it.
EMPTY = {
    "models": "no models installed; pull one with `aether-box models pull smollm2`",
    "memory": "no collections; create one with `aether-box memory create NAME --model minilm`",
    "projectors": "no projectors yet; fit one with `aether-box align fit --from MODEL --to MODEL`",
    "peers": "no linked peers; link one with `aether-box link ENDPOINT`",
    "tuner": "no tuner decisions yet (`aether-box tuner status` shows its modes)",
}


class BoxApp(App[None]):
    """`aether-box tui`: watch and drive a running box over the bus."""

    CSS_PATH = "app.tcss"
    TITLE = "Aether Box"
    BINDINGS = [
        Binding("question_mark,f1", "help", "Help", tooltip="Show this help"),
        Binding("c", "chat", "Chat", tooltip="Chat with a model; the reply streams token by token"),
        Binding("s,slash", "search", "Search", tooltip="Search the box's memory"),
        Binding("l", "load_model", "Load", tooltip="Load a model (asks which; Enter confirms)"),
        Binding(
            "u", "unload_model", "Unload", tooltip="Unload a model (asks which; Enter confirms)"
        ),
        Binding("r", "reconnect", "Reconnect", tooltip="Reconnect to the box now"),
        Binding(
            "tab",
            "app.focus_next",
            "Next panel",
            show=False,
            tooltip="Move between tables (arrows pick a row)",
        ),
        Binding("q", "quit", "Quit", tooltip="Quit the dashboard (the box keeps running)"),
    ]

    def __init__(
        self,
        link: BoxLink | StaticLink | None = None,
        *,
        endpoint: str | None = None,
        data_dir: str | None = None,
        chat_options: dict[str, Any] | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.link = link if link is not None else BoxLink(endpoint, data_dir)
        self.chat_options = chat_options or {}
        self.now = now
        self.rates = RateTracker()
        self.speeds = History()
        self.report: dict[str, Any] = {}
        self.connected = False
        self.reports_seen = 0
        self.events_seen = 0
        self.restarts_seen: dict[str, int] = {}  # per component, of the box shown
        self.sub_title = self.link.endpoint

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with Vertical(id="dashboard"):
            with Horizontal(id="top"):
                yield HealthPanel(id="health")
                yield SectionTable("services", SERVICE_COLUMNS, id="services", empty="no services")
            with Horizontal(id="middle"):
                yield ModelsPanel(self.speeds, id="models", empty=EMPTY["models"])
                yield SectionTable("memory", MEMORY_COLUMNS, id="memory", empty=EMPTY["memory"])
            with Horizontal(id="lower"):
                yield SectionTable(
                    "projectors", PROJECTOR_COLUMNS, id="projectors", empty=EMPTY["projectors"]
                )
                yield SectionTable("peers", PEER_COLUMNS, id="peers", empty=EMPTY["peers"])
                yield SectionTable("tuner", TUNER_COLUMNS, id="tuner", empty=EMPTY["tuner"])
            yield LogTail(id="log", now=self.now)
        yield Footer()

    def on_mount(self) -> None:
        # Kept as references: link messages may still arrive while the app tears down.
        self.health = self.query_one(HealthPanel)
        self.log_tail = self.query_one(LogTail)
        self.models_panel = self.query_one(ModelsPanel)
        self.panels = {
            name: self.query_one(f"#{name}", SectionTable)
            for name in ("services", "memory", "projectors", "peers", "tuner")
        }
        for panel in (self.models_panel, *self.panels.values()):
            panel.show_unavailable("waiting for the box…")
        self._start_link()

    def _start_link(self) -> None:
        self.run_worker(
            self.link.run(self.post_message),
            name="link",
            group="link",
            exclusive=True,
            exit_on_error=False,
        )

    # ------------------------------------------------------------------ link messages

    def on_link_up(self, message: LinkUp) -> None:
        self.connected = True
        self.rates.reset()
        self.sub_title = message.endpoint
        self.health.show_connected(message.endpoint)
        pid = message.report.get("pid", "?")
        self.log_tail.note(f"connected to {message.endpoint} (box pid {pid})", "green")
        before = self.report.get("pid")
        if before is not None and before != pid:  # counters, loaded models: all from zero
            self.log_tail.note(
                f"the box restarted (pid {before} -> {pid}): its counters started over", "yellow"
            )
        if before != pid:  # a box seen for the first time: what it said before we came
            self.restarts_seen.clear()
            for alert in message.report.get("alerts", [])[-3:]:
                self.log_tail.note(f"earlier alert: {alert.get('message')}", "bold yellow")

    def on_link_down(self, message: LinkDown) -> None:
        was_connected, self.connected = self.connected, False
        self.health.show_disconnected(
            message.endpoint, message.reason, message.retry_in, message.attempt
        )
        if was_connected or message.attempt == 1:
            self.log_tail.note(f"disconnected: {message.reason}", "bold red")

    def on_status_report(self, message: StatusReport) -> None:
        try:
            self._show_report(message)
        except NoMatches:  # a report that lands while the app quits: its widgets are gone
            return

    def _show_report(self, message: StatusReport) -> None:
        report = message.report
        self.report = report
        self.reports_seen += 1
        self.health.show_report(report)
        services = report.get("services") if isinstance(report.get("services"), dict) else {}
        routes = http_routes(report)  # the gateway's routes sit under the bus services
        rates = self.rates.update({**services, **routes}, message.received or None)
        self.panels["services"].show_rows(service_rows(services, rates) | route_rows(routes, rates))
        self._show_models(report)
        self._show_section("memory", report, memory_rows)
        self._show_section("projectors", report, projector_rows, key="align")
        # Linked peers and grid members share the panel: both are other boxes.
        self._show_section(
            "peers", report, lambda section: {**peer_rows(section), **grid_rows(report.get("grid"))}
        )
        self._show_section("tuner", report, tuner_rows)
        self._note_restarts(report)

    def _note_restarts(self, report: dict[str, Any]) -> None:
        """A line in the log for each component restarted since the last report (or before
        the dashboard came: `status` lists them, and so does this)."""
        components = report.get("components")
        for name, state in (components if isinstance(components, dict) else {}).items():
            count = state.get("restarts") if isinstance(state, dict) else None
            if isinstance(count, int) and count > self.restarts_seen.get(name, 0):
                self.restarts_seen[name] = count
                self.log_tail.note(
                    f"component {name} restarted after failures ({count}x); see the box's log",
                    "bold yellow",
                )

    def on_box_event(self, message: BoxEvent) -> None:
        self.events_seen += 1
        body = message.body
        if message.topic == "status.heartbeat":
            self.health.show_heartbeat(body)
        elif message.topic.startswith("metrics.") and isinstance(body.get("model"), str):
            tps = body.get("tokens_per_s")
            if isinstance(tps, int | float) and not isinstance(tps, bool):
                self.record_speed(body["model"], float(tps))
        self.log_tail.add_event(message.topic, body)

    def _show_models(self, report: dict[str, Any]) -> None:
        panel = self.models_panel
        section = report.get("models")
        if section is None:
            panel.show_unavailable("not available: this box reports no models")
            return
        rows = model_rows(section)
        for name, (_, tps) in rows.items():
            if tps is not None:
                self.record_speed(name, tps)
        panel.show_rows(
            with_pins({name: cells for name, (cells, _) in rows.items()}, report.get("sessions"))
            | baked_rows(section)
            | adapter_rows(report.get("adapters")),
            _summary(section, skip=("loaded", "installed", "models")),
        )

    def _show_section(
        self,
        widget_id: str,
        report: dict[str, Any],
        rows_of: Callable[[Any], Any],
        key: str | None = None,
    ) -> None:
        panel = self.panels[widget_id]
        section = report.get(key or widget_id)
        if section is None:
            panel.show_unavailable(f"not available: this box reports no {key or widget_id} section")
            return
        panel.show_rows(rows_of(section), _summary(section))

    # ----------------------------------------------------------------------- actions

    def action_help(self) -> None:
        sections = [
            ("dashboard", key_rows(self.BINDINGS)),
            ("chat pane", key_rows(ChatScreen.BINDINGS) + [("Enter", "Send the message")]),
            ("memory search", key_rows(SearchScreen.BINDINGS) + [("Enter", "Search")]),
        ]
        self.push_screen(HelpScreen(sections))

    def action_chat(self) -> None:
        self.push_screen(
            ChatScreen(
                self.link, self._chat_model(), options=self.chat_options, on_speed=self.record_speed
            )
        )

    def action_search(self) -> None:
        memory = self.panels["memory"]
        collection = memory.selected_key() or ""
        known = list(memory_rows(self.report.get("memory"))) if "memory" in self.report else None
        self.push_screen(SearchScreen(self.link, collection, collections=known))

    def action_load_model(self) -> None:
        self._ask_model("load")

    def action_unload_model(self) -> None:
        self._ask_model("unload")

    def action_reconnect(self) -> None:
        self.log_tail.note("reconnecting now")
        self._start_link()  # exclusive: replaces the running link worker

    def record_speed(self, model: str, tokens_per_s: float) -> None:
        """A generation's tokens/s, for the sparkline.

        The same generation is seen up to three times (chat reply, `metrics.` event, the
        status figure rounded to 0.1), so a value within rounding of the last one is skipped.
        """
        last = self.speeds.last(model)
        if last is not None and abs(last - tokens_per_s) <= 0.051:
            return
        self.speeds.add(model, tokens_per_s)
        self.models_panel.refresh_sparkline()

    def _chat_model(self) -> str:
        """The highlighted model unless it is an encoder, else a loaded GGUF, else the default."""
        rows = {name: cells for name, (cells, _) in model_rows(self.report.get("models")).items()}
        selected = self.models_panel.selected_key()
        if selected in rows and rows[selected][1] != "onnx-encoder":
            return selected
        loaded = [
            name
            for name, cells in rows.items()
            if cells[2].startswith("loaded") and cells[1] == "gguf"
        ]
        return loaded[0] if loaded else DEFAULT_CHAT_MODEL

    def _ask_model(self, op: str) -> None:
        selected = self.models_panel.selected_key() or ""

        def answered(model: str | None) -> None:
            if model:
                self.model_op(op, model)

        self.push_screen(PromptScreen(f"{op.capitalize()} which model?", selected), answered)

    @work(group="model-ops")
    async def model_op(self, op: str, model: str) -> None:
        """Ask the `llm` service to load or unload `model`, and say how it went."""
        self.notify(f"{op}ing {model}…", timeout=2)
        try:
            reply = await self.link.request("llm", {"op": op, "model": model}, timeout=120.0)
        except BoxError as exc:
            message = f"{op} {model} failed: {exc.message}"
            self.notify(message, severity="error", timeout=8)
            self.log_tail.note(message, "bold red")  # the toast fades; the log keeps it
            return
        shown = ("memory_mb", "device", "load_s", "unloaded")  # what a user wants to know
        detail = ", ".join(f"{k} {reply[k]}" for k in shown if k in reply)
        message = f"{op}ed {model}" + (f" ({detail})" if detail else "")
        self.notify(message, timeout=4)
        self.log_tail.note(message, "green")


def _summary(section: Any, skip: tuple[str, ...] = ()) -> str:
    """A one-line summary of a section's top-level figures (e.g. budget, gate)."""
    if not isinstance(section, dict):
        return ""
    parts = []
    for key, value in scalars(section):
        if key in skip or "/" in value:  # paths are long and say little at a glance
            continue
        for suffix, unit in (("_mb", " MB"), ("_ms", " ms"), ("_s", " s")):
            if key.endswith(suffix):
                key, value = key[: -len(suffix)], value + unit
                break
        parts.append(f"{key.replace('_', ' ')} {value}")
    return " · ".join(parts)
