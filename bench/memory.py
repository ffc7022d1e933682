"""Memory through the bus against sqlite-vec and numpy called directly, in the same run.

    python bench/memory.py [--n 100000] [--batch 10000] [--queries 200] [--data clustered]
    python bench/memory.py --n 1000000     # also prints query_p50_ms_1m, recall_at_10_1m
                                           # (about 20 min and 8 GiB of RAM on 2 cores)
    python bench/memory.py --data random   # uniformly random unit vectors instead

Data (`--data`, the same vectors for every path; see bench/_vectors.py):
- clustered (default): 384-d vectors generated to match real MiniLM embeddings of the
  12,000 texts the box ships (their topics, mean and covariance), the first run embeds them
  with the MiniLM model in `--models-dir` (default: the box's, then the test models);
  queries are fresh draws, not rows. The JSON's `data_stats` compares real and generated.
- random: uniformly random unit vectors (no neighbourhood structure at all: only a full
  scan finds their neighbours); queries are rows plus noise. `--dim` applies here only.

Paths:
- Ingest, baseline: sqlite-vec alone in this process, one vec0 table, every vector in one
  transaction (WAL, synchronous=FULL), the best case for SQLite.
- Ingest, bus: `aether-box run` in its own process; `memory` op `add` with `batch` vectors a
  request (ids generated, one metadata object per batch), each request one durable commit.
- Query, bus: `memory` op `search`, top-10, one request at a time; also with a metadata filter
  that keeps a tenth of the records, and through sqlite-vec's own vec0 search (index
  "sqlite-vec").
- Query, in-process: the box's VectorIndex (a sign-bit or int8 first stage, as its own
  calibration chooses, then float32 re-scoring of a shortlist) over the same vectors, and the baseline: a plain numpy matmul + argpartition over one
  float32 matrix, the two alternated query by query.
- recall@10: every path's top-10 ids against exact numpy brute force over the same data.
- The queries are timed once the box has chosen its index's first stage (a calibration on a
  thread of its own after the collection grew, stepping only between writes): the JSON's
  `index_settle_s` is how long after the ingest that was, `bus_query_scans` which first
  stage served the timed queries.
- reload: restart the box (stopped cleanly, so its index was saved beside the database) and
  time the first search.
The last line is JSON with `ingest_per_s`, `query_p50_ms` (bus; `service_p50_ms` is the memory
service's own part, `bus_overhead_p50_ms` what the round trip adds), `recall_at_10`, the first
stage each index chose, ratios against
the baselines, the other figures and the machine (with its load average: the figures are as
noisy as the machine is busy).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import apsw  # noqa: E402
import sqlite_vec  # noqa: E402
from _box import machine, start_box, stop_box  # noqa: E402
from _vectors import clustered, neighbour_cosines, random_unit, real_embeddings, unit  # noqa: E402

from aether_box.client import Client  # noqa: E402
from aether_box.config import Config  # noqa: E402
from aether_box.memory.index import VectorIndex  # noqa: E402
from aether_box.memory.store import VEC0_CHUNK  # noqa: E402
from aether_box.models.settings import ModelsSettings  # noqa: E402

K = 10
SHARDS = 10  # metadata "shard" values: the filtered query keeps one of them


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100_000, help="vectors stored")
    parser.add_argument(
        "--data", choices=["clustered", "random"], default="clustered", help="see above"
    )
    parser.add_argument("--models-dir", type=Path, help="where MiniLM is (clustered data)")
    parser.add_argument("--dim", type=int, default=384, help="vector size (random data)")
    parser.add_argument("--batch", type=int, default=10_000, help="vectors per add request")
    parser.add_argument("--queries", type=int, default=200, help="queries timed per path")
    args = parser.parse_args()

    load_before = os.getloadavg()
    rng = np.random.default_rng(7)
    data_stats: dict[str, Any] = {}
    if args.data == "clustered":
        real = real_embeddings(minilm_dir(args.models_dir))
        data = clustered(args.n, real, rng)
        queries = clustered(args.queries, real, rng)
        # The generator against the real set, at the real set's size (see bench/_vectors.py).
        held = rng.permutation(len(real))
        data_stats = {
            "real": neighbour_cosines(real[held[500:]], real[held[:500]]),
            "generated": neighbour_cosines(
                clustered(len(real) - 500, real, rng), clustered(500, real, rng)
            ),
        }
        print(f"clustered data: neighbour cosines {data_stats}")
    else:
        data = random_unit(args.n, args.dim, rng)
        queries = unit(
            data[rng.integers(0, args.n, args.queries)]
            + 0.5 * unit(rng.standard_normal((args.queries, args.dim), dtype=np.float32))
        )
    shard = np.arange(args.n) // args.batch % SHARDS  # batch b carries {"shard": b % 10}
    truth = exact_tops(data, queries)
    truth_filtered = exact_tops(data, queries, shard == 3)
    print(f"exact top-{K} of {len(queries)} queries over {args.n:,} vectors; load {load_before}")
    result: dict[str, Any] = {
        "n": args.n,
        "dim": data.shape[1],
        "batch": args.batch,
        "k": K,
        "data": args.data,
        "data_stats": data_stats,
    }

    work = Path(tempfile.mkdtemp(prefix="abx-bench-mem-"))
    try:
        before = sqlite_vec_ingest(work / "baseline.db", data)
        print(f"sqlite-vec alone, one transaction: {before:,.0f} vectors/s")
        result.update(bench_inprocess(data, queries, truth))
        data_dir = work / "box"
        box, endpoint = start_box(data_dir)
        try:
            with Client(endpoint, data_dir=data_dir, timeout=300) as client:
                result.update(bench_bus(client, data, queries, truth, truth_filtered, args.batch))
        finally:
            stop_box(box)
        # The baseline runs before and after the box's ingest, and counts as their mean, so a
        # busy spell on a shared machine does not land on one side only.
        after = sqlite_vec_ingest(work / "baseline-again.db", data)
        print(f"sqlite-vec alone again, after the box: {after:,.0f} vectors/s")
        result["baseline_ingest_per_s"] = round((before + after) / 2)
        result["baseline_ingest_spread"] = [round(before), round(after)]
        # The box gives vec0 smaller chunks than sqlite-vec's default (memory.vec0_chunk), which
        # is part of why it ingests faster; sqlite-vec alone with the same chunks, for honesty.
        tuned = sqlite_vec_ingest(work / "baseline-chunk.db", data, VEC0_CHUNK)
        print(f"sqlite-vec alone with the box's {VEC0_CHUNK}-vector chunks: {tuned:,.0f} vectors/s")
        result["baseline_same_chunk_per_s"] = round(tuned)
        result["ingest_ratio_same_chunk"] = round(result["ingest_per_s"] / tuned, 3)
        box, endpoint = start_box(data_dir)
        try:
            with Client(endpoint, data_dir=data_dir, timeout=300) as client:
                started = time.perf_counter()
                client.request(
                    "memory", {"op": "search", "collection": "bench", "vector": queries[0], "k": K}
                )
                result["reload_s"] = round(time.perf_counter() - started, 2)
                print(f"first search after a restart (loads the index): {result['reload_s']} s")
        finally:
            stop_box(box)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    if args.n >= 1_000_000:
        result["query_p50_ms_1m"] = result["query_p50_ms"]
        result["recall_at_10_1m"] = result["recall_at_10"]
    result["ingest_ratio"] = round(result["ingest_per_s"] / result["baseline_ingest_per_s"], 3)
    result["query_ratio_vs_numpy"] = round(result["query_p50_ms"] / result["numpy_p50_ms"], 2)
    result["machine"] = {
        **machine(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "python": platform.python_version(),
    }
    print(json.dumps(result))


def bench_inprocess(
    data: np.ndarray, queries: np.ndarray, truth: list[np.ndarray]
) -> dict[str, Any]:
    """The index the box uses, and a bare numpy scan, both in this process."""
    index = VectorIndex(data.shape[1], "cosine")
    rowids = np.arange(1, len(data) + 1)
    index.add(rowids, data)
    index.maybe_calibrate()  # as the box does after a write, on a thread of its own
    times, hits, numpy_times = [], [], []
    for q in queries:
        started = time.perf_counter()
        got, _ = index.search(q, K)
        times.append(time.perf_counter() - started)
        hits.append(got - 1)
        started = time.perf_counter()
        scores = data @ q
        top = np.argpartition(-scores, K - 1)[:K]
        top[np.argsort(-scores[top])]
        numpy_times.append(time.perf_counter() - started)
    out = {
        "inprocess_scan": index.scan,
        "inprocess_bit_budget": index.budget,
        "inprocess_p50_ms": ms(times, 50),
        "inprocess_p95_ms": ms(times, 95),
        "inprocess_recall_at_10": recall(hits, truth),
        "numpy_p50_ms": ms(numpy_times, 50),
        "numpy_p95_ms": ms(numpy_times, 95),
    }
    print(
        f"in-process index: p50 {out['inprocess_p50_ms']} ms, p95 {out['inprocess_p95_ms']} ms"
        f"; bare numpy: p50 {out['numpy_p50_ms']} ms"
    )
    return out


def bench_bus(
    client: Client,
    data: np.ndarray,
    queries: np.ndarray,
    truth: list[np.ndarray],
    truth_filtered: list[np.ndarray],
    batch: int,
) -> dict[str, Any]:
    """Ingest and queries through the box's bus."""
    client.request(
        "memory",
        {
            "op": "create",
            "collection": "bench",
            "model": "bench",
            "dim": data.shape[1],
            "metric": "cosine",
        },
    )
    position: dict[str, int] = {}
    started = time.perf_counter()
    for b, start in enumerate(range(0, len(data), batch)):
        chunk = data[start : start + batch]
        reply = client.request(
            "memory",
            {
                "op": "add",
                "collection": "bench",
                "vectors": chunk,
                "metadata": {"shard": b % SHARDS},
            },
        )
        position.update(zip(reply["ids"], range(start, start + len(chunk)), strict=True))
    ingest_s = time.perf_counter() - started
    out: dict[str, Any] = {
        "ingest_per_s": round(len(data) / ingest_s),
        "ingest_s": round(ingest_s, 2),
    }
    print(f"bus ingest: {out['ingest_per_s']:,} vectors/s ({len(data) // batch} requests)")
    # The box chooses its first stage (calibrates the bit scan) on its own thread once the
    # collection has grown, stepping only between writes: queries are timed once it has.
    out["index_settle_s"] = wait_calibrated(client)
    print(f"the box's index settled {out['index_settle_s']} s after the ingest")

    def run(body: dict[str, Any], qs: np.ndarray) -> tuple[list[float], list[np.ndarray]]:
        for q in qs[:5]:  # warm-up
            client.request("memory", {**body, "vector": q})
        times, hits = [], []
        served.clear()
        for q in qs:
            started = time.perf_counter()
            reply = client.request("memory", {**body, "vector": q})
            times.append(time.perf_counter() - started)
            served.append(reply["took_ms"] / 1000)
            hits.append(np.array([position[h["id"]] for h in reply["results"]]))
        return times, hits

    served: list[float] = []  # the memory service's own time (its reply's took_ms)

    search = {"op": "search", "collection": "bench", "k": K}
    scans_before = collection_status(client).get("searches_by_scan") or {}
    times, hits = run(search, queries)
    scans = collection_status(client).get("searches_by_scan") or {}
    # Which first stage served the timed queries (and their warm-up): bits+rescore or int8.
    out["bus_query_scans"] = {s: n - scans_before.get(s, 0) for s, n in scans.items()}
    out.update(
        query_p50_ms=ms(times, 50),
        query_p95_ms=ms(times, 95),
        recall_at_10=recall(hits, truth),
        service_p50_ms=ms(served, 50),
        # What the round trip adds to the service's own time: bus, msgpack, the client.
        bus_overhead_p50_ms=ms([t - s for t, s in zip(times, served, strict=True)], 50),
    )
    print(
        f"bus query: p50 {out['query_p50_ms']} ms, p95 {out['query_p95_ms']} ms, "
        f"recall@10 {out['recall_at_10']}; inside the memory service p50 "
        f"{out['service_p50_ms']} ms, round trip on top p50 {out['bus_overhead_p50_ms']} ms"
    )
    index = collection_status(client)
    out.update(bus_index_scan=index.get("index_scan"), bus_bit_budget=index.get("bit_budget"))
    print(
        f"the box's index: {out['bus_index_scan']}, bit budget {out['bus_bit_budget']}; "
        f"the timed queries were served by {out['bus_query_scans']}"
    )
    times, hits = run({**search, "where": {"shard": 3}}, queries[:50])
    out.update(filtered_p50_ms=ms(times, 50), filtered_recall_at_10=recall(hits, truth_filtered))
    print(
        f"bus query with a filter keeping 1/{SHARDS}: p50 {out['filtered_p50_ms']} ms, "
        f"recall@10 {out['filtered_recall_at_10']}"
    )
    times, hits = run({**search, "index": "sqlite-vec"}, queries[:20])
    out.update(sqlite_vec_p50_ms=ms(times, 50), sqlite_vec_recall_at_10=recall(hits, truth))
    print(
        f"bus query through sqlite-vec's vec0: p50 {out['sqlite_vec_p50_ms']} ms, "
        f"recall@10 {out['sqlite_vec_recall_at_10']}"
    )
    return out


