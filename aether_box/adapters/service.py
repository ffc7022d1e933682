"""The `adapters` service and component: kept LoRA adapters, merges, and the fusion log.

Ops (every path is on the box's machine):
- ``add``: ``{"path", "base", "name"?}``: a GGUF LoRA file, or a PEFT directory
  (adapter_config.json + adapter_model.safetensors) converted to GGUF. Checked against the
  base model first (see lora_file.check_against_base); nothing is kept if a check fails. The
  fusion probe then runs in the background. -> the adapter.
- ``list`` -> ``{"adapters": [...]}``, each with its newest probe (``probe``) and newest
  finished one (``judged``: its verdict is the one that counts); ``show``: ``{"name"}`` ->
  the adapter and its fusion log; ``remove``: ``{"name"}`` (refused while requests use it).
- ``merge``: ``{"name", "from": [{"name", "weight"}], "method": "linear"|"ties"|"dare",
  "density"?, "rank"?}``: progress as PARTIAL ``{"merged", "of"}``; the result is kept as an
  ordinary adapter, with its recipe, and probed (also against its sources stacked at runtime).
- ``prune``: ``{"name", "reason", "by"?}``: requests that do not force it are refused, with
  the reason; ``restore``: ``{"name", "by"?}``: served again (a prune verdict of its fusion log
  is overridden until a new probe judges it). -> ``{"adapter", "pruning", "pruned",
  "previous"}``. The tuner calls them on fusion-log verdicts (AdapterCatalog in contract).
- ``probe``: ``{"name"}`` queues a new probe; ``wait``: ``{"name"}`` streams PARTIAL
  ``{"probed", "of"}`` until the adapter's queued or running probe ends -> its log entry.

Requests of `llm` reach the adapters through `AdapterCatalog.lease` (see contract).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, ClassVar

import anyio
import anyio.abc

from aether_box.adapters import probe
from aether_box.adapters.lora_file import check_against_base, read_lora
from aether_box.adapters.merge import METHODS, merge
from aether_box.adapters.settings import AdapterSettings
from aether_box.adapters.store import AdapterStore, valid_name
from aether_box.bus.service import OpService, Request, ThreadProgress, require
from aether_box.context import BoxContext
from aether_box.contract import AdapterCatalog, AdapterHost, AdapterLease, TextScorer
from aether_box.engines.generation import AdapterRef
from aether_box.errors import (
    AdapterInUse,
    AdapterPruned,
    BadRequest,
    NotFound,
    ServiceUnavailable,
)
from aether_box.models.settings import ModelsSettings
from aether_box.models.store import ModelStore

__all__ = ["AdaptersComponent", "AdaptersService"]

log = logging.getLogger(__name__)

MAX_SCALE = 4.0


@dataclass
class Usage:
    """One adapter's requests since the box started, for status and /metrics."""

    requests: int = 0
    tokens: int = 0
    tokens_per_s: float | None = None
    active: int = 0


