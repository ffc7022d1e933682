"""Starter projectors fitted and judged, and projection timed against a numpy matmul.

    python bench/align.py [--models-dir DIR] [--data-dir DIR] [--pairs smollm2,gemma3-270m]
                          [--methods ridge,procrustes,mlp] [--max-pairs 5000] [--rounds 2000]

For each starter pair (SmolLM2 -> MiniLM, Gemma 3 270M -> MiniLM; a model that is not
installed is skipped and said so) a box (`aether-box run`, its own process) runs
`align fit` on the standard split of the built-in corpus: at most 5,000 WordNet glosses
fitted on, 1,000 held-out glosses (in-domain), 1,000 WordNet usage sentences (out-of-domain)
and 1,000 sentences of Python's documentation (far domain), each judged as top-1 among its
1,000. Pairs are cached in the data dir (default ~/.cache/aether-box/bench-align), so a rerun
only fits; `pairs_cached` in the output says whether this run embedded anything.

Timing, in this process on the served method: ONNX Runtime (1 thread, sequential, IO
binding for single vectors) against the same maths in numpy (a matmul, plus the ReLU branch
for an MLP), single vector and batch of 1,000, for the projection alone and with the gate's
agreement; medians over `--rounds` calls. Also one `align project` round trip through the bus
for a single vector.

The last line is JSON: top1_in_domain, top1_out_of_domain, project_single_us (SmolLM2 ->
MiniLM) and everything else measured, with the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _box import machine, start_box, stop_box  # noqa: E402

from aether_box.align.cli import print_report  # noqa: E402
from aether_box.align.export import OnnxProjector  # noqa: E402
from aether_box.align.store import ProjectorStore  # noqa: E402
from aether_box.client import Client  # noqa: E402
from aether_box.models.store import ModelStore  # noqa: E402

TARGET = "minilm"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models-dir", type=Path, default=Path.home() / ".cache" / "aether-box" / "test-models"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path.home() / ".cache" / "aether-box" / "bench-align"
    )
    parser.add_argument(
        "--pairs", default="smollm2,gemma3-270m", help="source models, each fitted to minilm"
    )
    parser.add_argument("--methods", default="ridge,procrustes,mlp")
    parser.add_argument("--max-pairs", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=2000, help="timed single-vector calls")
    args = parser.parse_args()

    installed = {m.name for m in ModelStore(args.models_dir).installed()}
    sources = [s for s in args.pairs.split(",") if s]
    skipped = {s: "not installed" for s in sources if s not in installed}
    if TARGET not in installed:
        raise SystemExit(
            f"{TARGET} is not installed in {args.models_dir}: "
            f"`aether-box --set models.dir={args.models_dir} models pull`"
        )
    for name, why in skipped.items():
        print(
            f"skipping {name} -> {TARGET}: {why} (pull it with "
            f"`aether-box --set models.dir={args.models_dir} models pull {name}`)"
        )
    args.data_dir.mkdir(parents=True, exist_ok=True)
    box, endpoint = start_box(args.data_dir, f'models.dir="{args.models_dir}"')
    results: dict[str, Any] = {}
    try:
        with Client(endpoint, data_dir=args.data_dir, timeout=3600) as client:
            for source in sources:
                if source in skipped:
                    continue
                started = time.perf_counter()
                report = client.request(
                    "align",
                    {
                        "op": "fit",
                        "from": source,
                        "to": TARGET,
                        "max_pairs": args.max_pairs,
                        "methods": args.methods.split(","),
                        "out_of_domain": ["examples", "docs"],
                    },
                    timeout=3600,
                )
                print_report(report)
                results[source] = summarise(report, time.perf_counter() - started)
                results[source]["timing"] = time_projection(args.data_dir, report, args.rounds)
                results[source]["timing"]["bus_project_single_us"] = time_bus(
                    client, source, report["dims"][0]
                )
                print(json.dumps({source: results[source]}, indent=1))
    finally:
        stop_box(box)
    first = results.get("smollm2") or next(iter(results.values()), {})
    out = {
        "top1_in_domain": first.get("top1_in_domain"),
        "top1_out_of_domain": first.get("top1_out_of_domain"),
        "project_single_us": (first.get("timing") or {}).get("onnx_single_us"),
        "pairs": results,
        "skipped": skipped,
        "machine": machine(),
    }
    print(json.dumps(out))


def summarise(report: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The figures the README quotes, for the served method and every method."""
    best = report["methods"][report["best"]]
    gate = report["gate"]
    at_gate = {
        name: next(t for t in gate[name]["thresholds"] if abs(t["gate"] - gate["threshold"]) < 1e-9)
        for name in ("in_domain", "out_of_domain")
    }
    return {
        "served": report["best"],
        "fit_pairs": report["pairs"]["fit"],
        "pairs_cached": report["pairs"].get("cached"),
        "seconds": round(seconds, 1),
        "top1_in_domain": best["in_domain"]["top1"],
        "top1_out_of_domain": best["out_of_domain"]["top1"],
        "top1_far_domain": best.get("out_of_domain_docs", {}).get("top1"),
        "methods": {
            m: {
                k: {
                    "top1": r[k]["top1"],
                    "recall_at_10": r[k]["recall_at_10"],
                    "mean_cosine": round(r[k]["mean_cosine"], 4),
                    "mean_rank": round(r[k]["mean_rank"], 2),
                }
                for k in r
                if k.startswith(("in_domain", "out_of_domain"))
            }
            for m, r in report["methods"].items()
        },
        "gate": {
            "threshold": gate["threshold"],
            **{
                name: {
                    "auc_top1": gate[name]["auc_top1"],
                    "mean_agreement": round(gate[name]["mean_agreement"], 3),
                    "proxy_share": at_gate[name]["proxy_share"],
                    "accepted_top1": at_gate[name]["accepted_top1"],
                    "combined_top1": at_gate[name]["combined_top1"],
                }
                for name in at_gate
            },
        },
    }


