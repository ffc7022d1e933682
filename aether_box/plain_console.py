"""The rich console the command line prints with: text as given, never read as markup.

What the commands print is mostly the box's and the user's own text (memory records, model
and file names, messages, hints such as "[tools] enabled = true"), and rich's markup would
drop a bracketed word and raise at a lone "[/]". Style goes in `Text` or a table's column.
"""

from __future__ import annotations

from rich.console import Console

__all__ = ["plain_console"]


def plain_console(*, stderr: bool = False) -> Console:
    """A console on stdout (or stderr) that prints strings as they are."""
    return Console(stderr=stderr, markup=False)
