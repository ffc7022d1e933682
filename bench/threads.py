"""Generation speed on a busy host: llama.cpp's threads chosen by measuring (the default,
`engines.n_threads = 0`) against a fixed count of every physical core.

Usage: python bench/threads.py [--models-dir DIR] [--busy N] [--tokens 128] [--rounds 3]

Two boxes run side by side, one with the default and one with `engines.n_threads` set to the
physical cores. Each round streams the same greedy completion from each, alternated, first on
the quiet machine and then with N processes spinning on the CPU (default: one per physical
core, as a compile or another model would). The first round of each phase is a warm-up for
the governor (it times its candidates over the first ~100 steps) and is reported apart.
The last line is a JSON object: quiet_auto_tok_s, quiet_fixed_tok_s, quiet_ratio (auto over
fixed: about 1 means the governor costs nothing when the host is quiet), busy_auto_tok_s,
busy_fixed_tok_s, busy_ratio, busy_processes, threads_chosen and the machine's load.
Takes about 2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

import psutil
from _box import machine, start_box, stop_box, stream_completion
from _load import busy_cores

from aether_box.client import Client
from aether_box.config import Config
from aether_box.models.settings import ModelsSettings

MODEL = "smollm2"
PROMPT = "Once upon a time, in a kingdom by the sea,"


def tokens_per_s(client: Client, tokens: int) -> float:
    started, times, final = stream_completion(client, MODEL, PROMPT, tokens)
    generated = final["usage"]["completion_tokens"]
    return generated / (times[-1] - started) if times else 0.0


def phase(clients: dict[str, Client], tokens: int, rounds: int) -> dict[str, float]:
    """Median tokens/s per box over `rounds` alternated rounds (after one warm-up round)."""
    runs: dict[str, list[float]] = {name: [] for name in clients}
    for round_ in range(rounds + 1):
        for name, client in clients.items():
            speed = tokens_per_s(client, tokens)
            if round_:
                runs[name].append(speed)
    return {name: round(statistics.median(speeds), 1) for name, speeds in runs.items()}


def chosen_threads(client: Client) -> Any:
    for model in client.status()["models"]["loaded"]:
        if model["name"] == MODEL and model["role"] == "generate":
            return model["scheduler"].get("threads")
    return None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models-dir", type=Path, help="models dir (default: the box's)")
    cores = psutil.cpu_count(logical=False) or 1
    parser.add_argument(
        "--busy", type=int, default=cores, help="spinning processes (default: cores)"
    )
    parser.add_argument("--tokens", type=int, default=128, help="tokens per completion")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds per phase")
    args = parser.parse_args()
    models_dir = (args.models_dir or Config().get(ModelsSettings).dir).resolve()
    load_before = machine()["loadavg_1m"]
    dirs = {
        name: Path(tempfile.mkdtemp(prefix=f"abx-threads-{name}-")) for name in ("auto", "fixed")
    }
    boxes = {
        "auto": start_box(dirs["auto"], f'models.dir="{models_dir}"'),
        "fixed": start_box(
            dirs["fixed"], f'models.dir="{models_dir}"', f"engines.n_threads={cores}"
        ),
    }
    try:
        clients = {
            name: Client(endpoint, data_dir=dirs[name], timeout=600)
            for name, (_, endpoint) in boxes.items()
        }
        quiet = phase(clients, args.tokens, args.rounds)
        print(f"quiet: {quiet}", flush=True)
        with busy_cores(args.busy):
            busy = phase(clients, args.tokens, args.rounds)
            threads = chosen_threads(clients["auto"])
        print(f"with {args.busy} busy processes: {busy}, auto chose {threads} threads", flush=True)
        for client in clients.values():
            client.close()
    finally:
        for process, _ in boxes.values():
            stop_box(process)
        for path in dirs.values():
            shutil.rmtree(path, ignore_errors=True)
    print(
        json.dumps(
            {
                "quiet_auto_tok_s": quiet["auto"],
                "quiet_fixed_tok_s": quiet["fixed"],
                "quiet_ratio": round(quiet["auto"] / quiet["fixed"], 2),
                "busy_auto_tok_s": busy["auto"],
                "busy_fixed_tok_s": busy["fixed"],
                "busy_ratio": round(busy["auto"] / busy["fixed"], 2),
                "busy_processes": args.busy,
                "threads_chosen": threads,
                "physical_cores": cores,
                "machine": {**machine(), "load_before": load_before},
            }
        )
    )


if __name__ == "__main__":
    main()