def _median_us(fn: Any, rounds: int) -> float:
    for _ in range(min(50, rounds)):
        fn()  # warm-up: caches, IO binding, allocator
    times = []
    for _ in range(rounds):
        t = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t)
    return round(statistics.median(times) / 1000, 2)


def time_projection(data_dir: Path, report: dict[str, Any], rounds: int) -> dict[str, Any]:
    """ONNX Runtime vs numpy on the served method, in this process.

    "plain": the projection alone (what the 100 us budget is about); "gated": the projection
    with the gate's agreement, the graph `align project` runs.
    """
    store = ProjectorStore(data_dir / "align")
    source, target, method = report["source"], report["target"], report["best"]
    plain = OnnxProjector(store.onnx_path(source, target, method))
    gated = OnnxProjector(store.served_path(source, target))
    projector = store.projector(source, target, method)
    gate = store.gate(source, target)
    rng = np.random.default_rng(0)
    one = rng.standard_normal((1, projector.din)).astype(np.float32)
    batch = rng.standard_normal((1000, projector.din)).astype(np.float32)
    batch_rounds = max(5, rounds // 100)

    def numpy_gated(x: np.ndarray) -> None:
        projector(x)
        gate.agreement(projector, x)

    figures = {
        "method": method,
        "onnx_single_us": _median_us(lambda: plain.run(one), rounds),
        "numpy_single_us": _median_us(lambda: projector(one), rounds),
        "onnx_gated_single_us": _median_us(lambda: gated.run(one), rounds),
        "numpy_gated_single_us": _median_us(lambda: numpy_gated(one), rounds),
        "onnx_batch1000_us": _median_us(lambda: plain.run(batch), batch_rounds),
        "numpy_batch1000_us": _median_us(lambda: projector(batch), batch_rounds),
        "onnx_gated_batch1000_us": _median_us(lambda: gated.run(batch), batch_rounds),
        "max_abs_diff": float(np.abs(gated.run(batch)["y"] - projector(batch)).max()),
        "agreement_max_abs_diff": float(
            np.abs(gated.run(batch)["agreement"] - gate.agreement(projector, batch)).max()
        ),
    }
    for kind in ("single", "gated_single", "batch1000"):
        figures[f"{kind}_ratio_onnx_over_numpy"] = round(
            figures[f"onnx_{kind}_us"] / figures[f"numpy_{kind}_us"], 3
        )
    return figures


def time_bus(client: Client, source: str, dim: int, rounds: int = 200) -> float:
    """Median round trip of `align project` for one vector, through the bus."""
    vector = np.random.default_rng(1).standard_normal(dim).astype(np.float32)
    return _median_us(
        lambda: client.request(
            "align", {"op": "project", "from": source, "to": TARGET, "vector": vector}
        ),
        rounds,
    )


if __name__ == "__main__":
    main()
