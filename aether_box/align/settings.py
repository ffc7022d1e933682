"""The `[align]` config section."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from aether_box.config import section
from aether_box.errors import ConfigError

__all__ = ["AlignSettings"]


@section("align")
@dataclass
class AlignSettings:
    """Where projectors live, how they are fitted, and the gate that guards their use."""

    # A projection is used only when its agreement reaches this; below it the box re-embeds
    # the query text with the target model. The agreement is the calibrated probability,
    # judged without the native vector, that the projection finds the same nearest text
    # (top-1 among 1,000) as the native vector would. See aether_box/align/gate.py; 0.8
    # rather than the seeds' 0.7: measured in bench/align.py, it proxies 2% of in-domain
    # queries, 10% of out-of-domain ones and 54% of far-domain ones, where 0.7 let through
    # three quarters of a far domain whose projections find the right text only 42% of the time.
    gate: float = 0.8
    # Pairs, vectors and projectors; default {data_dir}/align.
    dir: Path | None = None
    # Most pairs a projector is fitted on; the held-out pairs are never fitted on.
    max_pairs: int = 5000
    # Held-out pairs the fidelity report is measured on (N of top-1 among N).
    test_pairs: int = 1000
    methods: list[str] = field(default_factory=lambda: ["ridge", "procrustes", "mlp"])
    mlp_epochs: int = 40
    mlp_hidden: int = 512
    # Texts per call to `embed` while making pairs (progress and checkpoints come this often).
    embed_chunk: int = 128
    # The hub (aether_box/align/hub.py): a pair with no direct projector is projected
    # through it, A -> hub -> B. A model's name makes that model's space the hub; "shared"
    # is a learned space holding every founding model's directions (space.py; built with
    # `aether-box align hub --models ...`), which composes as well as direct projectors.
    # "" turns composition off.
    hub: str = "minilm"
    # Dimensions of the shared space (measured: 256 to 960 all match direct projectors).
    hub_dim: int = 512

    def resolve(self, data_dir: Path) -> None:
        """Fill the default dir and check the values."""
        if self.dir is None:
            self.dir = data_dir / "align"
        if not 0.0 <= self.gate <= 1.0:
            raise ConfigError(f"align.gate must be from 0 to 1 (a probability), got {self.gate}")
        unknown = sorted(set(self.methods) - {"ridge", "procrustes", "mlp"})
        if unknown or not self.methods:
            raise ConfigError(
                f"align.methods must name some of ridge, procrustes, mlp; got {self.methods}"
            )
        for key in (
            "max_pairs",
            "test_pairs",
            "mlp_epochs",
            "mlp_hidden",
            "embed_chunk",
            "hub_dim",
        ):
            if getattr(self, key) < 1:
                raise ConfigError(f"align.{key} must be at least 1, got {getattr(self, key)}")
