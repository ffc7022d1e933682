"""The help screen: every key the dashboard answers to, taken from the bindings themselves."""

from __future__ import annotations

from collections.abc import Iterable

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

__all__ = ["HelpScreen", "key_rows"]


def _key_label(keys: str) -> str:
    names = {"question_mark": "?", "slash": "/", "escape": "Esc", "enter": "Enter"}
    return " / ".join(names.get(k.strip(), k.strip()) for k in keys.split(","))


def key_rows(bindings: Iterable[BindingType]) -> list[tuple[str, str]]:
    """(keys, what they do) for every binding with a description."""
    rows = []
    for binding in bindings:
        if isinstance(binding, Binding) and binding.description:
            rows.append((_key_label(binding.key), binding.tooltip or binding.description))
    return rows


class HelpScreen(ModalScreen[None]):
    """Lists the keys of the dashboard and of its panes."""

    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close help")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Vertical {
        width: 84; height: auto; max-height: 90%;
        border: thick $primary; background: $surface; padding: 1 2;
    }
    """

    def __init__(self, sections: list[tuple[str, list[tuple[str, str]]]]) -> None:
        super().__init__()
        self.sections = sections

    def compose(self) -> ComposeResult:
        table = Table(show_header=False, box=None, padding=(0, 2))
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column()
        for title, rows in self.sections:
            table.add_row(f"[b]{title}[/b]", "")
            for keys, description in rows:
                table.add_row(keys, description)
            table.add_row("", "")
        with Vertical():
            yield Static("[b]Aether Box dashboard: keys[/b]\n")
            yield Static(table, id="help-keys")
            yield Static("[dim]Esc, ? or q closes this help.[/dim]")

    def key_text(self) -> str:
        """The help as plain text (what a test reads)."""
        return "\n".join(f"{keys}\t{text}" for _, rows in self.sections for keys, text in rows)
