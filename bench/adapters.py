"""LoRA adapters: switching cost, decode speed, merge fidelity and the fusion probe's time.

    python bench/adapters.py [--models-dir DIR] [--rounds 9] [--tokens 48] [--threads N]

All on SmolLM2-135M-Instruct Q4_1, in one run, ratios against the base measured alongside:
- `switch_ms`: time to first token of a request whose adapter set differs from the previous
  request's (the scheduler switches the context's set: llama_set_adapters_lora, then the first
  decode under the new set) minus that of a request under the same set as the one before;
  medians over rounds. Every prompt is new (a numbered story), so neither side reuses KV.
- `decode_ratio`: decode tokens/s with one adapter (the trained rank-8 test adapter on
  q/k/v/o/up/down of all 30 layers) over the base's; requests alternate, median of the
  per-round ratios.
- `merge_kl_linear|ties|dare`: two rank-8 adapters merged with weights 0.7 and 0.6 (TIES and
  DARE: density 0.3, rank 16); mean KL(stacked at runtime || merged) in nats/token,
  teacher-forced over the 16 shipped probe prompts.
- `noise_kl`: the noise floor: mean KL between the base read in one batch and token by token.
- `probe_s`: a real box (`aether-box run`): `adapters add` of the trained adapter, then the
  fusion probe of its 16 prompts, as the fusion log records its duration.
The last line is JSON with those keys, the verdict of the probe, and the machine (with load).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _box import machine, start_box, stop_box  # noqa: E402

from aether_box.adapters.lora_file import LoraFile, base_shapes, write_lora  # noqa: E402
from aether_box.adapters.merge import merge  # noqa: E402
from aether_box.adapters.peft import convert_peft  # noqa: E402
from aether_box.adapters.probe import Divergence, probe_prompts  # noqa: E402
from aether_box.client import Client  # noqa: E402
from aether_box.config import Config  # noqa: E402
from aether_box.engines.generation import AdapterRef, GenerationParams  # noqa: E402
from aether_box.engines.generator import LlamaGenerator  # noqa: E402
from aether_box.models.settings import ModelsSettings  # noqa: E402
from aether_box.models.store import ModelStore  # noqa: E402

TRAINED = Path(__file__).resolve().parents[1] / "tests" / "data" / "adapters" / "pirate-peft"


def run(engine: LlamaGenerator, make: Any) -> Any:
    done = threading.Event()
    out: list[Any] = []

    def on_done(item: Any) -> None:
        out.append(item)
        done.set()

    engine.submit(make(on_done))
    done.wait()
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


def random_lora(base: Path, seed: int) -> LoraFile:
    import numpy as np

    arch, shapes = base_shapes(base)
    rng = np.random.default_rng(seed)
    factors = {
        name: (
            rng.standard_normal((8, n_in)).astype(np.float32) * 0.02,
            rng.standard_normal((n_out, 8)).astype(np.float32) * 0.02,
        )
        for name, (n_out, n_in) in shapes.items()
        if name.startswith("blk.") and (".attn_q." in name or ".attn_v." in name)
    }
    return LoraFile(arch, 16.0, factors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    models_dir = (args.models_dir or Config().get(ModelsSettings).dir).resolve()
    base = ModelStore(models_dir).path("smollm2")
    work = Path(tempfile.mkdtemp(prefix="abx-bench-adapters-"))
    loads = [os.getloadavg()[0]]

    trained = work / "trained.gguf"
    write_lora(trained, convert_peft(TRAINED, base))
    sha = {"trained": "t" * 64, "other": "o" * 64}
    other = work / "other.gguf"
    write_lora(other, random_lora(base, 5))
    one = [AdapterRef(str(trained), sha["trained"], 1.0)]
    two = [AdapterRef(str(other), sha["other"], 1.0)]

    engine = LlamaGenerator.load(
        base, n_ctx=512, n_threads=args.threads, n_gpu_layers=0, parallel=1
    )
    result: dict[str, Any] = {}
    try:
        params = GenerationParams(max_tokens=args.tokens, temperature=0.0)
        story = iter(range(10**6))

        def ask(adapters: list[AdapterRef], tokens: int = args.tokens) -> Any:
            prompt = engine.prompt_tokens(f"Story {next(story)}: once upon a time, a sailor")
            p = GenerationParams(max_tokens=tokens, temperature=0.0)
            return run(engine, lambda d: engine.prepare(prompt, p, None, d, "b", None, adapters))

        ask([]), ask(one), ask(two)  # warm up: each adapter loaded once
        same, switched = [], []
        for _ in range(args.rounds):
            ask(one, 2)
            same.append(ask(one, 2).ttft_s)  # same set as before
            switched.append(ask(two, 2).ttft_s)  # another set than before
        result["switch_ms"] = round(
            (statistics.median(switched) - statistics.median(same)) * 1000, 2
        )
        result["ttft_same_ms"] = round(statistics.median(same) * 1000, 1)
        loads.append(os.getloadavg()[0])

        ratios, base_rates, adapted_rates = [], [], []
        for i in range(args.rounds):
            order = [[], one] if i % 2 == 0 else [one, []]
            rates = {}
            for adapters in order:
                rates[bool(adapters)] = ask(adapters).tokens_per_s
            base_rates.append(rates[False])
            adapted_rates.append(rates[True])
            ratios.append(rates[True] / rates[False])
        result["decode_ratio"] = round(statistics.median(ratios), 3)
        result["base_tokens_per_s"] = round(statistics.median(base_rates), 1)
        result["adapter_tokens_per_s"] = round(statistics.median(adapted_rates), 1)
        loads.append(os.getloadavg()[0])
        del params

        # Merges: KL(stacked at runtime || merged) over the probe prompts.
        a, b = random_lora(base, 1), random_lora(base, 2)
        texts = probe_prompts()
        token_lists = [engine.prompt_tokens(t) for t in texts]
        ref_a = AdapterRef(str(work / "a.gguf"), "a" * 64, 0.7)
        ref_b = AdapterRef(str(work / "b.gguf"), "b" * 64, 0.6)
        write_lora(Path(ref_a.path), a)
        write_lora(Path(ref_b.path), b)
        stacked = [
            run(engine, lambda d, t=t: engine.prepare_score(t, [ref_a, ref_b], d))
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
                got = run(engine, lambda d, t=tokens, r=ref: engine.prepare_score(t, [r], d))
                divergence.add(want, got)
            result[f"merge_kl_{method}"] = round(divergence.summary()["kl_mean"], 6)
            result[f"merge_{method}_energy"] = round(report.energy_mean, 4)
            result[f"merge_{method}_s"] = round(merge_s, 2)

        # The noise floor: the base read in one batch against token by token.
        noise = Divergence()
        for tokens in token_lists[:4]:
            batched = run(engine, lambda d, t=tokens: engine.prepare_score(t, [], d))
            singles = [
                run(engine, lambda d, t=tokens[: i + 1]: engine.prepare_score(t, [], d))[-1]
                for i in range(len(tokens))
            ]
            import numpy as np

            noise.add(batched, np.stack(singles))
        result["noise_kl"] = round(noise.summary()["kl_mean"], 6)
        loads.append(os.getloadavg()[0])
    finally:
        engine.close()

    data_dir = work / "box"
    box, endpoint = start_box(data_dir, f'models.dir="{models_dir}"')
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
