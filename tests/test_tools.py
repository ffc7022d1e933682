"""The `tools` service with real parts: a bus worker in another process, the box's built-ins."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fixtures_box import BoxInThread, temp_box, wait_for
from test_monitor_metrics import scrape

from aether_box.cli import cli
from aether_box.client import BadRequest, NotFound
from aether_box.errors import NotAllowed, Timeout, ToolFailed

WORKER = Path(__file__).parent / "data" / "tool_worker.py"
# A short heartbeat, so a dead worker is found in about two seconds (not shorter: on a
# loaded machine a live worker may miss a beat or two).
HEARTBEAT = {"heartbeat_s": 0.5, "heartbeat_liveness": 4}
DEAD_WITHIN_S = 0.5 * 4 + 0.5 + 2.0  # the broker's window, one more beat, and slack


def tool_names(client: Any) -> set[str]:
    return {t["name"] for t in client.request("tools", {"op": "list"})["tools"]}


class WorkerProcess:
    """tests/data/tool_worker.py in its own process, serving `service` on the box's bus."""

    def __init__(self, box: BoxInThread, service: str = "testtools") -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER), box.endpoint, service],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        with box.client() as client:
            wait_for(lambda: "echo" in tool_names(client), 30, "the worker's tools to show")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # it disconnects from the box as it goes
        self.process.wait(10)
        assert self.process.stderr is not None
        self.process.stderr.close()


@pytest.fixture(scope="module")
def tools_box(models_dir: Path) -> Iterator[BoxInThread]:
    """A box with tools on and a short bus heartbeat, over the test models."""
    overrides = {"bus": HEARTBEAT, "tools": {"enabled": True}}
    with temp_box(overrides, models_dir=models_dir) as running:
        yield running


@pytest.fixture
def worker(tools_box: BoxInThread) -> Iterator[WorkerProcess]:
    running = WorkerProcess(tools_box)
    yield running
    running.stop()


def test_tools_are_off_until_configured(box: BoxInThread) -> None:
    with box.client() as client:
        listed = client.request("tools", {"op": "list"})
        assert listed["enabled"] is False and "enabled = true" in listed["hint"]
        with pytest.raises(NotAllowed, match="enabled = true"):
            client.request("tools", {"op": "call", "tool": "embed", "arguments": {"text": "x"}})


def test_worker_tool_is_listed_and_called(tools_box: BoxInThread, worker: WorkerProcess) -> None:
    with tools_box.client() as client:
        tools = {t["name"]: t for t in client.request("tools", {"op": "list"})["tools"]}
        assert tools["echo"]["source"] == "worker" and tools["echo"]["where"] == "testtools"
        assert tools["die"]["effect"] == "write"
        reply = client.request("tools", {"op": "call", "tool": "echo", "arguments": {"text": "hi"}})
        assert reply["result"] == {"text": "hi", "pid": worker.process.pid}
        assert (
            client.request("tools", {"op": "call", "tool": "add", "arguments": {"a": 2, "b": 3}})[
                "result"
            ]
            == 5
        )
        status = client.status()
        section = status["tools"]
        assert section["enabled"] and section["by_source"]["worker"] == 5 and section["calls"] >= 2
    samples = scrape(status["metrics"]["url"])
    assert samples[("aether_box_tool_calls_total", (("tool", "echo"),))] >= 1
    assert samples[("aether_box_tools", (("source", "worker"),))] == 5


def test_arguments_that_miss_the_schema_never_reach_the_tool(
    tools_box: BoxInThread, worker: WorkerProcess
) -> None:
    with tools_box.client() as client:
        with pytest.raises(BadRequest, match=r"arguments\['b'\].*not of type 'integer'"):
            client.request("tools", {"op": "call", "tool": "add", "arguments": {"a": 1, "b": "2"}})
        with pytest.raises(BadRequest, match="'b' is a required property"):
            client.request("tools", {"op": "call", "tool": "add", "arguments": {"a": 1}})
        with pytest.raises(BadRequest, match="Additional properties"):
            client.request(
                "tools", {"op": "call", "tool": "add", "arguments": {"a": 1, "b": 2, "c": 3}}
            )
        with pytest.raises(NotFound, match="no tool 'nope'"):
            client.request("tools", {"op": "call", "tool": "nope"})
        # The worker was never bothered: it still answers, and served no failed call.
        assert (
            client.request("tools", {"op": "call", "tool": "add", "arguments": {"a": 1, "b": 1}})[
                "result"
            ]
            == 2
        )


