"""The dashboard's reading of status sections: rates, sizes, and sections of unexpected shape."""

from __future__ import annotations

from click.testing import CliRunner

from aether_box.cli import cli
from aether_box.tui.screens.search import result_rows
from aether_box.tui.view import (
    RateTracker,
    fmt_bytes,
    fmt_duration,
    fmt_ms,
    grid_rows,
    memory_rows,
    model_rows,
    peer_rows,
    projector_rows,
    service_rows,
    tuner_rows,
)
from aether_box.tui.widgets.logtail import format_event


def test_request_rate_comes_from_counts_between_polls():
    rates = RateTracker()
    assert rates.update({"echo": {"requests": 10}}, now=100.0) == {"echo": None}
    assert rates.update({"echo": {"requests": 40}}, now=102.0) == {"echo": 15.0}
    # A restarted box starts counting from zero again: no negative rate.
    assert rates.update({"echo": {"requests": 3}}, now=103.0) == {"echo": None}
    assert rates.update({"echo": {"requests": 8}}, now=104.0) == {"echo": 5.0}
    row = service_rows({"echo": {"kind": "local", "requests": 8, "p50_ms": 0.0412}}, rates.rates)
    assert row["echo"][3] == "5.0" and row["echo"][8] == "0.041" and row["echo"][9] == "-"


def test_models_section_as_the_engines_report_it():
    section = {
        "installed": [
            {"name": "smollm2", "kind": "gguf", "size_mb": 98.0},
            {"name": "gemma3-270m", "kind": "gguf", "size_mb": 241.5},
        ],
        "loaded": [
            {
                "name": "smollm2",
                "role": "generate",
                "memory_mb": 200.0,
                "device": "cpu",
                "tokens_per_s": 101.5,
                "scheduler": {"slots": 4, "slots_busy": 3, "queue": 2, "ttft_ms": 41.6},
            },
            {
                "name": "smollm2",
                "role": "embed",
                "memory_mb": 56.0,
                "device": "cpu",
                "tokens_per_s": None,
            },
        ],
        "budget_mb": 3072,
    }
    rows = model_rows(section)
    assert list(rows) == ["gemma3-270m", "smollm2"]
    cells, tps = rows["smollm2"]
    assert cells == (
        "smollm2",
        "gguf",
        "loaded (generate, embed)",
        "256.0 MiB",
        "101.5",
        "3/4 +2",
        "42 ms",
        "cpu",
    )
    assert tps == 101.5
    assert rows["gemma3-270m"][0][2:5] == ("installed", "241.5 MiB", "-")


def test_other_model_shapes_are_read_too():
    as_map = {"smollm2": {"kind": "gguf", "loaded": True, "memory_bytes": 2**20, "tps": 9}}
    assert model_rows(as_map)["smollm2"][0][2:5] == ("loaded", "1.0 MiB", "9.0")
    as_list = {"models": [{"model": "minilm", "state": "installed"}]}
    assert model_rows(as_list)["minilm"][0][2] == "installed"
    assert model_rows("garbage") == {} and model_rows(None) == {}


def test_memory_projectors_and_peers_tolerate_lists_and_maps():
    memory = {
        "collections": {"notes": {"model": "minilm", "dim": 384, "count": 1500, "index_mb": 2.0}}
    }
    assert memory_rows(memory)["notes"] == ("notes", "minilm", "384", "1,500", "2.0 MiB")
    assert memory_rows({"collections": [{"name": "a"}]})["a"] == ("a", "-", "-", "-", "-")

    # As the align component reports it: a map of name -> summary.
    fitted = {
        "gate": 0.7,
        "projectors": {
            "smollm2->minilm": {
                "method": "ridge",
                "top1_in_domain": 0.912,
                "top1_out_of_domain": 0.71,
                "projections": 40,
                "accepted": 31,
                "proxied": 9,
                "agreement_mean": 0.74,
                "agreement_recent": 0.78,
            }
        },
    }
    assert projector_rows(fitted)["smollm2->minilm"] == (
        "smollm2->minilm",
        "ridge",
        "0.912",
        "0.710",
        "40",
        "9",
        "0.780",
    )
    # Routes through the hub from the last `align report`, with their gate's AUC.
    routed = {
        "coherence": {"smollm2->shared->minilm": {"in": 0.958, "out": 0.912, "gate_auc": 0.935}}
    }
    assert projector_rows(routed)["smollm2->shared->minilm"][:4] == (
        "smollm2->shared->minilm",
        "via hub, gate AUC 0.94",
        "0.958",
        "0.912",
    )
    # A fit running now, with its latest step.
    running = {"running": [{"op": "fit", "from": "minilm", "to": "mpnet", "step": "mlp: 40%"}]}
    assert projector_rows(running)["running:0"][:2] == ("minilm->mpnet (fitting)", "mlp: 40%")
    # Or a list of records with the spaces named and the fidelity nested.
    listed = {
        "projectors": [
            {
                "from": "gemma3-270m",
                "to": "minilm",
                "method": "mlp",
                "fidelity": {"top1": 0.88},
                "count": 3,
            }
        ]
    }
    assert projector_rows(listed)["gemma3-270m->minilm"] == (
        "gemma3-270m->minilm",
        "mlp",
        "0.880",
        "-",
        "3",
        "-",
        "-",
    )

    peers = [{"endpoint": "tcp://10.0.0.2:7745", "status": "up", "services": {"llm": {}}}]
    assert peer_rows(peers)["tcp://10.0.0.2:7745"] == (
        "tcp://10.0.0.2:7745",
        "up",
        "tcp://10.0.0.2:7745",
        "-",
        "llm",
    )
    assert peer_rows({"peers": []}) == {}

    grid = {
        "name": "a",
        "members": [
            {
                "name": "b",
                "state": "up",
                "endpoint": "tcp://10.0.0.3:7745",
                "last_seen_s": 0.1,
                "models": ["smollm2"],
                "load": {"models": {"smollm2": {"slots": 4, "busy": 3, "queue": 2}}},
            }
        ],
    }
    assert grid_rows(grid)["grid:b"] == (
        "b (grid)",
        "up",
        "tcp://10.0.0.3:7745",
        "0.1",
        "queue 2, free slots 1; smollm2",
    )
    assert grid_rows(None) == {}
    # A peer or member that is not up: why, not its last (stale) services or load.
    why = "no answer within 5 s; is it running?"
    down = {"peers": [{"name": "lab", "state": "down", "endpoint": "tcp://h:1", "error": why,
                       "services": ["llm"]}]}  # fmt: skip
    assert peer_rows(down)["lab"][4] == f"down: {why}"
    gone = {"members": [{**grid["members"][0], "state": "down", "error": why}]}
    assert grid_rows(gone)["grid:b"][4] == f"down: {why}"


