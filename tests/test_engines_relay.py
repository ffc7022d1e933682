"""The relay between a generation's scheduler thread and the event loop (engines/relay.py)."""

from __future__ import annotations

import asyncio
import threading
import time

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from aether_box.engines.relay import Relay

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _in_thread(target, *args) -> threading.Thread:
    thread = threading.Thread(target=target, args=args)
    thread.start()
    return thread


async def test_pieces_go_together_and_the_outcome_ends_the_wait():
    relay = Relay(asyncio.get_running_loop())
    first = threading.Event()

    def generate() -> None:  # the scheduler's side: pieces, then the outcome
        relay.post("Hel")
        first.wait()
        for piece in ("lo", ", ", "world"):
            relay.post(piece)
        relay.post({"finish": "stop"})

    thread = _in_thread(generate)
    text, outcome = await relay.take()
    assert text == "Hel" and outcome is Relay.PENDING
    first.set()
    # The outcome cuts the pause short: nothing waits out 60 s.
    started = time.monotonic()
    await relay.pause(60.0)
    assert time.monotonic() - started < 30.0
    text, outcome = await relay.take()
    assert text == "lo, world" and outcome == {"finish": "stop"}
    await anyio.to_thread.run_sync(thread.join)


async def test_a_piece_does_not_cut_a_pause_short():
    relay = Relay(asyncio.get_running_loop())
    posted = threading.Event()

    def one_piece() -> None:
        relay.post("x")
        posted.set()

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(relay.pause, 0.3)
        await wait_all_tasks_blocked()  # the pause has begun: the piece comes during it
        thread = _in_thread(one_piece)
        await anyio.to_thread.run_sync(posted.wait)
    assert time.monotonic() - started >= 0.29  # the pause ran its course
    assert await relay.take() == ("x", Relay.PENDING)
    thread.join()


async def test_an_error_outcome_wakes_a_waiting_take():
    relay = Relay(asyncio.get_running_loop())
    error = RuntimeError("the scheduler failed")
    thread = _in_thread(relay.post, error)
    text, outcome = await relay.take()
    assert text == "" and outcome is error
    thread.join()
