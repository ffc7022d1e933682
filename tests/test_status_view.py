"""`aether-box status` prints the box's own text as it is, brackets and all."""

from __future__ import annotations

from fixtures_adapters import TRAINED
from fixtures_box import wait_for
from fixtures_tui import hit_routes
from rich.console import Console

from aether_box.status_view import render_status


def _printed(report: dict) -> str:  # type: ignore[type-arg]
    console = Console(record=True, width=240)
    render_status(report, console)
    return console.export_text()


def test_status_prints_hints_and_messages_with_brackets_as_they_are(box):
    with box.client() as client:
        report = client.status()
    assert report["tools"]["enabled"] is False  # the default: the hint below is printed
    printed = _printed(report)
    # rich read "[tools]" as a style tag and printed "set  enabled = true"
    assert "tools: off (set [tools] enabled = true)" in printed
    # An alert quoting a path or an error may hold anything that looks like markup; "[/]"
    # alone made rich raise instead of printing the report.
    report["alerts"] = [{"message": "memory.db [/] is on a full disk [bold]"}]
    assert "alert memory.db [/] is on a full disk [bold]" in _printed(report)


def test_status_prints_http_routes_router_and_orchestrate(box):
    """Every section a user would ask about: the gateway's routes (the newer /api/show,
    /api/ps and /v1/models/{model} too) with their failures, the router, tool runs."""
    with box.client() as client:
        hit_routes(client.status()["http"]["url"])
        printed = _printed(client.status())
    assert (
        "http requests by route: /api/ps 1, /api/show 1 (1 failed), /v1/models/{model} 1 (1 failed)"
        in printed
    )
    assert "router: 0 decisions, 0 fell back, 0 feedback" in printed
    assert "orchestrate: 0 runs, 0 steps, 0 without a tool" in printed


def test_status_prints_baked_copies_of_hot_adapter_sets(adapter_box):
    """A hot adapter set served from a baked copy shows under its model, as on the dashboard."""
    chat = {
        "op": "chat",
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 2,
        "temperature": 0.0,
        "adapters": [{"name": "pirate", "force": True}],
    }

    def copies(client) -> list:  # type: ignore[no-untyped-def,type-arg]
        (model,) = [m for m in client.status()["models"]["loaded"] if m["role"] == "generate"]
        return list(model["scheduler"].get("baked", []))

    with adapter_box.client(timeout=300) as client:
        client.request(
            "adapters", {"op": "add", "path": str(TRAINED), "base": "smollm2", "name": "pirate"}
        )
        try:
            client.request("llm", chat, timeout=300)
            client.request("llm", chat, timeout=300)  # the second in a row: it is hot now
            wait_for(lambda: copies(client) and copies(client)[0]["state"] != "baking", 120, "bake")
            (copy,) = copies(client)
            printed = _printed(client.status())
        finally:
            client.request("adapters", {"op": "remove", "name": "pirate"})
    assert f"    baked {copy['adapters']}: ready, {copy['memory_mb']} MB, 0 requests" in printed


def test_status_says_why_a_peer_or_member_is_down(box):
    with box.client() as client:
        report = client.status()
    why = "tcp://10.0.0.2:7745 did not answer within 5 s; is it running?"
    report["peers"] = {"peers": [{"name": "lab", "state": "down", "error": why}]}
    report["grid"] = {"name": "a", "members": [{"name": "b", "state": "up", "error": None}]}
    printed = _printed(report)
    assert "peers: lab (down)" in printed and f"  lab down: {why}" in printed
    assert "grid: a with b (up)" in printed and "  b up" not in printed


def test_status_says_a_prune_verdict_was_overruled(box):
    with box.client() as client:
        report = client.status()
    restored = {"state": "restored", "by": "user", "at": 0.0}
    report["adapters"] = {"adapters": [
        {"name": "loud", "verdict": "prune", "kl_mean": 0.5, "pruned": None,
         "pruning": restored, "requests": 3},
    ]}  # fmt: skip
    assert "adapters: loud (prune, KL 0.500, restored by user, 3 requests)" in _printed(report)


def test_status_shows_a_fit_in_progress(box):
    with box.client() as client:
        report = client.status()
    assert report["align"]["running"] == []
    report["align"]["running"] = [
        {"op": "fit", "from": "minilm", "to": "mpnet", "step": "embedding with mpnet: 40/80"}
    ]
    assert "  fit minilm -> mpnet: embedding with mpnet: 40/80" in _printed(report)
