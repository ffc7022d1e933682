"""A live tail of the box's log events (and other notable events, but not heartbeats)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from rich.text import Text
from textual.widgets import RichLog

__all__ = ["LogTail", "format_event"]

LEVEL_STYLES = {
    "debug": "dim",
    "info": "",
    "warning": "yellow",
    "error": "bold red",
    "critical": "bold red reverse",
}
# Every second or few: they would drown the tail (the panels show what they carry).
QUIET_TOPICS = ("status.heartbeat", "metrics.snapshot")


def _clock(ts: Any) -> str:
    if isinstance(ts, int | float) and not isinstance(ts, bool):
        return time.strftime("%H:%M:%S", time.localtime(ts))
    return "--:--:--"


def format_event(topic: str, body: Mapping[str, Any]) -> Text | None:
    """One line for the tail, or None for events the tail does not show."""
    if topic.startswith(QUIET_TOPICS):
        return None
    clock = _clock(body.get("ts"))
    if topic.startswith("log."):
        level = topic.split(".", 1)[1]
        return Text.assemble(
            (f"{clock} ", "dim"),
            (f"{level.upper():<7} ", LEVEL_STYLES.get(level, "")),
            (f"{body.get('logger', '?')}: ", "cyan"),
            (str(body.get("message", "")), LEVEL_STYLES.get(level, "")),
        )
    if topic == "metrics.alert":
        return Text.assemble(
            (f"{clock} ", "dim"), (f"{'ALERT':<7} ", "bold yellow"), str(body.get("message", ""))
        )
    details = " ".join(f"{k}={v}" for k, v in body.items() if k != "ts")
    return Text.assemble(
        (f"{clock} ", "dim"), (f"{'EVENT':<7} ", "magenta"), (f"{topic} ", "cyan"), details
    )


class LogTail(RichLog):
    """The last lines of the box's log, newest at the bottom."""

    DEFAULT_CSS = """
    LogTail { border: round $primary-darken-2; height: 1fr; }
    """

    def __init__(
        self, *, id: str, max_lines: int = 500, now: Callable[[], float] = time.time
    ) -> None:
        super().__init__(id=id, max_lines=max_lines, wrap=True, markup=False, auto_scroll=True)
        self.now = now
        self.border_title = "log"
        self.lines_shown = 0

    def add_event(self, topic: str, body: Mapping[str, Any]) -> None:
        line = format_event(topic, body)
        if line is not None:
            self.write(line, expand=True)
            self.lines_shown += 1

    def note(self, message: str, style: str = "yellow") -> None:
        """A line from the dashboard itself (connection changes)."""
        line = Text.assemble((f"{_clock(self.now())} ", "dim"), ("TUI     ", style), message)
        self.write(line, expand=True)
        self.lines_shown += 1
