"""The rich console the command line prints with: text as given, never read as markup.

What the commands print is mostly the box's and the user's own text (memory records, model
and file names, messages, hints such as "[tools] enabled = true"), and rich's markup would
drop a bracketed word and raise at a lone "[/]". Style goes in `Text` or a table's column.

`progress` builds every command's progress display: rich's live bars on a terminal, and on
a pipe, a log file or a CI job (where rich cannot redraw, and its bars ran together or showed
nothing until the end) plain lines, "description: done/total (NN%)", a few seconds apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import Progress, ProgressColumn, Task, TaskID, TextColumn

__all__ = ["PlainProgress", "plain_console", "plain_description", "progress"]

PLAIN_EVERY_S = 5.0  # the most one task's plain lines come, after its first


def plain_console(*, stderr: bool = False) -> Console:
    """A console on stdout (or stderr) that prints strings as they are."""
    return Console(stderr=stderr, markup=False)


def plain_description(template: str = "{task.description}") -> TextColumn:
    """A progress bar's description column that prints it as given (a file name, a model's)."""
    return TextColumn(template, markup=False)


def progress(
    *columns: ProgressColumn,
    console: Console,
    transient: bool = False,
    get_time: Callable[[], float] | None = None,
) -> Progress:
    """A command's progress display on `console`: rich's bars with `columns` on a terminal,
    `PlainProgress` lines anywhere else (a pipe, a log file, a CI job)."""
    if console.is_terminal:
        return Progress(*columns, console=console, transient=transient, get_time=get_time)
    return PlainProgress(*columns, console=console, get_time=get_time)


class PlainProgress(Progress):
    """Progress as plain lines for output that is no terminal: a line when a task starts, then
    at most one every `every` seconds while it moves, and a last one when it completes (or,
    if it never does, when the display closes). Each reads "description: done/total (NN%)",
    the description as the columns' description template shows it, never read as markup."""

    def __init__(
        self,
        *columns: ProgressColumn,
        console: Console,
        get_time: Callable[[], float] | None = None,
        every: float = PLAIN_EVERY_S,
    ) -> None:
        super().__init__(*columns, console=console, get_time=get_time, disable=True)
        self.every = every
        self._template = next(
            (
                c.text_format
                for c in columns
                if isinstance(c, TextColumn) and "{task.description}" in c.text_format
            ),
            "{task.description}",
        )
        # Per task: when its last line was printed, and the (done, total) it showed.
        self._shown: dict[TaskID, tuple[float, tuple[float, float | None]]] = {}
        self._closed: set[TaskID] = set()

    def line(self, task: Task) -> str:
        """One task's line: "description: done/total (NN%)"; with no total, "description: done",
        or "description..." before anything is done (a spinner's start)."""
        description = self._template.format(task=task)
        done = _number(task.completed)
        if task.total is None:
            return f"{description}: {done}" if task.completed else f"{description}..."
        percent = int(task.percentage) if task.total else 100
        return f"{description}: {done}/{_number(task.total)} ({percent}%)"

    def _emit(self, task_id: TaskID, *, force: bool = False) -> None:
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None or task_id in self._closed:
                return
            now, state = self.get_time(), (task.completed, task.total)
            at, shown = self._shown.get(task_id, (-self.every, None))
            if task.finished:
                self._closed.add(task_id)
            elif state == shown or (not force and now - at < self.every):
                return  # shown already, or (unforced) too soon after the last line
            self._shown[task_id] = (now, state)
            text = self.line(task)
        self.console.out(text, highlight=False)

    def add_task(
        self,
        description: str,
        start: bool = True,
        total: float | None = 100.0,
        completed: int = 0,
        visible: bool = True,
        **fields: Any,
    ) -> TaskID:
        task_id = super().add_task(description, start, total, completed, visible, **fields)
        self._emit(task_id, force=True)
        return task_id

    def update(
        self,
        task_id: TaskID,
        *,
        total: float | None = None,
        completed: float | None = None,
        advance: float | None = None,
        description: str | None = None,
        visible: bool | None = None,
        refresh: bool = False,
        **fields: Any,
    ) -> None:
        super().update(
            task_id,
            total=total,
            completed=completed,
            advance=advance,
            description=description,
            visible=visible,
            refresh=refresh,
            **fields,
        )
        self._emit(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._emit(task_id)

    def remove_task(self, task_id: TaskID) -> None:
        self._emit(task_id, force=True)
        super().remove_task(task_id)

    def stop(self) -> None:
        """Close the display: a last line for each task whose latest state is not shown."""
        for task_id in list(self._tasks):
            self._emit(task_id, force=True)
        super().stop()


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
