"""The standalone executable: its size, and cold start against `python -m aether_box`.

    python bench/executable.py [--runs 5] [--fast-start] [--onedir] [--exe PATH]

Builds the one-file executable with build/build.py (or reuses an up-to-date build; `--exe`
takes a given one). Cold start is the time from launching `aether-box run` on a fresh data
dir until the bus answers `status` with `ready` true (every component started), polled every
20 ms with a fresh client; the first status reply (the broker is up, components may still be
starting) is reported too. The box is then stopped with SIGTERM and must exit 0. The
contestants take turns, `--runs` times each, and medians are reported: the executable,
`python -m aether_box`, and with `--fast-start` / `--onedir` the one-file build with its
libraries stored uncompressed and the one-folder build. The last line is JSON with `size_mb`
and `cold_start_s` (the executable's median), the others' figures, every run, and the load
average: on a shared machine the figures are as noisy as the machine is busy. Target: <= 3 s
on 2 cores.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aether_box.client import Client  # noqa: E402

# build/build.py, loaded by path: "build" is also the name of a PyPI package.
_spec = importlib.util.spec_from_file_location("aether_box_build", ROOT / "build" / "build.py")
builder = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(builder)

TARGET_S = 3.0
POLL_S = 0.02
IPC_ONLY = [
    "--set",
    'bus.endpoints=["ipc://{data_dir}/bus.sock"]',
    "--set",
    'bus.event_endpoints=["ipc://{data_dir}/events.sock"]',
]


def cold_start(command: list[str], timeout: float = 60.0) -> tuple[float, float]:
    """Seconds from launching `command ... run` on a fresh data dir until `status` answers,
    and until it answers ready (every component started)."""
    data_dir = Path(tempfile.mkdtemp(prefix="abx-bench-"))
    log = open(data_dir / "box.log", "w")  # noqa: SIM115 - closed below
    started = time.perf_counter()
    process = subprocess.Popen(
        [*command, "--data-dir", str(data_dir), *IPC_ONLY, "run"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        elapsed = _wait_status(process, data_dir, started, timeout)
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
        if code != 0:
            output = (data_dir / "box.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{command[0]} exited {code} on SIGTERM:\n{output}")
        return elapsed
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(data_dir, ignore_errors=True)


def _wait_status(
    process: subprocess.Popen, data_dir: Path, started: float, timeout: float
) -> tuple[float, float]:
    socket = data_dir / "bus.sock"
    answered = None
    while time.perf_counter() - started < timeout:
        if process.poll() is not None:
            output = (data_dir / "box.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the box exited {process.returncode} before answering:\n{output}")
        if socket.exists():
            try:
                with Client(f"ipc://{socket}", data_dir=data_dir, timeout=0.5) as client:
                    ready = client.status()["ready"]
                now = time.perf_counter() - started
                answered = answered or now
                if ready:
                    return answered, now
            except Exception:  # the socket is bound before the broker answers
                pass
        time.sleep(POLL_S)
    raise TimeoutError(f"the box was not ready within {timeout} s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5, help="cold starts per contestant")
    parser.add_argument("--onedir", action="store_true", help="also time the one-folder build")
    parser.add_argument(
        "--fast-start", action="store_true", help="also time the one-file build, libraries stored"
    )
    parser.add_argument("--exe", type=Path, help="time this executable instead of building one")
    args = parser.parse_args()

    exe = args.exe.resolve() if args.exe else builder.build()
    contestants = {"executable": [str(exe)], "python": [sys.executable, "-m", "aether_box"]}
    sizes = {"executable": exe.stat().st_size / 1e6}
    if args.fast_start:
        contestants["fast_start"] = [str(builder.build(stored=True))]
        sizes["fast_start"] = builder.bundle_size_mb(stored=True)
    if args.onedir:
        contestants["onedir"] = [str(builder.build(onedir=True))]
        sizes["onedir"] = builder.bundle_size_mb(onedir=True)

    load_before = os.getloadavg()
    answered: dict[str, list[float]] = {name: [] for name in contestants}
    ready: dict[str, list[float]] = {name: [] for name in contestants}
    for _ in range(args.runs):  # taking turns spreads the machine's noise over all of them
        for name, command in contestants.items():
            first, done = cold_start(command)
            answered[name].append(first)
            ready[name].append(done)
    median = {name: statistics.median(values) for name, values in ready.items()}

    for name, size in sizes.items():
        print(f"{name:10s} {contestants[name][0]}: {size:.1f} MB")
    for name, values in ready.items():
        runs = ", ".join(f"{v:.2f}" for v in values)
        first = statistics.median(answered[name])
        print(
            f"cold start, {name:10s}: ready {median[name]:.2f} s median ({runs}); "
            f"first status reply {first:.2f} s"
        )
    verdict = "meets" if median["executable"] <= TARGET_S else "misses"
    print(f"the executable {verdict} the {TARGET_S:.0f} s target (noisy if the load is high)")
    result = {
        "size_mb": round(sizes["executable"], 1),
        "cold_start_s": round(median["executable"], 3),
        "python_cold_start_s": round(median["python"], 3),
        "ratio_vs_python": round(median["executable"] / median["python"], 2),
        "target_s": TARGET_S,
        "first_status_s": {k: round(statistics.median(v), 3) for k, v in answered.items()},
        "runs_ready_s": {k: [round(x, 3) for x in v] for k, v in ready.items()},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg_before": [round(x, 2) for x in load_before],
            "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        },
    }
    for name in ("fast_start", "onedir"):
        if name in contestants:
            result[f"{name}_size_mb"] = round(sizes[name], 1)
            result[f"{name}_cold_start_s"] = round(median[name], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
