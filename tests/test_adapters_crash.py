"""kill -9 during `adapters add`: after a restart the acknowledged adapter is there and
works, the one cut short is whole or absent, its half-written file is gone, and the index
passes SQLite's integrity check."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import apsw
from fixtures_adapters import TRAINED, write_random
from fixtures_box import BoxProcess, wait_for

from aether_box.client import BoxError

PROMPT = "The capital of France is Paris, and the capital of Italy is"


def test_an_add_killed_while_writing_keeps_what_was_acknowledged(
    data_dir: Path, models_dir: Path, smollm2_path: Path, tmp_path: Path
):
    settings = ["--set", f"models.dir={models_dir}", "--set", "adapters.probe_prompts=1"]
    settings += ["--set", "engines.n_threads=1"]
    first = write_random(tmp_path / "first.gguf", smollm2_path, std=0.01, seed=4)
    files = data_dir / "adapters" / "files"
    box = BoxProcess(data_dir, *settings)
    replies: list[Any] = []
    try:
        with box.client(timeout=300) as client:
            acked = client.request("adapters", {"op": "add", "path": str(first), "base": "smollm2"})

        def add_second() -> None:  # the trained PEFT adapter: converted, then written (~7 MB)
            body = {"op": "add", "path": str(TRAINED), "base": "smollm2", "name": "second"}
            try:
                with box.client(timeout=30) as client:
                    replies.append(client.request("adapters", body, timeout=30))
            except BoxError as exc:  # the box died under it
                replies.append(exc)

        adding = threading.Thread(target=add_second)
        adding.start()
        wait_for(
            lambda: bool(replies) or any(p.name.endswith(".tmp") for p in files.iterdir()),
            300,
            "the second adapter being written",
        )
        box.process.send_signal(signal.SIGKILL)
        box.process.wait(10)
        adding.join(60)
    finally:
        box.stop()

    conn = apsw.Connection(str(data_dir / "adapters" / "adapters.sqlite"))
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
    restarted = BoxProcess(data_dir, *settings)
    try:
        with restarted.client(timeout=300) as client:
            listed = {a["name"]: a for a in client.request("adapters", {"op": "list"})["adapters"]}
            assert listed["first"]["sha256"] == acked["sha256"]
            if replies and isinstance(replies[0], dict):  # acknowledged before the kill
                assert "second" in listed
            assert set(listed) <= {"first", "second"}
            body = {"op": "complete", "model": "smollm2", "prompt": PROMPT, "max_tokens": 4}
            for name in listed:
                used = {**body, "temperature": 0.0, "adapters": [{"name": name, "force": True}]}
                assert client.request("llm", used, timeout=300)["usage"]["completion_tokens"]
            # Only whole files of kept adapters remain: the half-written one was swept.
            kept = {f"{a['sha256']}.gguf" for a in listed.values()}
            assert {p.name for p in files.iterdir()} == kept
    finally:
        restarted.stop()
