"""Helpers for the tests and benchmarks that drive a real box process (not used by the box).

They live in the package so that tests/ and bench/ import one copy without path tricks, and
mypy checks it with the rest.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["busy_cores", "run_job", "throttled"]


@contextmanager
def throttled(pid: int, *, stopped: float = 19.0, run_s: float = 0.02) -> Iterator[None]:
    """Slow process `pid` down on purpose while the block runs: a real stall, not a sleep.

    A thread lets it run `run_s` seconds (SIGCONT), then stops it (SIGSTOP) for `stopped`
    times as long as it actually ran; the process runs again when the block ends. The stop
    is a ratio of the measured run, not a fixed sleep: on a loaded machine this thread wakes
    late, and a fixed pause would let the process run through the late wake-ups at its usual
    speed (19 gives about 5% of the usual speed, whatever the load).
    """
    done = threading.Event()

    def duty_cycle() -> None:
        while not done.is_set():
            resumed = time.monotonic()
            os.kill(pid, signal.SIGCONT)
            time.sleep(run_s)
            os.kill(pid, signal.SIGSTOP)
            done.wait(stopped * (time.monotonic() - resumed))

    thread = threading.Thread(target=duty_cycle, name=f"throttle-{pid}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        os.kill(pid, signal.SIGCONT)


@contextmanager
def busy_cores(count: int) -> Iterator[None]:
    """`count` processes spinning on the CPU while the block runs, as other programs on a busy
    workstation do (a compile, another model)."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def run_job(engine: Any, make: Callable[[Callable[[Any], None]], Any], timeout: float = 300) -> Any:
    """Submit the job `make(on_done)` builds to a generation engine's scheduler and wait for
    its outcome (raised if it is an error)."""
    done = threading.Event()
    out: list[Any] = []

    def on_done(item: Any) -> None:
        out.append(item)
        done.set()

    engine.submit(make(on_done))
    if not done.wait(timeout):
        raise TimeoutError(f"the scheduler did not answer within {timeout:.0f} s")
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]