def collection_status(client: Client) -> dict[str, Any]:
    """The bench collection's entry in the box's status."""
    return dict(client.status()["memory"]["collections"]["bench"])


def wait_calibrated(client: Client, limit_s: float = 120) -> float:
    """Seconds until the box no longer calibrates the bench collection's index."""
    started = time.perf_counter()
    while collection_status(client).get("calibrating"):
        if time.perf_counter() - started > limit_s:
            raise SystemExit(f"the box was still calibrating its index after {limit_s} s")
        time.sleep(0.05)
    return round(time.perf_counter() - started, 2)


def sqlite_vec_ingest(path: Path, data: np.ndarray, chunk_size: int | None = None) -> float:
    """Vectors per second into one vec0 table, all in one transaction (sqlite-vec's default
    chunk size unless `chunk_size` is given)."""
    conn = apsw.Connection(str(path))
    conn.enable_load_extension(True)
    conn.load_extension(sqlite_vec.loadable_path())
    conn.pragma("journal_mode", "wal")
    conn.pragma("synchronous", "FULL")
    conn.execute(
        f"CREATE VIRTUAL TABLE v USING vec0(embedding float[{data.shape[1]}] "
        "distance_metric=cosine" + (f", chunk_size={chunk_size})" if chunk_size else ")")
    )
    started = time.perf_counter()
    with conn:
        conn.executemany(
            "INSERT INTO v(rowid, embedding) VALUES (?, ?)",
            ((i + 1, data[i].data) for i in range(len(data))),
        )
    elapsed = time.perf_counter() - started
    conn.close()
    return len(data) / elapsed


