"""The memory search box: a query against one collection of the box's memory."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Input, Label, Static

from aether_box.client import BoxError
from aether_box.tui.view import fmt_float, pick, records
from aether_box.tui.widgets.section import plain_cells

__all__ = ["SearchScreen", "result_rows"]

RESULT_COLUMNS = ("#", "score", "id", "text", "metadata")


def _short(value: Any, width: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def result_rows(reply: Any) -> list[tuple[str, ...]]:
    """Table rows from a search reply, whatever its exact field names."""
    rows = []
    for rank, hit in enumerate(records(reply, "results", "hits", "matches", "items"), 1):
        score = pick(hit, "score", "similarity", "distance")
        rows.append(
            (
                str(rank),
                fmt_float(score, 3),
                _short(pick(hit, "id", "key", "rowid", default="-"), 12),
                _short(pick(hit, "text", "content", "document", default=""), 60),
                _short(pick(hit, "metadata", "meta", default={}), 30),
            )
        )
    return rows


class SearchScreen(ModalScreen[None]):
    """Type a query, press Enter, see the top hits from the `memory` service."""

    BINDINGS = [Binding("escape", "close", "Back to the dashboard")]
    DEFAULT_CSS = """
    SearchScreen { align: center middle; }
    SearchScreen > Vertical {
        width: 90%; height: 80%; border: thick $primary; background: $surface; padding: 0 1;
    }
    SearchScreen Horizontal { height: auto; }
    SearchScreen Label { padding: 1 1 0 0; width: 12; }
    SearchScreen Input { width: 1fr; }
    SearchScreen DataTable { height: 1fr; }
    SearchScreen #search-status { height: auto; color: $text-muted; }
    """

    def __init__(
        self,
        link: Any,
        collection: str = "",
        *,
        collections: list[str] | None = None,
        k: int = 10,
        build_body: Callable[[str, str, int], dict[str, Any]] | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        super().__init__()
        self.link = link
        self.collection = collection
        self.collections = collections  # None: the box did not say which it has
        self.k = k
        self.build_body = build_body or search_body
        self.timeout_s = timeout_s
        self.last_reply: dict[str, Any] | None = None

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("[b]memory search[/b]  Enter searches · Esc returns")
            with Horizontal():
                yield Label("collection")
                yield Input(
                    value=self.collection, placeholder="collection name", id="search-collection"
                )
            with Horizontal():
                yield Label("query")
                yield Input(placeholder="what to look for", id="search-query")
            table: DataTable = DataTable(cursor_type="row", zebra_stripes=True, id="search-results")
            table.add_columns(*RESULT_COLUMNS)
            yield table
            yield Static("", id="search-status", markup=False)  # it quotes the query

    def on_mount(self) -> None:
        self.query_one("#search-query", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        query = self.query_one("#search-query", Input).value.strip()
        collection = self.query_one("#search-collection", Input).value.strip()
        if not query:
            self.query_one("#search-query", Input).focus()
            return
        if not collection and self.collections is not None:
            # The box would answer "missing field 'collection'": say what to type instead.
            self.query_one("#search-status", Static).update(_which_collection(self.collections))
            self.query_one("#search-collection", Input).focus()
            return
        self.search(collection, query)

    @work(exclusive=True, group="search")
    async def search(self, collection: str, query: str) -> None:
        """Ask the memory service and show what it found."""
        status = self.query_one("#search-status", Static)
        table = self.query_one("#search-results", DataTable)
        status.update(f"searching {collection or 'memory'} for {query!r}…")
        try:
            reply = await self.link.request(
                "memory", self.build_body(collection, query, self.k), timeout=self.timeout_s
            )
        except BoxError as exc:
            status.update(Text(exc.message, style="red"))
            return
        self.last_reply = reply
        rows = result_rows(reply)
        table.clear()
        table.add_rows(plain_cells(row) for row in rows)
        took = pick(reply, "took_ms", "elapsed_ms", "ms")
        status.update(
            f"{len(rows)} result(s)"
            + (f" in {fmt_float(took, 2)} ms" if took else "")
            + (f" · path: {reply['path']}" if "path" in reply else "")
        )

    def action_close(self) -> None:
        self.dismiss(None)


def _which_collection(collections: list[str]) -> str:
    """What to type in the empty collection box."""
    if not collections:
        return (
            "this box has no collections yet; create one with "
            "`aether-box memory create NAME --model minilm` and add texts to it"
        )
    return "type the collection to search: " + ", ".join(collections)


def search_body(collection: str, query: str, k: int) -> dict[str, Any]:
    """The `memory` service's search request."""
    body: dict[str, Any] = {"op": "search", "text": query, "k": k}
    if collection:
        body["collection"] = collection
    return body
