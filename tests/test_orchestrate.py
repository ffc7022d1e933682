"""`orchestrate` with SmolLM2 + MiniLM and a real bus worker (bench/data/assistant_tools.py)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fixtures_box import BoxInThread, temp_box, wait_for

from aether_box.errors import NotAllowed, NotFound
from aether_box.tools.orchestrator import fill_schema, split_task

WORKER = Path(__file__).parent.parent / "bench" / "data" / "assistant_tools.py"


def schemas(client: Any) -> dict[str, dict[str, Any]]:
    return {t["name"]: t["schema"] for t in client.request("tools", {"op": "list"})["tools"]}


@pytest.fixture(scope="module")
def orchestra(models_dir: Path) -> Iterator[BoxInThread]:
    with temp_box({"tools": {"enabled": True}}, models_dir=models_dir, stop_timeout=60) as running:
        worker = subprocess.Popen([sys.executable, str(WORKER), running.endpoint])
        try:
            with running.client() as client:
                wait_for(lambda: "send_email" in schemas(client), 30, "the assistant's tools")
            yield running
        finally:
            worker.terminate()
            worker.wait(10)


def test_split_task_and_fill_schema() -> None:
    assert split_task("convert 5 km to miles and then email Bob the result", 3) == [
        "convert 5 km to miles",
        "email Bob the result",
    ]
    assert split_task("a; b; c; d", 2) == ["a", "b c d"]
    schema = {
        "type": "object",
        "properties": {
            "q": {"type": "string", "title": "Q"},
            "k": {"type": "integer", "default": 3},
        },
        "required": ["q"],
    }
    assert fill_schema(schema) == {
        "type": "object",
        "properties": {"q": {"type": "string", "maxLength": 120}},
        "required": ["q"],
        "additionalProperties": False,
    }


def test_select_picks_by_meaning_and_may_pick_none(orchestra: BoxInThread) -> None:
    with orchestra.client(timeout=120) as client:
        for task, expected in [
            ("will it rain in Madrid tomorrow", "weather_forecast"),
            ("how many pounds is 20 kg", "convert_units"),
            ("email Lisa that the keys are on the table", "send_email"),
            ("hello there, how are you today?", None),
        ]:
            chosen = client.request("orchestrate", {"op": "select", "task": task})
            assert chosen["tool"] == expected, (task, chosen)


def test_run_streams_steps_with_schema_valid_arguments(orchestra: BoxInThread) -> None:
    with orchestra.client(timeout=300) as client:
        known = schemas(client)
        parts = list(
            client.stream("orchestrate", {"task": "how many miles is 42 km", "answer": False})
        )
        *partials, final = parts
        assert [p["tool"] for p in partials] == ["convert_units"]
        step = partials[0]
        jsonschema.validate(step["arguments"], known["convert_units"])
        assert step["result"]["unit"] == step["arguments"]["to_unit"]  # the worker answered
        assert final["steps"] == partials and "answer" not in final


def test_a_task_needing_no_tool_is_just_answered(orchestra: BoxInThread) -> None:
    with orchestra.client(timeout=300) as client:
        reply = client.request("orchestrate", {"task": "Say hello to me.", "max_tokens": 12})
        assert reply["steps"] == [] and reply["answer"]


def test_the_trace_is_kept_with_the_session(orchestra: BoxInThread) -> None:
    with orchestra.client(timeout=300) as client:
        session = client.request("session", {"op": "create", "model": "smollm2"})["session"]
        client.request(
            "orchestrate",
            {"task": "what is the weather in Lima", "session": session, "max_tokens": 16},
        )
        history = client.request("session", {"op": "history", "session": session})["messages"]
        assert [m["role"] for m in history] == ["user", "tool", "assistant"]
        assert history[0]["content"] == "what is the weather in Lima"
        assert '"weather_forecast"' in history[1]["content"]


NESTED_WORKER = """
import sys
from aether_box.bus.worker import Worker

worker = Worker(sys.argv[1], "trips", heartbeat_s=0.5)
PLACE = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
SCHEMA = {
    "type": "object",
    "$defs": {"Place": PLACE},
    "properties": {"destination": {"$ref": "#/$defs/Place"}, "nights": {"type": "integer"}},
    "required": ["destination", "nights"],
}


@worker.tool("Book a hotel in a city for some nights.", effect="write", schema=SCHEMA)
def book_hotel(destination, nights):
    return {"booked": destination["city"], "nights": nights}


worker.run()
"""


def test_a_tool_whose_schema_nests_models_is_filled(orchestra: BoxInThread) -> None:
    # Schemas made from pydantic models (MCP servers', too) point at "$defs" with "$ref";
    # the fill schema left "$defs" out, and the whole run failed "Error resolving ref".
    worker = subprocess.Popen([sys.executable, "-c", NESTED_WORKER, orchestra.endpoint])
    try:
        with orchestra.client(timeout=300) as client:
            wait_for(lambda: "book_hotel" in schemas(client), 30, "the worker's tool")
            task = {"task": "book a hotel in Paris for 3 nights", "tools": ["book_hotel"]}
            reply = client.request("orchestrate", {**task, "answer": False})
            (step,) = reply["steps"]
            jsonschema.validate(step["arguments"], schemas(client)["book_hotel"])
            assert step["result"]["nights"] == step["arguments"]["nights"]
    finally:
        worker.terminate()
        worker.wait(10)


def test_an_unknown_session_is_refused_before_any_tool_runs(orchestra: BoxInThread) -> None:
    with orchestra.client(timeout=300) as client:
        sent_before = client.status()["tools"]["calls_by_tool"].get("send_email", 0)
        task = {"task": "email Lisa that the keys are on the table", "session": "typo"}
        with pytest.raises(NotFound, match="no session 'typo'"):
            client.request("orchestrate", {**task, "answer": False})
        # The email was not sent (it was, and only then the session's NotFound came back).
        assert client.status()["tools"]["calls_by_tool"].get("send_email", 0) == sent_before


def test_private_data_is_not_sent_out_without_an_allow(orchestra: BoxInThread) -> None:
    with orchestra.client(timeout=300) as client:
        client.request(
            "tools",
            {
                "op": "call",
                "tool": "memory_add",
                "arguments": {"text": "Garden: plant tulips in May."},
            },
        )
        reply = client.request(
            "orchestrate",
            {
                "task": "find my notes about the garden, then send an email to Anna",
                "answer": False,
            },
        )
        tools = [s["tool"] for s in reply["steps"]]
        assert tools == ["memory_search", "send_email"], reply
        assert "result" in reply["steps"][0]
        assert "allow_private_send" in reply["steps"][1]["blocked"]
        assert "result" not in reply["steps"][1]


def test_orchestrate_says_when_tools_are_off(box: BoxInThread) -> None:
    with box.client() as client, pytest.raises(NotAllowed, match="enabled = true"):
        client.request("orchestrate", {"task": "weather in Rome"})
