"""Adapter files: the checks before one is kept, PEFT conversion, and merge arithmetic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fixtures_adapters import random_lora, write_random

from aether_box.adapters.lora_file import (
    AdapterRejected,
    LoraFile,
    check_against_base,
    read_lora,
    write_lora,
)
from aether_box.adapters.merge import merge
from aether_box.adapters.peft import convert_peft, rope_permute


def test_a_random_adapter_round_trips_and_passes_the_checks(tmp_path, smollm2_path):
    path = write_random(tmp_path / "r.gguf", smollm2_path, rank=4)
    lora = read_lora(path)
    check_against_base(lora, smollm2_path, "smollm2")
    original = random_lora(smollm2_path, rank=4)
    assert lora.architecture == "llama" and lora.rank == 4 and lora.alpha == 16.0
    assert lora.factors.keys() == original.factors.keys() and len(lora.factors) == 60
    name = "blk.7.attn_v.weight"
    assert np.array_equal(lora.factors[name][0], original.factors[name][0])
    assert lora.factors[name][1].shape == (192, 4)


@pytest.mark.parametrize(
    ("spoil", "check"),
    [
        ("arch", "architecture"),
        ("shape", "tensor shapes"),
        ("nan", "finite values"),
        ("name", "tensor names"),
    ],
)
def test_a_mismatched_adapter_is_rejected_naming_the_check(tmp_path, smollm2_path, spoil, check):
    lora = random_lora(smollm2_path, rank=2, targets=("attn_k",))
    name = "blk.0.attn_k.weight"
    a, b = lora.factors[name]
    if spoil == "arch":
        lora.architecture = "qwen2"
    elif spoil == "shape":
        lora.factors[name] = (a, np.zeros((576, 2), np.float32))  # k is (192, 576)
    elif spoil == "nan":
        a[0, 0] = np.nan
    else:
        lora.factors["blk.99.attn_k.weight"] = (a, b)
    write_lora(tmp_path / "bad.gguf", lora)
    with pytest.raises(AdapterRejected) as caught:
        check_against_base(read_lora(tmp_path / "bad.gguf"), smollm2_path, "smollm2")
    assert caught.value.check == check and check in str(caught.value)


def test_a_model_file_or_garbage_is_not_an_adapter(tmp_path, smollm2_path):
    with pytest.raises(AdapterRejected, match="general.type"):
        read_lora(smollm2_path)
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(AdapterRejected, match="'gguf'"):
        read_lora(tmp_path / "junk.gguf")


def test_rope_permutation_interleaves_the_halves_of_each_head():
    # 2 heads of 4 rows: Hugging Face [0 1 | 2 3] per head -> llama.cpp [0 2 1 3].
    rows = np.arange(8, dtype=np.float32).reshape(8, 1)
    assert rope_permute(rows, 2).ravel().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_peft_conversion_maps_names_and_permutes_q_and_k_outputs(tmp_path, smollm2_path):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(1)
    a_q, b_q = rng.standard_normal((4, 576)), rng.standard_normal((576, 4))
    a_k, b_k = rng.standard_normal((4, 576)), rng.standard_normal((192, 4))
    a_d, b_d = rng.standard_normal((4, 1536)), rng.standard_normal((576, 4))
    prefix = "base_model.model.model.layers.3"
    tensors = {
        f"{prefix}.self_attn.q_proj.lora_A.weight": a_q, f"{prefix}.self_attn.q_proj.lora_B.weight": b_q,
        f"{prefix}.self_attn.k_proj.lora_A.weight": a_k, f"{prefix}.self_attn.k_proj.lora_B.weight": b_k,
        f"{prefix}.mlp.down_proj.lora_A.weight": a_d, f"{prefix}.mlp.down_proj.lora_B.weight": b_d,
    }  # fmt: skip
    save_file(
        {k: v.astype(np.float32) for k, v in tensors.items()},
        tmp_path / "adapter_model.safetensors",
    )
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8}
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    lora = convert_peft(tmp_path, smollm2_path)
    check_against_base(lora, smollm2_path, "smollm2")
    assert lora.alpha == 8.0 and sorted(lora.factors) == [
        "blk.3.attn_k.weight", "blk.3.attn_q.weight", "blk.3.ffn_down.weight",
    ]  # fmt: skip
    q_a, q_b = lora.factors["blk.3.attn_q.weight"]
    assert np.allclose(q_a, a_q) and np.allclose(q_b, rope_permute(b_q.astype(np.float32), 9))
    assert not np.allclose(q_b, b_q)
    assert np.allclose(
        lora.factors["blk.3.attn_k.weight"][1], rope_permute(b_k.astype(np.float32), 3)
    )
    assert np.allclose(lora.factors["blk.3.ffn_down.weight"][1], b_d)  # not rotated


def test_peft_directory_without_weights_is_rejected(tmp_path, smollm2_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(AdapterRejected, match="adapter_model.safetensors"):
        convert_peft(tmp_path, smollm2_path)


def _two(smollm2_path: Path) -> tuple[LoraFile, LoraFile]:
    one = random_lora(smollm2_path, rank=4, seed=1, targets=("attn_q",))
    two = random_lora(smollm2_path, rank=6, seed=2, targets=("attn_q", "attn_v"), alpha=6.0)
    return one, two


def test_linear_merge_is_exactly_the_weighted_sum_of_the_deltas(smollm2_path):
    one, two = _two(smollm2_path)
    merged = merge([(one, 0.7), (two, 0.6)], "linear").lora
    for name in ("blk.0.attn_q.weight", "blk.5.attn_q.weight"):
        want = 0.7 * one.delta(name) + 0.6 * two.delta(name)
        assert np.allclose(merged.delta(name), want, atol=1e-6)
        assert merged.factors[name][0].shape[0] == 10  # ranks add up
    assert np.allclose(merged.delta("blk.3.attn_v.weight"), 0.6 * two.delta("blk.3.attn_v.weight"))
    # Averaging the factors element-wise is another adapter: the reason it is never done.
    a = 0.5 * (one.factors["blk.0.attn_q.weight"][0] + two.factors["blk.0.attn_q.weight"][0][:4])
    assert not np.allclose(
        merged.delta("blk.0.attn_q.weight"), two.factors["blk.0.attn_q.weight"][1][:, :4] @ a
    )


@pytest.mark.parametrize("method", ["ties", "dare"])
def test_ties_and_dare_come_back_at_the_asked_rank_with_their_energy(smollm2_path, method):
    one, two = _two(smollm2_path)
    report = merge([(one, 0.7), (two, 0.6)], method, density=0.3, rank=8)
    name = "blk.2.attn_q.weight"
    assert report.lora.factors[name][0].shape == (8, 576)
    assert report.lora.factors[name][1].shape == (576, 8)
    assert 0.0 < report.energy_min <= report.energy_mean < 1.0
    # The merged delta points the same way as the weighted sum it approximates.
    want = (0.7 * one.delta(name) + 0.6 * two.delta(name)).ravel()
    got = report.lora.delta(name).ravel()
    assert float(want @ got / np.linalg.norm(want) / np.linalg.norm(got)) > 0.3


def test_router_routes_may_name_default_adapters():
    from aether_box.errors import ConfigError
    from aether_box.router.settings import RouterSettings

    good = {"general": {"model": "smollm2", "adapters": [{"name": "pirate", "scale": 0.5}]}}
    RouterSettings(routes=good).resolve(Path("."))
    bad = {"general": {"model": "smollm2", "adapters": ["pirate"]}}
    with pytest.raises(ConfigError, match="adapters must be a list"):
        RouterSettings(routes=bad).resolve(Path("."))


def test_the_dashboard_shows_adapters_under_the_models():
    from aether_box.tui.view import adapter_rows

    section = {
        "adapters": [
            {"name": "pirate", "base": "smollm2", "rank": 8, "verdict": "warn", "kl_mean": 0.31,
             "top1": 0.8, "requests": 3, "tokens_per_s": 50.2},
        ],
        "probe": {"running": "pirate", "done": 3, "total": 16, "queued": []},
    }  # fmt: skip
    row = adapter_rows(section)["↳ pirate"]
    assert row[1] == "lora r8 · smollm2" and row[2] == "warn KL 0.310 top-1 80%"
    assert row[7] == "probing 3/16" and len(row) == 8
    assert adapter_rows(None) == {}
