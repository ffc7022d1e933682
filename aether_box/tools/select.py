"""Picking a tool by meaning: the router's machinery over tool descriptions and examples.

A tool's texts (its description and example tasks) are embedded once with the configured
sentence encoder; a task's score for a tool is its best cosine with one of them (the
router's `choose`). Below the fitted floor everywhere, no tool is the answer. `fit_floor`
finds that floor from labelled tasks (bench/tools.py --fit).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import numpy as np

from aether_box.router.service import choose
from aether_box.tools.spec import Tool

__all__ = ["NO_TOOL", "ToolChooser", "fit_floor", "tool_texts"]

NO_TOOL = ""
Call = Callable[[str, Mapping[str, Any]], Awaitable[dict[str, Any]]]


def tool_texts(tool: Tool) -> list[str]:
    """What a task is compared with: the description, and each example task."""
    name = tool.name.replace("_", " ")
    return [f"{name}: {tool.description}", *tool.examples]


class ToolChooser:
    """Scores tools for a task; tool vectors are embedded once and kept."""

    def __init__(self, call: Call, embed_model: str) -> None:
        self.call = call
        self.embed_model = embed_model
        self._vectors: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}

    async def embed(self, texts: list[str]) -> np.ndarray:
        body = {"op": "embed", "model": self.embed_model, "texts": texts}
        reply = await self.call("embed", body)
        return np.asarray(reply["vectors"], dtype=np.float32)

    async def _tool_vectors(self, tools: Sequence[Tool]) -> dict[str, np.ndarray]:
        keys = {tool.name: (tool.name, tuple(tool_texts(tool))) for tool in tools}
        missing = [key for key in keys.values() if key not in self._vectors]
        if missing:
            texts = [text for _, key_texts in missing for text in key_texts]
            vectors = await self.embed(texts)
            start = 0
            for key in missing:
                self._vectors[key] = vectors[start : start + len(key[1])]
                start += len(key[1])
        return {name: self._vectors[key] for name, key in keys.items()}

    async def rank(
        self, task: str, tools: Sequence[Tool], floor: float, no_tool: Sequence[str] = ()
    ) -> tuple[str, float, dict[str, float]]:
        """(best tool or NO_TOOL, its score, every tool's score) for `task`.

        `no_tool` are tasks that need no tool (as the router's default route has
        examples): a task closest to one of them gets no tool whatever its tool scores.
        Its score shows under NO_TOOL in the scores.
        """
        if not tools:
            return NO_TOOL, 0.0, {}
        examples = await self._tool_vectors(tools)
        if no_tool:
            key = (NO_TOOL, tuple(no_tool))
            if key not in self._vectors:
                self._vectors[key] = await self.embed(list(no_tool))
            examples[NO_TOOL] = self._vectors[key]
        (query,) = await self.embed([task])
        best, score, scores = choose(query, examples, floor, NO_TOOL)
        return best, score if best != NO_TOOL else 0.0, scores


def fit_floor(
    best_scores: Sequence[float],
    needs_tool: Sequence[bool],
    top_right: Sequence[bool] | None = None,
    no_tool_wins: Sequence[bool] | None = None,
    max_false_call: float = 0.05,
) -> float:
    """The floor that gets most labelled tasks right, among floors that call a tool on at
    most `max_false_call` of the tasks needing none.

    Per task: its best tool score, whether it needs a tool, whether that best tool is the
    right one (default: yes), and whether a no-tool example beat every tool (then no floor
    makes it call one).
    """
    scores = np.asarray(best_scores, dtype=np.float64)
    needs = np.asarray(needs_tool, dtype=bool)
    right_top = np.ones_like(needs) if top_right is None else np.asarray(top_right, dtype=bool)
    held = np.zeros_like(needs) if no_tool_wins is None else np.asarray(no_tool_wins, dtype=bool)
    best, best_right = 1.0, -1
    for floor in np.unique(np.round(scores, 4)):
        for candidate in (float(floor), float(floor) + 1e-4):
            called = (scores >= candidate) & ~held
            false_share = called[~needs].mean() if (~needs).any() else 0.0
            if false_share > max_false_call:
                continue
            right = int(((called & needs & right_top) | (~called & ~needs)).sum())
            if right > best_right:
                best, best_right = candidate, right
    return round(best, 4)
