"""100,000 malformed bus messages at a real box, while probe clients time its answers.

Usage: python bench/fuzz.py [--messages N] [--models DIR]

Eight hostile peers send, in both framings (RFC 18 and majortomo's), random frames, wrong
headers and commands, short messages, worker commands from strangers, and valid envelopes
to every service with garbage bodies (random ops, wrong types, huge numbers, NaN, odd
unicode, names with '/' and '..', arrays with wrong dtypes and shapes). Two probe clients
keep asking `echo` and `status` meanwhile; `max_stall_ms` is the longest any of them waited.
The last line is a JSON object: messages, crashes, internal_errors, rss_mb_start, rss_mb_end,
max_stall_ms, plus the machine and the load it ran under.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import psutil
import zmq
from _box import machine, start_box, stop_box

from aether_box.bus.protocol import CLIENT, WORKER, ClientCmd, WorkerCmd
from aether_box.client import Client

SERVICES = [b"memory", b"llm", b"embed", b"session", b"align", b"router", b"federation",
            b"grid", b"adapters", b"tools", b"orchestrate", b"tuner", b"status", b"echo",
            b"nope", b"", b"mmi.service", b"box.cancel"]  # fmt: skip
OPS = ["create", "drop", "add", "get", "update", "delete", "list", "count", "search", "check",
       "chat", "complete", "models", "load", "unload", "embed", "say", "history", "project",
       "pairs", "fit", "fidelity", "route", "link", "unlink", "peers", "summary", "", "x" * 300,
       "../../etc", "refit", "promote", "rollback", "show", "remove", "merge", "probe", "wait",
       "call", "register", "unregister", "apply", "dismiss", "log", "status", "join", "leave",
       "hello", "beat", "threshold", "feedback"]  # fmt: skip
FIELDS = ["collection", "model", "texts", "text", "vectors", "vector", "ids", "where", "k",
          "limit", "cursor", "dim", "metric", "messages", "prompt", "session", "from", "to",
          "endpoint", "name", "stream", "temperature", "metadata", "_rid", "rid"]  # fmt: skip
ODD = [None, True, 0, -1, 2**63 - 1, -(2**63), 2**64 - 1, math.nan, math.inf, -1e308, "",
       "minilm", "smollm2", "c", "..", "../../x", "a/b", "\x00", "\u202e", "\U0001f600",
       "x" * 5000, [], [1, "a", None], {"$gt": 2**64 - 1}, {"n": {"$in": []}}, b"\xff" * 9,
       [[1.0, 2.0], [3.0]], {"role": "user"}]  # fmt: skip


def garbage_body(rng: random.Random) -> list[bytes]:
    """A msgpack body that decodes, with a random op and odd field values (and arrays)."""
    body: dict[str, Any] = {"op": rng.choice(OPS)}
    for key in rng.sample(FIELDS, rng.randint(0, 5)):
        body[key] = rng.choice(ODD)
    if "max_tokens" not in body:
        body["max_tokens"] = 1  # a garbage body that happens to be valid generates one token
    frames = [msgpack.packb(body)]
    if rng.random() < 0.2:  # a described array frame, right or wrong
        dtype = rng.choice(["<f4", "<f8", "|u1", "object", "<i8"])
        shape = rng.choice([[2, 384], [384], [0], [2**31 - 1, 2], [-1], [1] * 12])
        body["_arrays"] = [[rng.choice(["vectors", "vector", "v"]), dtype, shape]]
        frames = [msgpack.packb(body), rng.randbytes(rng.choice([0, 8, 3072, 1536]))]
    return frames


def malformed(rng: random.Random) -> list[bytes]:
    """One message a confused or hostile peer might send."""
    kind = rng.randrange(10)
    legacy = [b""] if rng.random() < 0.5 else []
    request = WorkerCmd.REQUEST if legacy else ClientCmd.REQUEST
    if kind == 0:
        return [rng.randbytes(rng.randint(0, 40)) for _ in range(rng.randint(1, 6))]
    if kind == 1:
        return [*legacy, rng.choice([b"MDPC01", b"MDPW01", b"HTTP/1.1", b""]), request, b"echo"]
    if kind == 2:
        return [*legacy, CLIENT, bytes([rng.randrange(256)]), rng.choice(SERVICES)]
    if kind == 3:
        return [*legacy, CLIENT, request, rng.choice(SERVICES), rng.randbytes(rng.randint(0, 64))]
    if kind == 4:
        return [*legacy, WORKER, bytes([rng.randint(0, 7)]), rng.randbytes(5), b"", b"x"]
    if kind == 5:
        return [*legacy, rng.choice([CLIENT, WORKER])]
    return [*legacy, CLIENT, request, rng.choice(SERVICES), *garbage_body(rng)]  # most often


def internal_codes(frames: list[bytes]) -> int:
    """1 if a reply carries an `internal` error, else 0."""
    for frame in frames[2:]:
        if b"internal" in frame:
            try:
                body = msgpack.unpackb(frame, strict_map_key=False)
            except Exception:
                continue
            error = body.get("error") if isinstance(body, dict) else None
            if isinstance(error, dict) and error.get("code") == "internal":
                return 1
    return 0


class Probe(threading.Thread):
    """Asks the box something small, again and again; keeps the longest wait."""

    def __init__(self, endpoint: str, data_dir: Path, service: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.endpoint, self.data_dir, self.service, self.stop = endpoint, data_dir, service, stop
        self.max_ms = 0.0
        self.count = 0
        self.failures: list[str] = []

    def run(self) -> None:
        with Client(self.endpoint, data_dir=self.data_dir, timeout=60) as client:
            while not self.stop.is_set():
                started = time.perf_counter()
                try:
                    if self.service == "status":
                        client.status()
                    else:
                        client.request("echo", {"probe": self.count})
                except Exception as exc:  # the box stalled or died: counted, not fatal
                    self.failures.append(repr(exc))
                self.max_ms = max(self.max_ms, (time.perf_counter() - started) * 1000)
                self.count += 1
                self.stop.wait(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--models", type=Path, help="a models dir (default: the test models)")
    args = parser.parse_args()
    models = args.models or Path.home() / ".cache" / "aether-box" / "test-models"
    rng = random.Random(22)
    before = machine()
    with tempfile.TemporaryDirectory(prefix="abx-fuzz-") as tmp:
        data_dir = Path(tmp)
        settings = [f"models.dir={models}"] if models.is_dir() else []
        process, endpoint = start_box(data_dir, *settings)
        box = psutil.Process(process.pid)
        with Client(endpoint, data_dir=data_dir, timeout=60) as client:
            client.request("memory", {"op": "create", "collection": "c", "model": "m", "dim": 8})
            client.request("echo", {"warm": True})
            if settings:  # load the models garbage may reach, so RSS measures growth, not loads
                for model in ("minilm", "smollm2"):  # garbage asks smollm2 for vectors too
                    client.request("embed", {"op": "embed", "model": model, "texts": ["warm"]})
                client.request("llm", {"op": "chat", "model": "smollm2", "max_tokens": 1,
                                       "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
        rss_start = box.memory_info().rss / 2**20
        stop = threading.Event()
        probes = [Probe(endpoint, data_dir, s, stop) for s in ("echo", "status")]
        for probe in probes:
            probe.start()
        context = zmq.Context.instance()
        peers = []
        for _ in range(8):
            peer = context.socket(zmq.DEALER)
            peer.linger = 0
            peer.sndhwm = peer.rcvhwm = 0
            peer.connect(endpoint)
            peers.append(peer)
        internal = replies = 0
        started = time.monotonic()
        rss_half = 0.0
        for sent in range(args.messages):
            rng.choice(peers).send_multipart(malformed(rng))
            if sent == args.messages // 2:
                rss_half = box.memory_info().rss / 2**20
            if sent % 500 == 499:  # read what came back, so replies never pile up
                for peer in peers:
                    while peer.poll(0):
                        internal += internal_codes(peer.recv_multipart())
                        replies += 1
        for peer in peers:
            while peer.poll(1000):
                internal += internal_codes(peer.recv_multipart())
                replies += 1
            peer.close()
        took = time.monotonic() - started
        stop.set()
        for probe in probes:
            probe.join(60)
        crashed = process.poll() is not None
        rss_end = 0.0
        after_ms = None
        if not crashed:
            rss_end = box.memory_info().rss / 2**20
            with Client(endpoint, data_dir=data_dir, timeout=30) as client:
                status = client.status()
                timings = []
                for i in range(200):  # normal latency afterwards
                    t = time.perf_counter()
                    client.request("echo", {"after": i})
                    timings.append((time.perf_counter() - t) * 1000)
            timings.sort()
            after_ms = round(timings[len(timings) // 2], 3)
            internal += status["rejected"].get("internal", 0)
            box_errors = sum(s["errors"] for s in status["services"].values())
            stop_box(process)
        else:
            box_errors = None
    print(f"{args.messages} messages in {took:.1f} s; {replies} replies; probes: "
          f"{[p.count for p in probes]} answers, failures {[len(p.failures) for p in probes]}")  # fmt: skip
    print(
        json.dumps(
            {
                "messages": args.messages,
                "crashes": int(crashed),
                "internal_errors": internal,
                "box_errors": box_errors,
                "rss_mb_start": round(rss_start, 1),
                "rss_mb_end": round(rss_end, 1),
                "rss_mb_half": round(rss_half, 1),  # growth in the second half: none, if flat
                "max_stall_ms": round(max(p.max_ms for p in probes), 1),
                "echo_p50_ms_after": after_ms,
                "seconds": round(took, 1),
                "probe_failures": sum(len(p.failures) for p in probes),
                "machine": before,
                "loadavg_1m_end": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
