"""A write the box acknowledged survives kill -9 of the box, and the file stays sound."""

from __future__ import annotations

import signal
import threading
import time

import apsw
import sqlite_vec
from fixtures_box import BoxProcess
from fixtures_memory import unit_vectors, wait_for_memory

from aether_box.client import BoxError

DIM = 32
BATCH = 200


def test_acknowledged_writes_survive_kill_9(data_dir):
    box = BoxProcess(data_dir)
    wait_for_memory(box)
    with box.client(timeout=5) as client:
        client.request("memory", {"op": "create", "collection": "log", "model": "test", "dim": DIM})
    acknowledged: list[list[str]] = []
    sent: list[list[str]] = []
    stop = threading.Event()

    def writer() -> None:
        # One batch after another, as fast as the box takes them, until the box dies.
        with box.client(timeout=5) as client:
            batch = 0
            while not stop.is_set():
                ids = [f"b{batch}-{i}" for i in range(BATCH)]
                sent.append(ids)
                try:
                    client.request(
                        "memory",
                        {
                            "op": "add",
                            "collection": "log",
                            "ids": ids,
                            "vectors": unit_vectors(BATCH, DIM, seed=batch),
                            "texts": [f"entry {i} of batch {batch}" for i in range(BATCH)],
                            "metadata": {"batch": batch},
                        },
                    )
                except BoxError:  # the box died under this request
                    return
                acknowledged.append(ids)
                batch += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while len(acknowledged) < 15 and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.01)
        assert len(acknowledged) >= 15, box.output()
        box.process.send_signal(signal.SIGKILL)  # mid-stream: a batch is usually in flight
        box.process.wait(10)
    finally:
        stop.set()
        thread.join(30)
        box.stop()

    restarted = BoxProcess(data_dir)
    try:
        wait_for_memory(restarted)
        with restarted.client(timeout=30) as client:
            for ids in acknowledged:
                got = client.request("memory", {"op": "get", "collection": "log", "ids": ids})
                assert got["missing"] == [], f"acknowledged records lost: {got['missing'][:5]}"
            # The batch in flight at the kill is all there or not there at all.
            for ids in sent[len(acknowledged) :]:
                got = client.request("memory", {"op": "get", "collection": "log", "ids": ids})
                assert len(got["missing"]) in (0, BATCH)
            count = client.request("memory", {"op": "count", "collection": "log"})["count"]
            assert count in (len(acknowledged) * BATCH, (len(acknowledged) + 1) * BATCH)
            hits = client.request(
                "memory",
                {
                    "op": "search",
                    "collection": "log",
                    "vector": unit_vectors(BATCH, DIM, seed=3)[7],
                    "k": 1,
                },
            )["results"]
            assert hits[0]["id"] == "b3-7"  # the reloaded index finds what the file holds
            assert client.request("memory", {"op": "check"}) == {"ok": True, "integrity": ["ok"]}
    finally:
        restarted.stop()

    conn = apsw.Connection(str(data_dir / "memory.db"))
    conn.enable_load_extension(True)
    conn.load_extension(sqlite_vec.loadable_path())
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert conn.execute("SELECT count(*) FROM vec_1").fetchall() == [(count,)]
