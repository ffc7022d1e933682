"""Defects a user of alignment met, each with the use that showed it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fixtures_box import BoxInThread, temp_box, wait_for

from aether_box.align.corpus import load_set
from aether_box.cli import cli
from aether_box.errors import BadRequest, NotFound

# A small, quick fit: two ONNX encoders, ridge alone, 60 pairs fitted and 20 held out (mpnet
# is not in the test kit: mpnet_models_dir pulls it on a fresh machine).
SMALL = {"methods": ["ridge"], "max_pairs": 60, "test_pairs": 20, "embed_chunk": 40}
FIT = {"op": "fit", "from": "minilm", "to": "mpnet", "texts": load_set("glosses")[:80]}


def test_a_projector_can_be_removed_and_stays_removed_after_a_restart(
    data_dir: Path, mpnet_models_dir: Path
):
    """README lists projector removal among the admin ops, but `align` had no op for it and
    the CLI no command: a projector, once fitted, could not be taken out of service."""
    overrides = {"models": {"dir": str(mpnet_models_dir)}, "align": SMALL}
    vector = np.ones(384, np.float32) / np.sqrt(384)
    project = {"op": "project", "from": "minilm", "to": "mpnet", "vector": vector}
    pairs = data_dir / "align" / "projectors"

    def run(*args: str) -> str:
        where = ["--data-dir", str(data_dir), "--endpoint", f"ipc://{data_dir}/bus.sock"]
        result = CliRunner().invoke(cli, [*where, "align", *args])
        assert result.exit_code == 0, result.output
        return result.output

    box = BoxInThread(data_dir, overrides)
    try:
        with box.client(timeout=300) as client:
            client.request("align", FIT, timeout=300)
            assert client.request("align", project)["projector"] == "minilm->mpnet"
            out = run("remove", "--from", "minilm", "--to", "mpnet")
            assert "removed minilm->mpnet (ridge)" in out
            with pytest.raises(NotFound, match="no projector from 'minilm' to 'mpnet'"):
                client.request("align", project)
            assert client.request("align", {"op": "list"})["projectors"] == []
            assert "minilm->mpnet" not in client.status()["align"]["projectors"]
            with pytest.raises(NotFound, match="fitted: none"):
                client.request("align", {"op": "delete", "from": "minilm", "to": "mpnet"})
            assert not list(pairs.iterdir())

            # Fitted again (from the cached pairs), then removed by a kill right after the
            # rename: what it leaves is deleted at the next start, never served again.
            client.request("align", FIT, timeout=300)
    finally:
        box.stop(timeout=120)
    (pairs / "minilm__mpnet").rename(pairs / ".minilm__mpnet.removed-0123abcd")
    box = BoxInThread(data_dir, overrides)
    try:
        with box.client(timeout=60) as client:
            assert client.request("align", {"op": "list"})["projectors"] == []
            with pytest.raises(NotFound):
                client.request("align", project)
        assert not list(pairs.iterdir())
    finally:
        box.stop(timeout=120)


def test_a_cancelled_fit_stops_in_its_thread_and_frees_the_fit_slot(mpnet_models_dir: Path):
    """Ctrl-C on `align fit` cancelled the request, but the fit's thread went on to its end
    (here ~80 s of MLP epochs), holding the one fit slot: the next fit waited on it in
    silence."""
    slow = {**SMALL, "methods": ["mlp"], "mlp_epochs": 2000, "mlp_hidden": 64}
    with temp_box({"align": slow}, models_dir=mpnet_models_dir) as box:
        with box.client(timeout=300) as client:
            for reply in client.stream("align", FIT, timeout=300):
                if reply.get("step") == "mlp: training":
                    # `status` shows the fit and its step while it runs.
                    (work,) = client.status()["align"]["running"]
                    assert (work["op"], work["from"], work["to"]) == ("fit", "minilm", "mpnet")
                    assert work["step"].startswith("mlp: training: "), work
                    break  # the client stops reading: its request is cancelled
            align = lambda: client.status()["services"]["align"]  # noqa: E731
            wait_for(lambda: align()["in_flight"] == 0, 30, "the cancelled fit to end")
            assert client.status()["align"]["running"] == []
            assert align()["rejected"].get("client_gone", 0) + align()["cancelled"] == 1
            quick = client.request("align", {**FIT, "methods": ["ridge"]}, timeout=60)
            assert quick["best"] == "ridge" and quick["pairs"]["cached"]


def test_too_few_pairs_to_fit_on_are_refused_before_anything_is_embedded(
    data_dir: Path, models_dir: Path
):
    """`align fit --max-pairs 5` embedded the fit, held-out and out-of-domain texts (minutes
    for an LLM and the built-in sets) and only then said "give at least 20 texts"."""
    box = BoxInThread(data_dir, {"models": {"dir": str(models_dir)}, "align": SMALL})
    try:
        with box.client(timeout=300) as client:
            for body in ({**FIT, "max_pairs": 5}, {**FIT, "texts": None, "max_pairs": 5}):
                body = {k: v for k, v in body.items() if v is not None}
                replies = []
                with pytest.raises(BadRequest, match="5 texts are left to fit on") as caught:
                    replies.extend(client.stream("align", body, timeout=300))
                assert replies == [] and "raise max_pairs" in str(caught.value)
            assert not (data_dir / "align" / "vectors").exists()  # nothing was embedded
    finally:
        box.stop(timeout=120)


def test_status_lists_fitted_projectors_after_a_restart(data_dir: Path, mpnet_models_dir: Path):
    """After a restart status said "projectors: none" (the dashboard: "no projectors yet; fit
    one") until a request loaded one: a user was sent to fit what the box had."""
    overrides = {"models": {"dir": str(mpnet_models_dir)}, "align": SMALL}
    box = BoxInThread(data_dir, overrides)
    try:
        with box.client(timeout=300) as client:
            client.request("align", {**FIT, "methods": ["ridge"]}, timeout=300)
            assert list(client.status()["align"]["projectors"]) == ["minilm->mpnet"]
    finally:
        box.stop(timeout=120)
    box = BoxInThread(data_dir, overrides)
    try:
        with box.client(timeout=60) as client:
            shown = client.status()["align"]["projectors"]["minilm->mpnet"]
            assert shown["method"] == "ridge" and shown["projections"] == 0
            assert shown["top1_in_domain"] > 0.5
            where = ["--data-dir", str(data_dir), "--endpoint", box.endpoint]
            out = CliRunner().invoke(cli, [*where, "status"]).output
            assert "projectors: minilm->mpnet (gate 0.8)" in out
            vector = np.ones(384, np.float32) / np.sqrt(384)
            project = {"op": "project", "from": "minilm", "to": "mpnet", "vector": vector}
            client.request("align", project)
            assert client.status()["align"]["projectors"]["minilm->mpnet"]["projections"] == 1
    finally:
        box.stop(timeout=120)
