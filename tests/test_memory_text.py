"""Texts in memory, embedded by the box's real `embed` service (MiniLM, SmolLM2)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fixtures_box import BoxInThread

from aether_box.cli import cli
from aether_box.client import ServiceUnavailable

NOTES = {
    "cat": "The cat sleeps curled up on the warm windowsill all afternoon.",
    "bread": "Knead the dough, let it rise for an hour, then bake the loaf at 220 degrees.",
    "rocket": "The rocket's second stage ignited and carried the satellite into orbit.",
    "stocks": "Share prices fell sharply after the central bank raised interest rates.",
    "rain": "Heavy rain flooded the streets and the river burst its banks overnight.",
    "chess": "She sacrificed her queen to force checkmate in three moves.",
    "guitar": "He tuned the guitar strings and strummed a few chords of the song.",
    "flu": "The doctor said rest and fluids are the best treatment for the flu.",
}


@pytest.fixture
def text_box(data_dir: Path, models_dir: Path) -> Iterator[BoxInThread]:
    running = BoxInThread(data_dir, overrides={"models": {"dir": str(models_dir)}})
    yield running
    running.stop()


def search(client, text, **extra):
    body = {"op": "search", "collection": "notes", "text": text, "k": 3, **extra}
    return client.request("memory", body, timeout=120)


def test_texts_are_embedded_with_the_collections_model(text_box):
    with text_box.client(timeout=120) as client:
        created = client.request(
            "memory", {"op": "create", "collection": "notes", "model": "minilm"}
        )
        assert created["collection"]["dim"] == 384  # learnt from the model
        client.request(
            "memory",
            {
                "op": "add",
                "collection": "notes",
                "ids": list(NOTES),
                "texts": list(NOTES.values()),
                "metadata": [
                    {"topic": k, "indoors": k in ("cat", "bread", "chess", "guitar")} for k in NOTES
                ],
            },
        )

        assert search(client, "a kitten napping in the sun")["results"][0]["id"] == "cat"
        assert search(client, "launching spacecraft")["results"][0]["id"] == "rocket"
        indoors = search(client, "weather and storms", where={"indoors": True})["results"]
        assert indoors and all(h["metadata"]["indoors"] for h in indoors)
        hybrid = search(client, "queen checkmate", hybrid=True)["results"]
        assert hybrid[0]["id"] == "chess" and hybrid[0]["ranks"] == {"vector": 1, "keyword": 1}

        # New text, new vector: the record now answers for its new meaning.
        client.request(
            "memory",
            {
                "op": "update",
                "collection": "notes",
                "ids": ["cat"],
                "texts": ["Bond yields rose as investors sold government debt."],
            },
        )
        top = search(client, "a kitten napping in the sun")["results"]
        assert "cat" not in [h["id"] for h in top[:1]]
        assert search(client, "bond market investors")["results"][0]["id"] == "cat"

        result = CliRunner().invoke(
            cli,
            [
                "--data-dir",
                str(text_box.data_dir),
                "--endpoint",
                text_box.endpoint,
                "memory",
                "search",
                "notes",
                "bake bread at home",
                "-k",
                "1",
                "--json",
            ],
        )
        assert result.exit_code == 0, result.output
        assert '"id": "bread"' in result.output


def test_query_from_another_model_falls_back_to_the_collections_model(text_box):
    with text_box.client(timeout=120) as client:
        client.request("memory", {"op": "create", "collection": "notes", "model": "minilm"})
        client.request(
            "memory",
            {"op": "add", "collection": "notes", "ids": list(NOTES), "texts": list(NOTES.values())},
        )
        query = "a kitten napping in the sun"
        smol = client.request(
            "embed", {"op": "embed", "model": "smollm2", "texts": [query]}, timeout=120
        )["vectors"][0]
        assert smol.shape == (576,)
        # With no projector fitted (or no align service) the box embeds the query text with
        # MiniLM instead: the proxy path, and it says why.
        reply = search(client, query, vector=smol, query_model="smollm2")
        reason = reply["alignment"]["reason"]
        assert reply["path"] == "proxy"
        assert reason == "no align service" or "no projector" in reason
        native = search(client, query)
        assert [h["id"] for h in reply["results"]] == [h["id"] for h in native["results"]]
        assert reply["results"][0]["id"] == "cat"
        with pytest.raises(ServiceUnavailable, match="(no align service|no projector).*'text'"):
            client.request(
                "memory",
                {"op": "search", "collection": "notes", "vector": smol, "query_model": "smollm2"},
                timeout=120,
            )
        # A MiniLM vector sent with its own model name needs no translation.
        mini = client.request(
            "embed", {"op": "embed", "model": "minilm", "texts": [query]}, timeout=120
        )["vectors"]
        reply = client.request(
            "memory",
            {
                "op": "search",
                "collection": "notes",
                "vector": mini,
                "query_model": "minilm",
                "k": 1,
            },
        )
        assert reply["path"] == "native" and reply["results"][0]["id"] == "cat"
        assert np.isclose(reply["results"][0]["score"], native["results"][0]["score"], atol=1e-5)
