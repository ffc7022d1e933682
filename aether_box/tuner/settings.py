"""The `[tuner]` config section: what each action may do by itself, and when signals fire."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aether_box.config import section, setting

__all__ = ["ACTIONS", "MODES", "TunerSettings"]

MODES = ("auto", "propose", "off")
# Every action the tuner knows, and the setting holding its mode.
ACTIONS = ("unload", "refit_projector", "refit_router", "adapters", "heavy")


@section("tuner")
@dataclass
class TunerSettings:
    """Each action is `auto` (done and logged), `propose` (logged and shown; `aether-box tuner
    apply ID` does it) or `off`. The defaults only do by themselves what is cheap to undo."""

    # Unload a model idle past engines.keep_alive, or the least recently used idle one under
    # memory pressure; it reloads on its next request (about a second).
    unload: str = setting("auto", choices=MODES)
    # Refit a projector from the box's own memory when a collection drifts or the gate's
    # pass rate falls: minutes of both cores, so only proposed by default.
    refit_projector: str = setting("propose", choices=MODES)
    # Refit the router's threshold from its logged decisions and `router.feedback`.
    refit_router: str = setting("propose", choices=MODES)
    # Prune or restore adapters from fusion-log verdicts (the adapters component's hook).
    adapters: str = setting("propose", choices=MODES)
    # Heavier changes (an adapter training run, a model swap, a machine that is too slow):
    # always only proposed, with the evidence; `auto` is treated as `propose`.
    heavy: str = setting("propose", choices=("propose", "off"))
    # Seconds between the tuner's looks at the observer's signals.
    check_s: float = setting(5.0, min=0.01)
    # The decision log; default <data dir>/tuner.db.
    file: Path | None = None
    # A refit keeps this share of a collection's texts back to judge the candidate on.
    refit_holdout: float = setting(0.2, min=0.05, max=0.5)
    # Most points of top-1 on the standard split a promoted refit may lose.
    refit_max_loss: float = setting(0.01, min=0, max=1)
    # The same action on the same subject is not proposed or run again within this many s.
    cooldown_s: float = setting(600.0, min=0)

    def resolve(self, data_dir: Path) -> None:
        """Fill the default log file."""
        if self.file is None:
            self.file = data_dir / "tuner.db"

    def mode(self, action: str) -> str:
        """The mode of `action` (heavy actions are never `auto`)."""
        return str(getattr(self, action))
