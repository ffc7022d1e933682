"""Projectors from one embedding space to another: the model, saving and loading.

Every projector has one shape, so that numpy, ONNX export and the gate treat them alike:

    x -> x / |x|                      (inputs may come unnormalised from a client)
    z = x @ W0 + b0                   (the linear map; input standardisation is folded in)
      [+ relu(x @ W1 + b1) @ W2]      (the MLP's residual branch, when there is one)
    y = z / |z|

`|z|` before the last normalisation is kept as a signal for the gate: a ridge map shrinks its
output towards the mean target when the input is unlike what it was fitted on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["METHODS", "Projector", "normalise"]

METHODS = ("ridge", "procrustes", "mlp")
EPS = 1e-12


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), EPS)


@dataclass
class Projector:
    """A fitted map from `source`'s space (din) into `target`'s space (dout)."""

    method: str
    source: str
    target: str
    w0: np.ndarray  # (din, dout)
    b0: np.ndarray  # (dout,)
    w1: np.ndarray | None = None  # (din, hidden): the MLP branch
    b1: np.ndarray | None = None  # (hidden,)
    w2: np.ndarray | None = None  # (hidden, dout)
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("w0", "b0", "w1", "b1", "w2"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, np.ascontiguousarray(value, dtype=np.float32))

    @property
    def din(self) -> int:
        return int(self.w0.shape[0])

    @property
    def dout(self) -> int:
        return int(self.w0.shape[1])

    @property
    def hidden(self) -> int:
        return 0 if self.w1 is None else int(self.w1.shape[1])

    def raw(self, x: np.ndarray) -> np.ndarray:
        """The output before its last normalisation, (n, dout)."""
        x = normalise(np.atleast_2d(x))
        z = x @ self.w0 + self.b0
        if self.w1 is not None:
            z = z + np.maximum(x @ self.w1 + self.b1, 0.0) @ self.w2
        return z

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Project rows of `x` into the target space, unit length, (n, dout) float32."""
        return normalise(self.raw(x))

    # -- storage -------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write the weights and their description to one .npz file."""
        names = ("w0", "b0", "w1", "b1", "w2")
        arrays = {k: v for k in names if (v := getattr(self, k)) is not None}
        meta = {
            "method": self.method,
            "source": self.source,
            "target": self.target,
            "params": self.params,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, meta=np.array(json.dumps(meta)), **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Projector:
        """Read a projector written by `save`."""
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            arrays = {k: data[k] for k in ("w0", "b0", "w1", "b1", "w2") if k in data}
        return cls(meta["method"], meta["source"], meta["target"], params=meta["params"], **arrays)
