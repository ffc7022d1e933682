"""Embedding recipes: exactly how a model's vectors were made, so projectors never mix them.

A recipe is the model, a digest of its weights, the prompt template each text was put into,
the pooling and the normalisation. Alignment embeds every model with its manifest recipe (a
GGUF model's measured `embed_prompt` / `embed_pooling`; the plain mean otherwise); each
projector records both sides' recipes, and a vector that says it was made another way is
refused (`RecipeMismatch`) rather than projected into nonsense.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from aether_box.errors import BadRequest, RecipeMismatch

__all__ = ["Recipe", "check_recipe", "recipe_of_report"]

NORMALISE = "l2"


@dataclass(frozen=True)
class Recipe:
    """How one model's vectors are made."""

    model: str
    weights: str  # the manifest sha256 of a kit model, else the file's path, size and mtime
    prompt: str | None = None
    pooling: str = "mean"
    normalise: str = NORMALISE

    @property
    def id(self) -> str:
        """A short stable name of this recipe: model, pooling and a digest of the rest."""
        text = json.dumps(asdict(self), sort_keys=True)
        return f"{self.model}:{self.pooling}:{hashlib.sha256(text.encode()).hexdigest()[:12]}"

    def embed_options(self) -> dict[str, Any]:
        """The `embed` op's fields that make vectors this way (none for the plain recipe)."""
        out: dict[str, Any] = {}
        if self.prompt is not None:
            out["prompt"] = self.prompt
        if self.pooling != "mean":
            out["pooling"] = self.pooling
        return out

    def as_dict(self) -> dict[str, Any]:
        """The recipe as a report records it, with its id."""
        return {**asdict(self), "id": self.id}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Recipe:
        return cls(
            raw["model"],
            raw.get("weights", ""),
            raw.get("prompt"),
            raw.get("pooling", "mean"),
            raw.get("normalise", NORMALISE),
        )


def recipe_of_report(report: Mapping[str, Any], side: str) -> dict[str, Any]:
    """The recorded recipe of a projector's `side` ("source" | "target"); a projector fitted
    before recipes were recorded made its vectors the plain way (mean pooling, no prompt)."""
    recorded = (report.get("recipes") or {}).get(side)
    if recorded is not None:
        return dict(recorded)
    model = report[side]
    return {"model": model, "prompt": None, "pooling": "mean", "normalise": NORMALISE, "id": None}


def check_recipe(given: Any, report: Mapping[str, Any]) -> None:
    """Refuse a vector whose stated recipe (an id, or {prompt, pooling}) is not the one the
    projector's source side was fitted on. No recipe stated: the caller vouches for it."""
    if given is None:
        return
    expected = recipe_of_report(report, "source")
    if isinstance(given, str):
        same = expected.get("id") is None and given == "plain" or given == expected.get("id")
    elif isinstance(given, Mapping):
        same = (
            given.get("prompt") == expected["prompt"]
            and given.get("pooling", "mean") == expected["pooling"]
        )
    else:
        raise BadRequest("'recipe' must be a recipe id (a string) or {prompt, pooling}")
    if not same:
        options = {k: expected[k] for k in ("prompt", "pooling") if expected.get(k) is not None}
        raise RecipeMismatch(
            f"the vector was made with recipe {given!r}, but projector {report['name']} takes "
            f"{report['source']} vectors made with recipe {expected.get('id') or 'plain'} "
            f"({json.dumps(options)}); embed the text with "
            f'{{"op": "embed", "model": "{report["source"]}", ...{json.dumps(options)}}} '
            "and project that, or fit a projector for your recipe"
        )