def exact_tops(
    data: np.ndarray, queries: np.ndarray, keep: np.ndarray | None = None
) -> list[np.ndarray]:
    """Brute-force top-k of every query, a block of rows at a time (feasible at 1M rows)."""
    best = np.full((len(queries), K), -np.inf)
    where = np.zeros((len(queries), K), np.int64)
    for start in range(0, len(data), 100_000):
        block = (data[start : start + 100_000] @ queries.T).T.astype(np.float64)
        if keep is not None:
            block[:, ~keep[start : start + 100_000]] = -np.inf
        scores = np.concatenate([best, block], axis=1)
        ids = np.concatenate(
            [where, np.broadcast_to(np.arange(start, start + block.shape[1]), block.shape)], axis=1
        )
        top = np.argpartition(-scores, K - 1, axis=1)[:, :K]
        best = np.take_along_axis(scores, top, axis=1)
        where = np.take_along_axis(ids, top, axis=1)
    order = np.argsort(-best, axis=1, kind="stable")
    return list(np.take_along_axis(where, order, axis=1))


def recall(hits: list[np.ndarray], truth: list[np.ndarray]) -> float:
    truth = truth[: len(hits)]  # some paths time only the first queries
    found = sum(len(set(h.tolist()) & set(t.tolist())) for h, t in zip(hits, truth, strict=True))
    return round(found / (K * len(truth)), 4)


def minilm_dir(models_dir: Path | None) -> Path:
    """MiniLM's directory: in `models_dir`, the box's models dir, or the test models."""
    candidates = [models_dir] if models_dir else []
    candidates += [Config().get(ModelsSettings).dir, Path("~/.cache/aether-box/test-models")]
    for base in candidates:
        path = Path(base).expanduser() / "minilm"
        if (path / "encoder.json").is_file():
            return path
    raise SystemExit(
        "clustered data needs the MiniLM model (run `aether-box models pull`, or pass "
        "--models-dir); or run with --data random"
    )


def ms(times: list[float], pct: int) -> float:
    return round(float(np.percentile(times, pct)) * 1000, 2)


if __name__ == "__main__":
    main()
