"""Models: installed and loaded, memory, tokens/s, generation slots and time to first token,
and a sparkline of recent tokens/s."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import DataTable, Sparkline, Static

from aether_box.tui.view import History, fmt_float
from aether_box.tui.widgets.section import SectionTable

__all__ = ["ModelsPanel", "MODEL_COLUMNS"]

MODEL_COLUMNS = ("model", "kind", "state", "memory", "tok/s", "slots", "ttft", "device")


class ModelsPanel(SectionTable):
    """The models table with a tokens/s sparkline for the highlighted (or busiest) model."""

    DEFAULT_CSS = """
    ModelsPanel > Horizontal { height: 1; }
    ModelsPanel .spark-label { width: auto; padding: 0 1; color: $text-muted; }
    ModelsPanel Sparkline { width: 1fr; height: 1; margin: 0 1 0 0; }
    """

    def __init__(self, history: History, *, id: str, empty: str = "no models installed") -> None:
        super().__init__("models", MODEL_COLUMNS, id=id, empty=empty)
        self.history = history

    def compose(self) -> ComposeResult:
        yield from super().compose()
        with Horizontal(id=f"{self.id}-speed"):
            yield Static("", classes="spark-label", id=f"{self.id}-spark-label")
            yield Sparkline([], id=f"{self.id}-sparkline")

    def show_rows(self, rows: Mapping[str, Sequence[str]], extra: str = "") -> None:
        super().show_rows(rows, extra)
        self._show_sparkline(True)
        self.refresh_sparkline()

    def show_unavailable(self, why: str = "not available") -> None:
        super().show_unavailable(why)
        self._show_sparkline(False)

    def _show_sparkline(self, visible: bool) -> None:
        self.query_one(f"#{self.id}-speed").display = visible

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.refresh_sparkline()

    def sparkline_model(self) -> str | None:
        """The model the sparkline follows: the highlighted one if it has samples, else any."""
        selected = self.selected_key()
        if selected and self.history.get(selected):
            return selected
        with_samples = [k for k in self.history.keys() if self.history.get(k)]
        return with_samples[-1] if with_samples else None

    def refresh_sparkline(self) -> None:
        model = self.sparkline_model()
        data = self.history.get(model) if model else []
        spark = self.query_one(Sparkline)
        spark.data = data
        label = self.query_one(".spark-label", Static)
        if not data:
            label.update("tok/s: no generation yet")
        else:
            label.update(f"tok/s {model}: {fmt_float(data[-1])} (peak {fmt_float(max(data))})")
