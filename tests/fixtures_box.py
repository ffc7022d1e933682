"""Fixtures that run a real box: in a thread of the test process, or as its own process."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio.from_thread
import pytest
import zmq

from aether_box.box import Box
from aether_box.bus.protocol import CLIENT, ClientCmd, decode_body, encode_body
from aether_box.client import Client
from aether_box.config import Config

# Ephemeral tcp ports, so tests (and several test runs) never fight over 7745.
TEST_ENDPOINTS = {
    "endpoints": ["ipc://{data_dir}/bus.sock", "tcp://127.0.0.1:*"],
    "event_endpoints": ["ipc://{data_dir}/events.sock", "tcp://127.0.0.1:*"],
}
TEST_METRICS = "127.0.0.1:0"  # an ephemeral port too
TEST_HTTP = "127.0.0.1:0"  # the HTTP gateway's too
# Box processes run under blockbuster too (see blockbuster_site/sitecustomize.py).
_TESTS = Path(__file__).parent
_BLOCKBUSTER_PATH = os.pathsep.join(
    [str(_TESTS / "blockbuster_site"), str(_TESTS), os.environ.get("PYTHONPATH", "")]
).rstrip(os.pathsep)


def pipeline_echo(endpoint: str, peers: int = 2, each: int = 500) -> None:
    """Send `each` echo requests from each of `peers` DEALERs before reading any reply, so
    they interleave in the box's backlog; check every reply comes back to its sender, in order."""
    sockets = [zmq.Context.instance().socket(zmq.DEALER) for _ in range(peers)]
    try:
        for socket in sockets:
            socket.linger = 0
            socket.connect(endpoint)
        for n in range(each):
            for peer, socket in enumerate(sockets):
                body = encode_body({"peer": peer, "n": n, "_rid": n})
                socket.send_multipart([CLIENT, ClientCmd.REQUEST, b"echo", *body])
        for peer, socket in enumerate(sockets):
            for n in range(each):
                assert socket.poll(10_000), f"peer {peer} got {n} of {each} replies"
                frames = socket.recv_multipart()
                assert frames[:3] == [CLIENT, ClientCmd.FINAL, b"echo"]
                assert decode_body(frames[3:]) == {"peer": peer, "n": n, "_rid": n}
    finally:
        for socket in sockets:
            socket.close()


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll `condition` until true; returns the seconds it took, fails the test after `timeout`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"{what} did not happen within {timeout} s")
        time.sleep(0.02)
    return time.monotonic() - started


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of one Prometheus scrape, keyed by (name, sorted labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A fresh data dir with a short path (ipc socket paths are limited to ~100 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="abx-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class BoxInThread:
    """A box running on its own event loop in a background thread of the test process."""

    def __init__(
        self,
        data_dir: Path,
        overrides: dict[str, dict[str, Any]] | None = None,
        components: list[type] | None = None,
    ) -> None:
        merged = {
            "bus": dict(TEST_ENDPOINTS),
            "monitor": {"metrics_address": TEST_METRICS},
            "http": {"address": TEST_HTTP},
        }
        for section, values in (overrides or {}).items():
            merged.setdefault(section, {}).update(values)
        self.data_dir = data_dir
        self.box = Box(Config(data_dir, merged), components)
        self._portal_cm = anyio.from_thread.start_blocking_portal("asyncio")
        self.portal = self._portal_cm.__enter__()
        ready = threading.Event()
        self._future = self.portal.start_task_soon(
            partial(self.box.run, handle_signals=False, on_ready=lambda _: ready.set())
        )
        while not ready.wait(0.05):
            if self._future.done():
                self._portal_cm.__exit__(None, None, None)
                self._future.result()  # raises the start-up error
        self.endpoint = f"ipc://{data_dir}/bus.sock"
        self.tcp_endpoint = next(e for e in self.box.broker.bound if e.startswith("tcp"))

    def client(self, **kwargs: Any) -> Client:
        return Client(self.endpoint, data_dir=self.data_dir, **kwargs)

    def stop(self, timeout: float = 10.0) -> None:
        if self._future.done():
            return
        self.portal.call(self.box.stop)
        self._future.result(timeout=timeout)
        self._portal_cm.__exit__(None, None, None)


@contextmanager
def temp_box(
    overrides: dict[str, dict[str, Any]] | None = None,
    *,
    models_dir: Path | None = None,
    files: dict[str, str] | None = None,
    stop_timeout: float = 30.0,
) -> Iterator[BoxInThread]:
    """A BoxInThread over a fresh temp data dir: `files` (such as config.toml) written there
    before it starts, `[models] dir` set when given; stopped and the dir removed after."""
    data_dir = Path(tempfile.mkdtemp(prefix="abx-"))
    for name, text in (files or {}).items():
        (data_dir / name).write_text(text)
    merged = dict(overrides or {})
    if models_dir is not None:
        merged["models"] = {"dir": str(models_dir), **merged.get("models", {})}
    running = None
    try:
        running = BoxInThread(data_dir, merged)
        yield running
    finally:
        if running is not None:
            running.stop(timeout=stop_timeout)
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def box(data_dir: Path) -> Iterator[BoxInThread]:
    """A running box with the default components, in this process."""
    running = BoxInThread(data_dir)
    yield running
    running.stop()


class BoxProcess:
    """`aether-box run` as a child process, for signal, crash and resource tests."""

    def __init__(
        self,
        data_dir: Path,
        *extra: str,
        env: dict[str, str] | None = None,
        python: str | os.PathLike[str] = sys.executable,
        log_path: Path | None = None,
        prefix: tuple[str, ...] = (),
    ) -> None:
        """`log_path`: where its output goes (default: box-process.log in the data dir);
        `prefix` runs the box under a wrapper (`ip netns exec NS`, `taskset -c 0`)."""
        self.data_dir = data_dir
        self.log_path = log_path or data_dir / "box-process.log"
        sets = [
            "--set",
            'bus.endpoints=["ipc://{data_dir}/bus.sock", "tcp://127.0.0.1:*"]',
            "--set",
            'bus.event_endpoints=["ipc://{data_dir}/events.sock", "tcp://127.0.0.1:*"]',
            "--set",
            f"monitor.metrics_address={TEST_METRICS}",
            "--set",
            f"http.address={TEST_HTTP}",
        ]
        self.log = open(self.log_path, "w")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                *prefix,
                str(python),
                "-m",
                "aether_box",
                "--data-dir",
                str(data_dir),
                *sets,
                *extra,
                "run",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": _BLOCKBUSTER_PATH, **(env or {})},
        )
        self.endpoint = f"ipc://{data_dir}/bus.sock"
        self.wait_ready()

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"box exited with {self.process.returncode}:\n{self.output()}")
            if (self.data_dir / "bus.sock").exists():
                try:
                    with self.client(timeout=1.0) as client:
                        if client.status()["ready"]:  # every component has started
                            return
                except Exception:
                    pass
            time.sleep(0.1)
        raise TimeoutError(f"box did not answer within {timeout} s:\n{self.output()}")

    def client(self, **kwargs: Any) -> Client:
        return Client(self.endpoint, data_dir=self.data_dir, **kwargs)

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        output = self.log_path.read_text()
        blocked = [line for line in output.splitlines() if "BlockingError" in line]
        assert not blocked, f"the box blocked its event loop: {blocked}\n{output}"
        return self.process.returncode


@pytest.fixture
def box_process(data_dir: Path) -> Iterator[BoxProcess]:
    """A running `aether-box run` child process."""
    running = BoxProcess(data_dir)
    yield running
    running.stop()
