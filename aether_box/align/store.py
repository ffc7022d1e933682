"""Projectors on disk: ``<align dir>/projectors/<source>__<target>/``.

Each pair dir holds ``<method>.npz`` (numpy weights) and ``<method>.onnx`` (the projection
alone) for every method, ``served.onnx`` (the best method with its gate: what `align project`
runs), ``gate.npz`` and ``report.json``: every method's fidelity, which one is served, the
gate's calibration and where the pairs came from.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import onnx

from aether_box.align.export import to_onnx
from aether_box.align.gate import Gate
from aether_box.align.projectors import Projector
from aether_box.errors import NotFound
from aether_box.private import child_path

__all__ = ["ProjectorStore"]


def pair_name(source: str, target: str) -> str:
    """How a projector from `source` to `target` is named (in status and replies)."""
    return f"{source}->{target}"


class ProjectorStore:
    """Every fitted projector under one align dir."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root) / "projectors"

    def _dir(self, source: str, target: str) -> Path:
        return child_path(self.root, f"{source}__{target}")

    def save(self, projectors: dict[str, Projector], gate: Gate, report: dict[str, Any]) -> Path:
        """Write every method's weights and ONNX graph, the gate and the report."""
        first = next(iter(projectors.values()))
        where = self._dir(first.source, first.target)
        where.mkdir(parents=True, exist_ok=True)
        best = report["best"]
        graphs = {f"{m}.onnx": to_onnx(p) for m, p in projectors.items()}
        graphs["served.onnx"] = to_onnx(projectors[best], gate)
        for method, projector in projectors.items():
            projector.save(where / f"{method}.npz")
        for name, model in graphs.items():
            tmp = where / f"{name}.tmp"
            onnx.save(model, str(tmp))
            tmp.replace(where / name)
        gate.save(where / "gate.npz")
        tmp = where / "report.json.tmp"
        tmp.write_text(json.dumps(report, indent=2, default=float))
        os.replace(tmp, where / "report.json")
        return where

    def reports(self) -> list[dict[str, Any]]:
        """The report of every fitted projector pair, by name."""
        found = []
        if self.root.is_dir():
            for path in sorted(self.root.glob("*/report.json")):
                try:
                    found.append(json.loads(path.read_text()))
                except (OSError, json.JSONDecodeError):
                    continue  # a half-written dir from a crash: not listed, refit to replace
        return found

    def report(self, source: str, target: str) -> dict[str, Any]:
        """The report of the projector from `source` to `target`, or NotFound."""
        path = self._dir(source, target) / "report.json"
        if not path.is_file():
            fitted = ", ".join(r["name"] for r in self.reports()) or "none"
            raise NotFound(
                f"no projector from {source!r} to {target!r} (fitted: {fitted}); fit one with "
                f"`aether-box align fit --from {source} --to {target}`"
            )
        return json.loads(path.read_text())

    def onnx_path(self, source: str, target: str, method: str) -> Path:
        """The projection-only graph of one method."""
        return self._dir(source, target) / f"{method}.onnx"

    def served_path(self, source: str, target: str) -> Path:
        """The graph `align project` runs: the best method with its gate."""
        return self._dir(source, target) / "served.onnx"

    def projector(self, source: str, target: str, method: str) -> Projector:
        """The numpy weights of one method."""
        return Projector.load(self._dir(source, target) / f"{method}.npz")

    def gate(self, source: str, target: str) -> Gate:
        """The gate calibrated for this pair."""
        return Gate.load(self._dir(source, target) / "gate.npz")
