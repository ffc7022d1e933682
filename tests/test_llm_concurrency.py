"""Several clients at once: side-by-side service, a bounded queue, cancellation, and a loop that
never blocks."""

from __future__ import annotations

import time

import pytest
import zmq
from fixtures_engines import Streamer, engines_box, loaded, wait_for

from aether_box.bus.protocol import CLIENT, ClientCmd, decode_body, encode_body
from aether_box.errors import BoxError, Timeout

MODEL = "smollm2"
KEY = (MODEL, "generate")
# Long enough that it is still running when the test is done with it (~2,000 tokens).
LONG = {
    "op": "complete",
    "model": MODEL,
    "prompt": "Once upon a time",
    "temperature": 0.0,
    "max_tokens": 2000,
    "stream": True,
}


def test_status_answers_quickly_while_a_long_generation_runs(llm_box):
    generation = Streamer(llm_box, LONG)
    generation.start()
    assert generation.first.wait(120), "the generation never started"
    try:
        with llm_box.client() as client:
            latencies = []
            for _ in range(10):
                started = time.monotonic()
                client.status()
                latencies.append(time.monotonic() - started)
                time.sleep(0.05)
            assert generation.finished_at is None, "the generation ended before the status calls"
            assert max(latencies) < 1.0, latencies
            assert loaded(client)[KEY]["busy"]
    finally:
        generation.stop()


def test_a_client_that_cancels_frees_the_model_within_moments(llm_box):
    generation = Streamer(llm_box, LONG, stop_after=3)
    generation.start()
    generation.join(120)
    assert generation.error is None and len(generation.replies) == 3
    with llm_box.client() as client:
        # Running on to 2,000 tokens would take 15 s or more even on an idle machine; on a
        # loaded 2-core one a single token can take most of a second, hence this margin.
        took = wait_for(lambda: not loaded(client).get(KEY, {}).get("busy"), 10, "the model freed")
        assert took < 5
        # The model is free: a short request gets it at once.
        started = time.monotonic()
        client.request("llm", {**LONG, "max_tokens": 2, "stream": False}, timeout=60)
        assert time.monotonic() - started < 30


def test_a_client_that_disappears_stops_its_generation(llm_box):
    context = zmq.Context.instance()
    socket = context.socket(zmq.DEALER)
    socket.linger = 0
    socket.connect(llm_box.endpoint)
    socket.send_multipart([CLIENT, ClientCmd.REQUEST, b"llm", *encode_body(LONG)])
    for _ in range(2):  # two tokens: it is generating
        assert socket.poll(120_000), "no partial reply"
        frames = socket.recv_multipart()
        assert frames[1] == ClientCmd.PARTIAL and "token" in decode_body(frames[3:])
    socket.close(linger=0)
    with llm_box.client() as client:
        wait_for(lambda: not loaded(client).get(KEY, {}).get("busy"), 10, "the model freed")
        gone = client.status()["services"]["llm"]["rejected"]
        assert gone.get("client_gone", 0) >= 1


def test_a_cancel_during_a_long_prompt_is_noticed_between_prompt_chunks(llm_box):
    # ~1,100 prompt tokens: read in chunks of 512, with a cancel check between chunks.
    sentence = "The quick brown fox jumps over the lazy dog and runs into the forest. "
    with llm_box.client() as client:
        full = client.request(
            "llm",
            {
                "op": "complete",
                "model": MODEL,
                "prompt": sentence * 75,
                "max_tokens": 1,
                "temperature": 0.0,
            },
            timeout=300,
        )
        assert full["usage"]["prompt_tokens"] > 1024
        # Another long prompt (nothing cached to reuse), cancelled by a client timeout while
        # it is still being read: the model is free well before the whole prompt is read.
        started = time.monotonic()
        with pytest.raises(Timeout):
            client.request(
                "llm",
                {
                    "op": "complete",
                    "model": MODEL,
                    "prompt": "Why? " + sentence * 75,
                    "max_tokens": 1,
                    "temperature": 0.0,
                },
                timeout=0.3,
            )
        wait_for(lambda: not loaded(client).get(KEY, {}).get("busy"), 120, "the model freed")
        freed = time.monotonic() - started
    assert freed < 0.8 * full["ttft_s"], (freed, full["ttft_s"])


def short(prompt: str, tokens: int = 4) -> dict:
    return {
        "op": "complete",
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": tokens,
        "temperature": 0.0,
        "stream": True,
    }


def test_short_requests_run_beside_a_long_one(llm_box):
    blocker = Streamer(llm_box, LONG)
    blocker.start()
    assert blocker.first.wait(120)
    try:
        shorts = [Streamer(llm_box, short(f"Count: {i}")) for i in range(3)]
        for thread in shorts:
            thread.start()
        for thread in shorts:
            thread.join(120)
            assert thread.error is None, thread.error
            assert thread.replies[-1]["usage"]["completion_tokens"] >= 1
        # They did not wait for the long generation to end: each had a slot of its own.
        assert blocker.finished_at is None
        assert blocker.error is None
    finally:
        blocker.stop()


def test_clients_at_once_are_served_side_by_side_and_alike(llm_box):
    streams = [Streamer(llm_box, short(f"Story {i}: once upon a time", 32)) for i in range(4)]
    for thread in streams:
        thread.start()
    for thread in streams:
        thread.join(300)
        assert thread.error is None, thread.error
    # Every client had its first token before any had its last: none waited for another.
    first_tokens = max(t.times[0] for t in streams)
    assert first_tokens < min(t.times[-1] for t in streams)
    # And they advanced at much the same pace (one batch a step, one token each).
    rates = [(len(t.times) - 2) / (t.times[-2] - t.times[0]) for t in streams]
    assert min(rates) > 0.5 * max(rates), rates


def test_requests_beyond_the_slots_wait_and_a_full_queue_answers_busy(models_dir):
    with engines_box(models_dir, parallel=1, max_queue=1) as box, box.client() as client:
        blocker = Streamer(box, LONG)
        blocker.start()
        assert blocker.first.wait(120)
        queued = Streamer(box, short("Count: 1", 2))
        try:
            queued.start()
            wait_for(lambda: loaded(client)[KEY]["queued"] == 1, 10, "one request queued")
            started = time.monotonic()
            with pytest.raises(BoxError) as caught:
                client.request("llm", {**short("Count: 2", 2), "stream": False}, timeout=60)
            assert time.monotonic() - started < 5  # at once, not after the long generation
            assert caught.value.code == "busy"
            assert (
                "1 queued" in caught.value.message and "engines.max_queue" in caught.value.message
            )
            assert queued.finished_at is None  # still waiting its turn
        finally:
            blocker.stop()
        queued.join(120)
        assert queued.error is None and queued.replies[-1]["usage"]["completion_tokens"] == 2


def test_other_models_are_not_held_up_by_a_long_generation(llm_box):
    generation = Streamer(llm_box, LONG)
    generation.start()
    assert generation.first.wait(120)
    try:
        with llm_box.client() as client:
            reply = client.request(
                "embed", {"op": "embed", "model": "minilm", "texts": ["a cat", "a dog"]}, timeout=60
            )
            assert reply["vectors"].shape == (2, 384)
            assert generation.finished_at is None
    finally:
        generation.stop()
