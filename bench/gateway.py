"""The HTTP gateway against the bus it translates to, side by side in one run.

    python bench/gateway.py [--models-dir DIR] [--tokens 96] [--rounds 9] [--embeds 41]

One `aether-box run` process with the gateway on an ephemeral loopback port. Each path is a
lean client in this process, on one kept-alive connection:
- bus:  the `llm` op `complete`, streamed (one PARTIAL a token, or the pieces queued meanwhile); `embed` with 4 short texts.
- http: `POST /v1/completions` streamed as SSE (with `stream_options.include_usage`, for the
        token count); `POST /v1/embeddings` with the same texts, base64 as the `openai`
        client asks by default (floats too, as `embed_float_delta_ms`).
Each round runs both paths back to back in alternating order, greedy, each on a prompt of its
own (path and round first, so neither finds the other's prompt in the KV cache). tokens/s =
(completion tokens - 1) / (last piece - first), on `--tokens` tokens; each line also shows
the engine's own rate for that generation (a slow round is the machine's when they agree).
TTFT (from the call to the first piece of text) is measured apart, on short prompts and two
tokens, `--ttft-rounds` times: a long prompt's evaluation swings by more than the gateway's
share on a shared machine.

The last line is JSON: `ttft_delta_ms` (median over TTFT rounds of HTTP minus bus), `stream_ratio`
(median over rounds of HTTP tokens/s over the bus's), `embed_delta_ms` (median HTTP latency
minus median bus latency), the absolute figures and the machine. Targets: within 5 ms, at
least 0.95, within 2 ms.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _box import TOPICS, machine, start_box, stop_box, stream_completion  # noqa: E402

from aether_box.client import Client  # noqa: E402
from aether_box.config import Config  # noqa: E402
from aether_box.models.settings import ModelsSettings  # noqa: E402
from aether_box.models.store import ModelStore  # noqa: E402

GEN_MODEL = "smollm2"
EMBED_MODEL = "minilm"
TEXTS = ["a cat sat on the mat", "stock markets fell", "how to bake bread", "rain tomorrow"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models-dir", type=Path, help="models dir (default: the box's)")
    parser.add_argument("--tokens", type=int, default=96, help="tokens generated per call")
    parser.add_argument("--rounds", type=int, default=9, help="streamed generation rounds")
    parser.add_argument("--ttft-rounds", type=int, default=41, help="time-to-first-token rounds")
    parser.add_argument("--embeds", type=int, default=41, help="embedding requests per path")
    args = parser.parse_args()

    models_dir = (args.models_dir or Config().get(ModelsSettings).dir).resolve()
    installed = {m.name for m in ModelStore(models_dir).installed()}
    missing = {GEN_MODEL, EMBED_MODEL} - installed
    if missing:
        raise SystemExit(
            f"{sorted(missing)} not in {models_dir}; run `aether-box models pull` or pass "
            "--models-dir"
        )
    data_dir = Path(tempfile.mkdtemp(prefix="abx-bench-"))
    box, endpoint = start_box(data_dir, f'models.dir="{models_dir}"', "http.address=127.0.0.1:0")
    result: dict[str, Any] = {}
    try:
        with Client(endpoint, data_dir=data_dir, timeout=300) as client:
            url = urlsplit(client.status()["http"]["url"])
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=300)
            result.update(bench_generation(client, conn, args))
            result.update(bench_embeddings(client, conn, args))
            conn.close()
    finally:
        stop_box(box)
        shutil.rmtree(data_dir, ignore_errors=True)
    result["machine"] = machine()
    print(json.dumps(result))


# -- generation --------------------------------------------------------------------------


def prompt(topic: str) -> str:
    return f"{topic}. Write a long story about {topic}.\n\nOnce upon a time,"


def gen_bus(client: Client, text: str, tokens: int) -> tuple[float, float, int]:
    started, times, final = stream_completion(client, GEN_MODEL, text, tokens)
    return _figures(started, times, final["usage"]["completion_tokens"])


def gen_http(conn: http.client.HTTPConnection, text: str, tokens: int) -> tuple[float, float, int]:
    body = {
        "model": GEN_MODEL,
        "prompt": text,
        "max_tokens": tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    times: list[float] = []
    count = 0
    started = time.perf_counter()
    conn.request("POST", "/v1/completions", orjson.dumps(body), _JSON)
    response = conn.getresponse()
    assert response.status == 200, response.read()
    buffer = b""
    while True:
        data = response.read1(65536)
        if not data:
            break
        buffer += data
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            payload = event.removeprefix(b"data: ")
            if payload == b"[DONE]":
                continue
            chunk = orjson.loads(payload)
            if chunk["choices"] and chunk["choices"][0]["text"]:
                times.append(time.perf_counter())
            if chunk.get("usage"):
                count = chunk["usage"]["completion_tokens"]
    return _figures(started, times, count)


def _engine_rate(client: Client) -> float | None:
    loaded = client.status()["models"]["loaded"]
    return next((m.get("tokens_per_s") for m in loaded if m.get("name") == GEN_MODEL), None)


def _figures(started: float, times: list[float], count: int) -> tuple[float, float, int]:
    """(TTFT s, decode tokens/s, tokens)."""
    if not times:
        raise SystemExit("a generation produced no text; rerun, or use another prompt")
    span = times[-1] - times[0]
    return times[0] - started, (count - 1) / span if count > 1 and span > 0 else 0.0, count


def bench_generation(client: Client, conn: http.client.HTTPConnection, args: Any) -> dict[str, Any]:
    paths = {
        "bus": lambda p: gen_bus(client, p, args.tokens),
        "http": lambda p: gen_http(conn, p, args.tokens),
    }
    for name, run in paths.items():  # warm-up: loads the model, opens the connection
        run(prompt(f"warm-up {name}"))
    ttft_deltas: list[float] = []
    ratios: list[float] = []
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
    for i in range(args.rounds):
        order = ["bus", "http"] if i % 2 == 0 else ["http", "bus"]
        runs = {}
        for name in order:
            runs[name] = paths[name](prompt(f"({name} {i + 1}) {TOPICS[i % len(TOPICS)]}"))
            # The engine's own rate for that generation: a slow round is the machine's, not
            # the path's, when the two agree.
            engine = _engine_rate(client)
            ttft, rate, count = runs[name]
            figures[name].append((ttft, rate))
            print(
                f"round {i + 1} {name:>4}: {count} tokens, {rate:6.1f} tok/s "
                f"(engine {engine} tok/s), TTFT {ttft * 1000:6.1f} ms",
                flush=True,
            )
        ratios.append(runs["http"][1] / runs["bus"][1])
    # TTFT apart, on short prompts and two tokens: a long prompt's evaluation time swings by
    # more than the figure measured when other work shares the cores.
    ttfts: dict[str, list[float]] = {name: [] for name in paths}
    for i in range(args.ttft_rounds):
        order = ["bus", "http"] if i % 2 == 0 else ["http", "bus"]
        for name in order:
            text = f"({name} {i}) {TOPICS[i % len(TOPICS)]}:"
            ttfts[name].append(
                (gen_bus(client, text, 2) if name == "bus" else gen_http(conn, text, 2))[0]
            )
        ttft_deltas.append(ttfts["http"][-1] - ttfts["bus"][-1])
    print(
        "TTFT ms (median, short prompts): "
        + ", ".join(f"{k} {statistics.median(v) * 1000:.2f}" for k, v in ttfts.items()),
        flush=True,
    )
    return {
        "ttft_delta_ms": round(statistics.median(ttft_deltas) * 1000, 2),
        "ttft_short_ms": {k: round(statistics.median(v) * 1000, 2) for k, v in ttfts.items()},
        "stream_ratio": round(statistics.median(ratios), 3),
        "ttft_long_ms": {
            k: round(statistics.median(t for t, _ in v) * 1000, 1) for k, v in figures.items()
        },
        "tokens_per_s": {
            k: round(statistics.median(r for _, r in v), 1) for k, v in figures.items()
        },
        "stream_ratio_rounds": [round(r, 3) for r in ratios],
        "gen_tokens": args.tokens,
    }


# -- embeddings --------------------------------------------------------------------------

_JSON = {"Content-Type": "application/json"}


def embed_bus(client: Client) -> float:
    started = time.perf_counter()
    reply = client.request("embed", {"op": "embed", "model": EMBED_MODEL, "texts": TEXTS})
    assert len(reply["vectors"]) == len(TEXTS)
    return time.perf_counter() - started


def embed_http(conn: http.client.HTTPConnection, encoding: str) -> float:
    body = {"model": EMBED_MODEL, "input": TEXTS, "encoding_format": encoding}
    started = time.perf_counter()
    conn.request("POST", "/v1/embeddings", orjson.dumps(body), _JSON)
    response = conn.getresponse()
    reply = orjson.loads(response.read())
    assert len(reply["data"]) == len(TEXTS), reply
    return time.perf_counter() - started


def bench_embeddings(client: Client, conn: http.client.HTTPConnection, args: Any) -> dict[str, Any]:
    paths = {
        "bus": lambda: embed_bus(client),
        "http": lambda: embed_http(conn, "base64"),
        "http_float": lambda: embed_http(conn, "float"),
    }
    for run in paths.values():  # warm-up: loads the encoder
        run()
    times: dict[str, list[float]] = {name: [] for name in paths}
    names = list(paths)
    for i in range(args.embeds):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            times[name].append(paths[name]())
    median = {k: statistics.median(v) * 1000 for k, v in times.items()}
    print("embed ms (median): " + ", ".join(f"{k} {v:.2f}" for k, v in median.items()))
    return {
        "embed_delta_ms": round(median["http"] - median["bus"], 2),
        "embed_float_delta_ms": round(median["http_float"] - median["bus"], 2),
        "embed_ms": {k: round(v, 2) for k, v in median.items()},
        "embed_texts": len(TEXTS),
    }


if __name__ == "__main__":
    main()
