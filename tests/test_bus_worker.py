"""The worker library as a worker's author meets it: long calls, odd results, refused tools."""

from __future__ import annotations

import datetime
import threading
import time
from typing import Any

import pytest
from fixtures_box import BoxInThread, temp_box, wait_for

from aether_box.bus.worker import Worker
from aether_box.errors import BadRequest, BoxError

# A short heartbeat window: 0.2 s x 3.
FAST_BEATS = {"bus": {"heartbeat_s": 0.2, "heartbeat_liveness": 3}}


def serve(worker: Worker) -> threading.Thread:
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return thread


def test_a_call_longer_than_the_heartbeat_window_keeps_its_worker():
    def slow(body: dict[str, Any]) -> dict[str, Any]:
        time.sleep(body["seconds"])  # the worker's own work, five heartbeat windows long
        return {"done": body["seconds"]}

    with temp_box(FAST_BEATS) as box, box.client(timeout=10) as client:
        serve(Worker(box.endpoint, "slow", slow, heartbeat_s=0.2))
        wait_for(lambda: "slow" in client.status()["services"], 5, "the worker's READY")
        # Before: the broker dropped the busy worker (no heartbeat during a call) and the
        # call failed "the worker stopped answering".
        assert client.request("slow", {"seconds": 3.0}) == {"done": 3.0}
        assert client.request("slow", {"seconds": 0.0}) == {"done": 0.0}  # still serving


def test_a_result_the_bus_cannot_carry_is_an_error_and_the_worker_goes_on():
    def when(body: dict[str, Any]) -> dict[str, Any]:
        if body.get("as_text"):
            return {"now": "2026-12-05T00:00:00"}
        return {"now": datetime.datetime(2026, 12, 5)}

    with temp_box(FAST_BEATS) as box, box.client(timeout=10) as client:
        thread = serve(Worker(box.endpoint, "when", when, heartbeat_s=0.2))
        wait_for(lambda: "when" in client.status()["services"], 5, "the worker's READY")
        # Before: the worker process died with a TypeError and the caller was told only
        # "the worker disconnected mid-request".
        with pytest.raises(BoxError, match="something the bus cannot carry"):
            client.request("when", {})
        assert client.request("when", {"as_text": True}) == {"now": "2026-12-05T00:00:00"}
        assert thread.is_alive()


def test_tools_the_box_refuses_stop_the_worker_and_leave_no_trace():
    with temp_box({**FAST_BEATS, "tools": {"enabled": True}}) as box:
        worker = Worker(box.endpoint, "bad", heartbeat_s=0.2)

        @worker.tool("A name the box refuses", effect="read", name="has space")
        def oops() -> dict[str, Any]:
            return {}

        with pytest.raises(BadRequest):
            worker.run()
        with box.client(timeout=10) as client:
            # Before: no DISCONNECT was sent, so the dead worker stayed listed for the
            # heartbeat window; now the box drops it at once.
            def workers() -> int:
                return client.status()["services"].get("bad", {}).get("workers", 0)

            wait_for(lambda: workers() == 0, 0.5, "the worker's exit")


def test_a_worker_registers_again_when_its_box_restarts(data_dir):
    box = BoxInThread(data_dir, {**FAST_BEATS, "tools": {"enabled": True}})
    worker = Worker(box.endpoint, "shout", lambda body: {"text": body["text"].upper()},
                    heartbeat_s=0.2)  # fmt: skip

    @worker.tool("Shout a text", effect="read", schema={"type": "object"})
    def shout(text: str = "") -> dict[str, Any]:
        return {"text": text.upper()}

    thread = serve(worker)
    try:
        with box.client(timeout=10) as client:
            wait_for(lambda: "shout" in tool_names(client), 5, "the worker's tools")
            assert client.request("shout", {"text": "hi"}) == {"text": "HI"}
        box.stop()
        # Before: the new box answered the worker's heartbeat with DISCONNECT and run()
        # returned, silently: the service and its tools were gone for good.
        box = BoxInThread(data_dir, {**FAST_BEATS, "tools": {"enabled": True}})
        with box.client(timeout=10) as client:
            wait_for(lambda: "shout" in tool_names(client), 10, "the worker registering again")
            assert client.request("shout", {"text": "back"}) == {"text": "BACK"}
            called = client.request("tools", {"op": "call", "tool": "shout",
                                              "arguments": {"text": "tool"}})  # fmt: skip
            assert called["result"] == {"text": "TOOL"}
        assert thread.is_alive()
    finally:
        box.stop()


def tool_names(client: Any) -> set[str]:
    return {t["name"] for t in client.request("tools", {"op": "list"})["tools"]}


def test_a_worker_the_box_refuses_is_told_why():
    with temp_box(FAST_BEATS) as box:
        # "echo" is a service the box serves itself: before, run() just returned.
        with pytest.raises(BadRequest, match="the box serves that name itself"):
            Worker(box.endpoint, "echo", lambda body: body, heartbeat_s=0.2).run()
