"""Where a request goes: the box with the shortest expected wait for the model, here on a tie.

A box's load for one model is what its scheduler reports (slots, busy slots, queue) and
how long one request takes there (``request_s``, from its recent tokens/s). The expected
wait is the work ahead of a new request shared over the slots: ``(busy + queue) / slots *
request_s``. Requests this box has placed on a member and not seen finish count as busy
there too (and here, those running here), so a burst does not all land on the box that
looked idle a heartbeat ago.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Candidate", "expected_wait_s", "rank", "reason"]

# One request when nothing is known of a model's speed yet (never run there).
DEFAULT_REQUEST_S = 1.0


def expected_wait_s(load: Mapping[str, Any] | None, placed: int = 0) -> float:
    """Seconds a new request would wait on a box with `load` for the model (None: idle)."""
    if not load:
        return placed * DEFAULT_REQUEST_S
    slots = max(1, int(load.get("slots") or 1))
    ahead = max(int(load.get("busy") or 0) + int(load.get("queue") or 0), placed)
    return ahead / slots * float(load.get("request_s") or DEFAULT_REQUEST_S)


@dataclass
class Candidate:
    """One box that has the model: its name, its expected wait, and its link (None: here)."""

    box: str
    wait_s: float
    link: Any = None

    @property
    def local(self) -> bool:
        return self.link is None


def rank(candidates: list[Candidate]) -> list[Candidate]:
    """Shortest expected wait first; on a tie this box, then by name (a stable order)."""
    return sorted(candidates, key=lambda c: (round(c.wait_s, 6), not c.local, c.box))


def reason(ranked: list[Candidate]) -> tuple[str, str]:
    """(kind, words) saying why the first candidate was chosen."""
    best = ranked[0]
    others = ", ".join(f"{c.box} {c.wait_s:.2f} s" for c in ranked[1:])
    if len(ranked) == 1:
        return "only_box", f"{best.box} is the only box up with the model"
    if round(ranked[1].wait_s, 6) == round(best.wait_s, 6):
        if best.local:
            return (
                "tie_local",
                f"tie at {best.wait_s:.2f} s expected wait: here preferred ({others})",
            )
        return (
            "tie",
            f"tie at {best.wait_s:.2f} s expected wait: {best.box} first by name ({others})",
        )
    return "shortest_wait", f"shortest expected wait: {best.box} {best.wait_s:.2f} s ({others})"
