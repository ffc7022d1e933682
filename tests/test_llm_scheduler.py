"""The generation scheduler with the real model: batching keeps answers, slots keep conversations,
a full KV cache fails only the request that needed the cells, and status shows all of it."""

from __future__ import annotations

import threading
from typing import Any

from fixtures_box import scrape
from fixtures_engines import Streamer, engines_box, loaded, wait_for
from rich.console import Console

from aether_box.engines.slots import Slot, choose_slot, common_prefix
from aether_box.status_view import render_status

MODEL = "smollm2"
KEY = (MODEL, "generate")
QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis briefly.",
    "Why is the sky blue?",
]


def chat(client: Any, messages: list[dict[str, str]], tokens: int = 32) -> dict[str, Any]:
    body = {
        "op": "chat",
        "model": MODEL,
        "messages": messages,
        "max_tokens": tokens,
        "temperature": 0.0,
    }
    return client.request("llm", body, timeout=300)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_greedy_answers_are_the_same_alone_and_in_a_batch_of_four(models_dir):
    # Each sequence has its own KV stream (engines.kv_unified = false), so its cells lie as
    # they would alone and batching changes no bit of its logits. Chat prompts share the
    # template's system prompt, so the batch also reuses cached prefixes.
    with engines_box(models_dir) as box, box.client() as client:
        alone = [chat(client, user(q))["text"] for q in QUESTIONS]
        together: list[str | None] = [None] * len(QUESTIONS)

        def ask(i: int) -> None:
            with box.client() as own:
                together[i] = chat(own, user(QUESTIONS[i]))["text"]

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(QUESTIONS))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        stats = loaded(client)[KEY]["scheduler"]
    assert together == alone
    assert stats["generated_tokens"] >= 2 * sum(1 for _ in QUESTIONS)


def test_a_conversations_next_turn_reuses_its_cached_history(llm_box):
    system = {
        "role": "system",
        "content": "You are a patient tutor. " + "Answer in plain words, briefly. " * 40,
    }
    with llm_box.client() as client:
        first = chat(client, [system, *user("What is a prime number?")])
        history = [
            system,
            *user("What is a prime number?"),
            {"role": "assistant", "content": first["text"]},
            *user("Is 7 one?"),
        ]
        before = loaded(client)[KEY]["scheduler"]["prompt_tokens_reused"]
        second = chat(client, history)
        after = loaded(client)[KEY]["scheduler"]["prompt_tokens_reused"]
    # The whole first prompt (and most of the reply) came from the slot's KV cache.
    assert second["cached_tokens"] >= first["usage"]["prompt_tokens"]
    assert after - before == second["cached_tokens"]
    assert second["usage"]["prompt_tokens"] > first["usage"]["prompt_tokens"]


def test_running_out_of_kv_cells_fails_only_the_request_that_needed_them(models_dir):
    # Two slots sharing one pool of 256 cells; each request may grow to 256 on its own, so
    # together they run out. The older one keeps its cells; the younger fails, clearly.
    long = {
        "op": "complete",
        "model": MODEL,
        "prompt": "Once upon a time",
        "max_tokens": 240,
        "temperature": 0.0,
        "stream": True,
    }
    with engines_box(models_dir, n_ctx=256, parallel=2, kv_cells=256, kv_unified=True) as box:
        older = Streamer(box, long)
        older.start()
        assert older.first.wait(120)
        younger = Streamer(box, {**long, "prompt": "In a galaxy far away"})
        younger.start()
        younger.join(300)
        older.join(300)
        with box.client() as client:
            stats = loaded(client)[KEY]["scheduler"]
    assert older.error is None, older.error
    final = older.replies[-1]
    assert final["finish_reason"] == "length" or final["finish_reason"] == "stop"
    assert final["usage"]["completion_tokens"] >= 200 or final["finish_reason"] == "stop"
    assert younger.error is not None and getattr(younger.error, "code", "") == "kv_full"
    assert "engines.kv_cells" in younger.error.message
    assert stats["kv_cells"] == 256 and stats["slots_busy"] == 0


