"""Loaded models: lazy loading, a memory budget, least-recently-used eviction, per-model queues.

A model is loaded on first use, for one role: ``"generate"`` (a GGUF for chat/completion) or
``"embed"`` (a GGUF with mean pooling, or an ONNX encoder). A GGUF used both ways is two
instances, each counted against the budget. A generation instance serves many requests at
once (its own scheduler batches and queues them, see `scheduler`); an embedding instance
serves one request at a time, the others waiting on its lock, first come first served. Either
way one model's queue never holds up another's.
When a load would go over ``engines.memory_budget_mb``, idle instances are unloaded, least
recently used first; busy ones are waited for.
"""

from __future__ import annotations

import logging
import platform
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import anyio

from aether_box.engines.settings import EngineSettings
from aether_box.errors import BadRequest, NotFound, ServiceUnavailable, TooLarge
from aether_box.models.store import ModelInfo, ModelStore

__all__ = ["EngineSettings", "LoadedModel", "ModelRegistry", "ROLES"]

log = logging.getLogger(__name__)

ROLES = ("generate", "embed")
# How long a load waits for busy models to free their share of the budget.
ROOM_WAIT_S = 120.0


class Engine(Protocol):
    memory_bytes: int

    def close(self) -> None: ...


@dataclass(eq=False)
class LoadedModel:
    """One loaded instance and what status reports about it."""

    name: str
    role: str
    kind: str
    engine: Any
    memory_bytes: int
    device: str
    load_s: float
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    users: int = 0  # requests holding or waiting for it; pins it against eviction
    active: int = 0  # requests inside `use` (a shared instance has several at once)
    closing: bool = False  # being unloaded: new requests wait for it to go, then reload
    requests: int = 0
    last_used: float = field(default_factory=time.monotonic)
    tokens_per_s: float | None = None
    items_per_s: float | None = None
    nll_last: float | None = None  # mean per-token NLL of its latest answer (8 tokens or more)
    nll_answers: int = 0

    @property
    def idle_s(self) -> float:
        """Seconds since a request last let go of it."""
        return time.monotonic() - self.last_used

    def idle_for(self, seconds: float) -> bool:
        """No request holds, waits for or runs on it, and none has for `seconds`."""
        in_use = self.users or self.active or self.lock.locked() or self.closing
        return not in_use and self.engine is not None and self.idle_s >= seconds

    @property
    def shared(self) -> bool:
        """Whether it serves several requests at once (a generation scheduler)."""
        return hasattr(self.engine, "submit")

    def snapshot(self) -> dict[str, Any]:
        waiting = self.lock.statistics().tasks_waiting
        busy = self.lock.locked()
        stats = getattr(self.engine, "stats", None)
        extra = stats() if stats is not None else {}
        if extra:
            busy, waiting = extra["slots_busy"] > 0, extra["queue"]
        return {
            "name": self.name,
            "role": self.role,
            "kind": self.kind,
            "memory_mb": round(self.memory_bytes / 2**20, 1),
            "device": self.device,
            "busy": busy,
            "queued": waiting,
            "requests": self.requests,
            "idle_s": round(self.idle_s, 1),
            "in_use": self.users + self.active,
            "load_s": round(self.load_s, 3),
            "gpu_layers": getattr(self.engine, "offloaded", None),  # "31/31" or None
            "tokens_per_s": None if self.tokens_per_s is None else round(self.tokens_per_s, 1),
            "texts_per_s": None if self.items_per_s is None else round(self.items_per_s, 1),
            "nll": (
                None
                if self.nll_last is None
                else {"last": round(self.nll_last, 4), "answers": self.nll_answers}
            ),
            **({"scheduler": extra} if extra else {}),
        }


def probe_llama_gpu(settings: EngineSettings, gpu: bool) -> bool:
    """Whether llama.cpp will offload to the GPU (a call into libllama: run it off the loop)."""
    if settings.gpu == "off" or not gpu:
        return False
    from aether_box.engines.llama import gpu_offload_supported

    # Status reports where each model's buffers actually went (llama.cpp's own account).
    return gpu_offload_supported()


# A request's length in tokens, to turn a model's tokens/s into seconds per request for
# placement (only the ratio between boxes matters, so a typical answer is enough).
PLACEMENT_TOKENS = 64


