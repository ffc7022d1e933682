"""Boxes with real models for the engine tests (`llm`, `embed`)."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fixtures_box import BoxInThread, temp_box, wait_for  # noqa: F401  (engine tests import it from here)


@contextmanager
def engines_box(models_dir: Path, **engines: Any) -> Iterator[BoxInThread]:
    """A box in this process over `models_dir`, with `[engines]` settings overridden."""
    with temp_box({"engines": engines} if engines else None, models_dir=models_dir) as running:
        yield running


@pytest.fixture(scope="module")
def llm_box(models_dir: Path) -> Iterator[BoxInThread]:
    """One box with the test kit (smollm2, minilm), shared by a test module."""
    with engines_box(models_dir) as running:
        yield running


@pytest.fixture
def own_models_dir(models_dir: Path) -> Iterator[Path]:
    """A fresh models dir holding the kit models (linked, not copied) and room for user models."""
    path = Path(tempfile.mkdtemp(prefix="abx-models-"))
    for child in models_dir.iterdir():
        if child.is_dir():
            (path / child.name).symlink_to(child, target_is_directory=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def loaded(client: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """The loaded model instances in the box's status, by (name, role)."""
    return {(m["name"], m["role"]): m for m in client.status()["models"]["loaded"]}


class Streamer(threading.Thread):
    """Streams one request in the background, recording when each reply arrives."""

    def __init__(self, box: Any, body: dict[str, Any], stop_after: int | None = None) -> None:
        super().__init__(daemon=True)
        self.box, self.body, self.stop_after = box, body, stop_after
        self.replies: list[dict[str, Any]] = []
        self.times: list[float] = []  # when each reply arrived (time.monotonic)
        self.first = threading.Event()
        self.cancel = threading.Event()
        self.finished_at: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.box.client(timeout=300) as client:
                replies = client.stream("llm", self.body)
                for reply in replies:
                    self.replies.append(reply)
                    self.times.append(time.monotonic())
                    self.first.set()
                    if self.cancel.is_set() or len(self.replies) == self.stop_after:
                        replies.close()  # the client library cancels the request
                        break
        except BaseException as exc:
            self.error = exc
        finally:
            self.finished_at = time.monotonic()
            self.first.set()

    def stop(self) -> None:
        """Cancel the request (from the client's side) and wait for the thread."""
        self.cancel.set()
        self.join(60)
