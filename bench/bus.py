"""Bus throughput: the box's `echo` service against a raw pyzmq ROUTER/DEALER echo, same run.

    python bench/bus.py [--slices 10] [--slice-seconds 0.3] [--quick]

Each case counts round trips per second:
- raw:  a plain ROUTER echo server process; clients send one frame and get it back.
- box:  `aether-box run` in its own process; clients send MDP/0.2 requests to `echo`
        (msgpack body + payload), lockstep through `aether_box.client.Client`,
        pipelined through a DEALER speaking MDP/0.2 with a window of requests in flight.
Both kinds of client send and receive through the box's frame helpers (zero-copy for
1 MiB), so the clients cost the same and the ratio is the broker's.
Payloads 100 B and 1 MiB; 1 and 8 client processes. Every client process holds both
connections and the processes switch between raw and box together, in short slices:
a busy spell on a shared machine then hits both sides of a pair, and each ratio is the
median over pairs. The last line is JSON; `lockstep_ratio` and `pipelined_ratio` are
box/raw at 100 B with 1 client. The host's load average is printed before the run and
with every case (`load_1m`): on a shared machine a ratio means little without it, so
repeat runs and quote the spread.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _box import machine, start_box, stop_box  # noqa: E402

from aether_box.bus.protocol import (  # noqa: E402
    CLIENT,
    ClientCmd,
    encode_body,
    recv_frames,
    send_frames,
)
from aether_box.client import Client  # noqa: E402

WINDOW = 32
KINDS = ("raw", "box")


def raw_server(endpoint_queue: mp.Queue) -> None:
    """A ROUTER that sends every message straight back."""
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.sndhwm = router.rcvhwm = 100_000
    port = router.bind_to_random_port("tcp://127.0.0.1")
    endpoint_queue.put(f"tcp://127.0.0.1:{port}")
    while True:
        router.send_multipart(router.recv_multipart(copy=False), copy=False)


def lockstep_client(endpoint: str, payload: bytes) -> Callable[[float], float]:
    """Round trips through the box's own Client, one at a time."""
    client = Client(endpoint, timeout=30)
    body = {"p": payload}

    def run(seconds: float) -> float:
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            client.request("echo", body)
            count += 1
        return count / (time.perf_counter() - start)

    return run


def dealer_client(
    kind: str, endpoint: str, payload: bytes, window: int
) -> Callable[[float], float]:
    """Round trips through a plain DEALER with `window` requests in flight."""
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.linger = 0
    dealer.sndhwm = dealer.rcvhwm = 100_000
    dealer.connect(endpoint)
    if kind == "box":
        frames = [CLIENT, ClientCmd.REQUEST, b"echo", *encode_body({"p": payload})]
    else:
        frames = [payload]

    def run(seconds: float) -> float:
        for _ in range(window):
            send_frames(dealer, frames, wait=True)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            recv_frames(dealer, wait=True)
            count += 1
            send_frames(dealer, frames, wait=True)
        elapsed = time.perf_counter() - start
        for _ in range(window):  # leave nothing in flight for the other side's slice
            recv_frames(dealer, wait=True)
        return count / elapsed

    return run


def client_process(
    mode: str,
    endpoints: dict[str, str],
    size: int,
    slices: int,
    slice_s: float,
    barrier: Barrier,
    out: mp.Queue,
) -> None:
    """Alternate raw and box slices in step with the other client processes."""
    payload = os.urandom(size)
    runners = {
        kind: lockstep_client(endpoints[kind], payload)
        if kind == "box" and mode == "lockstep"
        else dealer_client(kind, endpoints[kind], payload, WINDOW if mode == "pipelined" else 1)
        for kind in KINDS
    }
    for run in runners.values():
        run(0.1)  # connect and warm up
    rates: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for i in range(slices):
        for kind in KINDS if i % 2 == 0 else KINDS[::-1]:
            barrier.wait()
            rates[kind].append(runners[kind](slice_s))
    out.put(rates)


def measure(
    mode: str, endpoints: dict[str, str], size: int, clients: int, slices: int, slice_s: float
) -> dict[str, Any]:
    """Raw and box round trips per second (all clients together), and their paired ratio."""
    out: mp.Queue = mp.Queue()
    barrier = mp.Barrier(clients)
    procs = [
        mp.Process(
            target=client_process, args=(mode, endpoints, size, slices, slice_s, barrier, out)
        )
        for _ in range(clients)
    ]
    for p in procs:
        p.start()
    per_client = [out.get(timeout=slices * slice_s * 4 + 120) for _ in procs]
    for p in procs:
        p.join()
    totals = {kind: [sum(r[kind][i] for r in per_client) for i in range(slices)] for kind in KINDS}
    return {
        "payload": size,
        "clients": clients,
        "mode": mode,
        "load_1m": round(os.getloadavg()[0], 2),  # other work on the host during the case
        "raw_per_s": round(statistics.median(totals["raw"]), 1),
        "box_per_s": round(statistics.median(totals["box"]), 1),
        "ratio": round(
            statistics.median(b / r for b, r in zip(totals["box"], totals["raw"], strict=True)), 3
        ),
        "slices": {kind: [round(rate) for rate in totals[kind]] for kind in KINDS},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slices", type=int, default=10, help="raw/box pairs per case")
    parser.add_argument(
        "--slice-seconds", type=float, default=0.3, help="duration of each side of a pair"
    )
    parser.add_argument("--quick", action="store_true", help="only the 100 B, 1-client cases")
    args = parser.parse_args()

    queue: mp.Queue = mp.Queue()
    server = mp.Process(target=raw_server, args=(queue,), daemon=True)
    server.start()
    endpoints = {"raw": queue.get(timeout=10)}
    data_dir = Path(tempfile.mkdtemp(prefix="abx-bench-"))
    box, endpoints["box"] = start_box(data_dir, tcp=True)

    cases = [(100, 1)] if args.quick else [(100, 1), (100, 8), (1 << 20, 1), (1 << 20, 8)]
    results = []
    try:
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(
            f"{'payload':>8} {'clients':>7} {'mode':>9} {'raw rt/s':>10} {'box rt/s':>10} "
            f"{'ratio':>6} {'load':>6}"
        )
        for size, clients in cases:
            for mode in ("lockstep", "pipelined"):
                r = measure(mode, endpoints, size, clients, args.slices, args.slice_seconds)
                results.append(r)
                label = "100 B" if size == 100 else "1 MiB"
                print(
                    f"{label:>8} {clients:>7} {mode:>9} {r['raw_per_s']:>10.0f} "
                    f"{r['box_per_s']:>10.0f} {r['ratio']:>6.2f} {r['load_1m']:>6.2f}",
                    flush=True,
                )
    finally:
        stop_box(box)
        server.terminate()

    def ratio(mode: str) -> float:
        return next(
            r["ratio"]
            for r in results
            if r["mode"] == mode and r["payload"] == 100 and r["clients"] == 1
        )

    print(
        json.dumps(
            {
                "lockstep_ratio": ratio("lockstep"),
                "pipelined_ratio": ratio("pipelined"),
                "cases": results,
                "machine": machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
