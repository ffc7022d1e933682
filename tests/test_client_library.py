"""The client library as an app developer uses it: outages, closing, timeouts, typed errors."""

from __future__ import annotations

import time

import anyio
import pytest
from fixtures_box import BoxInThread
from fixtures_engines import loaded

from aether_box.client import AsyncClient, BadRequest, Client, NoBox, Overloaded, Timeout
from aether_box.engines.scheduler import Busy


def test_a_call_while_the_box_is_down_says_so_at_once_and_works_once_it_is_back(data_dir):
    running = BoxInThread(data_dir)
    try:
        with running.client(timeout=20) as client:
            assert client.request("echo", {"n": 1}) == {"n": 1}
            running.stop()
            started = time.monotonic()
            # Before: a Timeout after the whole 20 s, asking whether the box runs.
            with pytest.raises(NoBox, match=f"aether-box --data-dir {data_dir} run"):
                client.request("echo", {"n": 2})
            assert time.monotonic() - started < 5
            running = BoxInThread(data_dir)  # the same client, once the box is back
            assert client.request("echo", {"n": 3}) == {"n": 3}
    finally:
        running.stop()


def test_closed_clients_say_so_and_closing_twice_does_no_harm(box):
    client = box.client(timeout=5)
    client.close()
    client.close()
    # Before: zmq.ZMQError "Socket operation on non-socket".
    with pytest.raises(RuntimeError, match="Client is closed"):
        client.status()

    async def main() -> None:
        unopened = AsyncClient(box.endpoint)
        with pytest.raises(RuntimeError, match="async with"):
            await unopened.status()
        with pytest.raises(RuntimeError, match="async with"):  # before: AttributeError
            async for _ in unopened.events():
                pass
        async with AsyncClient(box.endpoint, timeout=5) as opened:
            assert await opened.request("echo", {"n": 1}) == {"n": 1}
        await opened.__aexit__(None, None, None)  # before: AttributeError from the task group
        with pytest.raises(RuntimeError, match="closed already"):  # before: zmq.ZMQError
            await opened.status()

    anyio.run(main)


def test_a_box_error_maps_to_its_documented_class_with_its_code(box):
    async def full(request):
        raise Busy("every slot is taken and 1 queued; retry later or raise engines.max_queue")

    box.portal.call(lambda: box.box.broker.add_service("full", full))
    with box.client(timeout=5) as client, pytest.raises(Overloaded) as caught:
        client.request("full")  # before: a bare BoxError, missed by `except Overloaded`
    assert caught.value.code == "busy" and "retry later" in caught.value.message


def test_timeouts_say_what_to_do_and_leave_the_client_usable(llm_box):
    with llm_box.client(timeout=60) as client:
        long = [{"role": "user", "content": "Write a long story about a lighthouse."}]
        with pytest.raises(Timeout, match="within 0.2 s.*longer `timeout`"):
            client.chat("smollm2", long, max_tokens=400, timeout=0.2)
        # The box stops the work, and the next call gets its own reply, not the late one.
        deadline = time.monotonic() + 30
        while loaded(client).get(("smollm2", "llm"), {}).get("busy"):
            assert time.monotonic() < deadline, "the timed-out chat still runs"
        assert client.request("echo", {"n": 7}) == {"n": 7}
        # Waiting for events is not waiting for a reply: the message says which.
        with pytest.raises(Timeout, match=r"no event on \['nothing\.'\] within 0.2 s"):
            next(client.events("nothing.", timeout=0.2))


def test_embed_takes_a_list_and_refuses_a_lone_string(llm_box):
    with llm_box.client(timeout=60) as client:
        assert client.embed("minilm", ("one", "two")).shape == (2, 384)
        # Before: the string was split into its 10 characters, 10 vectors and no error.
        with pytest.raises(BadRequest, match="texts"):
            client.embed("minilm", "a sentence")  # type: ignore[arg-type]

    async def main() -> None:
        async with AsyncClient(llm_box.endpoint, timeout=60) as client:
            with pytest.raises(BadRequest, match="texts"):
                await client.embed("minilm", "a sentence")  # type: ignore[arg-type]

    anyio.run(main)


def test_client_docstrings_answer_endpoint_errors_timeouts_and_threads():
    doc = Client.__doc__ or ""
    for says in ("AETHER_BOX_ENDPOINT", "NoBox", "NotFound", "Timeout", "timeout", "thread"):
        assert says in doc, says
