"""The rich console the command line prints with: text as given, never read as markup.

What the commands print is mostly the box's and the user's own text (memory records, model
and file names, messages, hints such as "[tools] enabled = true"), and rich's markup would
drop a bracketed word and raise at a lone "[/]". Style goes in `Text` or a table's column.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import TextColumn

__all__ = ["plain_console", "plain_description"]


def plain_console(*, stderr: bool = False) -> Console:
    """A console on stdout (or stderr) that prints strings as they are."""
    return Console(stderr=stderr, markup=False)


def plain_description(template: str = "{task.description}") -> TextColumn:
    """A progress bar's description column that prints it as given (a file name, a model's)."""
    return TextColumn(template, markup=False)
