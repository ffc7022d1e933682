"""Which model the tuner unloads: memory pressure named per model (never one in use or
pinned), and sessions that pin their model against the idle unload until they unpin."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from fixtures_engines import Streamer, loaded, wait_for
from prometheus_client.parser import text_string_to_metric_families
from test_tuner import FAST, decisions, stream_end_wall, tuned_box

from aether_box.monitor.watches import ResidencyWatch, Signals
from aether_box.sessions.store import SessionStore


def _entry(name: str, role: str, memory_mb: float, idle_s: float, in_use: int = 0) -> dict:
    return {"name": name, "role": role, "memory_mb": memory_mb, "idle_s": idle_s,
            "in_use": in_use}  # fmt: skip


def _pressed(signals: Signals) -> dict[str, dict[str, Any]]:
    return {
        s["subject"]: s
        for s in signals.all()
        if s["kind"] == "memory_pressure" and s["triggered"] and s["subject"] != "machine"
    }


def test_memory_pressure_names_idle_models_least_recently_used_first():
    signals = Signals()
    watch = ResidencyWatch(signals)
    loaded_now = [
        _entry("smollm2", "generate", 300.0, idle_s=50.0),
        _entry("minilm", "embed", 100.0, idle_s=90.0),
        _entry("gemma", "generate", 400.0, idle_s=200.0),
        _entry("busy", "generate", 500.0, idle_s=999.0, in_use=1),
    ]
    report = {
        "models": {"loaded": loaded_now},
        "system_memory_percent": 40.0,
        "sessions": {"pinned_models": {"gemma": ["s1"]}},
    }
    # 1300 MB loaded, limit 800: gemma is pinned and `busy` in use, so minilm (least recently
    # used of the rest) then smollm2 are named, each with its own figures.
    watch.update(report, keep_alive=0, pressure_percent=95, models_mb=800)
    pressed = _pressed(signals)
    assert set(pressed) == {"minilm:embed", "smollm2:generate"}
    assert pressed["minilm:embed"]["figures"]["memory_mb"] == 100.0
    assert "monitor.models_memory_mb" in pressed["smollm2:generate"]["message"]
    calm = {s["subject"]: s for s in signals.all() if s["kind"] == "memory_pressure"}
    assert calm["gemma:generate"]["figures"]["pinned_by"] == ["s1"]
    assert not calm["gemma:generate"]["triggered"] and not calm["busy:generate"]["triggered"]
    # The default (0) sets no limit: nothing is named while the machine has memory to spare.
    watch.update(report, keep_alive=0, pressure_percent=95, models_mb=0)
    assert not _pressed(signals)
    # The machine short of memory: one model at a time, the least recently used free one.
    report["system_memory_percent"] = 97.0
    watch.update(report, keep_alive=0, pressure_percent=95, models_mb=0)
    assert set(_pressed(signals)) == {"minilm:embed"}
    # An unloaded model's reading goes.
    report["models"] = {"loaded": loaded_now[:1]}
    watch.update(report, keep_alive=0, pressure_percent=95, models_mb=0)
    subjects = {s["subject"] for s in signals.all() if s["kind"] == "memory_pressure"}
    assert subjects == {"smollm2:generate", "machine"}


def test_memory_pressure_unloads_the_named_model_never_mid_request(models_dir: Path):
    monitor = {**FAST, "models_memory_mb": 1}  # any loaded model is over it
    with (
        tuned_box(models_dir, monitor=monitor, tuner={"check_s": 0.1}) as box,
        box.client(timeout=120) as client,
    ):
        count = [{"role": "user", "content": "Count from 1 to 200, separated by commas."}]
        body = {"op": "chat", "model": "smollm2", "messages": count, "max_tokens": 64,
                "temperature": 0.0, "stream": True}  # fmt: skip
        stream = Streamer(box, body)
        stream.start()
        assert stream.first.wait(300) and stream.error is None
        # While smollm2 answers, an embedding model loads and goes idle: it is the one named.
        client.embed("minilm", ["a text"])

        def applied(subject: str) -> list[dict[str, Any]]:
            return [
                d
                for d in decisions(client, action="unload", state="applied")
                if d["subject"] == subject
            ]

        wait_for(lambda: applied("minilm:embed"), 60, f"minilm's unload ({decisions(client)})")
        (minilm,) = applied("minilm:embed")
        assert minilm["signal"]["kind"] == "memory_pressure"
        figures = minilm["signal"]["figures"]
        assert figures["model"] == "minilm" and figures["memory_mb"] > 0
        assert figures["limit_mb"] == 1 and figures["loaded_mb"] >= figures["memory_mb"]
        assert ("minilm", "embed") not in loaded(client)
        stream.join(300)
        assert stream.error is None and stream.replies[-1]["usage"]["completion_tokens"] == 64
        # smollm2 goes too, but only once its request has ended.
        wait_for(lambda: applied("smollm2:generate"), 60, "smollm2's unload")
        for d in decisions(client, action="unload"):
            if d["subject"] == "smollm2:generate":
                assert d["created"] >= stream_end_wall(stream), d
        assert ("smollm2", "generate") not in loaded(client)
        # The per-model figure behind it is on /metrics; reloading works as ever.
        client.embed("minilm", ["again"])
        with urllib.request.urlopen(client.status()["metrics"]["url"], timeout=10) as response:
            text = response.read().decode()
        names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
        assert "aether_box_model_memory_bytes" in names


def test_a_pinned_session_keeps_its_idle_model_until_unpinned(models_dir: Path):
    with (
        tuned_box(
            models_dir, engines={"keep_alive": 0.3}, monitor=FAST, tuner={"check_s": 0.1}
        ) as box,
        box.client(timeout=120) as client,
    ):
        # Two sessions pin smollm2: one when it is made, one later with the `pin` op.
        made = client.request("session", {"op": "create", "model": "smollm2", "pin": True})
        first = made["session"]
        assert made["pinned"] is True
        second = client.request("session", {"op": "create", "model": "smollm2"})["session"]
        client.request("session", {"op": "pin", "session": second, "pin": True})
        say = {"op": "say", "session": first, "text": "Hi", "max_tokens": 2, "temperature": 0.0}
        client.request("session", say)

        def unloads(state: str) -> list[dict[str, Any]]:
            return decisions(client, action="unload", state=state)

        # Idle past keep_alive: the tuner decides to unload it; the pins hold it, logged.
        wait_for(lambda: unloads("rejected"), 60, f"the skipped unload ({decisions(client)})")
        (skip,) = unloads("rejected")
        assert skip["subject"] == "smollm2:generate"
        assert skip["after"]["pinned_by"] == sorted([first, second])
        assert "skipped: pinned by session" in skip["outcome"]
        assert ("smollm2", "generate") in loaded(client)
        status = client.status()
        assert status["sessions"]["pinned_models"] == {"smollm2": sorted([first, second])}
        assert status["tuner"]["held_by_pins"] == {"idle:smollm2:generate": "smollm2"}
        listed = client.request("session", {"op": "list"})["sessions"]
        assert sorted(s["pinned"] for s in listed) == [True, True]
        cli = [sys.executable, "-m", "aether_box", "--data-dir", str(box.data_dir)]
        shown = subprocess.run([*cli, "tuner", "status"], capture_output=True, text=True,
                               timeout=60, check=True)  # fmt: skip
        assert "held: idle:smollm2:generate (a session pins smollm2" in shown.stdout
        # One unpinned (as a user would, from the CLI): the other still pins it.
        unpin = [*cli, "chat", "smollm2", "--session", first, "--no-pin"]
        done = subprocess.run(unpin, capture_output=True, text=True, timeout=60, check=True)
        assert f"session {first} unpinned" in done.stderr
        listed = client.request("session", {"op": "list"})["sessions"]
        assert {s["id"]: s["pinned"] for s in listed} == {first: False, second: True}
        assert client.status()["sessions"]["pinned_models"] == {"smollm2": [second]}
        # The other one ends: the same idle spell is acted on, unloaded after one logged skip.
        client.request("session", {"op": "delete", "session": second})
        wait_for(lambda: unloads("applied"), 60, "the unload once nothing pins it")
        assert len(unloads("rejected")) == 1
        assert ("smollm2", "generate") not in loaded(client)
        assert client.status()["sessions"]["pins"] == []


def test_a_pin_lapses_when_its_session_goes_unused(models_dir: Path):
    with (
        tuned_box(
            models_dir,
            engines={"keep_alive": 0.3},
            monitor=FAST,
            tuner={"check_s": 0.1},
            sessions={"pin_expiry_s": 1.0},
        ) as box,
        box.client(timeout=120) as client,
    ):
        made = client.request("session", {"op": "create", "model": "smollm2", "pin": True})
        said = time.time()
        client.request("session", {"op": "say", "session": made["session"], "text": "Hi",
                                   "max_tokens": 2, "temperature": 0.0})  # fmt: skip
        # Nobody uses the session: its pin lapses a second after its turn; then the unload.
        wait_for(lambda: decisions(client, action="unload", state="applied"), 60, "the unload")
        (unload,) = decisions(client, action="unload", state="applied")
        assert unload["created"] >= said + 1.0
        assert client.status()["sessions"]["pins"] == []
        # The session is kept, still marked pinned (its next turn pins again).
        listed = client.request("session", {"op": "list"})["sessions"]
        assert listed[0]["pinned"] is True


def test_a_pin_is_kept_in_the_sessions_database(tmp_path: Path):
    store = SessionStore(tmp_path / "sessions.db")
    pinned = store.create("smollm2", None, pinned=True)
    store.create("smollm2", None)
    store.close()
    store = SessionStore(tmp_path / "sessions.db")
    try:
        assert [p["id"] for p in store.pinned()] == [pinned["id"]]
        assert store.pin(pinned["id"], False)["pinned"] is False
        assert store.pinned() == []
    finally:
        store.close()
