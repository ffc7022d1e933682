"""SVG snapshot of the main screen, fed a fixed status report so nothing in it moves.

Update the snapshot after an intended change with `pytest tests/test_tui_snapshot.py
--snapshot-update`, and look at the SVG before accepting it.
"""

from __future__ import annotations

import time

import pytest

from aether_box.tui.app import BoxApp
from aether_box.tui.link import StaticLink

T0 = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC: every clock on screen derives from it

REPORT = {
    "version": "0.1.0",
    "pid": 4242,
    "uptime_s": 3725.4,
    "cpu_percent": 12.5,
    "rss_mb": 512.3,
    "threads": 14,
    "in_flight": 1,
    "rejected_total": 2,
    "services": {
        name: {
            "kind": "local",
            "workers": 1,
            "idle_workers": None,
            "queued": queued,
            "in_flight": active,
            "requests": requests,
            "errors": errors,
            "rejected": {},
            "p50_ms": p50,
            "p95_ms": p95,
        }
        for name, requests, errors, queued, active, p50, p95 in [
            ("echo", 1200, 0, 0, 0, 0.041, 0.12),
            ("embed", 310, 1, 0, 0, 4.2, 9.8),
            ("llm", 57, 2, 1, 1, 812.0, 2430.5),
            ("memory", 940, 0, 0, 0, 1.8, 6.3),
            ("status", 3700, 0, 0, 0, 0.52, 1.9),
        ]
    },
    "rejected": {"bad_frames": 2, "forbidden": 1},
    "endpoints": {
        "bus": ["ipc:///data/bus.sock", "tcp://127.0.0.1:7745"],
        "events": ["ipc:///data/events.sock", "tcp://127.0.0.1:7746"],
    },
    "events": {"published": 9000, "dropped": {"log": 3}, "seq": 9000, "queue_bytes_max": 16384000},
    "access": {"ipc": "admin", "loopback_tcp": "use", "curve": "the key's scope"},
    "data_dir": "/data",
    "curve": True,
    # The shapes below are what the engines and memory components report today.
    "models": {
        "installed": [
            {"name": "minilm", "kind": "onnx-encoder", "size_mb": 86.7, "dim": 384},
            {"name": "smollm2", "kind": "gguf", "size_mb": 98.1, "dim": 576},
        ],
        "loaded": [
            {
                "name": "smollm2",
                "role": "generate",
                "kind": "gguf",
                "memory_mb": 236.7,
                "device": "cpu",
                "tokens_per_s": 104.2,
                "scheduler": {"slots": 4, "slots_busy": 2, "queue": 1, "ttft_ms": 38.4},
            },
            {
                "name": "minilm",
                "role": "embed",
                "kind": "onnx-encoder",
                "memory_mb": 90.1,
                "device": "cpu",
                "tokens_per_s": None,
            },
        ],
        "budget_mb": 3072,
        "used_mb": 326.8,
    },
    "memory": {
        "db": "/data/memory.db",
        "db_mb": 12.5,
        "index": "memory",
        "collections": {
            "notes": {
                "name": "notes",
                "model": "minilm",
                "dim": 384,
                "metric": "cosine",
                "count": 1532,
                "index_mb": 2.2,
                "index_scan": "int8+rescore",
            },
            "docs": {
                "name": "docs",
                "model": "smollm2",
                "dim": 576,
                "metric": "cosine",
                "count": 87,
                "index_mb": 0.2,
            },
        },
    },
    "align": {  # as the align component reports it
        "gate": 0.7,
        "projectors": {
            "smollm2->minilm": {
                "method": "ridge",
                "top1_in_domain": 0.912,
                "top1_out_of_domain": 0.706,
                "projections": 41,
                "accepted": 33,
                "proxied": 8,
                "agreement_mean": 0.742,
                "agreement_recent": 0.781,
            },
        },
    },
    "peers": {
        "peers": [
            {
                "name": "lab-box",
                "endpoint": "tcp://10.0.0.7:7745",
                "state": "linked",
                "services": ["llm", "embed"],
                "last_seen_s": 0.8,
            },
        ]
    },
    "sessions": {"pins": [], "pinned_models": {"smollm2": ["s1"]}, "pin_expiry_s": 86400.0},
    "http": {  # as the gateway reports it
        "url": "http://127.0.0.1:11434",
        "require_key": False,
        "routes": {
            "/api/ps": {
                "requests": 3,
                "errors": 0,
                "client_errors": 0,
                "p50_ms": 0.4,
                "p95_ms": 0.9,
            },
            "/v1/chat/completions": {
                "requests": 12,
                "errors": 0,
                "client_errors": 1,
                "p50_ms": 640.0,
                "p95_ms": 1800.0,
            },
        },
        "keys": {"-": {"requests": 15, "errors": 0, "client_errors": 1}},
    },
    "metrics": {"url": "http://127.0.0.1:9464/metrics"},
    "tools": {"enabled": True, "callable": 4, "by_source": {"builtin": 4}, "calls": 6},
    "orchestrate": {"runs": 2, "steps": 5, "no_tool_steps": 1, "min_score": 0.27},
    "router": {"decisions": 9, "fallbacks": 2, "feedback": 1, "min_score": {"general": 0.2}},
    "tuner": {  # as the tuner component reports it
        "modes": {"unload": "auto", "refit_projector": "propose"},
        "counts": {"unload": {"applying": 1, "applied": 1}},
        "running": {},
        "signals": [],
        "recent": [
            {
                "id": 2,
                "action": "refit_projector",
                "subject": "smollm2->minilm",
                "state": "proposed",
                "outcome": None,
            },
            {
                "id": 1,
                "action": "unload",
                "subject": "smollm2:generate",
                "state": "applied",
                "outcome": "unloaded; it reloads on its next request",
            },
        ],
        "proposed": [],
    },
}

EVENTS = [
    ("log.info", {"ts": T0 + 1, "logger": "aether_box.box", "message": "box ready"}),
    (
        "log.info",
        {
            "ts": T0 + 5,
            "logger": "aether_box.engines.registry",
            "message": "loaded smollm2 (generate) in 0.49 s",
        },
    ),
    ("metrics.llm", {"ts": T0 + 7, "model": "smollm2", "tokens_per_s": 96.3}),
    ("metrics.llm", {"ts": T0 + 9, "model": "smollm2", "tokens_per_s": 110.8}),
    (
        "log.warning",
        {
            "ts": T0 + 12,
            "logger": "aether_box.memory.service",
            "message": "search fell back to the proxy: agreement 0.61 < gate 0.70",
        },
    ),
    ("status.heartbeat", {"ts": T0 + 13, "pid": 4242, "uptime_s": 3725.4}),
    (
        "log.error",
        {
            "ts": T0 + 20,
            "logger": "aether_box.bus.broker",
            "message": "rejected a frame over the size limit (70 MiB > 64 MiB)",
        },
    ),
]


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch):
    """Clocks on screen in UTC, whatever this machine's time zone."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_main_screen_snapshot(snap_compare, utc):
    """The dashboard with every section present: health, services, models, memory,
    projectors, peers and the log tail."""
    app = BoxApp(StaticLink(REPORT, EVENTS, endpoint="ipc:///data/bus.sock"), now=lambda: T0 + 30)

    async def everything_shown(pilot) -> None:
        while app.reports_seen < 1 or app.events_seen < len(EVENTS):
            await pilot.pause(0.05)

    assert snap_compare(app, terminal_size=(140, 44), run_before=everything_shown)
