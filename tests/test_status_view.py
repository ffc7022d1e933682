"""`aether-box status` prints the box's own text as it is, brackets and all."""

from __future__ import annotations

from rich.console import Console

from aether_box.status_view import render_status


def _printed(report: dict) -> str:  # type: ignore[type-arg]
    console = Console(record=True, width=240)
    render_status(report, console)
    return console.export_text()


def test_status_prints_hints_and_messages_with_brackets_as_they_are(box):
    with box.client() as client:
        report = client.status()
    assert report["tools"]["enabled"] is False  # the default: the hint below is printed
    printed = _printed(report)
    # rich read "[tools]" as a style tag and printed "set  enabled = true"
    assert "tools: off (set [tools] enabled = true)" in printed
    # An alert quoting a path or an error may hold anything that looks like markup; "[/]"
    # alone made rich raise instead of printing the report.
    report["alerts"] = [{"message": "memory.db [/] is on a full disk [bold]"}]
    assert "alert memory.db [/] is on a full disk [bold]" in _printed(report)
