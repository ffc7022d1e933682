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
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["busy_cores", "throttled"]


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
