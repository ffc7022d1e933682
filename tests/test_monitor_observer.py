"""The observer: snapshots and alerts from a real box's status report, published as events."""

from __future__ import annotations

import re
import time

import pytest
import zmq
from fixtures_box import BoxInThread, wait_for

from aether_box.client import BoxError, NotFound
from aether_box.monitor.observer import SpeedWatch, alerts_for, compare
from aether_box.monitor.settings import MonitorSettings

FAST = {"monitor": {"observe_s": 0.2, "alert_min_requests": 3}}


def report(requests: int, errors: int, rejected: dict[str, int], rss_mb: float = 100.0) -> dict:
    return {
        "services": {"memory": {"requests": requests, "errors": errors, "p95_ms": 1.0}},
        "rejected": rejected,
        "rss_mb": rss_mb,
    }


def test_a_window_is_the_difference_between_two_reports():
    window = compare(report(10, 1, {"short": 2}), report(30, 16, {"short": 5}), 2.0)
    assert window.services["memory"] == {
        "requests": 20,
        "errors": 15,
        "per_s": 10.0,
        "error_ratio": 0.75,
        "p95_ms": 1.0,
    }
    assert window.rejected == {"short": 3}


def test_alerts_need_enough_requests_and_name_what_to_do():
    settings = MonitorSettings(alert_min_requests=5, alert_rss_mb=500)
    quiet = compare(report(0, 0, {}), report(4, 4, {}), 1.0)  # all errors, but only 4
    assert alerts_for(quiet, settings) == []
    loud = compare(report(0, 0, {}), report(10, 6, {"bad_header": 1}, rss_mb=900), 1.0)
    kinds = {a["kind"]: a["message"] for a in alerts_for(loud, settings)}
    assert set(kinds) == {"errors", "rejected", "memory"}
    assert "6 of 10" in kinds["errors"] and "bad_header 1" in kinds["rejected"]
    assert "monitor.alert_rss_mb" in kinds["memory"]


def broken(request):
    raise RuntimeError("a bug in the service")


def test_a_failing_service_raises_one_alert_event_and_shows_in_status(data_dir):
    running = BoxInThread(data_dir, FAST)
    try:
        running.portal.call(lambda: running.box.broker.add_service("broken", broken, inline=True))
        with running.client(timeout=5) as client, running.client(timeout=5) as watcher:
            events = watcher.events("metrics.", timeout=5)
            assert next(events)[0] == "metrics.snapshot"  # subscribed before anything goes wrong
            for burst in range(2):  # two bursts: the second is inside alert_every_s
                # 8 errors: even split across two windows, one side reaches alert_min_requests.
                for _ in range(8):
                    with pytest.raises(BoxError, match="a bug in the service"):
                        client.request("broken", {})
                if burst == 0:  # the first burst has been observed, and alerted on
                    wait_for(lambda: client.status()["alerts"], 5, "the first alert")
            alerts = [body for topic, body in _until_quiet(events) if topic == "metrics.alert"]
            assert [a["subject"] for a in alerts] == ["broken"]
            assert re.search(r"answered (\d+) of \1 requests with an error", alerts[0]["message"])
            assert [a["kind"] for a in client.status()["alerts"]] == ["errors"]
    finally:
        running.stop()


def test_client_mistakes_and_cancels_are_not_the_boxs_errors(data_dir):
    running = BoxInThread(data_dir, FAST)
    try:
        with running.client(timeout=5) as client, running.client(timeout=5) as watcher:
            snapshots = watcher.events("metrics.snapshot", timeout=5)
            next(snapshots)
            # The box's own components call memory too (the drift watch, the grid's
            # capabilities): count this client's requests as a difference.
            before = client.status()["services"]["memory"]
            for _ in range(8):
                with pytest.raises(NotFound):
                    client.request("memory", {"op": "no-such-op"})
            after = client.status()["services"]["memory"]
            assert after["errors"] == before["errors"] == 0
            assert after["client_errors"] - before["client_errors"] == 8
            assert after["requests"] - before["requests"] >= 8
            # The observer has looked twice since (a window holds them all): no alert.
            next(snapshots), next(snapshots)
            assert client.status()["alerts"] == []
    finally:
        running.stop()


def test_rejected_messages_raise_an_alert(data_dir):
    running = BoxInThread(data_dir, FAST)
    try:
        socket = zmq.Context.instance().socket(zmq.DEALER)
        socket.linger = 0
        socket.connect(running.endpoint)
        socket.send_multipart([b"NOT-MDP", b"junk"])
        with running.client(timeout=5) as client:
            wait_for(lambda: client.status()["alerts"], 5, "an alert")
            (alert,) = client.status()["alerts"]
        assert alert["kind"] == "rejected" and "bad_header 1" in alert["message"]
        socket.close()
    finally:
        running.stop()


def _until_quiet(events, seconds: float = 1.5):
    """Events for a while after the last burst (snapshots keep coming every 0.2 s)."""
    deadline = time.monotonic() + seconds
    for item in events:
        yield item
        if time.monotonic() > deadline:
            return


def test_a_model_far_slower_than_usual_raises_a_drift_alert():
    watch = SpeedWatch(MonitorSettings(alert_speed_ratio=0.5, alert_speed_after=3))

    def look(requests: int, speed: float) -> list[dict]:
        entry = {"name": "smollm2", "role": "generate", "requests": requests, "tokens_per_s": speed}
        return watch.update({"loaded": [entry]})

    assert [look(n, s) for n, s in ((1, 100.0), (2, 90.0), (3, 110.0))] == [[], [], []]
    assert look(3, 110.0) == []  # no new request: the same reading is not counted twice
    assert look(4, 70.0) == []  # slower, but not under half of the usual 100
    (alert,) = look(5, 40.0)
    assert alert["kind"] == "slow" and alert["subject"] == "smollm2"
    assert "40.0 tokens/s" in alert["message"] and "usual 95.0" in alert["message"]
