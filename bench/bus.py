"""Bus throughput: the box's `echo` service against a raw pyzmq ROUTER/DEALER echo, same run.

    python bench/bus.py [--seconds 1.5] [--rounds 3] [--quick]

Each case runs for a fixed time and counts round trips per second:
- raw:  a plain ROUTER echo server process; clients send one frame and get it back.
- box:  `aether-box run` in its own process; clients send MDP/0.2 requests to `echo`
        (msgpack body + payload), lockstep through `aether_box.client.Client`,
        pipelined through a DEALER speaking MDP/0.2 with a window of requests in flight.
Both kinds of client send and receive through the box's frame helpers (zero-copy
multipart calls for 1 MiB), so the clients cost the same and the ratio is the broker's.
Payloads 100 B and 1 MiB; 1 and 8 client processes; each ratio is the median over rounds
that alternate raw and box. The last line is JSON;
`lockstep_ratio` and `pipelined_ratio` are box/raw at 100 B with 1 client.
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
from pathlib import Path

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


def raw_server(endpoint_queue: mp.Queue) -> None:
    """A ROUTER that sends every message straight back."""
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.sndhwm = router.rcvhwm = 100_000
    port = router.bind_to_random_port("tcp://127.0.0.1")
    endpoint_queue.put(f"tcp://127.0.0.1:{port}")
    while True:
        router.send_multipart(router.recv_multipart(copy=False), copy=False)


def run_client(
    kind: str, mode: str, endpoint: str, size: int, seconds: float, out: mp.Queue
) -> None:
    """Count round trips for `seconds`, after a short warm-up."""
    payload = os.urandom(size)
    if kind == "box" and mode == "lockstep":
        client = Client(endpoint, timeout=30)
        body = {"p": payload}
        for _ in range(20):
            client.request("echo", body)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            client.request("echo", body)
            count += 1
        out.put(count / (time.perf_counter() - start))
        client.close()
        return
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.sndhwm = dealer.rcvhwm = 100_000
    dealer.connect(endpoint)
    if kind == "box":
        frames = [CLIENT, ClientCmd.REQUEST, b"echo", *encode_body({"p": payload})]
    else:
        frames = [payload]
    if size < zmq.COPY_THRESHOLD:
        # The box's own helpers (what its client uses): pyzmq's send_multipart and
        # recv_multipart spend more on Python-level flags than a small frame costs to send.
        def send() -> None:
            send_frames(dealer, frames, wait=True)

        def recv() -> None:
            recv_frames(dealer, wait=True)
    else:
        # Large frames travel zero-copy (pyzmq copies below COPY_THRESHOLD anyway).
        def send() -> None:
            dealer.send_multipart(frames, copy=False)

        def recv() -> None:
            dealer.recv_multipart(copy=False)

    window = WINDOW if mode == "pipelined" else 1
    for _ in range(20):
        send()
        recv()
    for _ in range(window):
        send()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        recv()
        count += 1
        send()
    elapsed = time.perf_counter() - start
    for _ in range(window):
        recv()
    out.put(count / elapsed)
    dealer.close()


def measure(kind: str, mode: str, endpoint: str, size: int, clients: int, seconds: float) -> float:
    """Total round trips per second over all client processes."""
    out: mp.Queue = mp.Queue()
    procs = [
        mp.Process(target=run_client, args=(kind, mode, endpoint, size, seconds, out))
        for _ in range(clients)
    ]
    for p in procs:
        p.start()
    total = sum(out.get(timeout=seconds + 60) for _ in procs)
    for p in procs:
        p.join()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=1.5, help="duration of each measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating raw/box rounds per case")
    parser.add_argument("--quick", action="store_true", help="only the 100 B, 1-client cases")
    args = parser.parse_args()

    endpoints: mp.Queue = mp.Queue()
    server = mp.Process(target=raw_server, args=(endpoints,), daemon=True)
    server.start()
    raw_endpoint = endpoints.get(timeout=10)
    data_dir = Path(tempfile.mkdtemp(prefix="abx-bench-"))
    box, box_endpoint = start_box(data_dir, tcp=True)

    cases = [(100, 1)] if args.quick else [(100, 1), (100, 8), (1 << 20, 1), (1 << 20, 8)]
    results = []
    try:
        print(
            f"{'payload':>8} {'clients':>7} {'mode':>9} {'raw rt/s':>10} {'box rt/s':>10} {'ratio':>6}"
        )
        for size, clients in cases:
            for mode in ("lockstep", "pipelined"):
                # Raw and box alternate, round after round: a busy spell on a shared
                # machine then hits both, and the median ratio shrugs it off.
                raws, boxes = [], []
                for _ in range(args.rounds):
                    raws.append(measure("raw", mode, raw_endpoint, size, clients, args.seconds))
                    boxes.append(measure("box", mode, box_endpoint, size, clients, args.seconds))
                raw, boxed = statistics.median(raws), statistics.median(boxes)
                ratio = statistics.median(b / r for b, r in zip(boxes, raws, strict=True))
                results.append(
                    {
                        "payload": size,
                        "clients": clients,
                        "mode": mode,
                        "raw_per_s": round(raw, 1),
                        "box_per_s": round(boxed, 1),
                        "ratio": round(ratio, 3),
                    }
                )
                label = "100 B" if size == 100 else "1 MiB"
                print(
                    f"{label:>8} {clients:>7} {mode:>9} {raw:>10.0f} {boxed:>10.0f} {ratio:>6.2f}"
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
