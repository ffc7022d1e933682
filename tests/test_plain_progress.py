"""The progress display off a terminal: plain lines, a few seconds apart, the last one complete."""

from __future__ import annotations

import io

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress

from aether_box.plain_console import PlainProgress, plain_description, progress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def console(out: io.StringIO, *, terminal: bool = False) -> Console:
    return Console(file=out, markup=False, force_terminal=terminal, width=100)


def test_off_a_terminal_lines_come_at_most_every_few_seconds_and_end_complete() -> None:
    out, clock = io.StringIO(), Clock()
    columns = (plain_description("probing {task.description}"), BarColumn(), MofNCompleteColumn())
    with progress(*columns, console=console(out), get_time=clock) as bars:
        assert isinstance(bars, PlainProgress)
        task = bars.add_task("[b]x[/]", total=10)  # as given, never markup
        for _ in range(10):
            clock.now += 2.0
            bars.advance(task)
    assert out.getvalue().splitlines() == [
        "probing [b]x[/]: 0/10 (0%)",  # at the start
        "probing [b]x[/]: 3/10 (30%)",  # 6 s in: the first past 5 s
        "probing [b]x[/]: 6/10 (60%)",
        "probing [b]x[/]: 9/10 (90%)",
        "probing [b]x[/]: 10/10 (100%)",  # complete: at once
    ]


def test_a_task_left_unfinished_gets_its_last_state_when_the_display_closes() -> None:
    out, clock = io.StringIO(), Clock()
    with progress(plain_description(), console=console(out), get_time=clock) as bars:
        counted = bars.add_task("counted", total=None)
        bars.update(counted, completed=3)  # within 5 s of its first line: held back
        sized = bars.add_task("sized", total=4)
        bars.update(sized, completed=4)
        bars.update(sized, completed=4)  # complete once: one line
    assert out.getvalue().splitlines() == [
        "counted...",
        "sized: 0/4 (0%)",
        "sized: 4/4 (100%)",
        "counted: 3",
    ]


def test_on_a_terminal_it_is_rich_progress() -> None:
    bars = progress(plain_description(), console=console(io.StringIO(), terminal=True))
    assert type(bars) is Progress


def test_a_task_with_no_total_starts_as_a_word_not_a_zero() -> None:
    out, clock = io.StringIO(), Clock()
    with progress(plain_description(), console=console(out), get_time=clock) as bars:
        task = bars.add_task("minilm: ONNX export", total=None)  # a spinner, as models pull's
        bars.update(task, completed=1, total=1)
    assert out.getvalue().splitlines() == [
        "minilm: ONNX export...",
        "minilm: ONNX export: 1/1 (100%)",
    ]
