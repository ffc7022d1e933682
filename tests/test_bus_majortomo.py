"""Interop with the third-party `majortomo` MDP/0.2 client and worker (its own framing)."""

from __future__ import annotations

import threading

import msgpack
import pytest
from fixtures_box import wait_for

majortomo = pytest.importorskip(
    "majortomo", reason="majortomo is a test dependency: pip install -e '.[test]'"
)
from majortomo.client import Client as MajortomoClient  # noqa: E402
from majortomo.worker import Worker as MajortomoWorker  # noqa: E402


def test_majortomo_worker_serves_our_client(box):
    worker = MajortomoWorker(box.endpoint, b"reverse")
    worker.connect()
    served = threading.Event()

    def serve_one() -> None:
        client, frames = worker.wait_for_request()
        body = msgpack.unpackb(frames[0])
        worker.send_reply_partial(
            client, [msgpack.packb({"step": "working", "_rid": body["_rid"]})]
        )
        worker.send_reply_final(
            client, [msgpack.packb({"text": body["text"][::-1], "_rid": body["_rid"]})]
        )
        served.set()

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    try:
        with box.client(timeout=10) as client:
            wait_for(
                lambda: client.status()["services"].get("reverse", {}).get("workers", 0) >= 1,
                5,
                "the majortomo worker's READY",
            )
            replies = list(client.stream("reverse", {"text": "majortomo"}))
            assert replies == [{"step": "working"}, {"text": "omotrojam"}]
            assert served.wait(5)
            assert client.status()["services"]["reverse"]["kind"] == "remote"
    finally:
        worker.close()
        thread.join(5)


def test_majortomo_client_calls_builtin_services(box):
    client = MajortomoClient(box.endpoint)
    client.connect()
    try:
        client.send(b"echo", msgpack.packb({"hello": "box"}))
        frames = client.recv_all_as_list(timeout=5)
        assert msgpack.unpackb(frames[0]) == {"hello": "box"}

        client.send(b"status", msgpack.packb({"op": "get"}))
        status = msgpack.unpackb(client.recv_all_as_list(timeout=5)[0])
        assert status["services"]["echo"]["requests"] >= 1

        client.send(b"no-such-service", msgpack.packb({}))
        error = msgpack.unpackb(client.recv_all_as_list(timeout=5)[0])
        assert error["error"]["code"] == "not_found"

        client.send(b"mmi.service", b"echo")
        assert client.recv_all_as_list(timeout=5) == [b"200"]
    finally:
        client.close()
