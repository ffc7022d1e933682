"""The observer's signals beyond alerts: what the tuner acts on.

Each watch turns what the box reports into readings ``{kind, subject, triggered, seq,
figures, message}``, kept in one `Signals` table; `seq` grows each time a signal goes from
calm to triggered (a condition that lasts is one piece of news), so a reader acts once.

- idle: a loaded model nobody has used for `engines.keep_alive` seconds.
- memory_pressure: per loaded model instance ("smollm2:generate"): the loaded models hold
  more than `monitor.models_memory_mb`, or the machine's memory in use passed
  `monitor.memory_pressure_percent`, and this idle instance is the one to unload (see
  ResidencyWatch); subject "machine" sums it up.
- align: a projector's gate pass rate over the last window fell under
  `monitor.align_pass_min` (the running agreement is reported with it).
- drift: the texts a collection received lately differ from its earlier ones (MMD² with a
  permutation null, aether_box.tuner.signals).
- nll: per model and adapter set (subject "smollm2" or "smollm2+pirate:0.5"), the per-token
  negative log-likelihood of its own text spiked (rolling median + k MAD of that key).
- router: the router's share of messages falling back to the default route in a window.
- adapter: a LoRA adapter's fusion-log verdict calls for a pruning decision: "prune" for one
  judged prune that no decision covers yet (requests already refuse it unforced: the decision
  makes it last), "restore" for one the tuner pruned whose newest probe is ok or warn.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np

from aether_box.monitor.statistics import SpikeRule, drift

__all__ = [
    "AdapterWatch",
    "AlignWatch",
    "DriftWatch",
    "NllWatch",
    "ResidencyWatch",
    "RouterWatch",
    "Signals",
]

Call = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


class Signals:
    """The latest reading of every signal, by (kind, subject)."""

    def __init__(self) -> None:
        self._table: dict[tuple[str, str], dict[str, Any]] = {}
        self._seq = 0

    def set(
        self,
        kind: str,
        subject: str,
        triggered: bool,
        figures: dict[str, Any],
        message: str = "",
        *,
        edge: bool = True,
    ) -> None:
        """Record a reading. A new trigger gets a new `seq`; so does every triggered reading
        when not `edge` (each one is an event, such as a slow answer)."""
        old = self._table.get((kind, subject))
        if triggered and not (edge and old is not None and old["triggered"]):
            self._seq += 1
            seq = self._seq
        else:
            seq = old["seq"] if old else 0
        self._table[(kind, subject)] = {
            "kind": kind,
            "subject": subject,
            "triggered": triggered,
            "seq": seq,
            "figures": figures,
            "message": message,
            "time": time.time(),
        }

    def drop(self, kind: str, subject: str) -> None:
        self._table.pop((kind, subject), None)

    def subjects(self, kind: str) -> list[str]:
        return [s for k, s in self._table if k == kind]

    def all(self) -> list[dict[str, Any]]:
        return [dict(v) for v in self._table.values()]


class ResidencyWatch:
    """Idle time and memory pressure of each loaded model.

    Memory pressure is per model instance: when the loaded models together hold more than
    `models_mb` (0: no such limit), the idle ones, least recently used first, are under
    pressure until what is left fits; when the machine's memory in use passes
    `pressure_percent`, the least recently used idle one is (one at a time: the next look
    sees what its unload freed). An instance in use is never named, nor one a session pinned
    (the "sessions" status section lists them): the next idle one is.
    """

    def __init__(self, signals: Signals) -> None:
        self.signals = signals

    def update(
        self,
        report: dict[str, Any],
        keep_alive: float,
        pressure_percent: float,
        models_mb: float = 0.0,
    ) -> None:
        loaded = (report.get("models") or {}).get("loaded", [])
        pinned = ((report.get("sessions") or {}).get("pinned_models")) or {}
        seen = set()
        for entry in loaded:
            subject = f"{entry['name']}:{entry['role']}"
            seen.add(subject)
            # status rounds idle_s to 0.1 s: the margin keeps the engines' own check agreeing
            idle = (
                bool(keep_alive) and not entry.get("in_use") and entry["idle_s"] >= keep_alive + 0.1
            )
            self.signals.set(
                "idle",
                subject,
                idle,
                {
                    "idle_s": entry["idle_s"],
                    "keep_alive": keep_alive,
                    "memory_mb": entry["memory_mb"],
                },
                # :g with a tenth kept: a keep_alive of 0.3 s is not written "0 s"
                f"{entry['name']} ({entry['role']}) idle {round(entry['idle_s'], 1):g} s "
                f"(engines.keep_alive {round(keep_alive, 1):g} s)"
                if idle
                else "",
            )
        for subject in set(self.signals.subjects("idle")) - seen:
            self.signals.drop("idle", subject)
        self._pressure(
            report.get("system_memory_percent"), loaded, pinned, pressure_percent, models_mb
        )

    def _pressure(
        self,
        used: float | None,
        loaded: list[dict[str, Any]],
        pinned: dict[str, list[str]],
        pressure_percent: float,
        models_mb: float,
    ) -> None:
        """One memory_pressure reading per loaded instance, and the machine's."""
        total = sum(e["memory_mb"] for e in loaded)
        over_models = bool(models_mb) and total > models_mb
        machine = used is not None and used >= pressure_percent and bool(loaded)
        # Candidates: idle and not pinned, least recently used first.
        free = sorted(
            (e for e in loaded if not e.get("in_use") and e["name"] not in pinned),
            key=lambda e: -e["idle_s"],
        )
        named: dict[str, str] = {}  # subject -> why
        left = total
        for entry in free:
            subject = f"{entry['name']}:{entry['role']}"
            if over_models and left > models_mb:
                named[subject] = (
                    f"the loaded models hold {total:.0f} MB, over monitor.models_memory_mb "
                    f"({models_mb:.0f} MB)"
                )
                left -= entry["memory_mb"]
            elif machine and not named:
                named[subject] = (
                    f"the machine's memory is {used:.0f}% used "
                    f"(monitor.memory_pressure_percent {pressure_percent:.0f}%)"
                )
        seen = {"machine"}
        for entry in loaded:
            subject = f"{entry['name']}:{entry['role']}"
            seen.add(subject)
            why = named.get(subject)
            self.signals.set(
                "memory_pressure",
                subject,
                why is not None,
                {
                    "model": entry["name"],
                    "role": entry["role"],
                    "memory_mb": entry["memory_mb"],
                    "idle_s": entry["idle_s"],
                    "in_use": entry.get("in_use", 0),
                    "loaded_mb": round(total, 1),
                    "limit_mb": models_mb or None,
                    "pinned_by": pinned.get(entry["name"], []),
                },
                f"{entry['name']} ({entry['role']}, {entry['memory_mb']:.0f} MB, idle "
                f"{entry['idle_s']:.0f} s) is under memory pressure: {why}"
                if why
                else "",
            )
        for subject in set(self.signals.subjects("memory_pressure")) - seen:
            self.signals.drop("memory_pressure", subject)
        if used is not None:
            stuck = (machine or (over_models and left > models_mb)) and not named
            self.signals.set(
                "memory_pressure",
                "machine",
                machine or over_models,
                {
                    "memory_percent": used,
                    "limit_percent": pressure_percent,
                    "loaded_mb": round(total, 1),
                    "limit_mb": models_mb or None,
                    "named": sorted(named),
                },
                ""
                if not (machine or over_models)
                else "every loaded model is in use or pinned by a session: nothing to unload"
                if stuck
                else f"memory pressure: unloading {', '.join(sorted(named))}",
            )


