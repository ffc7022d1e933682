"""Projectors on disk: ``<align dir>/projectors/<source>__<target>/``.

Each pair dir holds ``<method>.npz`` (numpy weights) and ``<method>.onnx`` (the projection
alone) for every method, ``served.onnx`` (the best method with its gate: what `align project`
runs), ``gate.npz``, ``report.json`` (every method's fidelity, which one is served, the
gate's calibration and where the pairs came from) and ``pairs-fit.npz`` /
``pairs-in_domain.npz``: the pairs it was fitted and judged on, which a refit starts from.
A route through the hub keeps its own gate calibration (routes.py) in
``<align dir>/routes/<A>__<hub>__<B>.json``.

A refit (the tuner's) writes a candidate under ``candidates/<id>/``; promoting it moves the
served files to ``history/<version>/`` first, so a rollback can bring them back.

A fit never writes into the served pair dir: it writes a whole new dir beside it
(``.<pair>.new-<id>``, every file fsynced), then swaps the two by renames (the old one
becomes ``.<pair>.old-<id>``, its ``candidates/`` and ``history/`` move into the new one) and
fsyncs the parent. A kill at any point leaves the old projector or the new one whole;
`recover` (run when the box starts) finishes or undoes a swap a kill interrupted and removes
the leftovers. `remove` renames the pair dir to ``.<pair>.removed-<id>`` before deleting it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import onnx

from aether_box.align.export import to_onnx
from aether_box.align.gate import Gate
from aether_box.align.pairs import PairSet
from aether_box.align.projectors import Projector
from aether_box.errors import BadRequest, NotFound
from aether_box.models.files import fsync_dir
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
        served = self._dir(first.source, first.target)
        if candidate is not None:
            where = served / "candidates" / candidate
            where.mkdir(parents=True, exist_ok=True)
            self._write(where, projectors, gate, report, pairs)
            return where
        self.root.mkdir(parents=True, exist_ok=True)
        fresh = self.root / f".{served.name}.new-{uuid.uuid4().hex[:8]}"
        fresh.mkdir()
        try:
            self._write(fresh, projectors, gate, report, pairs)
            for path in fresh.iterdir():
                _fsync_file(path)
            fsync_dir(fresh)
        except BaseException:
            shutil.rmtree(fresh, ignore_errors=True)
            raise
        self._swap(fresh, served)
        return served

    def _swap(self, fresh: Path, served: Path) -> None:
        """Serve `fresh` in place of `served` by two renames; the old dir's subdirs follow."""
        old = self.root / f".{served.name}.old-{fresh.name.rsplit('-', 1)[-1]}"
        if served.exists():
            os.replace(served, old)
        os.replace(fresh, served)
        fsync_dir(self.root)
        if old.exists():
            _adopt_subdirs(old, served)
            shutil.rmtree(old, ignore_errors=True)
            fsync_dir(self.root)

    def recover(self) -> list[str]:
        """Finish or undo a swap a kill interrupted; remove leftovers. Returns what it did."""
        done: list[str] = []
        if not self.root.is_dir():
            return done
        for path in sorted(self.root.glob(".*.old-*")):
            served = self.root / path.name[1:].rsplit(".old-", 1)[0]
            if served.exists():  # killed after the swap: the new one serves; keep the history
                _adopt_subdirs(path, served)
                shutil.rmtree(path, ignore_errors=True)
                done.append(f"removed the replaced {served.name}")
            else:  # killed between the two renames: the old one serves again
                os.replace(path, served)
                done.append(f"restored {served.name}")
        for path in sorted(self.root.glob(".*.new-*")):
            shutil.rmtree(path, ignore_errors=True)  # an unfinished fit: the old one serves
            done.append(f"removed an unfinished fit of {path.name[1:].rsplit('.new-', 1)[0]}")
        for path in sorted(self.root.glob(".*.removed-*")):
            shutil.rmtree(path, ignore_errors=True)  # acknowledged as removed: finish it
            done.append(f"finished removing {path.name[1:].rsplit('.removed-', 1)[0]}")
        if done:
            fsync_dir(self.root)
        return done

    def _write(
        self,
        where: Path,
        projectors: dict[str, Projector],
        gate: Gate,
        report: dict[str, Any],
        pairs: dict[str, PairSet] | None,
    ) -> None:
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

    def reports(self) -> list[dict[str, Any]]:
        """The report of every fitted projector pair, by name."""
        found = []
        if self.root.is_dir():
            for path in sorted(self.root.glob("*/report.json")):
                if path.parent.name.startswith("."):
                    continue  # a fit being written, or one a kill left (see `recover`)
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

    def remove(self, source: str, target: str) -> dict[str, Any]:
        """Forget the projector from `source` to `target`, its kept versions, candidates and
        the routes through it; -> its report. One rename takes it out of service: a kill
        after it leaves a dir `recover` deletes, never a projector half there."""
        report = self.report(source, target)  # NotFound naming the fitted ones
        served = self._dir(source, target)
        gone = self.root / f".{served.name}.removed-{uuid.uuid4().hex[:8]}"
        os.replace(served, gone)
        fsync_dir(self.root)
        shutil.rmtree(gone, ignore_errors=True)
        for path in (self.root.parent / "routes").glob("*.json"):
            legs = path.stem.split("__")
            if (source, target) in zip(legs, legs[1:], strict=False):
                path.unlink(missing_ok=True)
        return report

    def route_path(self, source: str, hub: str, target: str) -> Path:
        """Where the gate calibration of the route source -> hub -> target is kept."""
        return child_path(self.root.parent / "routes", f"{source}__{hub}__{target}.json")

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


def _fsync_file(path: Path) -> None:
    if path.is_file():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def _adopt_subdirs(old: Path, served: Path) -> None:
    """Move the replaced dir's candidates/ and history/ into the serving one (kept, not lost)."""
    for name in ("candidates", "history"):
        kept = old / name
        if not kept.is_dir():
            continue
        if not (served / name).exists():
            os.replace(kept, served / name)
            continue
        for child in kept.iterdir():
            with contextlib.suppress(OSError):
                os.replace(child, served / name / child.name)
