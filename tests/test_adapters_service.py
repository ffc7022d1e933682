"""The `adapters` service in a real box: add with checks, per-request use, the fusion log's
verdicts and refusals, merges, removal while in use, status and /metrics."""

from __future__ import annotations

import pytest
from fixtures_adapters import TRAINED, write_random
from fixtures_engines import Streamer, wait_for

from aether_box.errors import AdapterInUse, AdapterPruned, BadRequest, NotFound

PROMPT = "The capital of France is Paris, and the capital of Italy is"


def complete(client, adapters=None, **extra):  # type: ignore[no-untyped-def]
    body = {"op": "complete", "model": "smollm2", "prompt": PROMPT, "max_tokens": 6}
    body |= {"temperature": 0.0, **extra}
    if adapters is not None:
        body["adapters"] = adapters
    return client.request("llm", body, timeout=300)


def test_add_checks_keeps_and_probes_an_adapter(adapter_box, tmp_path, smollm2_path):
    path = write_random(tmp_path / "small.gguf", smollm2_path, std=0.01)
    with adapter_box.client(timeout=300) as client:
        added = client.request("adapters", {"op": "add", "path": str(path), "base": "smollm2"})
        assert added["name"] == "small" and added["rank"] == 8 and len(added["sha256"]) == 64
        entry = client.request("adapters", {"op": "wait", "name": "small"}, timeout=300)
        assert entry["state"] == "done" and entry["verdict"] == "ok", entry
        assert entry["tokens"] > 40 and 0.0 <= entry["kl_mean"] < 0.1 and entry["top1"] > 0.85
        shown = client.request("adapters", {"op": "show", "name": "small"})
        assert shown["fusion_log"][0]["id"] == entry["id"]
        listed = client.request("adapters", {"op": "list"})["adapters"]
        assert [a["name"] for a in listed] == ["small"]

        # A mismatched file: refused, naming the check, and nothing kept.
        bad = write_random(tmp_path / "bad.gguf", smollm2_path, std=0.01)
        from aether_box.adapters.lora_file import read_lora, write_lora

        lora = read_lora(bad)
        lora.architecture = "gemma3"
        write_lora(bad, lora)
        with pytest.raises(BadRequest, match="architecture"):
            client.request("adapters", {"op": "add", "path": str(bad), "base": "smollm2"})
        with pytest.raises(BadRequest, match="exists"):
            client.request("adapters", {"op": "add", "path": str(path), "base": "smollm2"})
        assert len(client.request("adapters", {"op": "list"})["adapters"]) == 1
        with pytest.raises(NotFound, match="no adapter 'nope'"):
            complete(client, [{"name": "nope"}])

        base = complete(client)
        at_zero = complete(client, [{"name": "small", "scale": 0.0}])
        assert at_zero["text"] == base["text"]
        used = complete(client, [{"name": "small", "scale": 1.0}])
        assert used["cached_tokens"] == 0  # KV computed under another set is never reused
        status = client.status()["adapters"]
        small = next(a for a in status["adapters"] if a["name"] == "small")
        assert small["requests"] == 2 and small["verdict"] == "ok"
        assert status["thresholds"]["prune"] == {"kl_mean": 0.5, "top1": 0.7}


def test_a_harmful_adapter_is_pruned_and_refused_unless_forced(adapter_box, tmp_path, smollm2_path):
    path = write_random(tmp_path / "loud.gguf", smollm2_path, std=0.2, seed=7)
    with adapter_box.client(timeout=300) as client:
        client.request("adapters", {"op": "add", "path": str(path), "base": "smollm2"})
        entry = client.request("adapters", {"op": "wait", "name": "loud"}, timeout=300)
        assert entry["verdict"] == "prune", entry
        with pytest.raises(AdapterPruned, match="force"):
            complete(client, [{"name": "loud"}])
        forced = complete(client, [{"name": "loud", "force": True}])
        assert forced["usage"]["completion_tokens"] >= 1
        metrics = adapter_box_metrics(client)
        assert 'aether_box_adapter_pruned{adapter="loud"} 1.0' in metrics

        # Restored: served unforced, though its verdict stays prune.
        restored = client.request("adapters", {"op": "restore", "name": "loud"})
        assert restored["pruned"] is None and restored["pruning"]["state"] == "restored"
        assert complete(client, [{"name": "loud"}])["usage"]["completion_tokens"] >= 1
        assert 'aether_box_adapter_pruned{adapter="loud"} 0.0' in adapter_box_metrics(client)