class AlignWatch:
    """Each projector's gate pass rate and running agreement, per window."""

    def __init__(self, signals: Signals, pass_min: float, min_projections: int) -> None:
        self.signals = signals
        self.pass_min = pass_min
        self.min_projections = min_projections
        self._last: dict[str, tuple[int, int]] = {}

    def update(self, section: dict[str, Any] | None) -> None:
        for name, served in ((section or {}).get("projectors") or {}).items():
            projections, accepted = served["projections"], served["accepted"]
            before = self._last.get(name, (0, 0))
            if projections < before[0]:  # the projector was reloaded: counters restarted
                before = (0, 0)
            n, passed = projections - before[0], accepted - before[1]
            if n < self.min_projections:
                continue  # too few to judge: wait for more in the next windows
            self._last[name] = (projections, accepted)
            rate = passed / n
            low = rate < self.pass_min
            self.signals.set(
                "align",
                name,
                low,
                {
                    "pass_rate": round(rate, 4),
                    "projections": n,
                    "agreement_recent": served.get("agreement_recent"),
                    "agreement_mean": served.get("agreement_mean"),
                    "pass_min": self.pass_min,
                },
                f"projector {name} passed its gate for {rate:.0%} of {n} queries "
                f"(under {self.pass_min:.0%}): queries left the domain it was fitted on"
                if low
                else "",
            )


@dataclass
class _Follow:
    """What the drift watch knows of one collection."""

    model: str
    cursor: int = 0
    passed: int = 0  # records the cursor has passed (read or skipped)
    reference: np.ndarray | None = None
    recent: list[np.ndarray] = field(default_factory=list)  # the newest `reference` at most
    arrived: int = 0  # recent texts received since the last shift
    tested_at: int = 0


