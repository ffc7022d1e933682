"""A real box with the HTTP gateway on an ephemeral loopback port, and the test models."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fixtures_box import BoxInThread


class GatewayBox:
    """A running box and its gateway's base URL (from `status`, as a user finds it)."""

    def __init__(self, box: BoxInThread) -> None:
        self.box = box
        with box.client(timeout=10) as client:
            self.url: str = client.status()["http"]["url"]

    def client(self, **kwargs: Any) -> Any:
        return self.box.client(**kwargs)

    def status(self) -> dict[str, Any]:
        with self.box.client(timeout=10) as client:
            return client.status()

    def openai(self, api_key: str = "not-needed-on-loopback") -> Any:
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=60)


@contextmanager
def gateway_box(
    models_dir: Path | None, data_dir: Path | None = None, **http: Any
) -> Iterator[GatewayBox]:
    """A box over `models_dir` with `[http]` settings overridden (address: 127.0.0.1:0)."""
    own_dir = data_dir is None
    data_dir = data_dir or Path(tempfile.mkdtemp(prefix="abx-"))
    overrides: dict[str, dict[str, Any]] = {"http": {"address": "127.0.0.1:0", **http}}
    if models_dir is not None:
        overrides["models"] = {"dir": str(models_dir)}
    running = BoxInThread(data_dir, overrides)
    try:
        yield GatewayBox(running)
    finally:
        running.stop(timeout=30)
        if own_dir:
            shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def gateway(models_dir: Path) -> Iterator[GatewayBox]:
    """One box with the gateway and the test kit (smollm2, minilm), shared by a test module."""
    with gateway_box(models_dir) as running:
        yield running
