"""Slots: the sequences of one llama context, and which one a new request should take.

A slot remembers the tokens its sequence holds in the KV cache after a request ends, so the
next request that starts the same way (a conversation's next turn, a shared system prompt)
reads only what is new. A request takes the free slot with the longest common prefix; among
equals, the least recently used one (whose cache is the least likely to be wanted again).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Slot", "choose_slot", "common_prefix"]


@dataclass(eq=False)
class Slot:
    """One sequence id of the context and what its KV cache holds."""

    seq: int
    tokens: list[int] = field(default_factory=list)  # in the KV cache, positions 0..n-1
    job: Any = None  # the request using it, or None when free
    session: str | None = None  # whose conversation the cached tokens are
    adapters: str = ""  # the adapter set they were computed under (see adapter_key)
    last_used: float = 0.0


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many tokens `a` and `b` share from the start."""
    n = min(len(a), len(b))
    if n and a[n - 1] == b[n - 1] and list(a[:n]) == list(b[:n]):
        return n  # the usual case for a next turn: the whole cached history matches
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def choose_slot(
    slots: Sequence[Slot], tokens: Sequence[int], adapters: str = ""
) -> tuple[Slot, int] | None:
    """The free slot for prompt `tokens` and how many of its cached tokens match, or None.

    Only tokens cached under the same adapter set (`adapters`, see adapter_key) match.
    """
    best: tuple[int, float, Slot] | None = None
    for slot in slots:
        if slot.job is not None:
            continue
        shared = common_prefix(slot.tokens, tokens) if slot.adapters == adapters else 0
        key = (shared, -slot.last_used)
        if best is None or key > best[:2]:
            best = (shared, -slot.last_used, slot)
    return None if best is None else (best[2], best[0])
