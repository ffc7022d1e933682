"""The broker routes, streams, times out, cancels and reports errors as a user would see them."""

from __future__ import annotations

import os
import threading

import anyio
import msgpack
import numpy as np
import pytest
import zmq
from fixtures_box import BoxInThread, pipeline_echo, wait_for
from rich.console import Console

from aether_box.bus.protocol import CLIENT, ClientCmd, decode_body, encode_body
from aether_box.bus.worker import Worker
from aether_box.client import (
    AsyncClient,
    BadRequest,
    Client,
    NotFound,
    Overloaded,
    ProtocolError,
    ServiceUnavailable,
    Timeout,
    TooLarge,
)
from aether_box.errors import Cancelled
from aether_box.status_view import render_status


class Probe:
    """A streaming in-process service whose cancellation the test can observe."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.cancelled = threading.Event()

    async def __call__(self, request):
        self.started.set()
        count = request.body.get("count", 3)
        try:
            for i in range(count):
                await request.partial({"i": i})
                await anyio.sleep(request.body.get("delay", 0))
        except anyio.get_cancelled_exc_class():
            self.cancelled.set()
            raise
        if request.body.get("fail"):
            raise BadRequest("you asked me to fail")
        return {"done": count}


def add_service(box: BoxInThread, name: str, handler, **kwargs) -> None:
    box.portal.call(lambda: box.box.broker.add_service(name, handler, **kwargs))


def test_unknown_service_lists_the_running_ones(box):
    with box.client(timeout=5) as client, pytest.raises(NotFound) as caught:
        client.request("nope", {})
    assert "echo" in caught.value.message and "status" in caught.value.message


def test_a_removed_service_is_unknown_again_and_can_be_added_back(box):
    add_service(box, "probe", lambda request: {"first": True}, inline=True)
    with box.client(timeout=5) as client:
        assert client.request("probe", {}) == {"first": True}
        box.portal.call(lambda: box.box.broker.remove_service("probe"))
        with pytest.raises(NotFound):
            client.request("probe", {})
        add_service(box, "probe", lambda request: {"second": True}, inline=True)
        assert client.request("probe", {}) == {"second": True}


def test_arrays_travel_as_raw_frames_both_ways(box):
    vectors = np.random.default_rng(0).standard_normal((5, 384)).astype(np.float32)
    with box.client(timeout=5) as client:
        reply = client.request("echo", {"vectors": vectors, "ids": [1, 2]})
    np.testing.assert_array_equal(reply["vectors"], vectors)
    assert reply["ids"] == [1, 2]


def test_large_bytes_travel_as_their_own_frame_and_arrive_as_bytes(box):
    blob, small = os.urandom(3 << 20), b"tiny"
    frames = encode_body({"blob": blob, "small": small})
    assert len(frames) == 2 and frames[1] is blob  # out of the map, not copied
    assert msgpack.unpackb(frames[0])["_arrays"] == [["blob", "bytes", [3 << 20]]]
    with box.client(timeout=10) as client:
        reply = client.request("echo", {"blob": blob, "small": small})
    assert reply == {"blob": blob, "small": small}
    assert type(reply["blob"]) is bytes


def test_a_long_service_name_is_refused_not_looked_up(box):
    with box.client(timeout=5) as client, pytest.raises(ProtocolError, match="at most 255"):
        client.request("x" * 100_000, {})
    with box.client(timeout=5) as client:
        assert client.status()["rejected"]["bad_service"] == 1


def test_streaming_yields_partials_then_final(box):
    add_service(box, "probe", Probe())
    with box.client(timeout=5) as client:
        replies = list(client.stream("probe", {"count": 4}))
    assert replies == [{"i": 0}, {"i": 1}, {"i": 2}, {"i": 3}, {"done": 4}]


def test_service_errors_arrive_typed_and_the_box_keeps_serving(box):
    add_service(box, "probe", Probe())
    with box.client(timeout=5) as client:
        with pytest.raises(BadRequest, match="you asked me to fail"):
            client.request("probe", {"count": 1, "fail": True})
        assert client.request("echo", {"ok": 1}) == {"ok": 1}
        stats = client.status()["services"]["probe"]
    # A bad request is the caller's mistake, counted apart from the box's own errors.
    assert (stats["requests"], stats["errors"], stats["client_errors"]) == (1, 0, 1)


def test_timeout_is_the_callers_and_late_replies_are_discarded(box):
    add_service(box, "probe", Probe())
    with box.client() as client:
        with pytest.raises(Timeout, match="within 0.2 s"):
            client.request("probe", {"count": 1, "delay": 1.0}, timeout=0.2)
        # The next call must get its own reply, not the late one from the call that timed out.
        assert client.request("echo", {"n": 7}, timeout=5) == {"n": 7}


def test_stopping_iteration_cancels_the_work(box):
    probe = Probe()
    add_service(box, "probe", probe)
    with box.client(timeout=5) as client:
        stream = client.stream("probe", {"count": 1000, "delay": 0.01})
        assert next(stream) == {"i": 0}
        stream.close()  # the caller stops reading: the client sends a cancel
        assert probe.cancelled.wait(5)
        # A cancel is the caller's choice, not the box's error: alerts never see it.
        wait_for(lambda: client.status()["services"]["probe"]["cancelled"] == 1, 5, "the count")
        assert client.status()["services"]["probe"]["errors"] == 0


def test_a_client_that_disappears_stops_its_stream(box):
    probe = Probe()
    add_service(box, "probe", probe)
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.linger = 0
    socket.connect(box.endpoint)
    socket.send_multipart(
        [CLIENT, ClientCmd.REQUEST, b"probe", *encode_body({"count": 10_000, "delay": 0.005})]
    )
    assert socket.poll(5000)
    socket.close()  # gone without a word
    assert probe.cancelled.wait(10)


def test_async_client_overlapping_calls_and_streams(box):
    add_service(box, "probe", Probe())

    async def main():
        results = {}
        async with AsyncClient(box.endpoint, timeout=5) as client:

            async def one(n):
                results[n] = await client.request("echo", {"n": n})

            async with anyio.create_task_group() as tg:
                for n in range(20):
                    tg.start_soon(one, n)
            parts = [p async for p in client.stream("probe", {"count": 3})]
            with pytest.raises(Timeout):
                await client.request("probe", {"count": 1, "delay": 1}, timeout=0.1)
        return results, parts

    results, parts = anyio.run(main)
    assert results == {n: {"n": n} for n in range(20)}
    assert parts[-1] == {"done": 3}


def test_multi_frame_request_over_the_limit_gets_too_large(data_dir):
    running = BoxInThread(data_dir, {"bus": {"max_message_mb": 0.5}})
    try:
        with running.client(timeout=5) as client:
            # Each array frame is under the limit, the whole request is over it.
            body = {f"a{i}": np.zeros(100_000, np.float32) for i in range(3)}
            with pytest.raises(TooLarge, match="bus.max_message_mb"):
                client.request("echo", body)
            # One frame far over the limit: libzmq drops the connection; the caller's timeout
            # is what it gets, and the box keeps serving everyone else.
            with pytest.raises(Timeout):
                client.request("echo", {"big": np.zeros(1_000_000, np.float32)}, timeout=1)
        with running.client(timeout=5) as client:
            assert client.request("echo", {"ok": True}) == {"ok": True}
            assert client.status()["rejected"]["too_large"] == 1
    finally:
        running.stop()


def test_a_service_at_its_queue_limit_answers_overloaded_and_names_itself(data_dir):
    running = BoxInThread(data_dir, {"bus": {"queue_limit": 1}})
    started, release = threading.Event(), threading.Event()

    async def hold(request):
        started.set()
        await anyio.to_thread.run_sync(release.wait)
        return {"held": True}

    try:
        add_service(running, "hold", hold)
        replies: list[dict] = []

        def ask_first() -> None:
            with running.client(timeout=10) as client:
                replies.append(client.request("hold", {}))

        first = threading.Thread(target=ask_first)
        first.start()
        assert started.wait(10)
        with running.client(timeout=5) as client:
            with pytest.raises(Overloaded, match="hold has 1 requests waiting"):
                client.request("hold", {})
            release.set()
            first.join(10)
            assert replies == [{"held": True}]
            assert client.status()["services"]["hold"]["rejected"] == {"overloaded": 1}
    finally:
        release.set()
        running.stop()


def test_external_worker_streams_and_its_death_is_an_error_not_a_hang(data_dir):
    running = BoxInThread(data_dir, {"bus": {"heartbeat_s": 0.2, "heartbeat_liveness": 3}})
    try:

        def shout(body):
            for word in body["text"].split():
                yield {"word": word.upper()}

        worker = threading.Thread(
            target=Worker(running.endpoint, "shout", shout, heartbeat_s=0.2).run,
            kwargs={"stop_after": 1},
            daemon=True,
        )
        worker.start()
        with running.client(timeout=5) as client:
            wait_for(lambda: "shout" in client.status()["services"], 5, "the worker's READY")
            assert list(client.stream("shout", {"text": "hello bus"})) == [
                {"word": "HELLO"},
                {"word": "BUS"},
                {},
            ]
            worker.join(5)
            # The worker has exited without saying goodbye; the broker notices by heartbeat.
            with pytest.raises(ServiceUnavailable):
                client.request("shout", {"text": "anyone?"}, timeout=5)
    finally:
        running.stop()


def test_raw_rfc18_reply_framing(box):
    """A plain DEALER speaking RFC 18 gets FINAL with the service frame and a msgpack body."""
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.linger = 0
    socket.connect(box.endpoint)
    try:
        socket.send_multipart([CLIENT, ClientCmd.REQUEST, b"echo", msgpack.packb({"x": 1})])
        assert socket.poll(5000)
        frames = socket.recv_multipart()
        assert frames[:3] == [CLIENT, ClientCmd.FINAL, b"echo"]
        assert decode_body(frames[3:]) == {"x": 1}
    finally:
        socket.close()


def test_pipelined_requests_from_two_peers_all_come_back_to_their_sender_in_order(box):
    """Replies held in groups while the box drains a backlog: none lost, none reordered."""
    pipeline_echo(box.endpoint, peers=2, each=500)
    with box.client(timeout=5) as client:
        status = client.status()
    assert "send_queue_full" not in status["rejected"]
    # 1,000 requests sent faster than the box routes them make a backlog: it groups.
    groups = status["reply_groups"]
    assert groups["groups"] > 0 and groups["replies"] >= 2 * groups["groups"]
    console = Console(record=True, width=200)
    render_status(status, console)
    assert f"replies sent in groups: {groups['replies']} in {groups['groups']}" in (
        console.export_text()
    )


def test_cancel_error_is_reported_to_a_client_that_cancels_but_keeps_listening(box):
    probe = Probe()
    add_service(box, "probe", probe)
    with Client(box.endpoint, timeout=5) as client:
        socket = client._socket  # send the cancel by hand and read what comes back
        socket.send_multipart(
            [
                CLIENT,
                ClientCmd.REQUEST,
                b"probe",
                *encode_body({"count": 1000, "delay": 0.01, "_rid": 99}),
            ]
        )
        assert probe.started.wait(5)
        socket.send_multipart([CLIENT, ClientCmd.REQUEST, b"box.cancel", *encode_body({"rid": 99})])
        bodies = []
        while socket.poll(5000):
            frames = socket.recv_multipart()
            body = decode_body(frames[3:])
            bodies.append(body)
            if frames[1] == ClientCmd.FINAL and body.get("_rid") == 99:
                break
        assert bodies[-1]["error"]["code"] == Cancelled.code
        assert {"cancelled": True} in bodies
