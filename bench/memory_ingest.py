"""Ingest through the bus against sqlite-vec alone, alternated in slices in one run.

    python bench/memory_ingest.py [--n 30000] [--rounds 5] [--batch 10000]
    python bench/memory_ingest.py --box memory.bit_scan_min_rows=0 --box ''   # A/B two boxes

A development companion of bench/memory.py (whose `ingest_ratio` is what the issue judges):
on a shared machine one long ingest per side lands on whatever load happens to pass, so this
one times `--n` vectors per slice, the sides in turn, a fresh table or collection each slice,
and reports the median of the per-round ratios with their spread and the load.

Sides: "sqlite-vec" is the baseline of bench/memory.py (one vec0 table, one transaction,
WAL, synchronous=FULL, in this process); each `--box SETTINGS` is an `aether-box run` with
those `section.key=value` overrides (comma-separated; '' for the defaults), ingesting through
the bus exactly as bench/memory.py does (`batch` vectors a request, ids generated, one
metadata object a request). The last line is JSON: `ingest_ratio` per box (median of rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _box import machine, start_box, stop_box  # noqa: E402
from memory import sqlite_vec_ingest  # noqa: E402

from aether_box.client import Client  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=30_000, help="vectors a slice")
    parser.add_argument("--rounds", type=int, default=5, help="slices a side")
    parser.add_argument("--batch", type=int, default=10_000, help="vectors per add request")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument(
        "--box", action="append", help="settings of a box to compare (repeatable; '' = defaults)"
    )
    args = parser.parse_args()
    boxes = args.box if args.box is not None else [""]
    rng = np.random.default_rng(7)
    data = rng.standard_normal((args.n, args.dim), dtype=np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="abx-bench-ingest-"))
    rates: dict[str, list[float]] = {"sqlite-vec": []}
    ratios: dict[str, list[float]] = {}
    running = []
    clients: list[tuple[str, Client]] = []
    try:
        for i, settings in enumerate(boxes):
            data_dir = work / f"box{i}"
            box, endpoint = start_box(data_dir, *[s for s in settings.split(",") if s])
            running.append(box)
            clients.append((settings, Client(endpoint, data_dir=data_dir, timeout=300)))
            rates[settings] = []
            ratios[settings] = []
        for r in range(args.rounds):
            base = sqlite_vec_ingest(work / f"baseline{r}.db", data)
            rates["sqlite-vec"].append(base)
            line = [f"round {r}: sqlite-vec {base:,.0f}/s"]
            for settings, client in clients:
                rate = bus_ingest(client, f"r{r}", data, args.batch)
                rates[settings].append(rate)
                ratios[settings].append(rate / base)
                line.append(f"box[{settings or 'defaults'}] {rate:,.0f}/s ({rate / base:.3f})")
            (work / f"baseline{r}.db").unlink()
            print("; ".join(line), f"load {os.getloadavg()[0]:.2f}", flush=True)
    finally:
        for _, client in clients:
            client.close()
        for box in running:
            stop_box(box)
        shutil.rmtree(work, ignore_errors=True)
    result: dict[str, Any] = {
        "n": args.n,
        "batch": args.batch,
        "rounds": args.rounds,
        "baseline_per_s": round(statistics.median(rates["sqlite-vec"])),
        "boxes": {
            settings or "defaults": {
                "ingest_per_s": round(statistics.median(rates[settings])),
                "ingest_ratio": round(statistics.median(ratios[settings]), 3),
                "ratio_spread": [round(min(ratios[settings]), 3), round(max(ratios[settings]), 3)],
            }
            for settings in ratios
        },
        "machine": {**machine(), "load_before": load_before, "load_after": os.getloadavg()},
    }
    print(json.dumps(result))


def bus_ingest(client: Client, name: str, data: np.ndarray, batch: int) -> float:
    """Vectors per second into a new collection through the bus, as bench/memory.py adds."""
    client.request(
        "memory",
        {"op": "create", "collection": name, "model": "bench", "dim": data.shape[1]},
    )
    started = time.perf_counter()
    for b, start in enumerate(range(0, len(data), batch)):
        client.request(
            "memory",
            {
                "op": "add",
                "collection": name,
                "vectors": data[start : start + batch],
                "metadata": {"shard": b % 10},
            },
        )
    elapsed = time.perf_counter() - started
    client.request("memory", {"op": "drop", "collection": name})
    return len(data) / elapsed


if __name__ == "__main__":
    main()
