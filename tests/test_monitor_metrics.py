"""Prometheus metrics: what a scrape of a real box says, and that metrics never stop a box."""

from __future__ import annotations

import socket
import time

import pytest
from fixtures_box import BoxInThread, scrape

from aether_box.client import NotFound
from aether_box.config import Config
from aether_box.errors import ConfigError
from aether_box.monitor.metrics import MetricsComponent
from aether_box.monitor.settings import MonitorSettings


def test_a_scrape_counts_requests_errors_and_rejections(box):
    with box.client(timeout=5) as client:
        for n in range(5):
            client.request("echo", {"n": n})
        with pytest.raises(NotFound):
            client.request("no-such-service", {})
        url = client.status()["metrics"]["url"]
    samples = scrape(url)
    assert samples[("aether_box_up", ())] == 1
    assert samples[("aether_box_requests_total", (("service", "echo"),))] == 5
    assert samples[("aether_box_request_errors_total", (("service", "echo"),))] == 0
    unknown = ("aether_box_rejected_total", (("reason", "unknown_service"), ("scope", "bus")))
    assert samples[unknown] == 1
    assert samples[("aether_box_reply_groups_total", ())] == 0  # one request at a time
    assert samples[("aether_box_grouped_replies_total", ())] == 0
    p50 = samples[
        ("aether_box_request_latency_seconds", (("quantile", "0.5"), ("service", "echo")))
    ]
    assert 0 < p50 < 1
    assert samples[("aether_box_process_resident_memory_bytes", ())] > 10 * 2**20
    # An event over the byte bound is dropped, and the drop counted by its topic.
    from aether_box.bus.events import MAX_EVENT_BYTES

    box.portal.call(box.box.events.publish, "flood.huge", {"payload": "x" * MAX_EVENT_BYTES})
    assert scrape(url)[("aether_box_events_dropped_total", (("topic", "flood"),))] == 1
    # Counters move between scrapes.
    with box.client(timeout=5) as client:
        client.request("echo", {})
    assert scrape(url)[("aether_box_requests_total", (("service", "echo"),))] == 6


def test_a_taken_port_costs_the_metrics_not_the_box(data_dir):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    address = f"127.0.0.1:{taken.getsockname()[1]}"
    running = BoxInThread(data_dir, {"monitor": {"metrics_address": address}})
    try:
        with running.client(timeout=5) as client:
            assert client.request("echo", {"ok": 1}) == {"ok": 1}
            assert "metrics" not in client.status()
    finally:
        running.stop()
        taken.close()


def test_a_stalled_scraper_does_not_hold_up_the_stop(data_dir):
    running = BoxInThread(data_dir)
    host, port = running.box.get(MetricsComponent).address.rsplit(":", 1)
    stalled = socket.create_connection((host, int(port)))  # connects, never sends a request
    try:
        started = time.monotonic()
        running.stop()
        assert time.monotonic() - started < 3
    finally:
        stalled.close()


def test_a_malformed_address_is_a_config_error_that_says_how(data_dir):
    config = Config(data_dir, {"monitor": {"metrics_address": "7747"}})
    with pytest.raises(ConfigError, match="host:port"):
        config.get(MonitorSettings)
    assert Config(data_dir, {"monitor": {"metrics_address": ""}}).get(MonitorSettings)
