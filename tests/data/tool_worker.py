"""A bus worker process offering tools (tests/test_tools.py, bench/tools.py).

python tool_worker.py ENDPOINT [SERVICE]: registers the tools below, then serves until the
box disconnects it. `hang` never answers; `die` kills the process mid-call.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from aether_box.bus.worker import Worker

TEXT = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
NOTHING = {"type": "object", "properties": {}}

worker = Worker(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "testtools", heartbeat_s=0.1)


@worker.tool("Repeat the given text back unchanged.", schema=TEXT, effect="read")
def echo(text: str) -> dict:
    return {"text": text, "pid": os.getpid()}


@worker.tool(
    "Add two whole numbers.",
    effect="read",
    schema={
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
        "additionalProperties": False,
    },
)
def add(a: int, b: int) -> int:
    return a + b


@worker.tool("A tool that never answers.", schema=NOTHING, effect="read")
def hang() -> None:
    threading.Event().wait()  # blocks this worker for good (the box must not wait with it)


@worker.tool("A tool whose process dies while it runs.", schema=NOTHING, effect="write")
def die() -> None:
    os._exit(3)


@worker.tool("A tool that fails.", schema=NOTHING, effect="read")
def fail() -> None:
    raise ValueError("the disk is on fire")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # leaves run(): it says goodbye
    worker.run()
