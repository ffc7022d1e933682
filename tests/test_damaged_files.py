"""A damaged data dir (a crash mid-write, a full disk, a bad copy, a hand edit): the box either
starts and works, rebuilding what is derived and saying so, or refuses to start with one line
naming the file and what to do. It never deletes what the user stored to get going.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import hypercorn.asyncio  # noqa: F401 - here, not on the box's loop, where blockbuster refuses its os.getcwd
import pytest
from fixtures_box import BoxInThread

from aether_box.adapters.service import AdaptersComponent
from aether_box.errors import BoxError, ConfigError, NotFound
from aether_box.federation.service import FederationComponent
from aether_box.gateway.component import HttpComponent
from aether_box.grid.service import GridComponent
from aether_box.memory.service import MemoryComponent
from aether_box.models.store import REGISTRY, ModelStore
from aether_box.sessions.service import SessionsComponent
from aether_box.status import StatusComponent

GARBAGE = bytes(range(128, 256)) * 4  # not UTF-8, not SQLite, not TOML, not JSON
NOTES = {"op": "create", "collection": "notes", "model": "test", "dim": 4}
ADD = {
    "op": "add",
    "collection": "notes",
    "ids": ["a", "b"],
    "vectors": [[1, 0, 0, 0], [0, 1, 0, 0]],
    "texts": ["alpha", "beta"],
}
SEARCH = {"op": "search", "collection": "notes", "vector": [1, 0, 0, 0], "k": 1}
SNAPSHOTS = {"memory": {"snapshot_min_rows": 1}}  # a clean stop saves even a tiny index


def overwrite_pages(path: Path, first: int, count: int) -> None:
    """Garbage over `count` pages from page `first` (0-based): a torn write or a bad copy
    that leaves the header intact, so SQLite opens the file without complaint."""
    page = 4096
    assert path.stat().st_size >= (first + count) * page, "the file is too small to damage"
    with open(path, "r+b") as handle:
        handle.seek(first * page)
        handle.write(bytes(range(256)) * (page * count // 256))


def start_and_stop(data_dir: Path, components: list[type], setup: Callable | None = None) -> None:
    """Run a box once, so it makes its files (and `setup(box)` stores something in them)."""
    box = BoxInThread(data_dir, SNAPSHOTS, components=[StatusComponent, *components])
    try:
        if setup is not None:
            setup(box)
    finally:
        box.stop()


def refused(data_dir: Path, components: list[type], **overrides: dict) -> str:
    """The one-line message of the ConfigError a start raises (any other error fails)."""
    with pytest.raises(ConfigError) as caught:
        BoxInThread(data_dir, overrides, components=[StatusComponent, *components])
    message = caught.value.message
    assert "\n" not in message and len(message) < 600, message
    return message


def add_notes(box: BoxInThread) -> None:
    with box.client(timeout=30) as client:
        client.request("memory", NOTES)
        client.request("memory", ADD)
        client.request("memory", SEARCH)  # loads the index, so a clean stop saves a copy


@pytest.mark.parametrize(
    ("file", "components", "setup", "first_page"),
    [
        ("memory.db", [MemoryComponent], add_notes, 5),
        ("sessions.db", [SessionsComponent], None, 2),
        ("adapters/adapters.sqlite", [AdaptersComponent], None, 2),
    ],
)
def test_a_database_damaged_past_its_first_page_is_refused_by_name(
    data_dir, file, components, setup, first_page
):
    start_and_stop(data_dir, components, setup)
    overwrite_pages(data_dir / file, first_page, 3)
    message = refused(data_dir, components)
    assert str(data_dir / file) in message
    assert "malformed" in message or "damaged" in message
    assert "move" in message and "delete" not in message


@pytest.mark.parametrize(
    ("file", "components", "what"),
    [
        ("peers.toml", [FederationComponent], "not a valid peers file"),
        ("grid.toml", [GridComponent], "not a valid"),
        ("api_keys.json", [HttpComponent], "not a valid API keys file"),
        ("keys/server.key_secret", [], "not a readable CURVE key file"),
    ],
)
def test_a_garbage_settings_file_is_refused_by_name_and_kept(data_dir, file, components, what):
    path = data_dir / file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(GARBAGE)
    message = refused(data_dir, components)
    assert str(path) in message and what in message
    assert path.read_bytes() == GARBAGE  # the user's file, left as it was


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda index: index.write_bytes(GARBAGE), id="garbage"),
        pytest.param(lambda index: index.write_bytes(index.read_bytes()[:-7]), id="truncated"),
        pytest.param(lambda index: index.write_bytes(index.read_bytes() + b"x"), id="extra"),
    ],
)
def test_a_damaged_saved_index_is_rebuilt_and_status_says_so(data_dir, damage):
    start_and_stop(data_dir, [MemoryComponent], add_notes)
    (saved,) = (data_dir / "memory.db.index").glob("*.idx")
    damage(saved)
    box = BoxInThread(data_dir, SNAPSHOTS, components=[StatusComponent, MemoryComponent])
    try:
        with box.client(timeout=30) as client:
            assert client.request("memory", SEARCH)["results"][0]["id"] == "a"
            notes = client.status()["memory"]["collections"]["notes"]
            assert notes["index_rebuilt"] == "saved index unreadable"
    finally:
        box.stop()


def test_a_file_where_the_saved_indexes_belong_is_moved_aside_not_deleted(data_dir):
    start_and_stop(data_dir, [MemoryComponent], add_notes)
    index_dir = data_dir / "memory.db.index"
    for saved in index_dir.iterdir():
        saved.unlink()
    index_dir.rmdir()
    index_dir.write_bytes(b"someone's file")
    box = BoxInThread(data_dir, SNAPSHOTS, components=[StatusComponent, MemoryComponent])
    try:
        with box.client(timeout=30) as client:
            assert client.request("memory", SEARCH)["results"][0]["id"] == "a"
    finally:
        box.stop()
    assert (data_dir / "memory.db.index.not-a-directory").read_bytes() == b"someone's file"
    assert list(index_dir.glob("*.idx"))  # the clean stop could save the index again


def test_adapter_files_an_empty_index_does_not_list_are_kept(data_dir):
    files = data_dir / "adapters" / "files"
    files.mkdir(parents=True)
    kept = files / f"{'ab' * 32}.gguf"
    kept.write_bytes(b"GGUF the user's adapter")
    (data_dir / "adapters" / "adapters.sqlite").write_bytes(b"")  # emptied by a bad copy
    start_and_stop(data_dir, [AdaptersComponent])
    moved = data_dir / "adapters" / "unindexed" / kept.name
    assert moved.read_bytes() == b"GGUF the user's adapter"


def test_a_registry_naming_a_gone_file_says_so(tmp_path):
    (tmp_path / REGISTRY).write_text(
        f'[models.mine]\nkind = "gguf"\npath = "{tmp_path / "gone.gguf"}"\n'
    )
    with pytest.raises(NotFound) as caught:
        ModelStore(tmp_path).info("mine")
    assert "is gone" in caught.value.message and str(tmp_path / "gone.gguf") in caught.value.message


@pytest.mark.parametrize(
    "text",
    [GARBAGE, b'[models.mine]\nkind = "gguf"\n', b"[models]\nmine = 3\n"],
    ids=["garbage", "no-path", "not-a-table"],
)
def test_a_damaged_registry_names_itself(tmp_path, text):
    (tmp_path / REGISTRY).write_bytes(text)
    with pytest.raises(BoxError) as caught:
        ModelStore(tmp_path).installed()
    assert str(tmp_path / REGISTRY) in caught.value.message
