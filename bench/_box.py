"""What every benchmark shares: a real `aether-box run` process, and the machine's description."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aether_box.client import Client  # noqa: E402

__all__ = ["TOPICS", "cpu_model", "machine", "start_box", "stop_box", "stream_completion"]


# What the generation benches ask stories about: one per request, so no two share a prompt.
TOPICS = [
    "a dragon who learns to cook",
    "a lighthouse keeper and a storm",
    "a robot that paints",
    "two rival bakers",
    "a lost map in an old library",
    "a cat that runs a post office",
]


def start_box(
    data_dir: Path, *settings: str, tcp: bool = False, timeout: float = 120
) -> tuple[subprocess.Popen, str]:
    """Start `aether-box run` on `data_dir` and wait until every component has started.

    `settings` are extra ``section.key=value`` overrides. Returns the process and the
    endpoint to use: ipc, or an ephemeral loopback tcp port when `tcp` is set.
    """
    endpoints = (
        '["ipc://{data_dir}/bus.sock", "tcp://127.0.0.1:*"]'
        if tcp
        else '["ipc://{data_dir}/bus.sock"]'
    )
    sets = [
        f"bus.endpoints={endpoints}",
        'bus.event_endpoints=["ipc://{data_dir}/events.sock"]',
        "monitor.metrics_address=127.0.0.1:0",
        *settings,
    ]
    data_dir.mkdir(parents=True, exist_ok=True)
    log = open(data_dir / "box.log", "w")  # noqa: SIM115 - the box writes to it for its life
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aether_box",
            "--data-dir",
            str(data_dir),
            *[arg for s in sets for arg in ("--set", s)],
            "run",
            "--log-level",
            "warning",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    ipc = f"ipc://{data_dir}/bus.sock"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the box exited with {process.returncode}; see {data_dir}/box.log")
        if (data_dir / "bus.sock").exists():
            try:
                with Client(ipc, data_dir=data_dir, timeout=1) as client:
                    status = client.status()
                if status["ready"]:
                    tcp_endpoints = [e for e in status["endpoints"]["bus"] if e.startswith("tcp")]
                    return process, tcp_endpoints[0] if tcp else ipc
            except Exception:  # not answering yet
                pass
        time.sleep(0.1)
    process.kill()
    raise SystemExit(f"the box did not start within {timeout:g} s; see {data_dir}/box.log")


def stop_box(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 30 s."""
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """Cores, CPU model and load: the context every figure needs."""
    return {"cores": os.cpu_count(), "cpu": cpu_model(), "loadavg_1m": round(os.getloadavg()[0], 2)}


def stream_completion(
    client: Client, model: str, prompt: str, tokens: int
) -> tuple[float, list[float], dict[str, Any]]:
    """A greedy streamed `llm` complete: (start time, arrival time of each non-empty piece,
    the final reply)."""
    body = {
        "op": "complete",
        "model": model,
        "prompt": prompt,
        "max_tokens": tokens,
        "temperature": 0.0,
        "stream": True,
    }
    times: list[float] = []
    final: dict[str, Any] = {}
    started = time.perf_counter()
    for reply in client.stream("llm", body):
        if "token" in reply:
            if reply["token"]:
                times.append(time.perf_counter())
        else:
            final = reply
    return started, times, final
