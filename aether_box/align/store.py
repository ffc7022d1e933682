"""Projectors on disk: ``<align dir>/projectors/<source>__<target>/``.

Each pair dir holds ``<method>.npz`` (numpy weights) and ``<method>.onnx`` (the projection
alone) for every method, ``served.onnx`` (the best method with its gate: what `align project`
runs), ``gate.npz``, ``report.json`` (every method's fidelity, which one is served, the
gate's calibration and where the pairs came from) and ``pairs-fit.npz`` /
``pairs-in_domain.npz``: the pairs it was fitted and judged on, which a refit starts from.

A refit (the tuner's) writes a candidate under ``candidates/<id>/``; promoting it moves the
served files to ``history/<version>/`` first, so a rollback can bring them back.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import onnx

from aether_box.align.export import to_onnx
from aether_box.align.gate import Gate
from aether_box.align.pairs import PairSet
from aether_box.align.projectors import Projector
from aether_box.errors import BadRequest, NotFound
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

    def save(
        self,
        projectors: dict[str, Projector],
        gate: Gate,
        report: dict[str, Any],
        pairs: dict[str, PairSet] | None = None,
        candidate: str | None = None,
    ) -> Path:
        """Write every method's weights and ONNX graph, the gate, the pairs and the report
        (the report last: a dir without one is unfinished). `candidate`: under candidates/."""
        first = next(iter(projectors.values()))
        where = self._dir(first.source, first.target)
        if candidate is not None:
            where = where / "candidates" / candidate
        where.mkdir(parents=True, exist_ok=True)
        for part, pair_set in (pairs or {}).items():
            pair_set.save(where / f"pairs-{part}.npz")
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

    def pairs(self, source: str, target: str, part: str) -> PairSet:
        """The pairs the served projector was fitted (`fit`) or judged (`in_domain`) on."""
        path = self._dir(source, target) / f"pairs-{part}.npz"
        if not path.is_file():
            raise BadRequest(
                f"the projector {source}->{target} was fitted before projectors kept their "
                f"pairs; fit it again (`aether-box align fit --from {source} --to {target}`) "
                "so that it can be refitted"
            )
        return PairSet.load(path)

    def promote(self, source: str, target: str, candidate: str) -> str:
        """Serve candidate `candidate`; the served files go to history. Returns their version."""
        where = self._dir(source, target)
        found = child_path(where / "candidates", candidate)
        if not (found / "report.json").is_file():
            raise NotFound(f"no finished candidate {candidate!r} for {source}->{target}")
        version = self._shelve(where)
        self._move_files(found, where)
        shutil.rmtree(found, ignore_errors=True)
        return version

    def restore(self, source: str, target: str, version: str) -> str:
        """Serve history `version` again; the served files go to history. Returns their version."""
        where = self._dir(source, target)
        found = child_path(where / "history", version)
        if not (found / "report.json").is_file():
            kept = sorted(p.name for p in (where / "history").glob("*")) or "none"
            raise NotFound(f"no kept version {version!r} of {source}->{target} (kept: {kept})")
        shelved = self._shelve(where)
        self._move_files(found, where)
        shutil.rmtree(found, ignore_errors=True)
        return shelved

    def _shelve(self, where: Path) -> str:
        version = time.strftime("%Y%m%d-%H%M%S") + f"-{time.time_ns() % 10**6:06d}"
        self._move_files(where, where / "history" / version)
        return version

    @staticmethod
    def _move_files(source: Path, dest: Path) -> None:
        """Move the plain files of `source` into `dest`, report.json last (it marks whole)."""
        dest.mkdir(parents=True, exist_ok=True)
        files = sorted(
            (p for p in source.iterdir() if p.is_file()), key=lambda p: p.name == "report.json"
        )
        (dest / "report.json").unlink(missing_ok=True)
        for path in files:
            os.replace(path, dest / path.name)
