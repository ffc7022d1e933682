"""The component contract: what a component is, and the public interfaces components offer.

A component is a class with a `name`, an optional `settings_class` (its config section, a
dataclass marked with `aether_box.config.section`), and ``async serve(ctx, *, task_status)``.
The box builds it as ``cls(ctx)`` with a `BoxContext` (see aether_box.context), then serves it
under a supervisor: `serve` registers its services through the context, calls
``task_status.started()``, and runs until cancelled (or returns when it has nothing to run).
An optional ``status_section()`` adds a section to the `status` reply, under `status_key`
(default: the component's name); it runs on the event loop, so it only reads counters.

Components reach each other through the interfaces below, never by name: ``ctx.get(Iface)``
returns the running component that implements `Iface`, or None when none runs. An interface
is a plain base class that the implementing component inherits (an explicit, exact
isinstance match, and one that type checkers accept as ``type[T]``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import anyio.abc

from aether_box.bus.service import Request

if TYPE_CHECKING:
    import numpy as np

    from aether_box.context import BoxContext
    from aether_box.engines.generation import AdapterRef
    from aether_box.tools.spec import Tool

__all__ = [
    "AdapterCatalog",
    "AdapterHost",
    "AdapterLease",
    "Component",
    "ComponentFactory",
    "Grid",
    "ModelCatalog",
    "ModelPins",
    "ModelResidency",
    "Observations",
    "PeerDirectory",
    "PeerForwarder",
    "StatusReporter",
    "TextScorer",
    "ToolCatalog",
]


@runtime_checkable
class Component(Protocol):
    """One capability of the box; see the module docstring."""

    name: ClassVar[str]
    settings_class: ClassVar[type | None]

    async def serve(
        self, ctx: BoxContext, *, task_status: anyio.abc.TaskStatus[None] = ...
    ) -> None:
        """Register services, report started, then run until cancelled."""
        ...


# How the box builds a component: the class itself, called with the component's context.
ComponentFactory = Callable[["BoxContext"], Component]


class ModelCatalog:
    """The models this box can run (the engines component implements it)."""

    async def has_model(self, model: str) -> bool:
        """Whether `model` is installed here."""
        raise NotImplementedError

    async def require_model(self, model: str) -> None:
        """Return if `model` is installed, else raise NotFound saying what is."""
        raise NotImplementedError

    def installed(self) -> list[str]:
        """The installed models' names, as last read (no disk access)."""
        raise NotImplementedError

    def loads(self) -> dict[str, dict[str, Any]]:
        """Per loaded model: slots, busy, queue and request_s (seconds per request)."""
        raise NotImplementedError


class ModelResidency:
    """Loaded models and how idle they are; unloads only idle ones (the engines implement it)."""

    def residency(self) -> list[dict[str, Any]]:
        """Per loaded instance: name, role, memory_mb, idle_s, in_use, requests, load_s."""
        raise NotImplementedError

    async def unload_if_idle(self, model: str, role: str, idle_s: float) -> int | None:
        """Unload it if no request holds or waits for it and it has been idle `idle_s`
        seconds; the bytes freed, or None when it stays loaded."""
        raise NotImplementedError


class ModelPins:
    """Models that sessions keep loaded (the sessions component implements it)."""

    def pinned_by(self, model: str) -> list[str]:
        """The ids of the live sessions pinning `model` (empty: none does)."""
        raise NotImplementedError


class Observations:
    """What the observer notices beyond alerts: the signals the tuner acts on."""

    def signals(self) -> list[dict[str, Any]]:
        """Current readings, each ``{kind, subject, triggered, seq, figures, message}`` (see
        aether_box.monitor.watches); `seq` grows each time that signal triggers again."""
        raise NotImplementedError


class PeerForwarder:
    """A linked peer that can serve one request in this box's place."""

    async def forward(
        self, service: str, request: Request, *, routed: bool = False
    ) -> Mapping[str, Any]:
        """Serve `request` with the peer's `service`, passing partial replies on."""
        raise NotImplementedError


