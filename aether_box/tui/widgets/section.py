"""A titled panel holding one table, or a plain "not available" line when the box has no data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static

__all__ = ["SectionTable", "plain_cells", "sync_rows"]


def plain_cells(cells: Sequence[Any]) -> list[Any]:
    """Cells for a DataTable, strings as plain Text: it reads a string as markup, and the
    box's names and texts may hold brackets ("[note]" vanished, a lone "[/]" raised)."""
    return [Text(cell) if isinstance(cell, str) else cell for cell in cells]


def sync_rows(table: DataTable, rows: Mapping[str, Sequence[str]]) -> None:
    """Make `table` show `rows` (key -> cells), updating in place so the cursor stays put."""
    columns = list(table.columns)
    current = {key.value for key in table.rows}
    for key in current - set(rows):
        table.remove_row(key)
    for key, texts in rows.items():
        cells = plain_cells(texts)
        if key not in current:
            table.add_row(*cells, key=key)
            continue
        old = table.get_row(key)
        for column, old_value, value in zip(columns, old, cells, strict=False):
            if old_value != value:
                table.update_cell(key, column, value)


class SectionTable(Vertical):
    """One section of the status report as a table (rows keyed by name)."""

    DEFAULT_CSS = """
    SectionTable { height: 1fr; border: round $primary-darken-2; }
    SectionTable > .unavailable { color: $text-muted; padding: 0 1; }
    SectionTable > DataTable { height: 1fr; }
    """

    def __init__(self, title: str, columns: Sequence[str], *, id: str, empty: str = "none") -> None:
        super().__init__(id=id)
        self.border_title = title
        self.columns = list(columns)
        self.empty = empty

    def compose(self) -> ComposeResult:
        table: DataTable = DataTable(cursor_type="row", zebra_stripes=True, id=f"{self.id}-table")
        for column in self.columns:
            table.add_column(column, key=column)
        yield table
        yield Static(
            "not available", classes="unavailable", id=f"{self.id}-unavailable", markup=False
        )

    @property
    def table(self) -> DataTable:
        return self.query_one(DataTable)

    def _note(self) -> Static:
        return self.query_one(".unavailable", Static)

    def show_rows(self, rows: Mapping[str, Sequence[str]], extra: str = "") -> None:
        """Show the rows (or the `empty` line when there are none); `extra` goes in the border."""
        sync_rows(self.table, rows)
        self.table.display = bool(rows)
        note = self._note()
        note.update("" if rows else self.empty)
        note.display = not rows
        self.border_subtitle = extra  # section-wide figures (budget, gate...): no row spent

    def show_unavailable(self, why: str = "not available") -> None:
        """The box reports no such section."""
        sync_rows(self.table, {})
        self.table.display = False
        self._note().update(why)
        self._note().display = True
        self.border_subtitle = ""

    def selected_key(self) -> str | None:
        """The key of the highlighted row, if any."""
        table = self.table
        if not table.row_count or not table.display:
            return None
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return row_key.value
