"""The grid against one box, in one run: forwarding cost, failover, grid search, load spread.

    python bench/grid.py [--models-dir DIR] [--echoes 400] [--docs 20000] [--searches 60]
                         [--clients 8] [--requests 3] [--tokens 32]

Three `aether-box run` processes on loopback, CURVE on every tcp link (`bus.curve=on`):
`hub` (only minilm: it has no generation model, so it places every generation request),
`b` and `c` (smollm2 and minilm, each started pinned to one core of its own, its llama.cpp
on one thread). All clients talk to the hub over its ipc socket unless said otherwise.

- one box alone (before the grid exists): `--clients` clients, `--requests` completions of
  `--tokens` tokens each, straight to `b`: the aggregate tokens/s of one box.
- forward_overhead_ms_p50: `echo` here vs `b/echo` (the hub's member link, CURVE tcp to b),
  alternating, `--echoes` each: p50 forwarded minus p50 local.
- grid_search_ratio: the same vector query, `k` 10: `scope: "grid"` over a collection of
  `--docs` vectors on each of the three boxes, against one local collection on the hub
  holding all 3 x `--docs`; p50 over p50.
- load: the same clients and requests as the first step, to the hub: each request goes to
  b or c by expected wait; the share each box served and the aggregate tokens/s, against
  one box alone.
- failover_s: a completion placed on b; b is killed (SIGKILL) while it runs; the time from
  the kill until c has the request (the hub noticed b down and retried), with the time until
  the hub's status shows b down (`down_noticed_s`) and until the answer came back.

The last line is JSON with those keys, `load_shares` (box -> share of requests),
`aggregate_ratio` (grid tokens/s over one box's) and the machine (cores, load).
Targets: forward_overhead_ms_p50 < 1, failover_s < 1, grid_search_ratio <= 2.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _box import machine, start_box, stop_box  # noqa: E402

from aether_box.bus.security import authorize_key, init_keys, keys_dir  # noqa: E402
from aether_box.client import Client  # noqa: E402
from aether_box.models.store import ModelStore  # noqa: E402

PROMPT = "1, 2, 3, 4, 5, 6, 7, 8,"  # a continuation that rarely ends early
DIM = 384


class Member:
    """One box of the bench grid: its data dir, process and ipc endpoint."""

    def __init__(self, root: Path, name: str, models: Path, cores: set[int] | None) -> None:
        self.name, self.models, self.cores = name, models, cores
        self.data_dir = root / name
        self.data_dir.mkdir(parents=True)
        init_keys(self.data_dir)
        self.process: Any = None
        self.endpoint = ""

    def start(self) -> Member:
        # The box inherits this process's CPU mask: pin it, start the box, unpin.
        mask = os.sched_getaffinity(0)
        if self.cores:
            os.sched_setaffinity(0, self.cores)
        try:
            self.process, _ = start_box(
                self.data_dir,
                "bus.curve=on",
                f"grid.name={self.name}",
                f"models.dir={self.models}",
                "engines.n_threads=1",
                "engines.n_ctx=1024",
                tcp=True,
            )
        finally:
            os.sched_setaffinity(0, mask)
        self.endpoint = f"ipc://{self.data_dir}/bus.sock"
        return self

    def client(self, timeout: float = 300) -> Client:
        return Client(self.endpoint, data_dir=self.data_dir, timeout=timeout)

    def status(self) -> dict[str, Any]:
        with self.client(10) as client:
            return client.status()

    def tcp(self) -> str:
        with self.client(10) as client:
            return str(client.request("grid", {"op": "status"})["endpoint"])

    def key(self) -> str:
        return (keys_dir(self.data_dir) / "server.key").read_text()


def join(newcomer: Member, member: Member) -> None:
    # What `aether-box keys authorize NEWCOMER.key --scope admin` does on the member.
    authorize_key(member.data_dir, keys_dir(newcomer.data_dir) / "server.key", "admin")
    with newcomer.client(60) as client:
        client.request(
            "grid",
            {
                "op": "join",
                "endpoint": member.tcp(),
                "server_key": _public(member),
            },
        )


def _public(member: Member) -> str:
    import zmq.auth

    return zmq.auth.load_certificate(keys_dir(member.data_dir) / "server.key")[0].decode()


def wait_until(condition: Any, timeout: float, what: str, every: float = 0.01) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise SystemExit(f"{what} did not happen within {timeout} s")
        time.sleep(every)
    return time.monotonic() - started


def completions(member: Member, clients: int, requests: int, tokens: int) -> dict[str, Any]:
    """`clients` threads, each sending `requests` completions to `member`; counts and rate."""

    def client_run(i: int) -> list[tuple[str, int]]:
        done = []
        with member.client() as client:
            for r in range(requests):
                body = {
                    "op": "complete",
                    "model": "smollm2",
                    "prompt": f"{PROMPT} client {i} round {r}:",
                    "max_tokens": tokens,
                    "temperature": 0,
                }
                reply = client.request("llm", body)
                box = (reply.get("grid") or {}).get("box", member.name)
                done.append((box, int(reply["usage"]["completion_tokens"])))
        return done

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = [x for part in pool.map(client_run, range(clients)) for x in part]
    took = time.perf_counter() - started
    boxes = Counter(box for box, _ in results)
    total = sum(n for _, n in results)
    return {
        "tokens_per_s": round(total / took, 2),
        "seconds": round(took, 2),
        "shares": {box: round(n / len(results), 3) for box, n in sorted(boxes.items())},
    }


def add(member: Member, collection: str, vectors: np.ndarray, batch: int = 10_000) -> None:
    """A collection of `vectors` on `member`, added in batches (messages stay small)."""
    with member.client() as client:
        client.request("memory", {"op": "create", "collection": collection, "model": "minilm"})
        for start in range(0, len(vectors), batch):
            part = vectors[start : start + batch]
            texts = [f"{member.name} {start + j}" for j in range(len(part))]
            client.request(
                "memory", {"op": "add", "collection": collection, "vectors": part, "texts": texts}
            )


def p50_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 3)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models-dir", type=Path, help="models dir holding smollm2 and minilm")
    parser.add_argument("--echoes", type=int, default=400)
    parser.add_argument("--docs", type=int, default=20_000, help="vectors per member")
    parser.add_argument("--searches", type=int, default=60)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=3, help="completions per client")
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    models = (args.models_dir or Path.home() / ".cache/aether-box/test-models").resolve()
    have = {m.name for m in ModelStore(models).installed()}
    if not {"smollm2", "minilm"} <= have:
        raise SystemExit(f"{models} needs smollm2 and minilm (`aether-box models pull ...`)")
    load_before = os.getloadavg()
    cores = sorted(os.sched_getaffinity(0))
    result: dict[str, Any] = {}
    root = Path(tempfile.mkdtemp(prefix="abx-bench-grid-"))
    only_minilm = root / "minilm-only"
    only_minilm.mkdir()
    (only_minilm / "minilm").symlink_to(models / "minilm")
    hub = Member(root, "hub", only_minilm, None)
    b = Member(root, "b", models, {cores[0]})
    c = Member(root, "c", models, {cores[-1]})
    members = [hub, b, c]
    try:
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            list(pool.map(Member.start, members))
        print(f"boxes up; b on core {cores[0]}, c on core {cores[-1]}", file=sys.stderr)

        # One box alone, before there is a grid (a warm-up request loads the model first).
        with b.client() as client:
            client.request(
                "llm", {"op": "complete", "model": "smollm2", "prompt": PROMPT, "max_tokens": 4}
            )
        alone = completions(b, args.clients, args.requests, args.tokens)
        print(f"one box alone: {alone}", file=sys.stderr)

        join(b, hub)
        join(c, hub)
        wait_until(
            lambda: (
                all(m["state"] == "up" for m in hub.status()["grid"]["members"])
                and len(hub.status()["grid"]["members"]) == 2
                and all(
                    len([m for m in x.status()["grid"]["members"] if m["state"] == "up"]) == 2
                    for x in (b, c)
                )
            ),
            30,
            "the full mesh",
            every=0.1,
        )
        with c.client() as client:  # c's model loaded too, so neither pays a load in the race
            client.request(
                "llm", {"op": "complete", "model": "smollm2", "prompt": PROMPT, "max_tokens": 4}
            )

        # Forwarding overhead: echo here vs b/echo through the member link.
        local, forwarded = [], []
        with hub.client(30) as client:
            for i in range(args.echoes + 20):
                for service, into in (("echo", local), ("b/echo", forwarded)):
                    t = time.perf_counter()
                    client.request(service, {"i": i})
                    if i >= 20:
                        into.append(time.perf_counter() - t)
        result["echo_local_ms_p50"] = p50_ms(local)
        result["echo_forwarded_ms_p50"] = p50_ms(forwarded)
        result["forward_overhead_ms_p50"] = round(p50_ms(forwarded) - p50_ms(local), 3)
        print(f"echo: {p50_ms(local)} ms here, {p50_ms(forwarded)} ms via b", file=sys.stderr)

        # Grid search over three members vs one local collection of the same total size.
        rng = np.random.default_rng(5)
        vectors = rng.standard_normal((3 * args.docs, DIM), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        for i, member in enumerate(members):
            add(member, "bench", vectors[i * args.docs : (i + 1) * args.docs])
        add(hub, "all", vectors)
        with hub.client() as client:
            queries = rng.standard_normal((args.searches + 5, DIM), dtype=np.float32)
            one, grid = [], []
            for i, q in enumerate(queries):
                for scope, name, into in (("local", "all", one), ("grid", "bench", grid)):
                    t = time.perf_counter()
                    reply = client.request(
                        "memory",
                        {"op": "search", "collection": name, "vector": q, "k": 10, "scope": scope},
                    )
                    if i >= 5:
                        into.append(time.perf_counter() - t)
                    if scope == "grid" and reply["partial"]:
                        raise SystemExit(f"a grid search came back partial: {reply['members']}")
        result["search_local_ms_p50"] = p50_ms(one)
        result["search_grid_ms_p50"] = p50_ms(grid)
        result["grid_search_ratio"] = round(statistics.median(grid) / statistics.median(one), 3)
        print(f"search: {p50_ms(one)} ms one box, {p50_ms(grid)} ms grid", file=sys.stderr)

        # The load, placed by the hub over b and c.
        spread = completions(hub, args.clients, args.requests, args.tokens)
        print(f"grid: {spread}", file=sys.stderr)
        result["load_shares"] = spread["shares"]
        result["aggregate_tokens_per_s"] = spread["tokens_per_s"]
        result["one_box_tokens_per_s"] = alone["tokens_per_s"]
        result["aggregate_ratio"] = round(spread["tokens_per_s"] / alone["tokens_per_s"], 3)

        # Failover: kill b while it serves a request placed by the hub.
        result.update(failover(hub, b, c, args.tokens * 4))
    finally:
        for member in members:
            if member.process is not None and member.process.poll() is None:
                stop_box(member.process)
        shutil.rmtree(root, ignore_errors=True)
    result["machine"] = {
        **machine(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(result))


def failover(hub: Member, b: Member, c: Member, tokens: int) -> dict[str, Any]:
    def llm(member: Member) -> dict[str, Any]:
        return member.status()["services"]["llm"]

    c_before = llm(c)["requests"] + llm(c)["in_flight"]
    answer: dict[str, Any] = {}

    def ask() -> None:
        with hub.client() as client:
            body = {"op": "complete", "model": "smollm2", "prompt": PROMPT, "max_tokens": tokens}
            answer.update(client.request("llm", body))

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(ask)
        wait_until(lambda: llm(b)["in_flight"] > 0 or pending.done(), 60, "the request on b")
        if pending.done():
            pending.result()  # raises what went wrong
            raise SystemExit(f"the request did not go to b: {answer.get('grid')}")
        b.process.kill()
        killed = time.monotonic()
        b.process.wait()
        down = wait_until(
            lambda: {m["name"]: m["state"] for m in hub.status()["grid"]["members"]}["b"] == "down",
            10,
            "the hub seeing b down",
        )
        moved = wait_until(
            lambda: llm(c)["requests"] + llm(c)["in_flight"] > c_before, 10, "c taking it"
        )
        moved = time.monotonic() - killed
        pending.result(timeout=300)
        answered = time.monotonic() - killed
    if (answer.get("grid") or {}).get("reason") != "failover":
        raise SystemExit(f"the request did not fail over: {answer.get('grid')}")
    return {
        "failover_s": round(moved, 3),
        "down_noticed_s": round(down, 3),
        "failover_answered_s": round(answered, 3),
    }


if __name__ == "__main__":
    main()
