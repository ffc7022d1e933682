"""Helpers for the dashboard's tests: read what the app shows, and wait for it to change."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from textual.app import App
from textual.pilot import Pilot
from textual.widgets import DataTable


def screen_text(app: App[Any]) -> str:
    """The current screen as the terminal would show it, one line per row."""
    strips = app.screen._compositor.render_strips()  # the rendered cells, not widget state
    return "\n".join(strip.text for strip in strips)


def table_rows(table: DataTable) -> dict[str, list[str]]:
    """Row key -> cell texts."""
    return {key.value: [str(cell) for cell in table.get_row(key)] for key in table.rows}


async def wait_until(
    pilot: Pilot, predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition"
) -> Any:
    """Let the app run until `predicate()` is truthy; fail with the screen if it never is."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what}; the screen shows:\n"
                f"{screen_text(pilot.app)}"
            )
        await pilot.pause(0.1)


def hit_routes(base_url: str) -> None:
    """One request to each of three gateway routes: /api/ps answers, the others 404 (no
    such model): counted all the same. Blocking: call it from a thread."""
    for path, body in (
        ("/api/ps", None),
        ("/api/show", {"model": "nope"}),
        ("/v1/models/nope", None),
    ):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            base_url + path, data, {"content-type": "application/json"}
        )
        try:
            urllib.request.urlopen(request, timeout=10).close()
        except urllib.error.HTTPError as exc:
            exc.close()
