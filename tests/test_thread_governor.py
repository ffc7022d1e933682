"""The decode thread governor: on a busy host generation moves to fewer llama.cpp threads (one
descheduled thread stalls the others at every barrier), and a quiet host keeps them all."""

from __future__ import annotations

import psutil
import pytest
from _load import busy_cores
from fixtures_engines import engines_box, loaded

from aether_box.engines.threads import EPOCH_STEPS, MOST_BETWEEN_LOOKS, ThreadGovernor, candidates

QUIET = {4: 0.010, 3: 0.012, 2: 0.016, 1: 0.030}  # seconds per step, by thread count
BUSY = {4: 0.200, 3: 0.100, 2: 0.080, 1: 0.060}  # one thread: twice as slow, the rest worse


def run(governor: ThreadGovernor, times: dict[int, float], readings: int) -> list[int]:
    """Feed `readings` epochs of steps timed as `times` says; the counts in use, per step."""
    used = []
    for _ in range(readings * EPOCH_STEPS):
        used.append(governor.current)
        governor.observe(1, times[governor.current])
    return used


def test_the_candidates_are_all_cores_all_but_one_half_and_one():
    assert candidates(8) == [8, 7, 4, 1]
    assert candidates(2) == [2, 1]
    assert candidates(1) == [1]


def test_a_quiet_host_keeps_every_thread_and_looks_ever_less_often():
    governor = ThreadGovernor(4)
    used = run(governor, QUIET, 2000)
    assert governor.changes == 0 and governor.looks > 5
    # Looks back off to one per MOST_BETWEEN_LOOKS readings: the slower counts get few steps.
    late = used[len(used) // 2 :]
    assert sum(n != 4 for n in late) / len(late) < 3 / MOST_BETWEEN_LOOKS * 1.5


def test_load_arriving_moves_to_fewer_threads_at_once_and_back_when_it_leaves():
    governor = ThreadGovernor(4)
    run(governor, QUIET, 500)
    assert governor.current == 4
    # Load comes: the very next readings see the step time jump and look again.
    used = run(governor, BUSY, 6)
    assert governor.current == 1 and used[-1] == 1
    run(governor, BUSY, 100)
    assert governor.current == 1
    # It leaves: one thread gets faster by more than half, which starts a look.
    used = run(governor, QUIET, 6)
    assert governor.current == 4 and used[-1] == 4
    assert governor.changes == 2


def test_step_times_of_different_batch_sizes_are_never_compared():
    governor = ThreadGovernor(2)
    for step in range(EPOCH_STEPS * 40):
        # Alternating batch sizes never fill an epoch: no reading, so no look and no change.
        assert governor.observe(1 + step % 2, 0.01 * (1 + step % 2)) is None
    assert governor.looks == 0


def test_generation_on_a_busy_host_moves_to_fewer_threads(models_dir):
    cores = psutil.cpu_count(logical=False) or 1
    if cores < 2:
        pytest.skip("one core: there is no fewer")
    with engines_box(models_dir) as box, box.client() as client:
        body = {
            "op": "complete",
            "model": "smollm2",
            "prompt": "Once upon a time",
            "max_tokens": 120,
            "temperature": 0.0,
        }
        client.request("llm", {**body, "max_tokens": 2}, timeout=120)  # loaded, quiet
        with busy_cores(cores):
            client.request("llm", body, timeout=600)
        stats = loaded(client)[("smollm2", "generate")]["scheduler"]
    assert stats["threads"] < cores, stats
    assert stats["thread_changes"] >= 1
