"""The dashboard driving a box with real models: streamed chat, load/unload, memory search."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from fixtures_box import BoxInThread, temp_box
from fixtures_tui import screen_text, table_rows, wait_until
from textual.widgets import DataTable, Input, Static

from aether_box.tui.app import BoxApp
from aether_box.tui.link import BoxLink
from aether_box.tui.screens.chat import ChatScreen
from aether_box.tui.screens.prompt import PromptScreen
from aether_box.tui.screens.search import SearchScreen
from aether_box.tui.widgets.models import ModelsPanel
from aether_box.tui.widgets.section import SectionTable

pytestmark = pytest.mark.anyio
SIZE = (140, 44)
NOTES = [
    # Brackets as a user writes them: a table cell read as markup showed "warm  all afternoon"
    # (a lone "[/]" raises instead).
    "The cat sleeps on the warm [mat] all afternoon [/].",
    "Quarterly revenue grew by twelve percent.",
    "Rust and Python can call each other through FFI.",
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # Textual runs on asyncio


@pytest.fixture(scope="module")
def model_box(models_dir: Path) -> Iterator[BoxInThread]:
    """One box with the starter models for this module (starting one per test costs time)."""
    with temp_box(models_dir=models_dir) as running:
        yield running


def make_app(box: BoxInThread, **options) -> BoxApp:
    return BoxApp(BoxLink(box.endpoint, box.data_dir, timeout_s=5.0), **options)


def status_of(box: BoxInThread) -> dict:
    with box.client(timeout=10) as client:
        return client.status()


def model_state(app: BoxApp, name: str) -> str | None:
    row = table_rows(app.query_one(ModelsPanel).table).get(name)
    return row[2] if row else None


async def test_chat_reply_streams_token_by_token(model_box):
    app = make_app(model_box, chat_options={"temperature": 0.0, "max_tokens": 12, "seed": 7})
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: model_state(app, "smollm2"), what="the models table")
        # The models dir may hold other models too: highlight smollm2, as a user would.
        table = app.query_one(ModelsPanel).table
        table.move_cursor(row=table.get_row_index("smollm2"))
        await pilot.press("c")
        chat = app.screen
        assert isinstance(chat, ChatScreen)
        assert chat.query_one("#chat-model", Input).value == "smollm2"
        # Every state the reply line goes through, read from the widget on each change.
        shown: list[str] = []
        chat.watch(
            chat,
            "reply_text",
            lambda _: shown.append(str(chat.query(".reply").last(Static).content)),
            init=False,
        )
        await pilot.press(*"Name three colours.", "enter")
        await wait_until(pilot, lambda: chat.last_final, timeout=120, what="the final reply")
        final = chat.last_final
        assert final["finish_reason"] in ("stop", "length") and final["text"]
        assert chat.partials >= 2  # the reply streams in pieces
        assert final["usage"]["completion_tokens"] >= chat.partials - 1
        text = f"smollm2: {final['text']}"
        assert shown[-1] == text
        assert len(shown) >= 3, shown  # it grew token by token before the final text
        assert all(b.startswith(a) for a, b in zip(shown, shown[1:], strict=False))
        status = str(chat.query_one("#chat-status", Static).content)
        assert "tok/s" in status and final["finish_reason"] in status

        await pilot.press("escape")
        # The generation's speed reached the dashboard: table and sparkline.
        await wait_until(
            pilot,
            lambda: (model_state(app, "smollm2") or "").startswith("loaded"),
            what="smollm2 loaded",
        )
        assert app.speeds.get("smollm2"), "no tokens/s sample for the sparkline"
        await wait_until(pilot, lambda: "tok/s smollm2" in screen_text(app), what="sparkline label")


async def test_load_and_unload_keys(model_box):
    app = make_app(model_box)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: model_state(app, "smollm2"), what="the models table")
        await pilot.press("u")
        assert isinstance(app.screen, PromptScreen)
        await pilot.press("ctrl+u", *"smollm2", "enter")
        await wait_until(
            pilot, lambda: model_state(app, "smollm2") == "installed", what="smollm2 unloaded"
        )

        await pilot.press("l")
        assert isinstance(app.screen, PromptScreen)
        await pilot.press("ctrl+u", *"smollm2", "enter")
        await wait_until(
            pilot,
            lambda: (model_state(app, "smollm2") or "").startswith("loaded"),
            timeout=60,
            what="smollm2 loaded",
        )
        assert "unloaded smollm2" in screen_text(app)  # each outcome is noted in the log tail
        row = table_rows(app.query_one(ModelsPanel).table)["smollm2"]
        assert row[3].endswith("MiB") and row[5] != "-"  # memory and device of the live model

    def models() -> dict:  # a blocking client: in a thread, never on the app's loop
        with model_box.client(timeout=10) as client:
            return client.request("llm", {"op": "models"})

    loaded = (await anyio.to_thread.run_sync(models))["loaded"]
    assert "smollm2" in {m["name"] for m in loaded}


async def test_memory_panel_and_search_box(model_box):
    def fill() -> None:  # a blocking client: in a thread, never on the app's loop
        with model_box.client(timeout=60) as client:
            client.request(
                "memory",
                {"op": "create", "collection": "notes", "model": "minilm", "exist_ok": True},
            )
            client.request(
                "memory",
                {
                    "op": "add",
                    "collection": "notes",
                    "texts": NOTES,
                    "ids": ["cat", "revenue", "ffi"],
                    "upsert": True,
                },
            )

    await anyio.to_thread.run_sync(fill)
    app = make_app(model_box)
    async with app.run_test(size=SIZE) as pilot:
        memory = app.query_one("#memory", SectionTable)
        row = await wait_until(
            pilot, lambda: table_rows(memory.table).get("notes"), what="the notes collection"
        )
        assert row[1] == "minilm" and row[2] == "384" and row[3] == "3"
        # How searches scan it (float32, int8+rescore, bits+rescore), as `status` says.
        report = await anyio.to_thread.run_sync(lambda: status_of(model_box))
        assert row[4].endswith(f" · {report['memory']['collections']['notes']['index_scan']}")

        await pilot.press("s")
        search = app.screen
        assert isinstance(search, SearchScreen)
        # The highlighted collection is filled in; the query box has the focus.
        assert search.query_one("#search-collection", Input).value == "notes"
        await pilot.press(*"a kitten napping", "enter")
        results = search.query_one("#search-results", DataTable)
        await wait_until(pilot, lambda: results.row_count == 3, what="search results")
        top = [str(cell) for cell in results.get_row_at(0)]
        assert top[2] == "cat" and "cat sleeps" in top[3]
        assert "warm [mat] all afternoon [/]" in screen_text(app)
        assert "3 result(s)" in str(search.query_one("#search-status", Static).content)
        assert "path: native" in str(search.query_one("#search-status", Static).content)

        # A bad collection name gets the box's own error message, plainly.
        await pilot.press("shift+tab")  # back to the collection input
        await pilot.press("ctrl+u", *"no_such_collection", "enter")
        await wait_until(
            pilot,
            lambda: "no_such_collection" in str(search.query_one("#search-status", Static).content),
            what="error",
        )


async def test_models_pinned_by_sessions_say_so(model_box):
    """A session's pin keeps its model loaded: the models table shows who holds it."""

    def pin() -> str:
        with model_box.client(timeout=30) as client:
            return client.request("session", {"op": "create", "model": "smollm2", "pin": True})[
                "session"
            ]

    session = await anyio.to_thread.run_sync(pin)
    app = make_app(model_box)
    try:
        async with app.run_test(size=SIZE) as pilot:
            state = await wait_until(
                pilot, lambda: model_state(app, "smollm2"), what="the smollm2 row"
            )
            assert state.endswith(" · pinned by 1"), state
    finally:

        def unpin() -> None:
            with model_box.client(timeout=30) as client:
                client.request("session", {"op": "pin", "session": session, "pin": False})

        await anyio.to_thread.run_sync(unpin)