class DriftWatch:
    """Embedding drift of each collection's incoming texts against its earlier ones.

    The first `reference` vectors a collection holds (or received since the box started)
    are its reference; later ones are compared with it once `min_texts` have arrived, and
    again every `min_texts` more. After a trigger the recent texts join the reference, so
    a lasting shift is news once.
    """

    def __init__(
        self, signals: Signals, min_texts: int, p_value: float, reference: int = 200
    ) -> None:
        self.signals = signals
        self.min_texts = min_texts
        self.p_value = p_value
        self.reference_size = reference
        self._follow: dict[str, _Follow] = {}

    async def update(self, memory: dict[str, Any] | None, call: Call) -> None:
        collections = (memory or {}).get("collections") or {}
        for name in set(self._follow) - set(collections):
            del self._follow[name]
            self.signals.drop("drift", name)
        for name, info in collections.items():
            follow = self._follow.get(name)
            if follow is None or follow.model != info["model"]:
                follow = self._follow[name] = _Follow(info["model"])
            await self._read(name, follow, call, info.get("count"))
            fresh = follow.arrived
            if follow.reference is None or fresh - follow.tested_at < self.min_texts:
                continue
            follow.tested_at = fresh
            recent = np.concatenate(follow.recent)[-self.reference_size :]
            result = await anyio.to_thread.run_sync(drift, follow.reference, recent)
            shifted = result.p_value <= self.p_value
            self.signals.set(
                "drift",
                name,
                shifted,
                {**result.as_dict(), "model": follow.model, "p_limit": self.p_value},
                f"collection {name!r}: its last {result.n_recent} texts differ from its "
                f"earlier ones (MMD² {result.mmd2:.4f}, p = {result.p_value:.3f})"
                if shifted
                else "",
            )
            if shifted:
                pooled = np.concatenate([follow.reference, recent])
                follow.reference = pooled[-self.reference_size :]
                follow.recent, follow.tested_at, follow.arrived = [], 0, 0

    async def _skip(self, name: str, follow: _Follow, call: Call, records: int) -> int:
        """Move the cursor past `records` records without reading them (one `list` whose
        `skip` SQLite steps over); returns how many it passed (0 if fewer were there)."""
        page = await call(
            "memory",
            {
                "op": "list",
                "collection": name,
                "cursor": follow.cursor,
                "skip": records - 1,
                "limit": 1,
            },
        )
        if not page["records"]:
            return 0
        follow.cursor = page["last"]
        follow.passed += records
        return records

    def _add_recent(self, follow: _Follow, vectors: np.ndarray) -> None:
        follow.arrived += len(vectors)
        follow.recent.append(vectors)
        kept = np.concatenate(follow.recent)[-self.reference_size :]
        follow.recent = [kept]

    async def _read(self, name: str, follow: _Follow, call: Call, count: Any) -> None:
        """Page through what the collection received since the last look.

        What it held at the first look is its reference (the newest `reference` texts); an
        empty collection's reference is the first `min_texts` it receives. Later texts are
        recent; only the newest `reference` of them are kept.
        """
        first = follow.reference is None and follow.cursor == 0
        if first and isinstance(count, int) and count > self.reference_size:
            # Vectors are read one row at a time: skip the older records without them.
            await self._skip(name, follow, call, count - self.reference_size)
        elif (
            isinstance(count, int)
            and follow.reference is not None
            and len(follow.reference) >= self.min_texts
            and count - follow.passed > self.reference_size
        ):
            # Only the newest `reference` of the records that arrived are kept: the others
            # are counted, not read (reading back a 100k-vector ingest took seconds of CPU
            # beside the writer and the searches).
            behind = count - follow.passed - self.reference_size
            follow.arrived += await self._skip(name, follow, call, behind)
        while True:
            page = await call(
                "memory",
                {
                    "op": "list",
                    "collection": name,
                    "cursor": follow.cursor,
                    "limit": 500,
                    "include_vectors": True,
                },
            )
            vectors = np.asarray(page.get("vectors", []), np.float32)
            follow.cursor = page["last"]
            follow.passed += len(page["records"])
            if len(vectors):
                if first:
                    held = vectors if follow.reference is None else [follow.reference, vectors]
                    follow.reference = np.concatenate(held) if isinstance(held, list) else held
                    follow.reference = follow.reference[-self.reference_size :]
                elif follow.reference is None or len(follow.reference) < self.min_texts:
                    have = 0 if follow.reference is None else len(follow.reference)
                    take = vectors[: self.min_texts - have]
                    follow.reference = (
                        take
                        if follow.reference is None
                        else np.concatenate([follow.reference, take])
                    )
                    if len(vectors) > len(take):
                        self._add_recent(follow, vectors[len(take) :])
                else:
                    self._add_recent(follow, vectors)
            if page.get("next") is None:
                break
        if first and follow.reference is not None:
            self.signals.set(
                "drift",
                name,
                False,
                {"n_reference": len(follow.reference), "n_recent": 0, "model": follow.model},
            )


