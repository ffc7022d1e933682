"""The `[router]` config section."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aether_box.config import section
from aether_box.errors import ConfigError

__all__ = ["RouterSettings"]


def _default_routes() -> dict[str, dict[str, Any]]:
    return {"general": {"model": "smollm2", "examples": []}}


@section("router")
@dataclass
class RouterSettings:
    """Routes by meaning: each route names a model, an optional system prompt, and examples.

    In config.toml::

        [router.routes.code]
        model = "smollm2"
        system = "You write short, correct Python."
        adapters = [{name = "python-style", scale = 0.8}]   # optional LoRA adapters
        examples = ["write a function that sorts a list", "why does this loop never end"]
    """

    # The sentence encoder that compares a message with each route's examples.
    embed_model: str = "minilm"
    # A message whose best cosine to every route's examples stays below this takes `default`.
    # With MiniLM, a message and a same-topic example score about 0.2-0.65 and unrelated ones
    # stay under 0.2 (tests/test_router.py); examples for the default route help most.
    min_score: float = 0.2
    default: str = "general"
    routes: dict[str, dict[str, Any]] = field(default_factory=_default_routes)

    def scored_routes(self) -> list[str]:
        """The routes with examples, sorted: the only ones a message is scored against."""
        return sorted(name for name, route in self.routes.items() if route.get("examples"))

    def resolve(self, data_dir: Path) -> None:
        """Check the routes (the data dir is not needed)."""
        if self.default not in self.routes:
            raise ConfigError(
                f"router.default is {self.default!r} but the routes are {sorted(self.routes)}; "
                "name one of them, or add [router.routes." + self.default + "]"
            )
        for name, route in self.routes.items():
            where = f"[router.routes.{name}]"
            unknown = set(route) - {"model", "system", "examples", "adapters"}
            if unknown:
                raise ConfigError(f"{where} has unknown keys {sorted(unknown)}")
            if not isinstance(route.get("model"), str):
                raise ConfigError(f'{where} needs model = "a model name"')
            examples = route.setdefault("examples", [])
            if not isinstance(examples, list) or not all(isinstance(e, str) for e in examples):
                raise ConfigError(f"{where} examples must be a list of texts")
            if "system" in route and not isinstance(route["system"], str):
                raise ConfigError(f"{where} system must be a text")
            adapters = route.get("adapters", [])
            if not isinstance(adapters, list) or not all(
                isinstance(a, dict) and isinstance(a.get("name"), str) for a in adapters
            ):
                raise ConfigError(
                    f'{where} adapters must be a list of {{name = "...", scale = 1.0}}'
                )
