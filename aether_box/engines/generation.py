"""What a generation request asks for, what it produced, and the text it streams as it goes.

Shared by the scheduler (which fills them in its thread) and the `llm` service (which reads
them on the event loop); nothing here touches llama.cpp.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["AdapterRef", "Generation", "GenerationParams", "TextOut", "adapter_key"]


@dataclass(frozen=True)
class AdapterRef:
    """One LoRA adapter a request runs with: its GGUF file, its content hash and its scale.

    The hash, not the name, identifies it in cache keys: an adapter removed and re-added with
    other contents is another adapter.
    """

    path: str
    sha256: str
    scale: float
    pinned: bool = False  # pinned hot by config: its set is baked on first use (see baked)


def adapter_key(adapters: Sequence[AdapterRef]) -> str:
    """The adapter set's part of every cache key ("" for the base model alone).

    KV computed under one set is never reused under another: slots, saved session states and
    batching groups all compare this key. The order counts: llama.cpp adds the deltas in it.
    """
    return ",".join(f"{a.sha256[:24]}@{a.scale!r}" for a in adapters)


@dataclass(frozen=True)
class GenerationParams:
    """Sampling settings of one request (validated by the service)."""

    max_tokens: int = 256
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # 1.0 = off; > 1 penalises tokens among the last REPEAT_WINDOW generated.
    repeat_penalty: float = 1.0
    # Constrained output: a GBNF grammar, or a JSON schema (as JSON text) converted to one.
    grammar: str | None = None
    json_schema: str | None = None


@dataclass
class Generation:
    """What one generation produced, and how fast."""

    text: str
    finish_reason: str  # "stop", "length" or "cancelled"
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float
    tokens_per_s: float
    cached_tokens: int = 0  # prompt tokens found in the slot's KV cache, not computed again
    nll: float | None = None  # mean negative log-likelihood per generated token (sampled)


class TextOut:
    """Collects generated text and passes it on, holding back what may begin a stop sequence."""

    __slots__ = ("_stops", "_emit", "_parts", "_pending")

    def __init__(self, stops: Sequence[str], emit: Callable[[str], None] | None) -> None:
        self._stops = tuple(s for s in stops if s)
        self._emit = emit
        self._parts: list[str] = []
        self._pending = ""

    def add(self, text: str, last: bool = False) -> bool:
        """Take new text; True when a stop sequence ended the generation."""
        if not self._stops:
            self._send(text)
            return False
        pending = self._pending + text
        hits = [i for i in (pending.find(s) for s in self._stops) if i >= 0]
        if hits:
            self._pending = ""
            self._send(pending[: min(hits)])
            return True
        keep = 0 if last else _stop_prefix(pending, self._stops)
        self._pending = pending[len(pending) - keep :]
        self._send(pending[: len(pending) - keep])
        return False

    def _send(self, text: str) -> None:
        if text:
            self._parts.append(text)
            if self._emit is not None:
                self._emit(text)

    def text(self) -> str:
        return "".join(self._parts)


def _stop_prefix(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of `text` that is the start of a stop sequence."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best
