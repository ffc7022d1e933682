"""Where a bus round trip's time goes: the broker's Python path, and what its wake-ups cost.

    python bench/bus_profile.py [--requests 20000] [--rounds 3]

A profiling aid for issue #24 (bench/bus.py is the benchmark). It runs a `Broker` in this
process with the inline `echo` service, and measures:
- python_us: the broker's own work per request (receive 5 frames, route, decode, echo,
  encode, send 5 frames) over inproc, as thread CPU time: 250 requests are queued, then one
  drain is timed, so no wake-up or network cost is in it.
- the round trips per second a DEALER client process gets over loopback tcp, lockstep
  (1 in flight) and pipelined (32 in flight), with the broker served two ways in turn:
  `loop`, from its event-loop reader as the box runs it; `thread`, from a thread that blocks
  in the socket's own receive and calls the same routing code. `thread` is a measuring
  device, not a design: it is correct only here, where nothing but inline echo runs (the
  event loop no longer owns the socket). Its gain over `loop` is what moving the routing
  onto its own thread could buy, before the cost of handing other services' work across.
The host's load average is printed with every figure; the last line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import zmq
import zmq.asyncio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aether_box.bus.broker import Broker  # noqa: E402
from aether_box.bus.protocol import (  # noqa: E402
    CLIENT,
    ClientCmd,
    encode_body,
    recv_frames,
    send_frames,
)
from aether_box.bus.settings import BusSettings  # noqa: E402
from aether_box.echo import EchoComponent  # noqa: E402

QUEUED = 250
WINDOW = 32


def request_frames() -> list[Any]:
    return [CLIENT, ClientCmd.REQUEST, b"echo", *encode_body({"p": os.urandom(100), "_rid": 7})]


def make_broker(endpoint: str, context: zmq.asyncio.Context) -> Broker:
    broker = Broker(BusSettings(endpoints=[endpoint], event_endpoints=[]), context)
    broker.starting = False
    broker.add_service("echo", EchoComponent.echo, inline=True)
    return broker


async def python_cost(rounds: int) -> float:
    """Median thread-CPU microseconds the broker spends per queued echo request."""
    context = zmq.asyncio.Context()
    broker = make_broker("inproc://profile", context)
    async with anyio.create_task_group() as tg:
        await tg.start(broker.serve)
        assert broker._router is not None
        asyncio.get_running_loop().remove_reader(broker._router.FD)  # drains are timed by hand
        dealer = context.socket(zmq.DEALER, socket_class=zmq.Socket)
        dealer.sndhwm = dealer.rcvhwm = 100_000
        dealer.connect("inproc://profile")
        frames, stats, costs = request_frames(), broker.services["echo"].stats, []
        for _ in range(rounds * 10):
            for _ in range(QUEUED):
                send_frames(dealer, frames, wait=True)
            done, start = stats.requests + QUEUED, time.thread_time_ns()
            while stats.requests < done:
                broker._on_readable()
            costs.append((time.thread_time_ns() - start) / QUEUED / 1000)
            for _ in range(QUEUED):
                recv_frames(dealer, wait=True)
        dealer.close(linger=0)
        tg.cancel_scope.cancel()
    context.term()
    return statistics.median(costs)


def client(endpoint: str, window: int, requests: int, out: mp.Queue) -> None:
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.linger = 0
    dealer.sndhwm = dealer.rcvhwm = 100_000
    dealer.connect(endpoint)
    frames = request_frames()
    for _ in range(window):
        send_frames(dealer, frames, wait=True)
    start = time.perf_counter()
    for _ in range(requests):
        recv_frames(dealer, wait=True)
        send_frames(dealer, frames, wait=True)
    elapsed = time.perf_counter() - start
    for _ in range(window):
        recv_frames(dealer, wait=True)
    out.put(requests / elapsed)


def _serve_blocking(broker: Broker, stop: threading.Event) -> None:
    """The same routing code, fed by a blocking receive on this thread (see the docstring)."""
    router = broker._router
    assert router is not None
    router.rcvtimeo = 100
    broker._draining = True  # nothing else sends: no re-check of the read edge is needed
    while not stop.is_set():
        try:
            frames = recv_frames(router, wait=True)
        except zmq.Again:
            continue
        broker._dispatch(frames)


async def round_trips(how: str, window: int, requests: int, port: int) -> dict[str, Any]:
    endpoint = f"tcp://127.0.0.1:{port}"
    context = zmq.asyncio.Context()
    broker = make_broker(endpoint, context)
    stop = threading.Event()
    async with anyio.create_task_group() as tg:
        await tg.start(broker.serve)
        thread = None
        if how == "thread":
            assert broker._router is not None
            asyncio.get_running_loop().remove_reader(broker._router.FD)
            thread = threading.Thread(target=_serve_blocking, args=(broker, stop))
            thread.start()
        out: mp.Queue = mp.Queue()
        process = mp.Process(target=client, args=(endpoint, window, requests, out))
        cpu = time.process_time()
        process.start()
        rate = await anyio.to_thread.run_sync(out.get)
        cpu = time.process_time() - cpu
        await anyio.to_thread.run_sync(process.join)
        stop.set()
        if thread is not None:
            await anyio.to_thread.run_sync(thread.join)
        tg.cancel_scope.cancel()
    context.term()
    return {
        "served": how,
        "window": window,
        "per_s": round(rate),
        "broker_cpu_us": round(cpu / requests * 1e6, 1),  # whole process: zmq's I/O thread too
        "load_1m": round(os.getloadavg()[0], 2),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20_000, help="round trips per case")
    parser.add_argument("--rounds", type=int, default=3, help="loop/thread pairs per window")
    args = parser.parse_args()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    python_us = await python_cost(args.rounds)
    print(f"broker python path per request: {python_us:.2f} us (thread CPU)", flush=True)
    cases = []
    port = 5_690
    for window in (1, WINDOW):
        requests = args.requests if window > 1 else args.requests // 4
        for _ in range(args.rounds):
            for how in ("loop", "thread"):  # alternated: a busy spell hits both
                port += 1
                case = await round_trips(how, window, requests, port)
                cases.append(case)
                print(
                    f"{how:>6} window {window:>2}: {case['per_s']:>7} rt/s, broker "
                    f"{case['broker_cpu_us']:>6} us CPU/rt, load {case['load_1m']}",
                    flush=True,
                )

    def median_rate(how: str, window: int) -> float:
        return statistics.median(
            c["per_s"] for c in cases if c["served"] == how and c["window"] == window
        )

    gains = {
        f"thread_over_loop_w{w}": round(median_rate("thread", w) / median_rate("loop", w), 3)
        for w in (1, WINDOW)
    }
    print(json.dumps({"python_us": round(python_us, 2), **gains, "cases": cases}))


if __name__ == "__main__":
    anyio.run(main)
