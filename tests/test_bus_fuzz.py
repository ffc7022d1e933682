"""10,000 random and malformed multipart messages neither crash the box nor grow it."""

from __future__ import annotations

import random

import msgpack
import psutil
import zmq

from aether_box.bus.protocol import CLIENT, WORKER, ClientCmd, WorkerCmd


def malformed_messages(rng: random.Random, count: int):
    """Frames a confused or hostile peer might send, each kind roughly equally often."""
    services = [
        b"echo",
        b"status",
        b"nope",
        b"",
        b"mmi.service",
        b"box.cancel",
        bytes(rng.randbytes(8)),
    ]
    bodies = [
        lambda: [],
        lambda: [rng.randbytes(rng.randint(0, 64))],  # not msgpack
        lambda: [msgpack.packb({"op": "x"})[:-1]],  # truncated msgpack
        lambda: [msgpack.packb([1, 2, 3])],  # msgpack, not a map
        lambda: [msgpack.packb({"_arrays": [["v", "<f4", [1000]]]}), b"\0" * 8],  # wrong size
        lambda: [msgpack.packb({"_arrays": [["v", "object", [1]]]}), b"\0" * 8],  # bad dtype
        lambda: [msgpack.packb({"_arrays": "nonsense"})],
        lambda: [msgpack.packb({"_arrays": [["v", "<f4", [-1]]]}), b""],
        lambda: [msgpack.packb({"op": "get"}), rng.randbytes(16)],  # undescribed frame
    ]
    for i in range(count):
        kind = i % 8
        if kind == 0:  # random frames
            yield [rng.randbytes(rng.randint(0, 40)) for _ in range(rng.randint(1, 6))]
        elif kind == 1:  # wrong protocol header
            yield [rng.choice([b"MDPC01", b"MDPW01", b"HTTP/1.1", b""]), ClientCmd.REQUEST, b"echo"]
        elif kind == 2:  # unknown client commands
            yield [
                CLIENT,
                bytes([rng.randint(0, 255)]),
                rng.choice(services),
                *rng.choice(bodies)(),
            ]
        elif kind == 3:  # requests with bad bodies
            yield [CLIENT, ClientCmd.REQUEST, rng.choice(services), *rng.choice(bodies)()]
        elif kind == 4:  # majortomo-style framing with garbage
            yield [b"", CLIENT, WorkerCmd.REQUEST, rng.choice(services), *rng.choice(bodies)()]
        elif kind == 5:  # worker commands from a peer that never said READY
            yield [WORKER, bytes([rng.randint(0, 7)]), rng.randbytes(5), b"", b"x"]
        elif kind == 6:  # READY for services that exist in-process or with no name
            yield [WORKER, WorkerCmd.READY, rng.choice([b"echo", b"status", b""])]
        else:  # short messages
            yield [rng.choice([CLIENT, WORKER])]


def test_box_survives_malformed_traffic(box_process):
    context = zmq.Context.instance()
    rng = random.Random(1234)
    process = psutil.Process(box_process.process.pid)
    with box_process.client(timeout=10) as client:
        client.request("echo", {"warm": True})
        rss_before = process.memory_info().rss

    sockets = []
    for _ in range(8):  # several peers, so per-peer state is exercised too
        socket = context.socket(zmq.DEALER)
        socket.linger = 0
        socket.sndhwm = 100_000
        socket.connect(box_process.endpoint)
        sockets.append(socket)
    sent = 0
    for message in malformed_messages(rng, 10_000):
        rng.choice(sockets).send_multipart(message)
        sent += 1
    # Read whatever the box answered, so replies don't pile up anywhere.
    for socket in sockets:
        while socket.poll(200):
            socket.recv_multipart()
        socket.close()

    with box_process.client(timeout=10) as client:
        assert client.request("echo", {"still": "here"}) == {"still": "here"}
        status = client.status()
    assert sent == 10_000
    assert box_process.process.poll() is None
    rejected = status["rejected"]
    for reason in ("bad_header", "bad_command", "short", "bad_ready", "unknown_service"):
        assert rejected.get(reason, 0) > 0, (reason, rejected)
    # Bad bodies reach services and are answered with errors there: the senders' mistakes,
    # counted apart from the box's own errors (of which there are none).
    echo = status["services"]["echo"]
    assert echo["client_errors"] > 0 and echo["errors"] == 0
    grown_mb = (process.memory_info().rss - rss_before) / 2**20
    assert grown_mb < 50, f"RSS grew by {grown_mb:.1f} MB"