def test_a_tool_error_comes_back_as_the_tools_error(
    tools_box: BoxInThread, worker: WorkerProcess
) -> None:
    with tools_box.client() as client, pytest.raises(ToolFailed, match="the disk is on fire"):
        client.request("tools", {"op": "call", "tool": "fail"})


def test_a_hanging_tool_times_out(tools_box: BoxInThread, worker: WorkerProcess) -> None:
    with tools_box.client() as client:
        started = time.monotonic()
        with pytest.raises(Timeout, match="'hang' did not answer within 0.3 s"):
            client.request("tools", {"op": "call", "tool": "hang", "timeout_s": 0.3})
        assert time.monotonic() - started < 0.3 + 1.0


def test_a_worker_dying_mid_call_fails_the_call_and_takes_its_tools(
    tools_box: BoxInThread, worker: WorkerProcess
) -> None:
    with tools_box.client() as client:
        started = time.monotonic()
        with pytest.raises(ToolFailed, match="'die' failed: .*stopped answering"):
            client.request("tools", {"op": "call", "tool": "die"})
        assert time.monotonic() - started < DEAD_WITHIN_S
        assert worker.process.wait(5) == 3
        # Its tools went with it (the broker dropped the worker), the built-ins stay.
        names = tool_names(client)
        assert "echo" not in names and "memory_search" in names


def test_register_rejects_bad_tools(tools_box: BoxInThread) -> None:
    with tools_box.client() as client:
        bad = {"name": "x", "description": "d", "effect": "launch"}
        with pytest.raises(BadRequest, match="effect"):
            client.request("tools", {"op": "register", "service": "w1", "tools": [bad]})
        bad = {"name": "x", "description": "d", "effect": "read", "schema": {"type": "nada"}}
        with pytest.raises(BadRequest, match="invalid JSON Schema"):
            client.request("tools", {"op": "register", "service": "w1", "tools": [bad]})
        taken = {"name": "embed", "description": "mine", "effect": "read"}
        with pytest.raises(BadRequest, match="taken by the box"):
            client.request("tools", {"op": "register", "service": "w1", "tools": [taken]})
        with pytest.raises(BadRequest, match="box's own services"):
            client.request("tools", {"op": "register", "service": "memory", "tools": []})


def test_builtin_tools_over_the_boxs_services(tools_box: BoxInThread) -> None:
    with tools_box.client(timeout=120) as client:
        added = client.request(
            "tools",
            {
                "op": "call",
                "tool": "memory_add",
                "arguments": {"text": "The spare key is under the blue flower pot."},
            },
        )["result"]
        assert added["collection"] == "notes" and len(added["ids"]) == 1
        found = client.request(
            "tools",
            {"op": "call", "tool": "memory_search", "arguments": {"query": "where is the key"}},
        )["result"]
        assert found[0]["text"].startswith("The spare key")
        vector = client.request(
            "tools", {"op": "call", "tool": "embed", "arguments": {"text": "hello"}}
        )["result"]
        assert vector["dim"] == 384 and len(vector["vector"]) == 384


def test_cli_lists_and_calls(tools_box: BoxInThread, worker: WorkerProcess) -> None:
    runner = CliRunner()
    base = ["--data-dir", str(tools_box.data_dir)]
    listed = runner.invoke(cli, [*base, "tools", "list"])
    assert listed.exit_code == 0, listed.output
    assert "echo" in listed.output and "[read] worker:testtools" in listed.output
    called = runner.invoke(cli, [*base, "tools", "call", "add", '{"a": 40, "b": 2}'])
    assert called.exit_code == 0, called.output
    assert json.loads(called.output) == 42
    bad = runner.invoke(cli, [*base, "tools", "call", "add", '{"a": 1}'])
    assert bad.exit_code == 1 and "'b' is a required property" in bad.output
    # That error sends the user to `tools list` for the schema: the list shows its fields.
    assert "see `aether-box tools list` for the schema" in bad.output
    assert "arguments: a (integer, required), b (integer, required)" in listed.output
    status = runner.invoke(cli, [*base, "status"])
    assert status.exit_code == 0, status.output
    assert "tools: 9 callable (4 builtin, 5 worker)" in status.output