class ModelRegistry:
    """The box's loaded models, within a memory budget."""

    def __init__(
        self,
        settings: EngineSettings,
        store: ModelStore,
        *,
        gpu: bool = False,
        threads: int = 1,
        llama_gpu: bool = False,
    ) -> None:
        """`gpu`: whether the machine has a GPU; `threads`: engine threads; `llama_gpu`:
        whether llama.cpp offloads to it (all three found off-loop: see `probe_llama_gpu`)."""
        self.settings = settings
        self.store = store
        self.budget_bytes = settings.memory_budget_mb * 2**20
        self._loaded: dict[tuple[str, str], LoadedModel] = {}
        self._admin = anyio.Lock()  # one load or unload decision at a time
        self._released = anyio.Event()  # set whenever an instance stops being used
        self._installed: list[ModelInfo] = []
        self._sizes: dict[tuple[Path, str], int] = {}  # measured at load, for the next load
        self._threads = anyio.CapacityLimiter(8)
        self.gpu_present = gpu
        self.threads = threads
        self.llama_gpu = llama_gpu

    # -- what is installed ---------------------------------------------------------------

    async def refresh_installed(self) -> list[ModelInfo]:
        """Re-read the models dir (in a thread: it stats files)."""
        self._installed = await anyio.to_thread.run_sync(
            self.store.installed, limiter=self._threads
        )
        return self._installed

    def installed_names(self) -> list[str]:
        """The installed models' names, as last read (no disk access)."""
        return [m.name for m in self._installed]

    def loads(self) -> dict[str, dict[str, Any]]:
        """Per loaded model: its slots, busy slots, queue and seconds per request (the grid
        places requests by these; see aether_box.grid.placement)."""
        out: dict[str, dict[str, Any]] = {}
        for entry in self._loaded.values():
            stats = getattr(entry.engine, "stats", None)
            if stats is not None:  # a generation scheduler: its own slots and queue
                figures = stats()
                slots, busy, queue = figures["slots"], figures["slots_busy"], figures["queue"]
                rate = entry.tokens_per_s and entry.tokens_per_s / PLACEMENT_TOKENS
            else:  # one request at a time, the rest wait for its lock
                slots, busy = 1, entry.active
                queue = entry.lock.statistics().tasks_waiting
                rate = entry.items_per_s
            load = out.setdefault(
                entry.name, {"slots": 0, "busy": 0, "queue": 0, "request_s": None}
            )
            load["slots"] += slots
            load["busy"] += busy
            load["queue"] += queue
            if rate:
                load["request_s"] = round(1 / rate, 4)
        return out

    async def has(self, name: str) -> bool:
        """Whether model `name` is installed here (looking again if it was not last time)."""
        if any(m.name == name for m in self._installed):
            return True
        return any(m.name == name for m in await self.refresh_installed())

    async def info(self, name: str) -> ModelInfo:
        """The installed model `name`, or NotFound listing the installed ones."""
        found = next((m for m in self._installed if m.name == name), None)
        if found is None:  # perhaps pulled or added since the last look
            await self.refresh_installed()
            found = next((m for m in self._installed if m.name == name), None)
        if found is None:
            # The store's message lists what is installed and how to get this one.
            await anyio.to_thread.run_sync(self.store.info, name, limiter=self._threads)
            raise NotFound(f"model {name!r} is not installed")  # the store found it after all
        return found

    # -- using a model -------------------------------------------------------------------

    @asynccontextmanager
    async def use(self, name: str, role: str) -> AsyncIterator[LoadedModel]:
        """Hold model `name` loaded for `role` until the block ends: alone (waiting its turn)
        unless the instance serves several requests at once."""
        while True:
            entry = self._loaded.get((name, role))
            if entry is None:
                entry = await self._load(name, role, pin=True)
            else:
                entry.users += 1
            try:
                if entry.shared or entry.closing:
                    if entry.closing or entry.engine is None:
                        await self._released.wait()  # it is being unloaded: then load again
                        continue
                    entry.active += 1
                    try:
                        entry.requests += 1
                        yield entry
                        return
                    finally:
                        entry.active -= 1
                async with entry.lock:
                    if entry.engine is None:
                        continue  # unloaded (`unload` op) while we queued: load it again
                    entry.requests += 1
                    yield entry
                    return
            finally:
                entry.users -= 1
                entry.last_used = time.monotonic()
                self._notify()

    def _notify(self) -> None:
        """Wake whoever waits for an instance to be released or dropped."""
        self._released.set()
        self._released = anyio.Event()

    async def _quiesce(self, entry: LoadedModel) -> None:
        """Wait until no request uses `entry` (taking its lock, for one-at-a-time instances)."""
        entry.closing = True
        while entry.active:
            await self._released.wait()

    async def run(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking engine call in a worker thread (the caller holds the model's lock)."""
        return await anyio.to_thread.run_sync(func, *args, limiter=self._threads)

    async def load(self, name: str, role: str | None = None) -> LoadedModel:
        """Load `name` now (no-op if loaded); the role defaults to what the model's kind does."""
        info = await self.info(name)
        role = role or ("generate" if info.kind == "gguf" else "embed")
        entry = self._loaded.get((name, role))
        return entry if entry is not None else await self._load(name, role, pin=False)

    async def unload(self, name: str) -> list[str]:
        """Unload every instance of `name`, after the requests in progress; the roles unloaded."""
        roles = []
        async with self._admin:
            for role in ROLES:
                entry = self._loaded.get((name, role))
                if entry is not None:
                    try:
                        await self._quiesce(entry)
                        async with entry.lock:
                            await self._drop(entry)
                    except BaseException:
                        if entry.engine is not None:  # not unloaded after all: serve again
                            entry.closing = False
                            self._notify()
                        raise
                    roles.append(role)
        return roles

    async def unload_if_idle(self, name: str, role: str, idle_s: float) -> int | None:
        """Unload one instance only if no request holds or waits for it and none has used it
        for `idle_s` seconds; the bytes freed, or None when it stayed.

        The check and the removal happen without an await between them, so a request either
        got the instance before (and it stays) or finds it gone and loads it again.
        """
        async with self._admin:
            entry = self._loaded.get((name, role))
            if entry is None or not entry.idle_for(idle_s):
                return None
            log.info("unloading %s (%s): idle %.0f s", name, role, entry.idle_s)
            await self._drop(entry)
            return entry.memory_bytes

    async def close(self) -> None:
        """Unload everything (at shutdown)."""
        for entry in list(self._loaded.values()):
            with anyio.move_on_after(10):
                await self._quiesce(entry)
            with anyio.move_on_after(10):
                async with entry.lock:
                    await self._drop(entry)

    # -- loading and eviction ------------------------------------------------------------

    async def _load(self, name: str, role: str, *, pin: bool) -> LoadedModel:
        if role not in ROLES:
            raise BadRequest(f"role must be one of {list(ROLES)}, got {role!r}")
        async with self._admin:
            entry = self._loaded.get((name, role))  # loaded while we waited for our turn
            if entry is None:
                info = await self.info(name)
                if info.kind == "onnx-encoder" and role == "generate":
                    raise BadRequest(
                        f"model {name!r} is an ONNX sentence encoder: it embeds (service 'embed') "
                        "but cannot generate text; use a GGUF model such as smollm2"
                    )
                await self._make_room(self._estimate(info, role), name)
                entry = await self._open(info, role)
                self._sizes[(info.path, role)] = entry.memory_bytes
                if entry.memory_bytes > self.budget_bytes:
                    await self._drop(entry)
                    await self._make_room(entry.memory_bytes, name)  # raises TooLarge
                self._loaded[(name, role)] = entry
                # The estimate was rough; now the engine's own figure is known.
                await self._make_room(0, name, keep=entry)
            if pin:
                entry.users += 1
        return entry

    def _estimate(self, info: ModelInfo, role: str) -> int:
        known = self._sizes.get((info.path, role))
        if known is not None:
            return known
        # Weights plus a share for KV cache and compute buffers, until a load tells.
        return int(info.size * 1.25) + 64 * 2**20

    def engines(self) -> list[Any]:
        """The engines of the loaded models (loaded now: one may be unloading)."""
        return [e.engine for e in self._loaded.values() if e.engine is not None]

    @property
    def used_bytes(self) -> int:
        return sum(e.memory_bytes for e in self._loaded.values())

    async def _make_room(self, needed: int, name: str, keep: LoadedModel | None = None) -> None:
        """Unload idle instances (never `keep`), least recently used first, till `needed` fits."""
        if needed > self.budget_bytes:
            raise TooLarge(
                f"model {name!r} needs about {needed / 2**20:.0f} MB, more than the whole memory "
                f"budget of {self.settings.memory_budget_mb} MB; raise engines.memory_budget_mb"
            )
        while self.used_bytes + needed > self.budget_bytes:
            idle = [
                e
                for e in self._loaded.values()
                if e.users == 0 and not e.lock.locked() and e is not keep
            ]
            if idle:
                victim = min(idle, key=lambda e: e.last_used)
                log.info(
                    "unloading %s (%s) to stay within the memory budget", victim.name, victim.role
                )
                await self._drop(victim)
            elif needed == 0:
                return  # only the new model's true size went over, and everything else is busy
            else:
                # A busy model that finishes becomes a candidate; one that never rests (a
                # steady queue) would starve this load, so give up after a while.
                with anyio.move_on_after(ROOM_WAIT_S) as waited:
                    await self._released.wait()
                if waited.cancelled_caught:
                    busy = sorted({e.name for e in self._loaded.values()})
                    raise ServiceUnavailable(
                        f"model {name!r} needs {needed / 2**20:.0f} MB but the memory budget "
                        f"({self.settings.memory_budget_mb} MB) is held by busy models {busy}; "
                        "retry later, or raise engines.memory_budget_mb"
                    )

    async def _open(self, info: ModelInfo, role: str) -> LoadedModel:
        started = time.perf_counter()
        engine = await anyio.to_thread.run_sync(self._loader(info, role), limiter=self._threads)
        elapsed = time.perf_counter() - started
        device = getattr(engine, "device", None) or _onnx_device(engine)
        log.info(
            "loaded %s for %s in %.2f s: %.0f MB on %s",
            info.name,
            role,
            elapsed,
            engine.memory_bytes / 2**20,
            device,
        )
        return LoadedModel(
            info.name, role, info.kind, engine, int(engine.memory_bytes), device, elapsed
        )

    def _loader(self, info: ModelInfo, role: str) -> Callable[[], Any]:
        s, threads = self.settings, self.threads
        gpu_layers = 0
        if self.llama_gpu:
            gpu_layers = -1 if s.n_gpu_layers == "all" else int(s.n_gpu_layers)
        if info.kind == "gguf":
            from aether_box.engines.generator import LlamaGenerator
            from aether_box.engines.llama import LlamaEmbedder

            if role == "generate":
                return lambda: LlamaGenerator.load(
                    info.path,
                    n_ctx=s.n_ctx,
                    n_threads=threads,
                    n_gpu_layers=gpu_layers,
                    # On the GPU the CPU threads barely matter; on the CPU a busy host makes
                    # fewer threads faster (see engines/threads.py).
                    adapt_threads=s.n_threads == 0 and gpu_layers == 0,
                    parallel=s.parallel,
                    max_queue=s.max_queue,
                    kv_cells=s.kv_cells,
                    kv_unified=s.kv_unified,
                    flash_attn=s.flash_attn,
                    name=info.name,
                    state_dir=s.state_dir / info.name if s.state_dir else None,
                    state_bytes=s.state_cache_mb * 2**20,
                )
            return lambda: LlamaEmbedder.load(
                info.path, n_ctx=s.embed_n_ctx, n_threads=threads, n_gpu_layers=gpu_layers
            )
        if info.kind == "onnx-encoder":
            from aether_box.engines.onnx import OnnxEncoder

            device = "cpu" if s.gpu == "off" else "auto"
            return lambda: OnnxEncoder.load(
                info.path, device=device, threads=threads, int8=s.onnx_int8
            )
        raise BadRequest(f"model {info.name!r} is of kind {info.kind!r}, which no engine serves")

    async def _drop(self, entry: LoadedModel) -> None:
        self._loaded.pop((entry.name, entry.role), None)
        close = getattr(entry.engine, "close", None)
        entry.engine = None
        try:
            if close is not None:
                await anyio.to_thread.run_sync(close, limiter=self._threads)
        finally:
            self._notify()  # requests that waited for it to go load it again

    # -- status --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The "models" section of `status`."""
        return {
            "installed": [
                {
                    "name": m.name,
                    "kind": m.kind,
                    "size_mb": round(m.size / 2**20, 1),
                    "source": m.source,
                    "dim": m.dim,
                }
                for m in self._installed
            ],
            "loaded": [e.snapshot() for e in self._loaded.values()],
            "budget_mb": self.settings.memory_budget_mb,
            "used_mb": round(self.used_bytes / 2**20, 1),
            "gpu_present": self.gpu_present,
            "llama_gpu_offload": self.llama_gpu,
            "gpu": self.settings.gpu,
            "n_gpu_layers": self.settings.n_gpu_layers,
            "n_threads": self.threads,
            "onnx_int8": self.settings.onnx_int8,
            "n_ctx": self.settings.n_ctx,
            "parallel": self.settings.parallel,
        }


def gpu_present() -> bool:
    """Whether the machine shows a GPU that llama.cpp could use (NVIDIA, AMD or Apple)."""
    if sys.platform == "darwin":
        return platform.machine() == "arm64"  # Apple silicon: Metal
    return any(Path(p).exists() for p in ("/dev/nvidia0", "/dev/kfd")) or any(
        Path("/dev/dri").glob("renderD*")
    )


def _onnx_device(engine: Any) -> str:
    provider = getattr(engine, "provider", "") or ""
    return "cuda" if provider.startswith("CUDA") else "cpu"