class PeerDirectory:
    """Linked peer boxes (the federation component implements it)."""

    def peer_for_model(self, service: str, model: str) -> PeerForwarder | None:
        """A peer that answers now and offers `service` with `model` installed."""
        raise NotImplementedError


class Grid:
    """The grid this box is a member of (the grid component implements it)."""

    def places(self, service: str, model: str) -> bool:
        """Whether a member that is up offers `service` with `model` (placement applies)."""
        raise NotImplementedError

    async def place(
        self,
        service: str,
        model: str,
        request: Request,
        here: Callable[[Request], Awaitable[Mapping[str, Any] | None]] | None,
    ) -> Mapping[str, Any]:
        """Serve `request` on the box with the shortest expected wait for `model` (`here`
        serves it on this box, None when this box lacks the model), failing over once; the
        reply says where it ran and why (its "grid" field)."""
        raise NotImplementedError

    async def ask_members(
        self, service: str, body: Mapping[str, Any], *, timeout: float
    ) -> dict[str, Mapping[str, Any] | BaseException]:
        """Send `body` to `service` on every member at once: each member's reply or error."""
        raise NotImplementedError

    @property
    def member_name(self) -> str:
        """This box's name in the grid."""
        raise NotImplementedError


class StatusReporter:
    """The box's own description of itself (the status component implements it)."""

    def report(self) -> dict[str, Any]:
        """Everything `status` answers: process, services, counters, sections."""
        raise NotImplementedError


class AdapterLease:
    """The adapters one request runs with, held until it ends (a held adapter is not removed)."""

    refs: tuple[AdapterRef, ...] = ()

    def release(self, tokens: int = 0, tokens_per_s: float = 0.0) -> None:
        """The request ended, having generated `tokens` at `tokens_per_s`."""
        raise NotImplementedError


class AdapterCatalog:
    """LoRA adapters kept by this box (the adapters component implements it)."""

    async def lease(self, model: str, specs: Sequence[Mapping[str, Any]]) -> AdapterLease:
        """Resolve a request's ``adapters`` field (``[{"name", "scale"?, "force"?}]``) for
        `model`: NotFound, BadRequest or AdapterPruned (saying why) when it cannot run."""
        raise NotImplementedError

    async def prune(self, name: str, reason: str, by: str) -> dict[str, Any]:
        """Refuse `name` to requests that do not force it, saying `reason`; -> the adapter,
        with ``pruning`` (the state before under ``previous``)."""
        raise NotImplementedError

    async def restore(self, name: str, by: str) -> dict[str, Any]:
        """Serve `name` again, its fusion log's prune verdict overridden until a new probe."""
        raise NotImplementedError


class AdapterHost:
    """Engines that load LoRA adapters into their models (the engines component)."""

    def release_adapter(self, sha256: str) -> int:
        """Free the adapter of contents `sha256` in every loaded model once no request uses
        it (never blocks); -> how many models had it loaded."""
        raise NotImplementedError


class TextScorer:
    """Teacher-forced logits of texts under an adapter set (the engines component)."""

    async def score(
        self, model: str, texts: Sequence[str], adapters: Sequence[AdapterRef]
    ) -> list[np.ndarray]:
        """For each text, the logits (n_tokens, n_vocab) at every position."""
        raise NotImplementedError


class ToolCatalog:
    """The tools the box may call (the tools component implements it)."""

    def callable_tools(self) -> list[Tool]:
        """The tools that are on, allowed and reachable now."""
        raise NotImplementedError

    async def call_tool(self, name: str, arguments: Mapping[str, Any]) -> Any:
        """Check `arguments` against the tool's schema, call it (with the configured
        timeout) and return its result; its failure is raised as a BoxError."""
        raise NotImplementedError