def test_prune_and_restore_by_hand(adapter_box, tmp_path, smollm2_path):
    path = write_random(tmp_path / "meek.gguf", smollm2_path, std=0.01, seed=8)
    with adapter_box.client(timeout=300) as client:
        client.request("adapters", {"op": "add", "path": str(path), "base": "smollm2"})
        assert client.request("adapters", {"op": "wait", "name": "meek"})["verdict"] == "ok"
        with pytest.raises(BadRequest, match="reason"):
            client.request("adapters", {"op": "prune", "name": "meek", "reason": " "})
        with pytest.raises(NotFound, match="no adapter 'nope'"):
            client.request("adapters", {"op": "prune", "name": "nope", "reason": "x"})
        pruned = client.request(
            "adapters", {"op": "prune", "name": "meek", "reason": "it talks like a pirate"}
        )
        assert pruned["previous"] is None and "pirate" in pruned["pruned"]
        with pytest.raises(AdapterPruned, match="by admin: it talks like a pirate"):
            complete(client, [{"name": "meek"}])
        assert complete(client, [{"name": "meek", "force": True}])["text"]
        listed = client.request("adapters", {"op": "list"})["adapters"]
        assert "pirate" in next(a for a in listed if a["name"] == "meek")["pruned"]
        status = next(a for a in client.status()["adapters"]["adapters"] if a["name"] == "meek")
        assert status["pruning"]["state"] == "pruned" and status["pruning"]["by"] == "admin"
        back = client.request("adapters", {"op": "restore", "name": "meek"})
        assert back["previous"]["state"] == "pruned" and back["pruned"] is None
        assert complete(client, [{"name": "meek"}])["text"]


def adapter_box_metrics(client) -> str:  # type: ignore[no-untyped-def]
    """The Prometheus text, rendered from this status report as /metrics does."""
    from prometheus_client import CollectorRegistry, generate_latest

    from aether_box.monitor.metrics import StatusCollector

    report = client.status()
    registry = CollectorRegistry()
    registry.register(StatusCollector(lambda: report))
    return generate_latest(registry).decode()


def test_linear_merge_matches_the_adapters_stacked_at_runtime(adapter_box, tmp_path, smollm2_path):
    with adapter_box.client(timeout=300) as client:
        for name, seed in (("one", 11), ("two", 12)):
            path = write_random(tmp_path / f"{name}.gguf", smollm2_path, std=0.02, seed=seed)
            client.request("adapters", {"op": "add", "path": str(path), "base": "smollm2"})
        body = {
            "op": "merge",
            "name": "both",
            "method": "linear",
            "from": [{"name": "one", "weight": 0.7}, {"name": "two", "weight": 0.6}],
        }
        replies = list(client.stream("adapters", body, timeout=300))
        merged = replies[-1]
        assert merged["rank"] == 16 and merged["recipe"]["method"] == "linear"
        assert any("merged" in r for r in replies[:-1])
        entry = client.request("adapters", {"op": "wait", "name": "both"}, timeout=300)
        assert entry["state"] == "done" and entry["stack_kl_mean"] < 0.01, entry
        stacked = complete(client, [{"name": "one", "scale": 0.7}, {"name": "two", "scale": 0.6}])
        alone = complete(client, [{"name": "both"}])
        assert alone["text"] == stacked["text"]


def test_a_merge_that_cannot_be_made_says_why(adapter_box, tmp_path, smollm2_path):
    with adapter_box.client(timeout=300) as client:
        path = write_random(tmp_path / "part.gguf", smollm2_path, std=0.02, seed=13)
        client.request("adapters", {"op": "add", "path": str(path), "base": "smollm2"})

        def merge(**fields: object) -> dict:
            body = {"op": "merge", "name": "mix", "from": [{"name": "part"}], **fields}
            return client.request("adapters", body, timeout=300)

        # Each is the client's mistake, answered as such: not an internal error of the box.
        with pytest.raises(NotFound, match="nosuch"):
            merge(**{"from": [{"name": "nosuch"}]})
        with pytest.raises(BadRequest, match="exists"):
            merge(name="part")
        with pytest.raises(BadRequest, match="weight"):
            merge(**{"from": [{"name": "part", "weight": float("nan")}]})
        with pytest.raises(BadRequest, match="density"):
            merge(method="ties", density=5)
        with pytest.raises(BadRequest, match="rank"):
            merge(method="ties", rank=0)
        # Accepted before: one adapter twice, and an all-zero (empty) merge.
        with pytest.raises(BadRequest, match="names an adapter twice"):
            merge(**{"from": [{"name": "part", "weight": 0.5}, {"name": "part", "weight": 0.5}]})
        with pytest.raises(BadRequest, match="every weight in 'from' is 0"):
            merge(**{"from": [{"name": "part", "weight": 0}]})


def test_removing_an_adapter_in_use_is_refused_until_the_request_ends(
    adapter_box, tmp_path, smollm2_path
):
    path = write_random(tmp_path / "busy.gguf", smollm2_path, std=0.01, seed=21)
    with adapter_box.client(timeout=300) as client:
        client.request("adapters", {"op": "add", "path": str(path), "base": "smollm2"})
        body = {"op": "complete", "model": "smollm2", "prompt": PROMPT, "max_tokens": 400}
        body |= {"stream": True, "adapters": [{"name": "busy"}], "temperature": 0.0}
        streamer = Streamer(adapter_box, body, stop_after=None)
        streamer.start()
        assert streamer.first.wait(300)
        with pytest.raises(AdapterInUse, match="in use"):
            client.request("adapters", {"op": "remove", "name": "busy"})
        streamer.cancel.set()
        streamer.join(300)
        wait_for(
            lambda: (
                client.status()["adapters"]["adapters"][0] is not None
                and all(a["in_use"] == 0 for a in client.status()["adapters"]["adapters"])
            ),
            60,
            "the request to release the adapter",
        )
        loaded = adapters_loaded(client)
        removed = client.request("adapters", {"op": "remove", "name": "busy"})["removed"]
        assert removed["name"] == "busy" and removed["unloaded_from"] == 1
        # Its llama.cpp adapter is freed in the model's scheduler thread.
        wait_for(lambda: adapters_loaded(client) == loaded - 1, 60, "the adapter to be freed")
        assert complete(client)["text"]  # the base goes on


