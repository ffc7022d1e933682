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

__all__ = [
    "PLAIN",
    "Recipe",
    "check_recipe",
    "check_target_recipe",
    "model_recipe",
    "options_of",
    "recipe_of_report",
]

NORMALISE = "l2"
# What `embed` makes when a request names no prompt and no pooling.
PLAIN: dict[str, Any] = {"prompt": None, "pooling": "mean"}


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


def options_of(raw: Any, what: str = "recipe") -> dict[str, Any]:
    """`raw` ("plain", or {prompt, pooling} as `embed` takes them) as {prompt, pooling}."""
    if raw is None or raw == "plain":
        return dict(PLAIN)
    if not isinstance(raw, Mapping) or set(raw) - {"prompt", "pooling"}:
        raise BadRequest(
            f"'{what}' must be \"plain\" or {{prompt, pooling}} as `embed` takes them, got {raw!r}"
        )
    prompt, pooling = raw.get("prompt"), raw.get("pooling") or "mean"
    if prompt is not None and (not isinstance(prompt, str) or "{text}" not in prompt):
        raise BadRequest(f"'{what}.prompt' must be a template holding '{{text}}', got {prompt!r}")
    if pooling not in ("mean", "last"):
        raise BadRequest(f"'{what}.pooling' must be 'mean' or 'last', got {pooling!r}")
    return {"prompt": prompt, "pooling": pooling}


def _options(recorded: Mapping[str, Any]) -> dict[str, Any]:
    return {"prompt": recorded.get("prompt"), "pooling": recorded.get("pooling") or "mean"}


def check_target_recipe(given: Any, report: Mapping[str, Any], where: str) -> None:
    """Refuse to project into vectors (`where`: a collection) made another way than the
    projector's target side was fitted on; None: the caller vouches for them."""
    if given is None:
        return
    have, expected = options_of(given, "target_recipe"), recipe_of_report(report, "target")
    if have == _options(expected):
        return
    raise RecipeMismatch(
        f"{where} holds {report['target']} vectors made with {json.dumps(have)}, but "
        f"projector {report['name']} makes {report['target']} vectors made with "
        f"{json.dumps(_options(expected))}: its projections would land among vectors of "
        "another kind. Search with the query 'text' alone (embedded natively), keep such "
        f"data in a collection created with that recipe (memory create ... "
        f'"recipe": "align"), or fit a projector into the collection\'s recipe'
    )


def model_recipe(store: Any, name: str) -> Recipe:
    """`name`'s alignment recipe (the models manifest's prompt and pooling for a kit GGUF
    model, else plain) and weights digest (manifest sha256, else the file's stat).
    `store` is a ModelStore; it reads files: call it off the event loop."""
    info = store.info(name)  # NotFound, listing installed models, when absent
    spec = store.manifest.models.get(name) if info.source == "kit" else None
    if spec is not None:
        digest = "+".join(f.sha256 for f in spec.files)
        if info.kind == "gguf":
            return Recipe(name, digest, spec.embed_prompt, spec.embed_pooling or "mean")
        return Recipe(name, digest)
    path = info.path
    stat = path.stat()
    return Recipe(name, f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")


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