def test_search_results_become_rows():
    reply = {"results": [{"id": "cat", "score": 0.83, "text": "The cat\nsleeps", "metadata": {}}]}
    assert result_rows(reply) == [("1", "0.830", "cat", "The cat sleeps", "{}")]


def test_formatting():
    assert fmt_duration(3725.4) == "01:02:05" and fmt_duration(90000) == "1d 01:00:00"
    assert fmt_bytes(1536) == "1.5 KiB" and fmt_bytes(None) == "-"
    assert fmt_ms(0.0412) == "0.041" and fmt_ms(4.2) == "4.20" and fmt_ms(812) == "812.0"


def test_tui_command_is_wired_into_the_cli():
    runner = CliRunner()
    listed = runner.invoke(cli, ["--help"])
    assert listed.exit_code == 0 and "tui" in listed.output
    shown = runner.invoke(cli, ["tui", "--help"])
    assert shown.exit_code == 0, shown.output
    assert "--endpoint" in shown.output and "--poll" in shown.output


def test_the_log_tail_shows_alerts_and_skips_periodic_events():
    alert = format_event("metrics.alert", {"ts": 0, "message": "memory answered 8 of 8 ..."})
    assert alert is not None and "ALERT" in alert.plain and "8 of 8" in alert.plain
    assert format_event("metrics.snapshot", {"services": {}}) is None
    assert format_event("status.heartbeat", {}) is None
    log = format_event("log.warning", {"logger": "aether_box.x", "message": "careful"})
    assert log is not None and "WARNING" in log.plain and "careful" in log.plain


def test_tuner_rows_show_nll_per_adapter_set_and_triggered_signals():
    section = {
        "recent": [{"id": 3, "action": "unload", "subject": "smollm2:generate",
                    "state": "rejected", "outcome": "skipped: pinned by session ab12"}],
        "signals": [
            {"kind": "nll", "subject": "smollm2", "triggered": False,
             "figures": {"nll": 1.234, "median": 1.2, "limit": 1.5, "answers": 7}},
            {"kind": "nll", "subject": "smollm2+calm:0.5", "triggered": True,
             "figures": {"nll": 4.0, "median": 1.3, "limit": 1.6, "answers": 4}},
            {"kind": "idle", "subject": "minilm:embed", "triggered": False, "figures": {}},
            {"kind": "idle", "subject": "smollm2:generate", "triggered": True,
             "message": "smollm2 (generate) idle 901 s", "figures": {}},
        ],
        "held_by_pins": {"idle:smollm2:generate": "smollm2"},
    }  # fmt: skip
    rows = tuner_rows(section)
    assert list(rows)[0] == "#3"
    assert rows["signal:nll:smollm2"] == (
        "nll", "signal", "smollm2", "calm", "nll 1.23 (median 1.20, limit 1.50, 7 answers)"
    )  # fmt: skip
    assert rows["signal:nll:smollm2+calm:0.5"][3] == "triggered"
    assert "signal:idle:minilm:embed" not in rows  # calm readings other than NLL: noise
    assert rows["signal:idle:smollm2:generate"][4].startswith("held: pinned by a session")