def test_status_and_metrics_report_slots_queue_cache_and_speed(llm_box):
    with llm_box.client() as client:
        chat(client, user("Name a colour."), tokens=8)
        entry = loaded(client)[KEY]
        report = client.status()
        models = report["models"]
        samples = scrape(report["metrics"]["url"])
    stats = entry["scheduler"]
    assert stats["slots"] == models["parallel"] == 4
    assert stats["slots_busy"] + stats["slots_free"] == 4
    assert stats["queue"] == 0 and stats["max_queue"] >= 1
    assert stats["kv_cells"] >= 4 * 2048 and 0 < stats["kv_cells_used"] <= stats["kv_cells"]
    assert stats["prompt_tokens"] > 0 and stats["prompt_tokens_reused"] >= 0
    assert stats["ttft_ms"] > 0 and stats["step_overhead_ms"] >= 0
    assert stats["aggregate_tokens_per_s"] > 0

    def metric(name: str) -> float:
        return samples[(f"aether_box_{name}", (("model", MODEL),))]

    assert metric("model_slots") == 4
    assert metric("model_queue") == 0
    assert metric("model_kv_cells") == stats["kv_cells"]
    assert metric("model_generated_tokens_total") >= stats["generated_tokens"]
    assert metric("model_prompt_tokens_total") >= stats["prompt_tokens"]
    assert metric("model_tokens_per_second") > 0
    assert metric("model_time_to_first_token_seconds") > 0

    console = Console(record=True, width=200)
    render_status(report, console)
    assert f"{MODEL}: slots 0/4 busy, 0 queued; KV " in console.export_text()


# -- slot choice, without a model ----------------------------------------------------------


def test_common_prefix_counts_shared_leading_tokens():
    assert common_prefix([1, 2, 3], [1, 2, 3, 4]) == 3
    assert common_prefix([1, 2, 3], [1, 9, 3]) == 1
    assert common_prefix([], [1]) == 0
    assert common_prefix([5, 6], [5, 6]) == 2


def test_a_request_takes_the_free_slot_with_the_longest_prefix_then_the_least_recent():
    slots = [
        Slot(0, [1, 2, 3, 4], last_used=5.0),
        Slot(1, [1, 2], last_used=1.0),
        Slot(2, [7, 8], last_used=2.0),
        Slot(3, [1, 2, 3, 4, 5], job=object(), last_used=0.5),  # busy: never chosen
    ]
    assert choose_slot(slots, [1, 2, 3, 4, 5, 6]) == (slots[0], 4)
    assert choose_slot(slots, [9]) == (slots[1], 0)  # no prefix anywhere: least recently used
    slots[0].job = slots[1].job = slots[2].job = object()
    assert choose_slot(slots, [1]) is None


def test_a_sessions_conversation_is_saved_when_its_slot_is_reused_and_restored(models_dir):
    system = {"role": "system", "content": "You are terse. " + "Keep every answer short. " * 40}
    first_turn = [system, *user("What is a prime number?")]
    with engines_box(models_dir, parallel=1) as box, box.client() as client:
        first = client.request(
            "llm",
            {
                "op": "chat",
                "model": MODEL,
                "messages": first_turn,
                "max_tokens": 8,
                "temperature": 0.0,
                "session": "alice",
            },
            timeout=300,
        )
        # Another conversation takes the only slot: alice's is saved to disk first.
        chat(client, user("Name a colour."), tokens=4)
        wait_for(lambda: loaded(client)[KEY]["scheduler"]["states_saved"] == 1, 60, "a save")
        second_turn = [
            *first_turn,
            {"role": "assistant", "content": first["text"]},
            *user("Is 7 one?"),
        ]
        body = {
            "op": "chat",
            "model": MODEL,
            "messages": second_turn,
            "max_tokens": 8,
            "temperature": 0.0,
        }
        # Another session with the very same prompt gets nothing of alice's.
        bob = client.request("llm", {**body, "session": "bob"}, timeout=300)
        assert bob["cached_tokens"] < 40  # at most the template's shared start
        chat(client, user("Name a colour."), tokens=4)  # the slot holds something else again
        alice = client.request("llm", {**body, "session": "alice"}, timeout=300)
        stats = loaded(client)[KEY]["scheduler"]
    assert alice["cached_tokens"] >= first["usage"]["prompt_tokens"]
    assert stats["states_restored"] == 1 and stats["state_bytes"] > 0
    assert alice["text"] == bob["text"]  # restored state, same reply as reading it all
