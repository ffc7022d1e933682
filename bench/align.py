"""Projectors through the hub fitted and judged; the gate's AUC; projection timed.

    python bench/align.py [--models-dir DIR] [--data-dir DIR]
                          [--models smollm2,gemma3-270m,minilm] [--hub shared|minilm]
                          [--hub-dim 512] [--no-direct] [--methods ridge,procrustes,mlp]
                          [--max-pairs 1200] [--test-pairs 500] [--rounds 2000]

A box (`aether-box run`, its own process) builds the hub when it is the learned shared space
(--hub shared, the default: `align hub --models` from every model of --models, on the fit
texts), fits, for every model of --models, its two hub projectors (model -> hub and hub ->
model: `align join`) and, for every ordered pair of those models, a direct projector, all on
the standard split of the built-in corpus: at most
--max-pairs WordNet glosses fitted on, --test-pairs held-out glosses (in-domain), as many
WordNet usage sentences (out-of-domain) and Python-documentation sentences (far domain), each
judged as top-1 among its N. Each model embeds with its alignment recipe (the models
manifest: SmolLM2 a PromptEOL template read at its last token). Then `align report` judges
every pair through the hub on the same held-out texts, beside the direct projector.

How long: the embedding dominates. Each model embeds 1,200 + 3 x 500 = 2,700 texts at the
default scale (SmolLM2 ~100 prompt tokens/s per thread here, Gemma 3 270M about half that):
about 25-30 minutes on a quiet 2-core machine for the first run (SmolLM2 ~8, Gemma ~15,
MiniLM ~1, then the fits), several times that on a busy one. Every model's vectors are
cached on disk per model and recipe, in the data dir (default
~/.cache/aether-box/bench-align, under align/vectors/<model>-<digest of weights and
recipe>/<corpus digest>.npy), so a rerun with the same scale embeds nothing and only fits,
and a changed recipe or model file never reuses stale vectors. Delete that dir to embed
again. From the cache, three models, --methods ridge,procrustes: about a minute of fits and
route calibrations (12 fits, 6 routes) at load ~6; MLP adds its training to every fit and to
every route calibration whose leg serves it. On a busy machine run it with
OPENBLAS_NUM_THREADS=1: numpy's two BLAS threads fighting other processes made one ridge
solve ~8x slower here. For the README: run it twice on a quiet machine and quote the
second (cached) run's figures with its load.

A fourth model joins with --models smollm2,gemma3-270m,minilm,mpnet (any installed kit
model that embeds; nothing assumes a width or a number of models): the shared space is
rebuilt from every model listed, each joins it, and the tables cover every ordered pair.

Timing, in this process on SmolLM2 -> MiniLM's served method: ONNX Runtime (1 thread, IO
binding for single vectors) against the same maths in numpy, single vector and batch of
1,000, the projection alone and with the gate's agreement; medians over `--rounds` calls;
and one `align project` round trip through the bus.

With --hub minilm (MiniLM's own space as the hub, the other way the issue asks to measure)
MiniLM is the hub and not one of the joined models. Both runs share the vector cache.

The last line is JSON: top1_in_domain, top1_out_of_domain, project_single_us (SmolLM2 ->
MiniLM, the direct projector); gate_auc: the AUC for "finds the native top-1" of the gate
memory's cross-model search serves (agreement and collection margin combined, gate.py; a
route through the hub by its own calibration, routes.py), pooled over every ordered pair's
route through the hub (what a box of 2N fits serves) and the in-, out-of- and far-domain
held-out sets; gate_auc_min: the lowest route's (pooled over its three sets);
gate_auc_direct: the same pooled over the direct projectors fitted beside them (what
`align project` serves for a pair that has one); gate_auc_routes: every route's and
direct projector's; gate: per route and held-out set, its top-1, gate AUC, the agreement's
and the margin's AUC alone, the share proxied at the default gate and the combined top-1;
hub_gap_max (the largest top-1 loss, in- or out-of-domain, of a pair through the hub
against its direct projector), hub_gap (that loss per pair and domain), the coherence
report and the machine with its load. Before it, two markdown tables: top-1 through the
hub against direct per pair and domain, and each route's gate.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _box import machine, start_box, stop_box  # noqa: E402

from aether_box.align.cli import print_coherence, print_report  # noqa: E402
from aether_box.align.export import OnnxProjector  # noqa: E402
from aether_box.align.store import ProjectorStore  # noqa: E402
from aether_box.client import Client  # noqa: E402
from aether_box.models.store import ModelStore  # noqa: E402

HUB = "shared"
DOMAINS = ("in", "out", "far")


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
        "--models", default="smollm2,gemma3-270m,minilm", help="models joining the hub"
    )
    parser.add_argument(
        "--hub", default=HUB, help="'shared' (a learned space) or a model whose space is the hub"
    )
    parser.add_argument("--hub-dim", type=int, default=512, help="the shared space's dimensions")
    parser.add_argument(
        "--no-direct", action="store_true", help="skip the direct pairs (no hub gap then)"
    )
    parser.add_argument("--methods", default="ridge,procrustes,mlp")
    parser.add_argument("--max-pairs", type=int, default=1200)
    parser.add_argument("--test-pairs", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2000, help="timed single-vector calls")
    args = parser.parse_args()

    installed = {m.name for m in ModelStore(args.models_dir).installed()}
    models = [s for s in args.models.split(",") if s]
    skipped = {s: "not installed" for s in models if s not in installed}
    if args.hub != "shared" and args.hub not in installed:
        raise SystemExit(
            f"{args.hub} is not installed in {args.models_dir}: "
            f"`aether-box --set models.dir={args.models_dir} models pull {args.hub}`"
        )
    for name, why in skipped.items():
        print(
            f"skipping {name}: {why} (pull it with "
            f"`aether-box --set models.dir={args.models_dir} models pull {name}`)"
        )
    joined = [m for m in models if m not in skipped and m != args.hub]
    args.data_dir.mkdir(parents=True, exist_ok=True)
    box, endpoint = start_box(
        args.data_dir,
        f'models.dir="{args.models_dir}"',
        f'align.hub="{args.hub}"',
        f"align.test_pairs={args.test_pairs}",
    )
    results: dict[str, Any] = {}
    started_all = time.perf_counter()
    try:
        with Client(endpoint, data_dir=args.data_dir, timeout=3600) as client:
            if args.hub == "shared":
                started = time.perf_counter()
                built = request(
                    client,
                    {
                        "op": "hub",
                        "models": joined,
                        "dim": args.hub_dim,
                        "max_pairs": args.max_pairs,
                        "test_pairs": args.test_pairs,
                    },
                )
                results["hub"] = {**built, "seconds": round(time.perf_counter() - started, 1)}
                print(json.dumps({"hub": results["hub"]}), flush=True)
            fits = [(m, args.hub) for m in joined] + [(args.hub, m) for m in joined]
            if not args.no_direct:
                fits += [(a, b) for a in joined for b in joined if a != b]
            for source, target in fits:
                started = time.perf_counter()
                print(f"[{time.strftime('%H:%M:%S')}] fitting {source} -> {target}", flush=True)
                report = request(
                    client,
                    {
                        "op": "fit",
                        "from": source,
                        "to": target,
                        "max_pairs": args.max_pairs,
                        "test_pairs": args.test_pairs,
                        "methods": args.methods.split(","),
                        "out_of_domain": ["examples", "docs"],
                    },
                )
                print_report(report)
                name = report["name"]
                results[name] = summarise(report, time.perf_counter() - started)
                results[name]["routes_calibrated"] = report.get("routes", {})
                print(json.dumps({name: results[name]}), flush=True)
            first = "smollm2->minilm"
            if first in results:
                report = client.request(
                    "align", {"op": "fidelity", "from": "smollm2", "to": "minilm"}
                )
                results[first]["timing"] = time_projection(args.data_dir, report, args.rounds)
                results[first]["timing"]["bus_project_single_us"] = time_bus(
                    client, "smollm2", "minilm", report["dims"][0]
                )
            coherence = client.request("align", {"op": "report"}, timeout=600)
            print_coherence(coherence)
    finally:
        stop_box(box)
    first = results.get("smollm2->minilm") or {}
    rows = coherence["pairs"]
    by_route = {_route_name(r): r for r in rows}
    row = next((r for r in rows if r["from"] == "smollm2" and r["to"] == "minilm"), {})
    gap_by_pair = {
        f"{r['from']}->{r['to']}": {
            d: r[d]["hub_gap"] for d in DOMAINS if "hub_gap" in r.get(d, {})
        }
        for r in rows
        if r["via"]
    }
    gaps = [g[d] for g in gap_by_pair.values() for d in ("in", "out") if d in g]
    # Per route: the served (combined) gate's AUC pooled over the held-out sets, for every
    # route through the hub and every direct projector fitted beside it.
    route_auc = {name: r["gate_auc_pooled"] for name, r in by_route.items()}
    route_auc |= {
        f"{r['from']}->{r['to']}": r["direct_gate_auc_pooled"]
        for r in rows
        if r.get("direct_gate_auc_pooled") is not None
    }
    hub_aucs = [r["gate_auc_pooled"] for r in rows if r["gate_auc_pooled"] is not None]
    print_table(rows)
    out = {
        "top1_in_domain": first.get("top1_in_domain"),
        "top1_out_of_domain": first.get("top1_out_of_domain"),
        "project_single_us": (first.get("timing") or {}).get("onnx_single_us"),
        # The routes a box of 2N fits serves: every ordered pair through the hub, the
        # combined gate, pooled over pairs and the three held-out sets.
        "gate_auc": coherence.get("gate_auc_routes_pooled"),
        "gate_auc_min": min(hub_aucs) if hub_aucs else None,
        "gate_auc_direct": coherence.get("gate_auc_direct_pooled"),
        "gate_auc_routes": route_auc,
        "gate": {name: _gate_figures(r) for name, r in by_route.items()},
        "hub_gap_max": max(gaps) if gaps else None,
        "hub": args.hub,
        "models": models,
        "hub_gap": gap_by_pair,
        "scale": {"max_pairs": args.max_pairs, "test_pairs": args.test_pairs},
        "seconds": round(time.perf_counter() - started_all, 1),
        "pairs": results,
        "coherence": coherence,
        "skipped": skipped,
        "machine": {**machine(), "loadavg_end": os.getloadavg()},
    }
    if row:
        out["gate_smollm2_minilm"] = {
            "route": _route_name(row),
            "auc": row["gate_auc_pooled"],
            "direct_auc": row.get("direct_gate_auc_pooled"),
        }
    print(json.dumps(out))


def _route_name(row: dict[str, Any]) -> str:
    via = f"->{row['via']}" if row["via"] else ""
    return f"{row['from']}{via}->{row['to']}"


def _gate_figures(row: dict[str, Any]) -> dict[str, Any]:
    """One route's gate per held-out set: AUC, proxy share and combined top-1 at the default
    gate, and the agreement's and the margin's AUC alone."""
    keys = ("top1", "gate_auc", "agreement_auc", "margin_auc", "proxy_share", "combined_top1")
    figures: dict[str, Any] = {
        short: {k: row[short][k] for k in keys} for short in DOMAINS if short in row
    }
    figures["pooled_auc"] = row["gate_auc_pooled"]
    figures["route_gate"] = row.get("route_gate")
    return figures


def print_table(rows: list[dict[str, Any]]) -> None:
    """The README's tables: top-1 through the hub against direct, and each route's gate."""
    print("\n| pair | direct in / out / far | hub in / out / far | gap in / out / far |")
    print("|---|---|---|---|")

    def cell(row: dict[str, Any], key: str) -> str:
        return " / ".join(f"{row[d][key]:.3f}" if key in row.get(d, {}) else "-" for d in DOMAINS)

    for r in rows:
        direct = " / ".join(
            f"{r[d]['direct_top1']:.3f}" if "direct_top1" in r.get(d, {}) else "-" for d in DOMAINS
        )
        hub = cell(r, "top1")
        gap = cell(r, "hub_gap")
        print(f"| {_route_name(r)} | {direct} | {hub} | {gap} |")
    print(
        "\n| route | gate AUC in / out / far / pooled | proxied at the gate in / out / far |"
        " combined top-1 in / out / far |"
    )
    print("|---|---|---|---|")
    for r in rows:
        pooled = r["gate_auc_pooled"]
        aucs = " / ".join(
            f"{r[d]['gate_auc']:.3f}" if r.get(d, {}).get("gate_auc") is not None else "-"
            for d in DOMAINS
        )
        pooled_text = f"{pooled:.3f}" if pooled is not None else "-"
        print(
            f"| {_route_name(r)} | {aucs} / {pooled_text} | {cell(r, 'proxy_share')} |"
            f" {cell(r, 'combined_top1')} |"
        )
    print(flush=True)


def request(client: Client, body: dict[str, Any]) -> dict[str, Any]:
    """One streaming `align` request, its progress printed a line per tenth (and per step)."""
    final: dict[str, Any] = {}
    shown: dict[str, int] = {}
    for reply in client.stream("align", body, timeout=3600):
        stage = reply.get("stage")
        if stage == "embed":
            key, tenth = (
                f"embedding with {reply['model']}",
                10 * reply["done"] // max(1, reply["total"]),
            )
            where = f"{reply['done']}/{reply['total']}"
        elif stage == "fit":
            key, tenth = reply["step"], int(10 * reply["fraction"])
            where = f"{reply['fraction']:.0%}"
        else:
            final = reply
            continue
        if shown.get(key) != tenth:
            shown[key] = tenth
            print(f"  [{time.strftime('%H:%M:%S')}] {body['op']}: {key} {where}", flush=True)
    return final


def summarise(report: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The figures the README quotes, for the served method and every method."""
    best = report["methods"][report["best"]]
    gate = report["gate"]
    at_gate = {
        name: next(t for t in gate[name]["thresholds"] if abs(t["gate"] - gate["threshold"]) < 1e-9)
        for name in ("in_domain", "out_of_domain", "out_of_domain_docs")
        if name in gate
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
                    "auc_margin": gate[name].get("auc_margin"),
                    "auc_combined": gate[name].get("auc_combined"),
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


def time_bus(client: Client, source: str, target: str, dim: int, rounds: int = 200) -> float:
    """Median round trip of `align project` for one vector, through the bus."""
    vector = np.random.default_rng(1).standard_normal(dim).astype(np.float32)
    return _median_us(
        lambda: client.request(
            "align", {"op": "project", "from": source, "to": target, "vector": vector}
        ),
        rounds,
    )


if __name__ == "__main__":
    main()