@dataclass
class ProbeState:
    """The probe queue: what runs, how far it got, what waits."""

    running: str | None = None
    done: int = 0
    total: int = 0
    queued: list[str] = field(default_factory=list)
    changed: anyio.Event = field(default_factory=anyio.Event)

    def touch(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()


class _Lease(AdapterLease):
    def __init__(self, component: AdaptersComponent, names: list[str], refs: list[AdapterRef]):
        self.refs = tuple(refs)
        self._component = component
        self._names = names
        self._released = False
        for name in names:
            component.usage.setdefault(name, Usage()).active += 1

    def release(self, tokens: int = 0, tokens_per_s: float = 0.0) -> None:
        if self._released:
            return
        self._released = True
        for name in self._names:
            usage = self._component.usage[name]
            usage.active -= 1
            usage.requests += 1
            usage.tokens += tokens
            if tokens >= 16 and tokens_per_s:
                usage.tokens_per_s = tokens_per_s
        self._component.released.set()
        self._component.released = anyio.Event()


class AdaptersComponent(AdapterCatalog):
    """Keeps adapters, serves `adapters`, probes them in the background."""

    name: ClassVar[str] = "adapters"
    settings_class: ClassVar[type | None] = AdapterSettings

    def __init__(self, ctx: BoxContext) -> None:
        self.ctx = ctx
        self.settings = ctx.config.get(AdapterSettings)
        self.models_dir = ctx.config.get(ModelsSettings).dir
        self.store: AdapterStore | None = None
        self.usage: dict[str, Usage] = {}
        self.released = anyio.Event()
        self.probes = ProbeState()
        self._send: Any = None
        self._view: list[dict[str, Any]] = []  # status's copy, refreshed after each change

    async def serve(
        self,
        ctx: BoxContext,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        self.store = await anyio.to_thread.run_sync(AdapterStore, ctx.data_dir / "adapters")
        await anyio.to_thread.run_sync(self.store.abandon_running)
        send, receive = anyio.create_memory_object_stream[str](1000)
        try:
            async with send, receive:
                self._send = send
                await self.refresh()
                # Never judged (kept just before a kill, or its probe cut short): probe it now.
                for a in self._view:
                    if a["judged"] is None and _state(a["probe"]) in (None, "interrupted"):
                        await self.queue_probe(a["name"])
                ctx.add_service("adapters", AdaptersService(self))
                task_status.started()
                async for name in receive:
                    await self._run_probe(name)
        finally:
            self._send = None
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.store.close)

    # -- requests (AdapterCatalog) -------------------------------------------------------

    async def lease(self, model: str, specs: Sequence[Mapping[str, Any]]) -> AdapterLease:
        store = self._need_store()
        names, refs = [], []
        for i, spec in enumerate(specs):
            if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
                raise BadRequest(f'adapters[{i}] must be a map {{"name", "scale"?, "force"?}}')
            scale = spec.get("scale", 1.0)
            if isinstance(scale, bool) or not isinstance(scale, int | float):
                raise BadRequest(f"adapters[{i}].scale must be a number, got {scale!r}")
            if not -MAX_SCALE <= scale <= MAX_SCALE:
                raise BadRequest(f"adapters[{i}].scale must be within ±{MAX_SCALE}, got {scale}")
            name = spec["name"]
            adapter = await anyio.to_thread.run_sync(store.get, name)
            if adapter["base"] != model:
                raise BadRequest(
                    f"adapter {name!r} was made for model {adapter['base']!r}, not {model!r}"
                )
            why = self._pruned_because(name)
            if why is not None and not spec.get("force"):
                raise AdapterPruned(
                    f"adapter {name!r} is pruned {why}. Send {{'name': {name!r}, 'force': true}} "
                    "to use it anyway, restore it (`aether-box adapters restore`), or remove it"
                )
            names.append(name)
            pinned = name in self.settings.pinned
            refs.append(AdapterRef(adapter["path"], adapter["sha256"], float(scale), pinned))
        if len(set(names)) != len(names):
            raise BadRequest("an adapter is named twice in 'adapters'")
        return _Lease(self, names, refs)

    # -- the service's work --------------------------------------------------------------

    def _need_store(self) -> AdapterStore:
        if self.store is None:
            raise ServiceUnavailable("the adapters component is still starting; retry")
        return self.store

    def _latest(self, name: str) -> dict[str, Any] | None:
        return next((a["probe"] for a in self._view if a["name"] == name), None)

    def _pruned_because(self, name: str) -> str | None:
        """Why requests may not use `name` unforced (None: they may). Pruned by the `prune`
        op (the tuner's or an admin's), or by its newest probe's verdict unless restored
        since that probe."""
        adapter = next((a for a in self._view if a["name"] == name), None)
        if adapter is None:
            return None
        # The newest finished probe judges: a re-probe running, failed or cut short by a
        # stop has no verdict, and must not serve an adapter the last verdict pruned.
        decision, judged = adapter["pruning"], adapter["judged"]
        if decision is not None and decision["state"] == "pruned":
            return f"by {decision['by']}: {decision['reason']}"
        if judged is None or judged.get("verdict") != "prune":
            return None
        if decision is not None and (decision["probe"] or 0) >= judged["id"]:
            return None  # restored after this probe judged it
        return f"by the fusion log: {judged['reason']}"

    async def refresh(self) -> None:
        """Re-read the adapters, their latest probes and pruning for status (off the loop)."""
        store = self._need_store()

        def read() -> list[dict[str, Any]]:
            latest, judged, pruning = store.latest(), store.latest(done=True), store.pruning()
            return [
                {
                    **a,
                    "probe": latest.get(a["name"]),
                    "judged": judged.get(a["name"]),
                    "pruning": pruning.get(a["name"]),
                }
                for a in store.list()
            ]

        self._view = await anyio.to_thread.run_sync(read)

    async def prune(self, name: str, reason: str, by: str) -> dict[str, Any]:
        """Refuse `name` to unforced requests from now on (see AdapterCatalog.prune)."""
        store = self._need_store()
        if not reason.strip():
            raise BadRequest("say why the adapter is pruned: field 'reason'")
        previous = await anyio.to_thread.run_sync(
            lambda: store.set_pruning(name, "pruned", reason, by)
        )
        await self.refresh()
        log.info("adapter %s pruned by %s: %s", name, by, reason)
        return self._decision(name, previous)

    async def restore(self, name: str, by: str) -> dict[str, Any]:
        """Serve `name` again (see AdapterCatalog.restore)."""
        store = self._need_store()
        await anyio.to_thread.run_sync(store.get, name)
        # Against the verdict that prunes it: a probe running now judges it anew when done.
        judged = next((a["judged"] for a in self._view if a["name"] == name), None)
        probe_id = judged["id"] if judged is not None else None
        previous = await anyio.to_thread.run_sync(
            lambda: store.set_pruning(name, "restored", "restored", by, probe_id)
        )
        await self.refresh()
        log.info("adapter %s restored by %s", name, by)
        return self._decision(name, previous)

    def _decision(self, name: str, previous: dict[str, Any] | None) -> dict[str, Any]:
        adapter = next(a for a in self._view if a["name"] == name)
        return {
            "adapter": name,
            "pruning": adapter["pruning"],
            "pruned": self._pruned_because(name),
            "previous": previous,
        }

    def base_path(self, model: str) -> Path:
        """The GGUF file of installed model `model` (blocks)."""
        info = ModelStore(self.models_dir).info(model)
        if info.kind != "gguf":
            raise BadRequest(f"model {model!r} is {info.kind}; LoRA adapters need a GGUF model")
        return info.path

    async def add(self, path: str, base: str, name: str | None) -> dict[str, Any]:
        store = self._need_store()
        if name is None:
            name = PurePath(path.rstrip("/")).name.removesuffix(".gguf")
            try:
                valid_name(name)
            except BadRequest:  # the user named no name: say how to give one
                raise BadRequest(
                    f"the file name {name!r} is no usable adapter name (1 to 64 letters, "
                    "digits, '-', '_' or '.'): give one with --name (field 'name')"
                ) from None
        else:
            valid_name(name)

        def work() -> dict[str, Any]:
            source = Path(path).expanduser()
            if store.exists(name):
                raise BadRequest(
                    f"an adapter named {name!r} exists; remove it or pick another name"
                )
            base_path = self.base_path(base)
            if source.is_dir():
                from aether_box.adapters.peft import convert_peft

                lora = convert_peft(source, base_path)
                check_against_base(lora, base_path, base)
                return store.add(name, base, lora, f"peft:{source}")
            if not source.is_file():
                raise NotFound(f"no adapter file or PEFT directory at {source}")
            lora = read_lora(source)
            check_against_base(lora, base_path, base)
            return store.add(name, base, lora, f"gguf:{source}", copy_of=source)

        adapter = await anyio.to_thread.run_sync(work)
        await self._kept(name)
        return adapter

    async def remove(self, name: str) -> dict[str, Any]:
        store = self._need_store()
        usage = self.usage.get(name)
        if usage is not None and usage.active:
            raise AdapterInUse(
                f"adapter {name!r} is in use by {usage.active} request(s); retry when they end"
            )
        adapter = await anyio.to_thread.run_sync(store.remove, name)
        self.usage.pop(name, None)
        await self.refresh()
        host = self.ctx.get(AdapterHost)
        if host is not None and not any(a["sha256"] == adapter["sha256"] for a in self._view):
            # No name keeps these contents: free them in the engines (after any probe's job).
            adapter["unloaded_from"] = host.release_adapter(adapter["sha256"])
        return adapter

    async def merge(self, request: Request) -> dict[str, Any]:
        store = self._need_store()
        body = request.body
        name = valid_name(require(body, "name", str))
        method = body.get("method", "linear")
        if method not in METHODS:
            raise BadRequest(f"field 'method' must be one of {list(METHODS)}, got {method!r}")
        density = body.get("density", 0.3)
        rank = body.get("rank", 16)
        if isinstance(density, bool) or not isinstance(density, int | float):
            raise BadRequest(f"field 'density' must be a number, got {density!r}")
        if not 0 < density <= 1:  # also false for nan
            raise BadRequest(f"field 'density' is the share of entries kept: 0 to 1, not {density}")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise BadRequest(f"field 'rank' must be a whole number of at least 1, got {rank!r}")
        parts = require(body, "from", list)
        sources = []
        for i, part in enumerate(parts):
            if not isinstance(part, Mapping) or not isinstance(part.get("name"), str):
                raise BadRequest(f'from[{i}] must be a map {{"name", "weight"}}')
            weight = part.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, int | float):
                raise BadRequest(f"from[{i}].weight must be a number")
            if not math.isfinite(weight):  # a NaN weight merged into NaN tensors
                raise BadRequest(f"from[{i}].weight must be a finite number, got {weight}")
            sources.append((part["name"], float(weight)))
        names = [n for n, _ in sources]
        if len(set(names)) != len(names):  # one adapter at the sum of its weights, said plainly
            raise BadRequest(f"'from' names an adapter twice ({names}): give each once")
        if sources and not any(w for _, w in sources):
            raise BadRequest("every weight in 'from' is 0: the merge would be an empty adapter")
        progress = ThreadProgress(request)

        def work() -> dict[str, Any]:
            if store.exists(name):
                raise BadRequest(
                    f"an adapter named {name!r} exists; remove it or pick another name"
                )
            adapters = [store.get(n) for n, _ in sources]
            bases = {a["base"] for a in adapters}
            if len(bases) != 1:
                raise BadRequest(f"the adapters adapt different models: {sorted(bases)}")
            loras = [
                (read_lora(Path(a["path"])), w) for a, (_, w) in zip(adapters, sources, strict=True)
            ]
            report = merge(
                loras,
                method,
                density=float(density),
                rank=rank,
                progress=lambda i, n: progress({"merged": i, "of": n}, last=i == n),
            )
            recipe = {
                "method": method,
                "from": [
                    {"name": n, "weight": w, "sha256": a["sha256"]}
                    for (n, w), a in zip(sources, adapters, strict=True)
                ],
                "density": density if method != "linear" else None,
                "rank": report.rank,
                "energy_mean": round(report.energy_mean, 6),
                "energy_min": round(report.energy_min, 6),
            }
            log.info(
                "merged %s (%s, rank %d): %.2f%% of the deltas' energy kept (least %.2f%%)",
                name, method, report.rank, 100 * report.energy_mean, 100 * report.energy_min,
            )  # fmt: skip
            return store.add(name, bases.pop(), report.lora, f"merge:{method}", recipe)

        adapter = await anyio.to_thread.run_sync(work)
        await self._kept(name)
        return adapter

    async def _kept(self, name: str) -> None:
        """Show a newly kept adapter and queue its probe, even when the client gave up while
        it was written (Ctrl-C, a timeout): it is kept all the same, so it must be judged."""
        with anyio.CancelScope(shield=True):
            await self.refresh()
            await self.queue_probe(name)

    # -- the fusion probe ----------------------------------------------------------------

    async def queue_probe(self, name: str) -> None:
        if name not in self.probes.queued and self._send is not None:
            self.probes.queued.append(name)
            self.probes.touch()
            await self._send.send(name)

    async def wait_probe(self, request: Request, name: str) -> dict[str, Any]:
        """Stream the progress of `name`'s queued or running probe; its log entry when done."""
        await anyio.to_thread.run_sync(self._need_store().get, name)
        while name in self.probes.queued or self.probes.running == name:
            changed = self.probes.changed
            if self.probes.running == name:
                await request.partial({"probed": self.probes.done, "of": self.probes.total})
            await changed.wait()
        entry = self._latest(name)
        if entry is None:
            raise NotFound(f"adapter {name!r} has no probe in the fusion log; run op 'probe'")
        return entry

    async def _run_probe(self, name: str) -> None:
        store = self._need_store()
        state = self.probes
        # Running before it leaves the queue: a waiter always sees it in one or the other.
        state.running, state.done, state.total = name, 0, 0
        if name in state.queued:
            state.queued.remove(name)
        try:
            adapter = await anyio.to_thread.run_sync(store.get, name)
        except NotFound:
            state.running = None
            state.touch()
            return  # removed while it waited
        entry = await anyio.to_thread.run_sync(store.log_start, name, adapter["sha256"])
        state.touch()
        started = time.perf_counter()
        try:
            fields = await self._probe(adapter)
            fields["state"] = "done"
        except Exception as exc:  # the log says why; the box goes on
            log.warning("the fusion probe of adapter %s failed: %s", name, exc)
            fields = {"state": "failed", "reason": str(exc)}
        fields["seconds"] = round(time.perf_counter() - started, 3)
        await anyio.to_thread.run_sync(lambda: store.log_finish(entry, **fields))
        await self.refresh()  # before it stops running: waiters then read the new entry
        state.running = None
        state.touch()

    async def _probe(self, adapter: dict[str, Any]) -> dict[str, Any]:
        scorer = self.ctx.get(TextScorer)
        if scorer is None:
            raise ServiceUnavailable("no engine to score with (the engines component is off)")
        store = self._need_store()
        texts = (await anyio.to_thread.run_sync(probe.probe_prompts))[: self.settings.probe_prompts]
        model = adapter["base"]
        adapted = (AdapterRef(adapter["path"], adapter["sha256"], 1.0),)
        stacked: tuple[AdapterRef, ...] = ()
        recipe = adapter.get("recipe") or {}
        if recipe.get("from"):
            present = {a["sha256"] for a in await anyio.to_thread.run_sync(store.list)}
            sources = recipe["from"]
            if all(s["sha256"] in present for s in sources):
                stacked = tuple(
                    AdapterRef(str(store.file(s["sha256"])), s["sha256"], float(s["weight"]))
                    for s in sources
                )
        to_base, to_stack = probe.Divergence(), probe.Divergence()
        self.probes.total = len(texts)
        for i, text in enumerate(texts):
            base_logits = (await scorer.score(model, [text], ()))[0]
            adapted_logits = (await scorer.score(model, [text], adapted))[0]
            await anyio.to_thread.run_sync(to_base.add, base_logits, adapted_logits)
            if stacked:
                stack_logits = (await scorer.score(model, [text], stacked))[0]
                await anyio.to_thread.run_sync(to_stack.add, stack_logits, adapted_logits)
            self.probes.done = i + 1
            self.probes.touch()
        summary = to_base.summary()
        verdict, reason = probe.verdict(summary["kl_mean"], summary["top1"])
        fields: dict[str, Any] = {
            **summary,
            "prompts": len(texts),
            "tokens": to_base.tokens,
            "verdict": verdict,
            "reason": reason,
        }
        if stacked:
            stack = to_stack.summary()
            fields["stack_kl_mean"], fields["stack_kl_p95"] = stack["kl_mean"], stack["kl_p95"]
        return fields

    # -- status --------------------------------------------------------------------------

    def status_section(self) -> dict[str, Any] | None:
        """Kept adapters with their verdicts and use, the probe queue and the thresholds."""
        if self.store is None:
            return None
        adapters = []
        for a in self._view:
            usage = self.usage.get(a["name"], Usage())
            p = a["judged"] or a["probe"] or {}
            adapters.append(
                {
                    "name": a["name"],
                    "base": a["base"],
                    "rank": a["rank"],
                    "verdict": p.get("verdict") or p.get("state") or "pending",
                    "pruned": self._pruned_because(a["name"]),
                    "pruning": (
                        {k: a["pruning"][k] for k in ("state", "by", "at")}
                        if a["pruning"]
                        else None
                    ),
                    "kl_mean": p.get("kl_mean"),
                    "kl_p95": p.get("kl_p95"),
                    "top1": p.get("top1"),
                    "requests": usage.requests,
                    "tokens": usage.tokens,
                    "tokens_per_s": usage.tokens_per_s,
                    "in_use": usage.active,
                }
            )
        return {
            "adapters": adapters,
            "probe": {
                "running": self.probes.running,
                "done": self.probes.done,
                "total": self.probes.total,
                "queued": list(self.probes.queued),
            },
            "thresholds": {
                "warn": {"kl_mean": probe.WARN_KL, "top1": probe.WARN_TOP1},
                "prune": {"kl_mean": probe.PRUNE_KL, "top1": probe.PRUNE_TOP1},
            },
        }


