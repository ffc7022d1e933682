"""The tuner's adapter action: a prune verdict in the fusion log becomes a proposal (the
default mode); applied, the adapter is pruned by the tuner (AdapterCatalog.prune) and logged;
rolled back, it is restored."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from fixtures_adapters import write_random
from fixtures_box import BoxInThread
from fixtures_engines import wait_for


def decisions(client: Any) -> list[dict[str, Any]]:
    return client.request("tuner", {"op": "log", "action": "adapters"})["decisions"]


def meta(client: Any, name: str) -> dict[str, Any]:
    listed = client.request("adapters", {"op": "list"})["adapters"]
    return next(a for a in listed if a["name"] == name)


def test_a_prune_verdict_is_proposed_applied_and_rolled_back(models_dir: Path, smollm2_path):
    data_dir = Path(tempfile.mkdtemp(prefix="abx-tad-"))
    overrides = {
        "models": {"dir": str(models_dir)},
        "adapters": {"probe_prompts": 1},
        "engines": {"n_threads": 1},
        "monitor": {"observe_s": 0.1},
        "tuner": {"check_s": 0.1},
    }
    box = BoxInThread(data_dir, overrides)
    try:
        path = write_random(data_dir / "loud.gguf", smollm2_path, std=0.2, seed=7)
        with box.client(timeout=300) as client:
            client.request("adapters", {"op": "add", "path": str(path), "base": "smollm2"})
            entry = client.request("adapters", {"op": "wait", "name": "loud"}, timeout=300)
            assert entry["verdict"] == "prune", entry
            wait_for(lambda: decisions(client), 60, "the tuner's proposal")
            (proposal,) = decisions(client)
            assert (proposal["mode"], proposal["state"]) == ("propose", "proposed")
            assert proposal["subject"] == "loud" and proposal["params"]["op"] == "prune"
            assert meta(client, "loud")["pruning"] is None  # only proposed

            client.request("tuner", {"op": "apply", "id": proposal["id"]})
            wait_for(lambda: decisions(client)[0]["state"] == "applied", 60, "the prune")
            pruning = meta(client, "loud")["pruning"]
            assert (pruning["state"], pruning["by"]) == ("pruned", "tuner")
            assert "fusion log" in pruning["reason"]
            assert decisions(client)[0]["after"]["pruned"].startswith("by tuner")

            client.request("tuner", {"op": "rollback", "id": proposal["id"]})
            after = meta(client, "loud")
            assert after["pruning"]["state"] == "restored" and after["pruned"] is None
            # Restored, it is served unforced; and no new proposal follows.
            body = {"op": "complete", "model": "smollm2", "prompt": "Hello", "max_tokens": 2}
            client.request("llm", {**body, "adapters": [{"name": "loud"}]}, timeout=300)
            assert len(decisions(client)) == 1
    finally:
        box.stop(timeout=30)
        shutil.rmtree(data_dir, ignore_errors=True)
