"""LoRA adapters: switching cost, decode speed, merge fidelity and the fusion probe's time.

How to run it (about 3-5 minutes on 2 idle cores; run it on a quiet machine, the figures
are ratios of alternated runs but a loaded machine still widens them):

    .venv/bin/python bench/adapters.py --models-dir ~/.cache/aether-box/test-models
    # options: [--rounds 9] [--tokens 48] [--threads N] [--prompt-tokens 32]

It needs the test models (SmolLM2-135M-Instruct Q4_1; tests/conftest.py fetches them) and
prints progress on stderr; the LAST line of stdout is a JSON object.

All on SmolLM2-135M-Instruct Q4_1, in one run, ratios against the base measured alongside:
- `switch_ms`: time to first token of a request under adapter B (the trained test adapter)
  right after one under adapter A (a random rank-8 q/v adapter): the scheduler switches the
  context's set with llama_set_adapters_lora, and llama.cpp then reserves its compute graphs
  anew at the next decode; minus the same right after a request under B itself (no switch).
  Both arms read prompts of the same length (--prompt-tokens), each starting with another
  token than the one before, so neither finds any of its prompt cached; the arms alternate;
  medians over rounds. `switch_cpu_ms` is the same difference in CPU time of the scheduler's
  thread, which a busy machine's preemption does not inflate. `switch_baked_ms` (and
  `_cpu_ms`): the same for a base request right after one served by a baked copy (see below)
  against right after a base request.
- `decode_ratio`: decode tokens/s with one adapter over the base's, as the box serves a hot
  adapter set: from its baked copy (engines.bake_after requests in a row under one set bake
  it: the deltas added into a copy of the weights, stored as engines.bake_type, q8_0 by
  default). The adapter is a realistic one: rank 16 on attention q and v of all 30 layers
  (PEFT's default targets; random values, which do not change the cost).
  `decode_ratio_runtime`: the same adapter applied at runtime (llama.cpp's extra graph nodes,
  what a set gets before it is hot). `decode_ratio_trained` / `decode_ratio_trained_runtime`:
  the same for the trained test adapter (rank 8 on q/k/v/o/up/down: seven targets, 840 more
  graph nodes per token at runtime). Base, runtime and baked requests alternate in one run;
  median of the per-round ratios.
- `bake_s`, `bake_mb` (memory of the baked copy: weights, KV cache, compute buffers),
  `bake_file_mb`, `bake_rounding_to_delta` (RMS of the stored weights' rounding over the RMS
  of the adapter's change), `bake_kl` (mean KL(runtime adapter || baked copy), nats/token,
  teacher-forced over the probe prompts: the baked copy's whole error, rounding included)
  against `bake_kl_base` (KL(base || runtime adapter): the adapter's own effect); the
  `_trained` keys the same for the trained adapter.
- `merge_kl_linear|ties|dare`: two rank-8 adapters merged with weights 0.7 and 0.6 (TIES and
  DARE: density 0.3, rank 16); mean KL(stacked at runtime || merged) in nats/token,
  teacher-forced over the 16 shipped probe prompts.
- `noise_kl`: mean KL between the base reading a text in one batch and reading each of its
  prefixes anew (the last row of each); 0.0 on the CPU: the logits are the same bit for bit.
  (The 0.0009 nats/token floor the verdicts are set against is batched vs token by token
  through the KV cache, measured once on this model; this bench does not repeat it.)
- `probe_s`: a real box (`aether-box run`): `adapters add` of the trained adapter, then the
  fusion probe of its 16 prompts, as the fusion log records its duration.
The last line is JSON with those keys, the verdict of the probe, and the machine (with load).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _box import TOPICS, machine, start_box, stop_box  # noqa: E402

from aether_box.adapters.lora_file import LoraFile, base_shapes, write_lora  # noqa: E402
from aether_box.adapters.merge import merge  # noqa: E402
from aether_box.adapters.peft import convert_peft  # noqa: E402
from aether_box.adapters.probe import Divergence, probe_prompts  # noqa: E402
from aether_box.client import Client  # noqa: E402
from aether_box.config import Config  # noqa: E402
from aether_box.engines.baked import BakePolicy  # noqa: E402
from aether_box.engines.generation import AdapterRef, GenerationParams, adapter_key  # noqa: E402
from aether_box.engines.generator import LlamaGenerator  # noqa: E402
from aether_box.models.settings import ModelsSettings  # noqa: E402
from aether_box.models.store import ModelStore  # noqa: E402
from aether_box.testing import run_job  # noqa: E402

TRAINED = Path(__file__).resolve().parents[1] / "tests" / "data" / "adapters" / "pirate-peft"


def random_lora(base: Path, seed: int, rank: int = 8) -> LoraFile:
    """A random adapter of `rank` on attention q and v of every layer (PEFT's default)."""
    import numpy as np

    arch, shapes = base_shapes(base)
    rng = np.random.default_rng(seed)
    factors = {
        name: (
            rng.standard_normal((rank, n_in)).astype(np.float32) * 0.02,
            rng.standard_normal((n_out, rank)).astype(np.float32) * 0.02,
        )
        for name, (n_out, n_in) in shapes.items()
        if name.startswith("blk.") and (".attn_q." in name or ".attn_v." in name)
    }
    return LoraFile(arch, 2.0 * rank, factors)


def distinct_prompts(engine: LlamaGenerator, length: int) -> Iterator[list[int]]:
    """Prompts of exactly `length` tokens, each starting with another token than the one
    before: a request finds none of its prompt in the KV cache the previous one left."""
    firsts = list(dict.fromkeys(engine.prompt_tokens(" ".join(TOPICS))))
    body = engine.prompt_tokens(" once upon a time, " + "a sailor sailed the sea, " * 40)
    for i in itertools.count():
        yield [firsts[i % len(firsts)], *body[: length - 1]]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models-dir", type=Path)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--noise-prompts", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    # llama.cpp threads, here and in the box. On a machine other work keeps busy, fewer threads
    # than cores is far faster: measured at load 16 on 2 cores, 1 thread decodes 15-30x faster
    # than 2, whose barrier waits for a thread the OS has descheduled.
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    models_dir = (args.models_dir or Config().get(ModelsSettings).dir).resolve()
    base = ModelStore(models_dir).path("smollm2")
    work = Path(tempfile.mkdtemp(prefix="abx-bench-adapters-"))
    loads = [os.getloadavg()[0]]

    trained_path = work / "trained.gguf"
    write_lora(trained_path, convert_peft(TRAINED, base))
    write_lora(work / "qv.gguf", random_lora(base, 7, rank=16))
    write_lora(work / "other.gguf", random_lora(base, 5))
    trained = [AdapterRef(str(trained_path), "t" * 64, 1.0)]
    qv = [AdapterRef(str(work / "qv.gguf"), "q" * 64, 1.0)]
    other = [AdapterRef(str(work / "other.gguf"), "o" * 64, 1.0)]

    engine = LlamaGenerator.load(
        base,
        n_ctx=512,
        n_threads=args.threads,
        n_gpu_layers=0,
        parallel=1,
        name="bench",
        # No baking until the runtime-only figures (switching) are taken; see below.
        bake=BakePolicy(work / "baked", after=0, keep="q8_0", limit=2),
    )
    cpu_clock = time.pthread_getcpuclockid(
        next(t for t in threading.enumerate() if t.name == "llama-bench").ident or 0
    )
    result: dict[str, Any] = {}
    try:
        prompts = iter(distinct_prompts(engine, args.prompt_tokens))

        def ask(adapters: list[AdapterRef], tokens: int) -> tuple[Any, float]:
            """One request on a prompt no earlier one shares a token of (nothing cached),
            and the CPU time the scheduler's thread spent on it."""
            prompt = next(prompts)
            p = GenerationParams(max_tokens=tokens, temperature=0.0)
            cpu = time.clock_gettime(cpu_clock)
            out = run_job(engine, lambda d: engine.prepare(prompt, p, None, d, "b", None, adapters))
            return out, time.clock_gettime(cpu_clock) - cpu

        for adapters in ([], trained, qv, other):  # warm up: each adapter loaded once
            ask(adapters, 2)
        # Switching: the TTFT of a request under `trained` right after one under `other`
        # (the scheduler switches the set: llama_set_adapters_lora, and llama.cpp reserves
        # its compute graphs anew at the next decode) minus that right after one under
        # `trained` itself (no switch); same prompt length, nothing cached in either arm.
        same: list[float] = []
        switched: list[float] = []
        same_cpu: list[float] = []
        switched_cpu: list[float] = []
        for i in range(args.rounds):
            for arm in ("same", "switch") if i % 2 == 0 else ("switch", "same"):
                ask(trained if arm == "same" else other, 1)
                out, cpu = ask(trained, 1)
                (same if arm == "same" else switched).append(out.ttft_s)
                (same_cpu if arm == "same" else switched_cpu).append(cpu)
        print(f"switching measured, load {os.getloadavg()[0]:.1f}", file=sys.stderr)
        result["switch_ms"] = round(
            (statistics.median(switched) - statistics.median(same)) * 1000, 2
        )
        result["switch_cpu_ms"] = round(
            (statistics.median(switched_cpu) - statistics.median(same_cpu)) * 1000, 2
        )
        result["ttft_same_ms"] = round(statistics.median(same) * 1000, 1)
        loads.append(os.getloadavg()[0])

        # Baking: two requests in a row under a set make it hot; its copy is then baked
        # and loaded in the background. The runtime arms use the same files under other
        # content keys (the bench's keys are made up), which never run twice in a row, so
        # they stay on runtime adapters.
        texts = probe_prompts()
        token_lists = [engine.prompt_tokens(t) for t in texts]
        assert engine.baked is not None
        engine.baked.policy = dataclasses.replace(engine.baked.policy, after=2)
        runtime_of = {}
        for key, adapters in (("", qv), ("_trained", trained)):
            started = time.perf_counter()
            ask(adapters, 1)
            ask(adapters, 1)
            if not engine.baked.wait(adapter_key(adapters), 600):
                raise SystemExit(f"baking {key or 'qv'} failed: {engine.baked.stats()}")
            copy = engine.baked.ready(adapter_key(adapters))
            assert copy is not None
            stats = next(c for c in engine.baked.stats() if c["adapters"] == adapter_key(adapters))
            result[f"bake{key}_s"] = round(time.perf_counter() - started, 2)
            result[f"bake{key}_mb"] = stats["memory_mb"]
            result[f"bake{key}_file_mb"] = stats["file_mb"]
            result[f"bake{key}_rounding_to_delta"] = stats["rounding_to_delta"]
            runtime = [AdapterRef(a.path, "r" + a.sha256[1:], a.scale) for a in adapters]
            runtime_of[key] = runtime
            to_copy, to_base = Divergence(), Divergence()
            for tokens in token_lists:
                want = run_job(engine, lambda d, t=tokens, r=runtime: engine.prepare_score(t, r, d))
                got = run_job(copy, lambda d, t=tokens, c=copy: c.prepare_score(t, [], d))
                plain = run_job(engine, lambda d, t=tokens: engine.prepare_score(t, [], d))
                to_copy.add(want, got)
                to_base.add(plain, want)
            result[f"bake{key}_kl"] = round(to_copy.summary()["kl_mean"], 6)
            result[f"bake{key}_kl_base"] = round(to_base.summary()["kl_mean"], 6)
            print(f"baked{key} in {result[f'bake{key}_s']} s", file=sys.stderr)

        # Switching between the base and a baked copy (two contexts: nothing to switch).
        same, switched, same_cpu, switched_cpu = [], [], [], []
        for i in range(args.rounds):
            for arm in ("same", "switch") if i % 2 == 0 else ("switch", "same"):
                ask(qv if arm == "switch" else [], 1)
                out, cpu = ask([], 1)
                (same if arm == "same" else switched).append(out.ttft_s)
                (same_cpu if arm == "same" else switched_cpu).append(cpu)
        result["switch_baked_ms"] = round(
            (statistics.median(switched) - statistics.median(same)) * 1000, 2
        )
        result["switch_baked_cpu_ms"] = round(
            (statistics.median(switched_cpu) - statistics.median(same_cpu)) * 1000, 2
        )

        # Decode: base, runtime-adapter and baked requests alternate; medians of per-round
        # ratios. The runtime arm sits between the others: never twice in a row.
        for key, adapters in (("decode_ratio", qv), ("decode_ratio_trained", trained)):
            runtime = runtime_of["" if key == "decode_ratio" else "_trained"]
            arms = {"base": [], "runtime": runtime, "baked": adapters}
            rates: dict[str, list[float]] = {arm: [] for arm in arms}
            for i in range(args.rounds):
                order = ("base", "runtime", "baked") if i % 2 == 0 else ("baked", "runtime", "base")
                for arm in order:
                    out, _ = ask(arms[arm], args.tokens)
                    rates[arm].append(out.tokens_per_s)
            print(f"{key} measured, load {os.getloadavg()[0]:.1f}", file=sys.stderr)
            pairs = list(zip(rates["base"], rates["runtime"], rates["baked"], strict=True))
            result[key] = round(statistics.median(k / b for b, _, k in pairs), 3)
            result[f"{key}_runtime"] = round(statistics.median(r / b for b, r, _ in pairs), 3)
            result[f"{key}_base_tokens_per_s"] = round(statistics.median(rates["base"]), 1)
            result[f"{key}_baked_tokens_per_s"] = round(statistics.median(rates["baked"]), 1)
            result[f"{key}_runtime_tokens_per_s"] = round(statistics.median(rates["runtime"]), 1)
            loads.append(os.getloadavg()[0])

        # Merges: KL(stacked at runtime || merged) over the probe prompts.
        a, b = random_lora(base, 1), random_lora(base, 2)
        ref_a = AdapterRef(str(work / "a.gguf"), "a" * 64, 0.7)
        ref_b = AdapterRef(str(work / "b.gguf"), "b" * 64, 0.6)
        write_lora(Path(ref_a.path), a)
        write_lora(Path(ref_b.path), b)
        stacked = [
            run_job(engine, lambda d, t=t: engine.prepare_score(t, [ref_a, ref_b], d))
            for t in token_lists
        ]
        for method in ("linear", "ties", "dare"):
            started = time.perf_counter()
            report = merge([(a, 0.7), (b, 0.6)], method, density=0.3, rank=16)
            merge_s = time.perf_counter() - started
            path = work / f"{method}.gguf"
            write_lora(path, report.lora)
            ref = AdapterRef(str(path), method * 10, 1.0)
            divergence = Divergence()
            for tokens, want in zip(token_lists, stacked, strict=True):
                got = run_job(engine, lambda d, t=tokens, r=ref: engine.prepare_score(t, [r], d))
                divergence.add(want, got)
            print(f"merge {method} measured", file=sys.stderr)
            result[f"merge_kl_{method}"] = round(divergence.summary()["kl_mean"], 6)
            result[f"merge_{method}_energy"] = round(report.energy_mean, 4)
            result[f"merge_{method}_s"] = round(merge_s, 2)

        # The base read in one batch against each prefix read anew.
        noise = Divergence()
        for tokens in token_lists[: args.noise_prompts]:
            batched = run_job(engine, lambda d, t=tokens: engine.prepare_score(t, [], d))
            singles = [
                run_job(engine, lambda d, t=tokens[: i + 1]: engine.prepare_score(t, [], d))[-1]
                for i in range(len(tokens))
            ]
            import numpy as np

            noise.add(batched, np.stack(singles))
        result["noise_kl"] = round(noise.summary()["kl_mean"], 6)
        loads.append(os.getloadavg()[0])
    finally:
        engine.close()

    data_dir = work / "box"
    box, endpoint = start_box(
        data_dir, f'models.dir="{models_dir}"', f"engines.n_threads={args.threads}"
    )
    try:
        with Client(endpoint, data_dir=data_dir, timeout=600) as client:
            client.request(
                "adapters",
                {"op": "add", "path": str(TRAINED), "base": "smollm2", "name": "pirate"},
                timeout=600,
            )
            entry = client.request("adapters", {"op": "wait", "name": "pirate"}, timeout=600)
        result["probe_s"] = entry["seconds"]
        result["probe_verdict"] = entry["verdict"]
        result["probe_kl_mean"] = round(entry["kl_mean"], 4)
        result["probe_top1"] = round(entry["top1"], 4)
        result["probe_tokens"] = entry["tokens"]
    finally:
        stop_box(box)
    loads.append(os.getloadavg()[0])
    result["machine"] = {**machine(), "loadavg_1m_during": [round(x, 2) for x in loads]}
    result["threads"] = args.threads
    print(json.dumps(result))


if __name__ == "__main__":
    main()
