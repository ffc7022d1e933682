"""Adapters in the generation scheduler: exact base logits at scale 0 and after switching back,
and the adapter set in every cache key."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fixtures_adapters import write_random

from aether_box.engines.generation import AdapterRef, GenerationParams
from aether_box.engines.generator import LlamaGenerator
from aether_box.testing import run_job

TEXT = "The capital of France is Paris, and the capital of Italy is"


@pytest.fixture(scope="module")
def generator(model_store) -> Iterator[LlamaGenerator]:  # type: ignore[no-untyped-def]
    engine = LlamaGenerator.load(
        model_store.path("smollm2"), n_ctx=256, n_threads=1, n_gpu_layers=0, parallel=2
    )
    yield engine
    engine.close()


def test_scale_zero_and_switching_back_give_the_base_logits_exactly(
    generator, tmp_path, smollm2_path
):
    path = str(write_random(tmp_path / "r.gguf", smollm2_path, std=0.05))
    tokens = generator.prompt_tokens(TEXT)
    on = [AdapterRef(path, "a" * 64, 1.0)]
    zero = [AdapterRef(path, "a" * 64, 0.0)]
    base = run_job(generator, lambda d: generator.prepare_score(tokens, [], d))
    at_zero = run_job(generator, lambda d: generator.prepare_score(tokens, zero, d))
    adapted = run_job(generator, lambda d: generator.prepare_score(tokens, on, d))
    back = run_job(generator, lambda d: generator.prepare_score(tokens, [], d))
    assert base.shape == (len(tokens), 49152)
    assert np.array_equal(at_zero, base)  # bit for bit
    assert np.array_equal(back, base)
    assert np.abs(adapted - base).max() > 0.1  # the adapter is really applied


def test_a_request_never_reuses_kv_computed_under_another_set(generator, tmp_path, smollm2_path):
    path = str(write_random(tmp_path / "r.gguf", smollm2_path, std=0.05, seed=3))
    refs = [AdapterRef(path, "b" * 64, 1.0)]
    tokens = generator.prompt_tokens(TEXT + " Rome. The capital of Spain is")
    params = GenerationParams(max_tokens=4, temperature=0.0)

    def complete(adapters: list[AdapterRef]) -> Any:
        return run_job(
            generator, lambda d: generator.prepare(tokens, params, None, d, "t", None, adapters)
        )

    first_base = complete([])
    under_adapter = complete(refs)
    again = complete(refs)
    base_again = complete([])
    assert under_adapter.cached_tokens == 0 or under_adapter.cached_tokens < len(tokens) - 1
    # With two slots the base's cache survives in the other one: both sets find their own.
    assert again.cached_tokens == len(tokens) - 1
    assert base_again.cached_tokens == len(tokens) - 1
    assert base_again.text == first_base.text
    slots = {s.adapters for s in generator.scheduler.slots}
    assert slots == {"", refs[0].sha256[:24] + "@1.0"}


def test_requests_under_different_sets_in_one_context_each_get_their_own_answer(
    generator, tmp_path, smollm2_path
):
    path = str(write_random(tmp_path / "r.gguf", smollm2_path, std=0.08, seed=5))
    refs = [AdapterRef(path, "c" * 64, 1.0)]
    tokens = generator.prompt_tokens("Once upon a time, in a small village,")
    params = GenerationParams(max_tokens=6, temperature=0.0)

    def alone(adapters: list[AdapterRef]) -> str:
        return run_job(
            generator, lambda d: generator.prepare(tokens, params, None, d, "t", None, adapters)
        ).text

    base_alone, adapted_alone = alone([]), alone(refs)
    assert base_alone != adapted_alone
    results: dict[str, Any] = {}
    finished = {"base": threading.Event(), "adapted": threading.Event()}

    def submit(key: str, adapters: list[AdapterRef]) -> None:
        def on_done(item: Any) -> None:
            results[key] = item
            finished[key].set()

        generator.submit(generator.prepare(tokens, params, None, on_done, "t", None, adapters))

    switches = generator.scheduler.adapter_switches
    submit("base", [])
    submit("adapted", refs)
    assert all(event.wait(300) for event in finished.values())
    assert results["base"].text == base_alone
    assert results["adapted"].text == adapted_alone
    assert generator.scheduler.adapter_switches > switches


def test_a_released_adapter_is_freed_after_the_job_using_it_and_the_base_is_intact(
    generator, tmp_path, smollm2_path
):
    path = str(write_random(tmp_path / "gone.gguf", smollm2_path, std=0.05, seed=3))
    ref = [AdapterRef(path, "g" * 64, 1.0)]
    tokens = generator.prompt_tokens(TEXT)
    base = run_job(generator, lambda d: generator.prepare_score(tokens, [], d))
    adapted = run_job(generator, lambda d: generator.prepare_score(tokens, ref, d))
    loaded = generator.stats()["adapters_loaded"]
    # Released while a queued job still holds it: that job runs under it, then it is freed.
    done = threading.Event()
    held: list[Any] = []
    job = generator.prepare_score(tokens, ref, lambda out: (held.append(out), done.set()))
    assert generator.release_adapter("g" * 64)
    generator.submit(job)
    assert done.wait(120)
    assert np.array_equal(held[0], adapted)
    assert generator.stats()["adapters_loaded"] == loaded - 1
    assert not generator.release_adapter("g" * 64)  # no longer loaded
    # The context no longer applies it: the base reads exactly as before.
    assert np.array_equal(
        run_job(generator, lambda d: generator.prepare_score(tokens, [], d)), base
    )
    # And it loads again from its file when asked for.
    again = run_job(generator, lambda d: generator.prepare_score(tokens, ref, d))
    assert np.array_equal(again, adapted)
