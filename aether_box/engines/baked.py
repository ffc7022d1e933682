"""Hot adapter sets served from a baked copy of the model instead of runtime LoRA nodes.

llama.cpp applies runtime adapters as extra graph nodes per adapted weight per token; on a
small model that costs a tenth or more of decode speed (README, "Adapters"). When one adapter
set is used by `after` requests in a row (or once, if all its adapters are pinned by config:
[adapters] pinned), a worker thread bakes it into a copy of the model
(aether_box.adapters.bake: the deltas added into the weights, written to `directory`) and
loads that copy as a generator of its own. From then on requests with exactly that set go to
the copy; the set stays in their cache key, and the copy's context only ever holds KV of that
set. Until the copy is ready, and if baking fails, requests run with runtime adapters as
before. Switching between the base and a copy is no switch at all: they are two contexts.

A copy costs its weights and its context again (shown in status, counted in the model's
memory); `limit` copies at most are kept, the least recently used idle one makes way. The
directory is emptied when the model loads: a copy is a cache, rebuilt in seconds when hot.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aether_box.engines.generation import AdapterRef

if TYPE_CHECKING:
    from aether_box.engines.generator import LlamaGenerator

__all__ = ["BakePolicy", "BakedCopies"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BakePolicy:
    """When and how adapter sets are baked (see EngineSettings.bake_*)."""

    directory: Path
    after: int = 2  # requests in a row under one set before it is baked; 0 = never
    keep: str = "q8_0"  # how adapted weights are stored (aether_box.adapters.bake.BAKE_TYPES)
    limit: int = 1  # copies kept at once


class _Cancelled(Exception):
    pass


@dataclass
class _Copy:
    """One adapter set's baked copy: building, ready or failed."""

    key: str
    refs: tuple[AdapterRef, ...]
    path: Path
    state: str = "baking"
    done: int = 0
    of: int = 0
    engine: LlamaGenerator | None = None
    file_bytes: int = 0
    rounding_to_delta: float | None = None
    types: dict[str, int] = field(default_factory=dict)
    seconds: float | None = None
    reason: str | None = None
    requests: int = 0
    last_used: float = field(default_factory=time.monotonic)
    ready: threading.Event = field(default_factory=threading.Event)


