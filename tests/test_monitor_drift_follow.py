"""The drift watch follows a collection's new records: after a large batch it reads only the
newest vectors it keeps, and counts the others without reading them back."""

from __future__ import annotations

from typing import Any

import anyio
import numpy as np
from fixtures_memory import unit_vectors

from aether_box.monitor.watches import DriftWatch, Signals

DIM = 16


def test_after_a_large_batch_the_drift_watch_reads_only_the_newest_vectors(memory_box):
    with memory_box.client(timeout=60) as client:
        client.request("memory", {"op": "create", "collection": "kb", "model": "m", "dim": DIM})
        client.request(
            "memory", {"op": "add", "collection": "kb", "vectors": unit_vectors(60, DIM)}
        )
        read: list[int] = []  # vectors each `list` brought back

        async def call(service: str, body: dict[str, Any]) -> dict[str, Any]:
            reply = await anyio.to_thread.run_sync(lambda: client.request(service, body))
            if body.get("op") == "list":
                read.append(len(reply.get("vectors", [])))
            return reply

        watch = DriftWatch(Signals(), min_texts=50, p_value=0.01)

        def look() -> None:
            anyio.run(watch.update, client.status()["memory"], call)

        look()  # the reference: the 60 records there are
        assert sum(read) == 60
        later = unit_vectors(3_000, DIM, seed=2)
        for start in range(0, len(later), 1_000):
            client.request(
                "memory",
                {"op": "add", "collection": "kb", "vectors": later[start : start + 1_000]},
            )
        read.clear()
        look()
        assert sum(read) == watch.reference_size and len(read) <= 2  # one skip, one page
        follow = watch._follow["kb"]
        assert follow.passed == 3_060
        if follow.arrived:  # no shift (else the recent texts joined the reference)
            assert follow.arrived == follow.tested_at == 3_000
            np.testing.assert_array_equal(np.concatenate(follow.recent), later[-200:])
        # Nothing new: nothing read.
        read.clear()
        look()
        assert sum(read) == 0
