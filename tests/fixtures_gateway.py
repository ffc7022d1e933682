"""A real box with the HTTP gateway on an ephemeral loopback port, and the test models."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from fixtures_box import BoxInThread, temp_box


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


def start_long_stream(base_url: str, events: int) -> tuple[socket.socket, bytes]:
    """POST a streamed chat whose answer runs for hundreds of tokens over a raw socket (so a
    test can hang up or stop the box mid-answer) and read until `events` SSE events came.

    Greedy on purpose: a sampled answer to a story prompt can end by itself within a second,
    and the test would then watch a normal "stop" instead of the interruption.
    """
    url = urlsplit(base_url)
    body = json.dumps(
        {
            "model": "smollm2",
            "messages": [{"role": "user", "content": "Tell me a very long story about a dragon."}],
            "stream": True,
            "max_tokens": 4000,
            "temperature": 0,  # greedy SmolLM2 runs to the token limit on this prompt
        }
    ).encode()
    sock = socket.create_connection((url.hostname, url.port), timeout=60)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: box\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    received = b""
    while received.count(b"data: ") < events:
        chunk = sock.recv(65536)
        assert chunk, received
        received += chunk
    assert b'finish_reason":"' not in received.replace(b" ", b""), "answered already"
    return sock, received


@contextmanager
def gateway_box(
    models_dir: Path | None, data_dir: Path | None = None, **http: Any
) -> Iterator[GatewayBox]:
    """A box over `models_dir` with `[http]` settings overridden (address: 127.0.0.1:0)."""
    overrides: dict[str, dict[str, Any]] = {"http": {"address": "127.0.0.1:0", **http}}
    if data_dir is None:
        with temp_box(overrides, models_dir=models_dir) as running:
            yield GatewayBox(running)
        return
    if models_dir is not None:
        overrides["models"] = {"dir": str(models_dir)}
    kept = BoxInThread(data_dir, overrides)  # the caller's dir, kept for its next box
    try:
        yield GatewayBox(kept)
    finally:
        kept.stop(timeout=30)


@pytest.fixture(scope="module")
def gateway(models_dir: Path) -> Iterator[GatewayBox]:
    """One box with the gateway and the test kit (smollm2, minilm), shared by a test module."""
    with gateway_box(models_dir) as running:
        yield running


# Two functions for the function-calling tests of both dialects (OpenAI's and Ollama's).
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The time now in a time zone.",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string"}, "hours24": {"type": "boolean"}},
            "required": ["zone", "hours24"],
        },
    },
}
TOOLS = [WEATHER, TIME]
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]


# Prompts smollm2 (greedy) mostly answers in text though it has tools: which one does can
# change with the prompt cache's state, so a test takes the first that is answered.
NO_USE_FOR_TOOLS = ["Thank you, that is all.", "Tell me a joke.", "Say goodbye politely."]


def answers_with_tools(create: Callable[..., Any], **ask: Any) -> Iterator[Any]:
    """`create` (a chat call of an API client) with TOOLS on each of NO_USE_FOR_TOOLS."""
    for prompt in NO_USE_FOR_TOOLS:
        yield create(
            model="smollm2", messages=[{"role": "user", "content": prompt}], tools=TOOLS, **ask
        )
