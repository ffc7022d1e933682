"""The fusion probe: what an adapter (or a merge) does to the base model, in numbers.

Shipped general prompts (data/probe_prompts.txt) are read teacher-forced by the base model
and by the adapted one; per token we take KL(base || adapted) in nats and whether both put the
same token first. For a merge, the merged adapter is also compared with its sources stacked at
runtime: KL(stacked || merged). The verdict follows fixed thresholds, each at least 10x the
noise floor measured on the same model (0.0009 nats/token, batched vs token by token):

- ``prune``: mean KL > PRUNE_KL or top-1 agreement < PRUNE_TOP1: requests refuse it unless
  they force it;
- ``warn``: mean KL > WARN_KL or top-1 agreement < WARN_TOP1;
- ``ok`` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources

import numpy as np

__all__ = [
    "PRUNE_KL",
    "PRUNE_TOP1",
    "WARN_KL",
    "WARN_TOP1",
    "Divergence",
    "log_softmax",
    "probe_prompts",
    "verdict",
]

WARN_KL, WARN_TOP1 = 0.1, 0.85
PRUNE_KL, PRUNE_TOP1 = 0.5, 0.7


def probe_prompts() -> list[str]:
    """The shipped general prompts, one a line."""
    text = resources.files("aether_box.adapters").joinpath("data/probe_prompts.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities (float64) of rows of logits."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@dataclass
class Divergence:
    """Per-token KL(p || q) and top-1 agreement, gathered over several texts."""

    kl: list[np.ndarray] = field(default_factory=list)
    agree: list[np.ndarray] = field(default_factory=list)

    def add(self, p_logits: np.ndarray, q_logits: np.ndarray) -> None:
        """Add one text's logits (n_tokens, n_vocab) under p and under q."""
        p, q = log_softmax(p_logits), log_softmax(q_logits)
        self.kl.append(np.maximum((np.exp(p) * (p - q)).sum(axis=-1), 0.0))
        self.agree.append(p_logits.argmax(axis=-1) == q_logits.argmax(axis=-1))

    @property
    def tokens(self) -> int:
        return int(sum(len(k) for k in self.kl))

    def summary(self) -> dict[str, float]:
        kl = np.concatenate(self.kl) if self.kl else np.zeros(1)
        agree = np.concatenate(self.agree) if self.agree else np.ones(1, dtype=bool)
        return {
            "kl_mean": float(kl.mean()),
            "kl_p95": float(np.percentile(kl, 95)),
            "top1": float(agree.mean()),
        }


def verdict(kl_mean: float, top1: float) -> tuple[str, str]:
    """(verdict, reason) for an adapter's divergence from its base."""
    figures = f"mean KL {kl_mean:.4f} nats/token, top-1 agreement {top1:.1%}"
    if kl_mean > PRUNE_KL or top1 < PRUNE_TOP1:
        return "prune", (
            f"{figures}: past the prune line (KL > {PRUNE_KL} or top-1 < {PRUNE_TOP1:.0%}); "
            "it changes the model's general behaviour too much"
        )
    if kl_mean > WARN_KL or top1 < WARN_TOP1:
        return (
            "warn",
            f"{figures}: past the warning line (KL > {WARN_KL} or top-1 < {WARN_TOP1:.0%})",
        )
    return "ok", figures
