"""llama.cpp's model parameters on this CPU: no AMX weight layout where it crashes."""

from __future__ import annotations

import llama_cpp.llama_cpp as low_level
import numpy as np
import pytest

from aether_box.engines.generator import LlamaGenerator
from aether_box.engines.llama import LlamaEmbedder
from aether_box.engines.llama_cpu import cpu_has_amx, model_params, safe_defaults


def test_a_load_leaves_the_library_defaults_as_they_were():
    library = low_level.llama_model_default_params
    with pytest.raises(RuntimeError), safe_defaults():
        assert low_level.llama_model_default_params is model_params
        raise RuntimeError("a load that failed")
    assert low_level.llama_model_default_params is library


def test_models_load_and_run_without_the_amx_layout(smollm2_path):
    # On an AMX CPU (where llama.cpp's AMX matrix product crashed the first decode) the
    # weights stay in the plain CPU layout; elsewhere the layout is llama.cpp's own choice.
    assert model_params().use_extra_bufts is not cpu_has_amx()
    embedder = LlamaEmbedder.load(smollm2_path, n_ctx=128, n_threads=1, n_gpu_layers=0)
    try:
        assert "AMX" not in embedder.backends
        vectors = embedder.embed(["a first text", "and a second"])
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    finally:
        embedder.close()
    generator = LlamaGenerator.load(
        smollm2_path, n_ctx=128, n_threads=1, n_gpu_layers=0, parallel=1
    )
    try:
        assert "AMX" not in generator.backends
    finally:
        generator.close()
