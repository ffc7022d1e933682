"""The client library as an app developer uses it: outages, closing, timeouts, typed errors."""

from __future__ import annotations

import signal
import time
from functools import partial

import anyio
import pytest
import zmq
from fixtures_box import BoxInThread, BoxProcess, wait_for
from fixtures_engines import loaded

from aether_box.bus.protocol import WORKER, WorkerCmd
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


def hold_a_request(worker: zmq.Socket) -> None:
    """Wait (10 s at most) until `worker` is handed a request, which it never answers."""
    deadline = time.monotonic() + 10
    while (left := deadline - time.monotonic()) > 0 and worker.poll(left * 1000):
        if worker.recv_multipart()[1] == WorkerCmd.REQUEST:  # not a broker heartbeat
            return
    pytest.fail("a call's request never reached its worker")


def test_an_async_call_says_at_once_that_the_box_died_under_it_unless_it_waits_for_one(data_dir):
    # A box that stops gracefully answers what is in flight ('cancelled'); one that dies
    # (SIGKILL) never does. Each call waits on a slow service, its worker here, as it dies.
    running = BoxProcess(data_dir)
    workers = [zmq.Context.instance().socket(zmq.DEALER) for _ in range(2)]
    ended: dict[str, tuple[BaseException, float, float]] = {}  # error, started, ended

    async def call(name: str, client: AsyncClient) -> None:
        started = time.monotonic()
        with pytest.raises((NoBox, Timeout)) as caught:
            await client.request("slow", {"n": 1})
        ended[name] = (caught.value, started, time.monotonic())

    async def main() -> float:
        async with (
            AsyncClient(running.endpoint, data_dir=data_dir, timeout=20) as checked,
            AsyncClient(running.endpoint, data_dir=data_dir, timeout=4, check=False) as waiting,
        ):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call, "checked", checked)
                tg.start_soon(call, "waiting", waiting)
                for worker in workers:
                    await anyio.to_thread.run_sync(hold_a_request, worker)
                await anyio.to_thread.run_sync(partial(running.stop, signal.SIGKILL))
                killed = time.monotonic()
            # The same client, once a box is back (in place of the dead one's socket file).
            back = await anyio.to_thread.run_sync(BoxInThread, data_dir)
            try:
                assert await checked.request("echo", {"n": 3}) == {"n": 3}
            finally:
                await anyio.to_thread.run_sync(back.stop)
        return killed

    try:
        for worker in workers:
            worker.linger = 0
            worker.connect(running.endpoint)
            worker.send_multipart([WORKER, WorkerCmd.READY, b"slow"])
        with running.client(timeout=5) as client:

            def registered() -> bool:
                return client.status()["services"].get("slow", {}).get("workers") == 2

            wait_for(registered, 10, "the two workers to register")
        killed = anyio.run(main)
    finally:
        running.stop(signal.SIGKILL)
        for worker in workers:
            worker.close()
    error, _, at = ended["checked"]
    # Before: a Timeout after the whole 20 s, asking whether the box runs.
    assert isinstance(error, NoBox), error
    assert f"aether-box --data-dir {data_dir} run" in str(error)
    assert at - killed < 5, at - killed
    # A federation link's client (check=False) waits for a box to come, up to its timeout.
    error, started, at = ended["waiting"]
    assert isinstance(error, Timeout), error
    assert at - started >= 4 - 0.05, at - started


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
