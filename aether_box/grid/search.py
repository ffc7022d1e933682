"""Grid memory search: the same search on every member at once, merged into one top k.

Each member searches its own collection of that name in its own space: a text query is
embedded there with that collection's model, and a vector query carries this box's model
name as its `query_model`, so a member whose collection uses another model projects it
(or re-embeds the text) as a local cross-model search would. Scores from one model are
comparable; across models they are the projected ones, which is what a member reports.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio

from aether_box.contract import Grid
from aether_box.errors import BadRequest, BoxError, NotFound, Timeout

__all__ = ["search_grid"]

LocalSearch = Callable[[dict[str, Any]], Awaitable[Mapping[str, Any]]]


async def search_grid(
    grid: Grid,
    search_here: LocalSearch,
    body: Mapping[str, Any],
    *,
    timeout: float,
    model: str | None,
) -> dict[str, Any]:
    """Search here and on every member; `model` is this box's collection model, if it has one.

    The reply: the merged `results` (each with the `box` it came from), `members` (per box:
    answered, timed out, down, no such collection, or the error), and `partial`: true when
    a member that could have answered did not.
    """
    started = time.perf_counter()
    if body.get("include_vectors"):
        raise BadRequest("a grid search cannot include vectors; search one box for those")
    k = int(body.get("k") or 10)
    own = {key: v for key, v in body.items() if key != "scope"}
    remote = {**own, "scope": "local"}
    if own.get("vector") is not None and own.get("query_model") is None and model is not None:
        remote["query_model"] = model  # a member with another model projects it
    answers: dict[str, Mapping[str, Any] | BaseException] = {}
    async with anyio.create_task_group() as tg:

        async def here() -> None:
            try:
                answers[grid.member_name] = await search_here(own)
            except BoxError as exc:
                answers[grid.member_name] = exc

        async def members() -> None:
            answers.update(await grid.ask_members("memory", remote, timeout=timeout))

        tg.start_soon(here)
        tg.start_soon(members)
    results: list[dict[str, Any]] = []
    states: dict[str, dict[str, Any]] = {}
    for box, answer in sorted(answers.items()):
        if isinstance(answer, BaseException):
            states[box] = _failed(answer)
            continue
        hits = list(answer.get("results", []))
        results.extend({**hit, "box": box} for hit in hits)
        states[box] = {
            "state": "answered",
            "results": len(hits),
            "took_ms": answer.get("took_ms"),
            "path": answer.get("path"),
        }
    results.sort(key=lambda hit: hit.get("score") or 0.0, reverse=True)
    return {
        "results": results[:k],
        "collection": body.get("collection"),
        "scope": "grid",
        "members": states,
        "partial": any(s["state"] not in ("answered", "no collection") for s in states.values()),
        "took_ms": round((time.perf_counter() - started) * 1000, 3),
    }


def _failed(error: BaseException) -> dict[str, Any]:
    if isinstance(error, (Timeout, TimeoutError)):
        return {"state": "timed out"}
    if isinstance(error, NotFound) and "collection" in str(error):
        return {"state": "no collection"}
    if "is down" in str(error):
        return {"state": "down", "error": str(error)}
    return {"state": "error", "error": str(error)}