class BakedCopies:
    """The baked copies of one model's hot adapter sets, and the policy that makes them."""

    def __init__(
        self, base: Path, policy: BakePolicy, load: Callable[[Path], LlamaGenerator]
    ) -> None:
        self.base = base
        self.policy = policy
        self._load = load
        self._lock = threading.Lock()
        self._copies: dict[str, _Copy] = {}
        self._streak = ("", 0)  # the set of the latest requests, and how many in a row
        self._closing = False
        self._threads: list[threading.Thread] = []
        policy.directory.mkdir(parents=True, exist_ok=True)
        for stale in policy.directory.iterdir():  # a previous run's copies and temporaries
            if stale.is_file():
                stale.unlink(missing_ok=True)

    def route(self, key: str, refs: Sequence[AdapterRef]) -> LlamaGenerator | None:
        """Note a request under adapter set `key`; the ready copy that serves it, if any.
        The set's `after`-th request in a row starts its bake (its first, when every adapter
        of it is pinned)."""
        if self.policy.after <= 0:
            return None
        with self._lock:
            last, count = self._streak
            count = count + 1 if key == last else 1
            self._streak = (key, count)
            copy = self._copies.get(key)
            if copy is not None:
                if copy.engine is not None:
                    copy.requests += 1
                    copy.last_used = time.monotonic()
                    return copy.engine
                return None  # baking, or failed: runtime adapters
            pinned = bool(refs) and all(r.pinned for r in refs)
            if not key or (count < self.policy.after and not pinned) or self._closing:
                return None
            if not self._make_room():
                return None  # every copy is busy: try again on a later request
            name = hashlib.sha256(f"{key}|{self.policy.keep}".encode()).hexdigest()[:24]
            copy = _Copy(key, tuple(refs), self.policy.directory / f"{name}.gguf")
            self._copies[key] = copy
            thread = threading.Thread(
                target=self._bake, args=(copy,), name=f"bake-{self.base.stem}", daemon=True
            )
            self._threads.append(thread)
        thread.start()
        return None

    def _make_room(self) -> bool:
        """Drop the least recently used idle copy while `limit` are kept (under the lock)."""
        while len(self._copies) >= self.policy.limit:
            idle = [
                c
                for c in self._copies.values()
                if c.state == "failed" or (c.engine is not None and c.engine.scheduler.idle())
            ]
            if not idle:
                return False
            self._drop(min(idle, key=lambda c: c.last_used))
        return True

    def _drop(self, copy: _Copy) -> None:
        """Forget `copy`; close its engine and delete its file in a thread (it joins one)."""
        self._copies.pop(copy.key, None)
        engine = copy.engine
        copy.engine = None

        def close() -> None:
            if engine is not None:
                engine.close()
            copy.path.unlink(missing_ok=True)

        threading.Thread(target=close, name="bake-drop", daemon=True).start()

    def _bake(self, copy: _Copy) -> None:
        from aether_box.adapters.bake import bake
        from aether_box.adapters.lora_file import read_lora

        started = time.perf_counter()

        def progress(done: int, of: int) -> None:
            copy.done, copy.of = done, of
            if self._closing:
                raise _Cancelled

        try:
            loras = [(read_lora(Path(r.path)), r.scale) for r in copy.refs]
            report = bake(
                self.base, loras, copy.path, keep=self.policy.keep, label=copy.key,
                progress=progress,
            )  # fmt: skip
            engine = self._load(copy.path)
        except _Cancelled:
            copy.path.unlink(missing_ok=True)
            return
        except Exception as exc:  # requests keep running with runtime adapters
            log.warning("baking adapter set %s of %s failed: %s", copy.key, self.base.name, exc)
            copy.path.unlink(missing_ok=True)
            copy.state, copy.reason = "failed", str(exc)
            copy.ready.set()
            return
        with self._lock:
            if self._closing or self._copies.get(copy.key) is not copy:
                orphan = True
            else:
                orphan = False
                copy.engine, copy.state = engine, "ready"
                copy.file_bytes = report.bytes
                copy.rounding_to_delta = report.rounding_to_delta
                copy.types = report.types
                copy.seconds = round(time.perf_counter() - started, 3)
        if orphan:  # removed or closing while it baked
            engine.close()
            copy.path.unlink(missing_ok=True)
        else:
            log.info(
                "baked adapter set %s of %s in %.1f s (%s; rounding %.2f of the delta)",
                copy.key, self.base.name, copy.seconds, copy.types, report.rounding_to_delta,
            )  # fmt: skip
        copy.ready.set()

    def ready(self, key: str) -> LlamaGenerator | None:
        """The ready copy of `key`, if any, without counting a request (to score with it)."""
        with self._lock:
            copy = self._copies.get(key)
            return copy.engine if copy is not None else None

    def wait(self, key: str, timeout: float | None = None) -> bool:
        """Block until the copy of `key` is ready (True) or failed or absent (False)."""
        with self._lock:
            copy = self._copies.get(key)
        if copy is None or not copy.ready.wait(timeout):
            return False
        return copy.engine is not None

    def release(self, sha256: str) -> int:
        """Drop the copies that hold adapter `sha256` (it was removed); how many."""
        with self._lock:
            gone = [c for c in self._copies.values() if any(r.sha256 == sha256 for r in c.refs)]
            for copy in gone:
                self._drop(copy)
        return len(gone)

    @property
    def memory_bytes(self) -> int:
        """What the ready copies hold (weights, KV cache and compute buffers)."""
        with self._lock:
            return sum(c.engine.memory_bytes for c in self._copies.values() if c.engine)

    def stats(self) -> list[dict[str, Any]]:
        """Each copy's state, progress, memory and use, for status."""
        with self._lock:
            copies = [(c, c.engine) for c in self._copies.values()]
        return [
            {
                "adapters": c.key,
                "state": c.state,
                "progress": {"done": c.done, "of": c.of},
                "memory_mb": round(engine.memory_bytes / 2**20, 1) if engine else 0.0,
                "file_mb": round(c.file_bytes / 2**20, 1),
                "types": c.types,
                "rounding_to_delta": (
                    None if c.rounding_to_delta is None else round(c.rounding_to_delta, 4)
                ),
                "bake_s": c.seconds,
                "requests": c.requests,
                "reason": c.reason,
                **({"scheduler": engine.scheduler.stats()} if engine else {}),
            }
            for c, engine in copies
        ]

    def close(self) -> None:
        """Stop any bake and close every copy (their requests end as cancelled)."""
        with self._lock:
            self._closing = True
            threads = list(self._threads)
            copies = list(self._copies.values())
            self._copies.clear()
        for thread in threads:
            thread.join()
        for copy in copies:
            if copy.engine is not None:
                copy.engine.close()
                copy.engine = None
            copy.path.unlink(missing_ok=True)
