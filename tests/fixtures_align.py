"""A box with the test kit and one fitted projector (smollm2 -> minilm), shared by a module."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fixtures_box import BoxInThread, temp_box

from aether_box.align.corpus import load_set

# A small slice of the built-in glosses: enough for a projector far above chance, small
# enough for a few minutes of SmolLM2 on two busy cores.
FIT_TEXTS = 200
TEST_PAIRS = 40
ALIGN_OVERRIDES = {
    "mlp_epochs": 8,
    "mlp_hidden": 64,
    "test_pairs": TEST_PAIRS,
    "max_pairs": FIT_TEXTS - TEST_PAIRS,
    "embed_chunk": 50,
}


@dataclass
class FittedBox:
    """The running box, the texts its projector was fitted on, and the fit's replies."""

    box: BoxInThread
    texts: list[str]
    report: dict[str, Any]
    partials: list[dict[str, Any]]


@pytest.fixture(scope="module")
def fitted_box(models_dir: Path) -> Iterator[FittedBox]:
    """A box over the test models with smollm2 -> minilm fitted on a slice of the glosses."""
    texts = load_set("glosses")[:FIT_TEXTS]
    with temp_box({"align": dict(ALIGN_OVERRIDES)}, models_dir=models_dir) as running:
        with running.client(timeout=600) as client:
            fit = {"op": "fit", "from": "smollm2", "to": "minilm", "texts": texts}
            replies = list(client.stream("align", fit, timeout=600))
        yield FittedBox(running, texts, replies[-1], replies[:-1])
