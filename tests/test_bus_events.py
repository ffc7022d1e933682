"""Published events: a heartbeat every second and log records, to any subscriber."""

from __future__ import annotations

import logging
import time

import anyio

from aether_box.client import AsyncClient


def test_heartbeat_every_second_and_log_events(box):
    with box.client(timeout=5) as client:
        events = client.events("status.heartbeat", "log.", timeout=5)
        topic, first = next(events)
        assert topic == "status.heartbeat"
        assert first["pid"] == client.status()["pid"]
        # A record logged inside the box reaches subscribers as a log.<level> event.
        box.portal.call(logging.getLogger("aether_box.test").warning, "disk nearly full")
        beats, logs = [first], []
        deadline = time.monotonic() + 5
        while (len(beats) < 3 or not logs) and time.monotonic() < deadline:
            topic, body = next(events)
            (beats if topic == "status.heartbeat" else logs).append(body)
        events.close()
    assert len(beats) >= 3
    gaps = [b["ts"] - a["ts"] for a, b in zip(beats, beats[1:], strict=False)]
    assert all(0.5 < gap < 2.0 for gap in gaps), gaps
    assert any(entry["message"] == "disk nearly full" for entry in logs)


def test_async_client_subscribes_over_tcp_too(box):
    async def first_heartbeat():
        async with AsyncClient(box.tcp_endpoint, data_dir=box.data_dir, timeout=5) as client:
            async for topic, body in client.events("status.", timeout=5):
                return topic, body

    topic, body = anyio.run(first_heartbeat)
    assert topic.startswith("status.") and "uptime_s" in body
