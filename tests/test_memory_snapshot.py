"""The index saved beside the SQLite file: loaded after a clean restart, never trusted stale."""

from __future__ import annotations

import shutil
import signal

import anyio
import numpy as np
from fixtures_box import BoxProcess
from fixtures_memory import unit_vectors, wait_for_memory

from aether_box.memory.core import Memory
from aether_box.memory.filters import compile_filter
from aether_box.memory.settings import MemorySettings

DIM = 16


def settings(data_dir):
    chosen = MemorySettings(snapshot_min_rows=1)
    chosen.resolve(data_dir)
    return chosen


async def add(memory, first, n):
    ids = [f"r{i}" for i in range(first, first + n)]
    await memory.add("c", ids, [None] * n, ["{}"] * n, unit_vectors(n, DIM, seed=first))


async def top_ids(memory, query, k=5):
    hits = await memory.search("c", query, k, where=compile_filter(None))
    return [h.record.id for h in hits]


def test_a_clean_close_saves_the_index_and_a_stale_copy_is_rebuilt(tmp_path):
    query = unit_vectors(1, DIM, seed=0)[0]  # record r0's own vector

    async def first_run():
        memory = Memory(settings(tmp_path))
        await memory.open()
        await memory.create("c", "test", DIM, "cosine")
        await add(memory, 0, 500)
        await memory.index_for(memory.collection("c"))
        await memory.close()
        return memory.snapshots.path(memory.collection("c").id)

    saved = anyio.run(first_run)
    assert saved.is_file()
    shutil.copy(saved, tmp_path / "old.idx")
    leftover = saved.parent / f".partial-{saved.name}.x1"  # a save cut short by a kill
    leftover.write_bytes(b"half")

    async def second_run():
        memory = Memory(settings(tmp_path))
        await memory.open()
        assert not leftover.exists()
        index = await memory.index_for(memory.collection("c"))
        assert len(index) == 500 and (await top_ids(memory, query))[0] == "r0"
        await add(memory, 500, 1)  # the copy goes before this write commits
        assert not saved.exists()
        await memory.close()

    anyio.run(second_run)
    assert saved.is_file()
    shutil.copy(tmp_path / "old.idx", saved)  # a copy from before the last write: stale

    async def third_run():
        memory = Memory(settings(tmp_path))
        await memory.open()
        index = await memory.index_for(memory.collection("c"))
        assert len(index) == 501  # rebuilt from SQLite, not the 500 of the stale copy
        newest = unit_vectors(1, DIM, seed=500)[0]
        assert (await top_ids(memory, newest))[0] == "r500"
        await memory.close()

    anyio.run(third_run)


def test_writes_after_a_clean_restart_survive_kill_9(data_dir):
    saved_flag = ["--set", "memory.snapshot_min_rows=1"]
    box = BoxProcess(data_dir, *saved_flag)
    try:
        wait_for_memory(box)
        with box.client(timeout=30) as client:
            client.request("memory", {"op": "create", "collection": "c", "model": "t", "dim": DIM})
            client.request(
                "memory",
                {"op": "add", "collection": "c", "vectors": unit_vectors(300, DIM, seed=1)},
            )
    finally:
        assert box.stop() == 0
    assert list((data_dir / "memory.db.index").glob("c*.idx"))  # saved on the clean stop

    box = BoxProcess(data_dir, *saved_flag)
    try:
        wait_for_memory(box)
        late = unit_vectors(1, DIM, seed=99)
        with box.client(timeout=30) as client:
            client.request(
                "memory", {"op": "add", "collection": "c", "ids": ["late"], "vectors": late}
            )
        box.process.send_signal(signal.SIGKILL)
        box.process.wait(10)
    finally:
        box.stop()

    box = BoxProcess(data_dir, *saved_flag)
    try:
        wait_for_memory(box)
        with box.client(timeout=30) as client:
            reply = client.request(
                "memory", {"op": "search", "collection": "c", "vector": late[0], "k": 3}
            )
            assert reply["results"][0]["id"] == "late"
            count = client.request("memory", {"op": "count", "collection": "c"})["count"]
            assert count == 301
            assert np.isclose(reply["results"][0]["score"], 1.0, atol=1e-5)
    finally:
        box.stop()
