"""Defects a user of adapters met, each with the use that showed it."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures_adapters import TRAINED, random_lora, write_random
from fixtures_box import BoxInThread, wait_for

from aether_box.adapters.store import AdapterStore
from aether_box.errors import AdapterPruned, BadRequest, Timeout

PROMPT = "The capital of France is Paris, and the capital of Italy is"


def complete(client, adapters):  # type: ignore[no-untyped-def]
    body = {"op": "complete", "model": "smollm2", "prompt": PROMPT, "max_tokens": 4}
    return client.request("llm", {**body, "temperature": 0.0, "adapters": adapters}, timeout=300)


def test_a_pruned_adapter_stays_refused_after_a_probe_fails_or_a_kill_cuts_it_short(
    data_dir: Path, models_dir: Path, smollm2_path: Path, tmp_path: Path
):
    """A re-probe that failed, or that a kill cut short ("interrupted" at the next start),
    has no verdict: the adapter its last verdict pruned was then served to every request
    unforced, and `list` and status said "interrupted" instead of the verdict."""
    overrides = {
        "models": {"dir": str(models_dir)},
        "adapters": {"probe_prompts": 4},
        "engines": {"n_threads": 1},
    }
    path = write_random(tmp_path / "loud.gguf", smollm2_path, std=0.2, seed=7)
    box = BoxInThread(data_dir, overrides)
    try:
        with box.client(timeout=300) as client:
            added = client.request("adapters", {"op": "add", "path": str(path), "base": "smollm2"})
            entry = client.request("adapters", {"op": "wait", "name": "loud"}, timeout=300)
            assert entry["verdict"] == "prune", entry
    finally:
        box.stop(timeout=120)
    # What the fusion log holds after a re-probe failed and another was killed mid-way.
    store = AdapterStore(data_dir / "adapters")
    store.log_finish(store.log_start("loud", added["sha256"]), state="failed", reason="engine")
    store.log_start("loud", added["sha256"])
    store.close()

    box = BoxInThread(data_dir, overrides)
    try:
        with box.client(timeout=300) as client:
            shown = client.request("adapters", {"op": "show", "name": "loud"})
            assert [e["state"] for e in shown["fusion_log"]] == ["interrupted", "failed", "done"]
            with pytest.raises(AdapterPruned, match="by the fusion log"):
                complete(client, [{"name": "loud"}])
            listed = client.request("adapters", {"op": "list"})["adapters"][0]
            assert "by the fusion log" in listed["pruned"]
            assert listed["judged"]["verdict"] == "prune"
            assert client.status()["adapters"]["adapters"][0]["verdict"] == "prune"
            assert complete(client, [{"name": "loud", "force": True}])["text"] is not None
            # Restored, it is served; a new probe judges it anew.
            client.request("adapters", {"op": "restore", "name": "loud"})
            assert complete(client, [{"name": "loud"}])["text"] is not None
            client.request("adapters", {"op": "probe", "name": "loud"})
            entry = client.request("adapters", {"op": "wait", "name": "loud"}, timeout=300)
            assert entry["verdict"] == "prune"
            with pytest.raises(AdapterPruned, match="by the fusion log"):
                complete(client, [{"name": "loud"}])
    finally:
        box.stop(timeout=120)


def test_the_cli_shows_the_probe_progress_out_of_its_prompts(adapter_box, tmp_path, smollm2_path):
    """`adapters add` showed "probing NAME: 0/0 (100%)" at once, and off a terminal nothing
    after it: the first progress came before the probe knew how many prompts it reads."""
    from click.testing import CliRunner

    from aether_box.cli import cli

    path = write_random(tmp_path / "shown.gguf", smollm2_path, std=0.01, seed=41)
    where = ["--data-dir", str(adapter_box.data_dir), "--endpoint", adapter_box.endpoint]
    result = CliRunner().invoke(cli, [*where, "adapters", "add", str(path), "--base", "smollm2"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("probing shown")]
    assert lines[0] == "probing shown..." and lines[-1] == "probing shown: 4/4 (100%)", lines
    assert not any("/0 " in line for line in lines), lines


def test_a_file_name_that_is_no_adapter_name_says_to_give_one(adapter_box, tmp_path, smollm2_path):
    """`adapters add "my lora.gguf"` said "adapter name 'my lora' is not usable", though the
    user named none: the name comes from the file, and --name is how to give another."""
    path = write_random(tmp_path / "my lora.gguf", smollm2_path, std=0.01, seed=43)
    with adapter_box.client(timeout=300) as client:
        with pytest.raises(BadRequest, match="'my lora' is no usable adapter name.*--name"):
            client.request("adapters", {"op": "add", "path": str(path), "base": "smollm2"})
        with pytest.raises(BadRequest, match="adapter name 'a b' is not usable"):
            body = {"op": "add", "path": str(path), "base": "smollm2", "name": "a b"}
            client.request("adapters", body)
        listed = client.request("adapters", {"op": "list"})["adapters"]
        assert not any(a["name"] in ("my lora", "a b") for a in listed)


@pytest.mark.skipif(not TRAINED.exists(), reason="tests/data/adapters/pirate-peft is missing")
def test_an_adapter_kept_while_its_client_gave_up_is_probed_all_the_same(
    data_dir: Path, models_dir: Path, smollm2_path: Path, tmp_path: Path
):
    """A client that gave up on `add` (Ctrl-C, a timeout) while the adapter was converted and
    written left it kept but never probed: listed "pending" for ever and served unforced,
    though its verdict would prune it. So did a kill between its keeping and its probe."""
    overrides = {
        "models": {"dir": str(models_dir)},
        "adapters": {"probe_prompts": 4},
        "engines": {"n_threads": 1},
    }
    box = BoxInThread(data_dir, overrides)
    try:
        with box.client(timeout=300) as client:
            body = {"op": "add", "path": str(TRAINED), "base": "smollm2", "name": "pirate"}
            with pytest.raises(Timeout):  # the PEFT conversion takes longer: it is cancelled
                client.request("adapters", body, timeout=0.01)
            listed = lambda: client.request("adapters", {"op": "list"})["adapters"]  # noqa: E731
            wait_for(lambda: bool(listed()), 60, "the cancelled add to finish")
            entry = client.request("adapters", {"op": "wait", "name": "pirate"}, timeout=300)
            assert entry["verdict"] == "prune", entry
    finally:
        box.stop(timeout=120)
    # Kept by a box killed before it queued the probe: the index row, no fusion log.
    store = AdapterStore(data_dir / "adapters")
    store.add("loud", "smollm2", random_lora(smollm2_path, std=0.2, seed=7), "gguf:test")
    store.close()
    box = BoxInThread(data_dir, overrides)
    try:
        with box.client(timeout=300) as client:
            entry = client.request("adapters", {"op": "wait", "name": "loud"}, timeout=300)
            assert entry["verdict"] == "prune", entry
            with pytest.raises(AdapterPruned):
                complete(client, [{"name": "loud"}])
    finally:
        box.stop(timeout=120)