def adapters_loaded(client) -> int:  # type: ignore[no-untyped-def]
    models = client.status()["models"]["loaded"]
    return sum(m.get("scheduler", {}).get("adapters_loaded", 0) for m in models)


@pytest.mark.skipif(not TRAINED.exists(), reason="tests/data/adapters/pirate-peft is missing")
def test_the_trained_peft_adapter_converts_and_shows_in_the_text(adapter_box):
    with adapter_box.client(timeout=300) as client:
        client.request(
            "adapters", {"op": "add", "path": str(TRAINED), "base": "smollm2", "name": "pirate"}
        )
        chat = {
            "op": "chat",
            "model": "smollm2",
            "messages": [{"role": "user", "content": "What is the tallest mountain?"}],
            "max_tokens": 12,
            "temperature": 0.0,
        }
        base = client.request("llm", chat, timeout=300)["text"]
        pirate = client.request(
            "llm", {**chat, "adapters": [{"name": "pirate", "force": True}]}, timeout=300
        )["text"]
        assert "Arr" not in base
        assert pirate.startswith("Arr, matey"), pirate

        # A session's default adapters apply to each turn that names none of its own.
        create = {
            "op": "create",
            "model": "smollm2",
            "adapters": [{"name": "pirate", "force": True}],
        }
        turn = {"op": "say", "text": "What is the tallest mountain?"}
        turn |= {"max_tokens": 12, "temperature": 0.0}
        first = client.request("session", create)["session"]
        said = client.request("session", {**turn, "session": first}, timeout=300)["text"]
        assert said.startswith("Arr, matey"), said
        second = client.request("session", create)["session"]
        plain = client.request("session", {**turn, "session": second, "adapters": []}, timeout=300)
        assert "Arr" not in plain["text"]  # a turn's own (empty) list wins


def test_the_cli_adds_lists_shows_and_removes(adapter_box, tmp_path, smollm2_path):
    from click.testing import CliRunner

    from aether_box.cli import cli

    def run(*args: str, ok: bool = True):  # type: ignore[no-untyped-def]
        where = ["--data-dir", str(adapter_box.data_dir), "--endpoint", adapter_box.endpoint]
        result = CliRunner().invoke(cli, [*where, "adapters", *args])
        assert (result.exit_code == 0) == ok, result.output
        return result.output

    path = write_random(tmp_path / "cli.gguf", smollm2_path, std=0.01, seed=31)
    out = run("add", str(path), "--base", "smollm2", "--name", "via-cli")
    assert "added via-cli for smollm2 (rank 8" in out and "fusion probe: ok" in out
    assert "via-cli" in run("list")
    shown = run("show", "via-cli")
    assert "sha256" in shown and "done" in shown
    # Off a terminal (CliRunner's output, as a pipe or a log) the merge's progress is separate
    # lines ending with the complete one: "\rmerged 1/180 tensorsmerged 180/180..." ran together.
    out = run("merge", "via-mix", "--from", "via-cli:1", "--no-wait")
    shown = [line for line in out.splitlines() if line.startswith("merging via-mix tensors")]
    assert shown[0] == "merging via-mix tensors..." and shown[-1].endswith(" (100%)"), out
    done, total = shown[-1].split(": ")[1].split(" ")[0].split("/")
    assert done == total and int(total) > 0 and "merged via-mix (linear" in out
    assert "removed via-mix" in run("remove", "via-mix")
    out = run("add", str(path), "--base", "nope", "--name", "x", ok=False)
    assert "nope" in out
    # A weight or density that is no finite number is refused: a nan weight made an adapter
    # of NaN tensors ("100.00% of the deltas' energy kept").
    out = run("merge", "nan-mix", "--from", "via-cli:nan", "--no-wait", ok=False)
    assert "'via-cli:nan': use name:weight with a finite weight" in out
    out = run("merge", "nan-mix", "--from", "via-cli:1", "--density", "nan", ok=False)
    assert "nan is not a share" in out
    assert "nan-mix" not in run("list")
    assert "removed via-cli" in run("remove", "via-cli")
    assert "via-cli" not in run("list")


def test_the_cli_says_how_to_add_one_when_there_are_none(box):
    from click.testing import CliRunner

    from aether_box.cli import cli

    where = ["--data-dir", str(box.data_dir), "--endpoint", box.endpoint]
    result = CliRunner().invoke(cli, [*where, "adapters", "list"])
    assert result.exit_code == 0, result.output
    assert "no adapters; keep one with `aether-box adapters add PATH --base MODEL`" in (
        result.output
    )