class NllWatch:
    """Per model and adapter set: the mean per-token NLL of each answer, against that key's
    rolling median (so a spike under one adapter is that adapter's, not the model's)."""

    def __init__(self, signals: Signals, k: float, after: int = 10, window: int = 50) -> None:
        self.signals = signals
        self.k, self.after, self.window = k, after, window
        self.rules: dict[str, SpikeRule] = {}
        self._last: dict[str, int] = {}

    def update(self, models: dict[str, Any] | None) -> None:
        for entry in (models or {}).get("loaded", []):
            if entry.get("role") != "generate":
                continue
            for key, nll in (entry.get("nll") or {}).items():
                self._read(entry["name"], key, nll)

    def _read(self, model: str, key: str, nll: dict[str, Any]) -> None:
        seen = nll["answers"]
        if self._last.get(key) == seen:
            return
        self._last[key] = seen
        rule = self.rules.setdefault(key, SpikeRule(self.window, self.k, self.after))
        limit = rule.limit()
        spike = rule.add(float(nll["last"]))
        adapters = nll.get("adapters") or ""
        who = f"{model} under adapters {adapters}" if adapters else model
        self.signals.set(
            "nll",
            key,
            spike,
            {
                "model": model,
                "adapters": adapters,
                "nll": round(float(nll["last"]), 4),
                "median": None if rule.median is None else round(rule.median, 4),
                "limit": None if limit is None else round(limit, 4),
                "answers": seen,
            },
            f"{who}: the last answer scored {nll['last']:.2f} nats/token against its usual "
            f"{rule.median:.2f} (limit {limit:.2f}): it is writing unlike itself"
            if spike and limit is not None and rule.median is not None
            else "",
        )


class RouterWatch:
    """The router's fallback share and mean best score, per window."""

    def __init__(self, signals: Signals, fallback_max: float, min_decisions: int) -> None:
        self.signals = signals
        self.fallback_max = fallback_max
        self.min_decisions = min_decisions
        self._last: tuple[int, int, float] = (0, 0, 0.0)

    def update(self, section: dict[str, Any] | None) -> None:
        if not section:
            return
        decisions, fallbacks = section.get("decisions", 0), section.get("fallbacks", 0)
        scores = float(section.get("best_score_sum", 0.0))
        n, fell = decisions - self._last[0], fallbacks - self._last[1]
        if n < self.min_decisions:
            return
        mean_score = (scores - self._last[2]) / n
        self._last = (decisions, fallbacks, scores)
        share = fell / n
        # With no route to score against (the built-in config), every message takes the
        # default route by design: no threshold is too high, and there is nothing to refit.
        high = share > self.fallback_max and section.get("scored_routes", 1) > 0
        self.signals.set(
            "router",
            "router",
            high,
            {
                "fallback_share": round(share, 4),
                "best_score_mean": round(mean_score, 4),
                "decisions": n,
                "min_score": section.get("min_score"),
                "feedback": section.get("feedback", 0),
            },
            f"{share:.0%} of {n} messages fell back to the default route "
            f"(over {self.fallback_max:.0%}): router.min_score may be too high"
            if high
            else "",
        )


class AdapterWatch:
    """Fusion-log verdicts that call for pruning or restoring an adapter (see module doc)."""

    def __init__(self, signals: Signals) -> None:
        self.signals = signals

    def update(self, section: dict[str, Any] | None) -> None:
        if section is None:
            return
        seen = set()
        for a in section.get("adapters", []):
            name, verdict, decision = a["name"], a.get("verdict"), a.get("pruning") or {}
            seen.add(name)
            op = None
            if verdict == "prune" and not decision:
                op = "prune"
            elif decision.get("state") == "pruned" and decision.get("by") == "tuner":
                op = "restore" if verdict in ("ok", "warn") else None
            figures = {
                "op": op,
                "verdict": verdict,
                "kl_mean": a.get("kl_mean"),
                "top1": a.get("top1"),
                "pruned": a.get("pruned"),
            }
            message = ""
            if op == "prune":
                message = (
                    f"adapter {name}: the fusion log judges it prune (mean KL {a.get('kl_mean')}, "
                    f"top-1 {a.get('top1')}): prune it"
                )
            elif op == "restore":
                message = f"adapter {name}: its newest probe says {verdict}: restore it"
            self.signals.set("adapter", name, op is not None, figures, message)
        for name in self.signals.subjects("adapter"):
            if name not in seen:
                self.signals.drop("adapter", name)  # removed