class AdaptersService(OpService):
    """The `adapters` bus service (see the module docstring)."""

    name = "adapters"

    def __init__(self, component: AdaptersComponent) -> None:
        self.component = component

    async def op_add(self, request: Request) -> dict[str, Any]:
        body = request.body
        name = require(body, "name", str) if body.get("name") is not None else None
        return await self.component.add(
            require(body, "path", str), require(body, "base", str), name
        )

    async def op_list(self, request: Request) -> dict[str, Any]:
        await self.component.refresh()
        pruned = self.component._pruned_because
        return {"adapters": [{**a, "pruned": pruned(a["name"])} for a in self.component._view]}

    async def op_show(self, request: Request) -> dict[str, Any]:
        name = require(request.body, "name", str)
        store = self.component._need_store()
        adapter = await anyio.to_thread.run_sync(store.get, name)
        log_rows = await anyio.to_thread.run_sync(store.fusion_log, name)
        usage = self.component.usage.get(name, Usage())
        return {
            "adapter": adapter,
            "fusion_log": log_rows,
            "usage": {"requests": usage.requests, "tokens": usage.tokens, "in_use": usage.active},
        }

    async def op_remove(self, request: Request) -> dict[str, Any]:
        return {"removed": await self.component.remove(require(request.body, "name", str))}

    async def op_merge(self, request: Request) -> dict[str, Any]:
        return await self.component.merge(request)

    async def op_prune(self, request: Request) -> dict[str, Any]:
        body = request.body
        return await self.component.prune(
            _adapter_name(body), require(body, "reason", str), body.get("by") or "admin"
        )

    async def op_restore(self, request: Request) -> dict[str, Any]:
        body = request.body
        return await self.component.restore(_adapter_name(body), body.get("by") or "admin")

    async def op_probe(self, request: Request) -> dict[str, Any]:
        name = require(request.body, "name", str)
        await anyio.to_thread.run_sync(self.component._need_store().get, name)
        await self.component.queue_probe(name)
        return {"queued": name}

    async def op_wait(self, request: Request) -> dict[str, Any]:
        return await self.component.wait_probe(request, require(request.body, "name", str))


def _state(entry: Mapping[str, Any] | None) -> str | None:
    """The state of a fusion-log entry (None: there is none)."""
    return entry["state"] if entry is not None else None


def _adapter_name(body: Mapping[str, Any]) -> str:
    """The adapter a request names, in field 'name' (or 'adapter')."""
    name = body.get("name", body.get("adapter"))
    if not isinstance(name, str):
        raise BadRequest("field 'name' (the adapter) is required, a string")
    return name
