"""What a new user meets typing `aether-box` commands at a running box: options the box cannot
take are refused at once, in one line, before anything reaches the box."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from fixtures_box import BoxInThread

from aether_box.cli import cli

TOO_BIG = str(2**70)  # more than a 64-bit message field holds


@pytest.fixture(scope="module")
def kit_box(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BoxInThread]:
    """A running box with the test models in its data dir (models stay unloaded)."""
    data_dir = tmp_path_factory.mktemp("cli")
    (data_dir / "models").symlink_to(models_dir)
    running = BoxInThread(data_dir)
    yield running
    running.stop()


def invoke(box: BoxInThread, *args: str, input: str | None = None):
    return CliRunner().invoke(cli, ["--data-dir", str(box.data_dir), *args], input=input)


@pytest.mark.parametrize(
    ("args", "option", "says"),
    [
        (("status", "--timeout", "inf"), "'--timeout'", "'inf' is not a wait"),
        (("status", "--timeout", "nan"), "'--timeout'", "'nan' is not a wait"),
        (("status", "--timeout", "1e12"), "'--timeout'", "at most 2,000,000"),
        (("status", "--timeout", "0"), "'--timeout'", "above 0"),
        (("link", "--timeout", "-1"), "'--timeout'", "above 0"),
        (("mcp", "--timeout", "inf"), "'--timeout'", "'inf' is not a wait"),
        (("models", "add", "x.gguf", "--max-length", "0"), "'--max-length'", "less than 1"),
        (("memory", "search", "notes", "hi", "-k", TOO_BIG), "'-k'", "more than the largest"),
        (("memory", "list", "notes", "--limit", TOO_BIG), "'--limit'", "more than the largest"),
        (("tuner", "log", "--limit", TOO_BIG), "'--limit'", "more than the largest"),
        (("tuner", "apply", TOO_BIG), "'ID'", "more than the largest"),
        (("adapters", "merge", "m", "--from", "a:1", "--rank", TOO_BIG), "'--rank'", "largest"),
        (("align", "hub", "--models", "minilm", "--dim", TOO_BIG), "'--dim'", "largest"),
    ],
)
def test_numbers_the_box_cannot_take_are_refused_at_the_option(kit_box, args, option, says):
    result = invoke(kit_box, *args)
    # Before: a msgpack or zmq traceback (exit 1), or "is the box running?" for a box that is.
    assert result.exit_code == 2, (result.output, result.exception)
    assert f"Invalid value for {option}" in result.output and says in result.output
    with kit_box.client(timeout=10) as client:
        assert client.status()["ready"]  # and the box never saw it


def test_chat_refuses_bad_sampling_before_it_makes_a_session(kit_box):
    for option, value in (("--max-tokens", "0"), ("--temperature", "-1")):
        result = invoke(kit_box, "chat", "smollm2", option, value, input="hello\n")
        # Before: a session was made, the first line typed, and only then the chat ended.
        assert result.exit_code == 2, result.output
        assert f"Invalid value for '{option}'" in result.output
        assert "you>" not in result.output
    empty = invoke(kit_box, "chat", "smollm2", " ")
    # Before: a session was made and the model answered an empty message.
    assert empty.exit_code == 2 and "the message is empty" in empty.output
    with kit_box.client(timeout=10) as client:
        assert client.request("session", {"op": "list"})["sessions"] == []


def test_align_list_with_no_projectors_says_how_to_fit_one(kit_box):
    result = invoke(kit_box, "align", "list")
    assert result.exit_code == 0, result.output
    assert "no projectors yet; fit one with `aether-box align fit" in result.output


@pytest.mark.parametrize(
    "endpoint", ["garbage", "127.0.0.1:7745", "tcp://127.0.0.1", "tcp://127.0.0.1:abc", ""]
)
def test_an_endpoint_zmq_cannot_use_is_refused_with_its_form(kit_box, endpoint):
    result = invoke(kit_box, "--endpoint", endpoint, "status")
    # Before: a ZMQError or ValueError traceback from inside the client ("" meant the default).
    assert result.exit_code == 2, (result.output, result.exception)
    assert f"Invalid value for '--endpoint': {endpoint!r}" in result.output
    assert "give tcp://HOST:PORT (e.g. tcp://127.0.0.1:7745) or ipc://PATH" in result.output


def test_run_refuses_a_bind_that_is_no_endpoint(tmp_path):
    result = CliRunner().invoke(cli, ["--data-dir", str(tmp_path), "run", "--bind", "garbage"])
    # Before: "refusing to bind garbage without CURVE encryption", as if it were an address.
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--bind': 'garbage': not a bus endpoint" in result.output


def test_an_empty_name_is_refused_not_replaced_by_the_file_name(tmp_path):
    home = ["--data-dir", str(tmp_path)]
    assert CliRunner().invoke(cli, [*home, "keys", "init"]).exit_code == 0
    server_key = str(tmp_path / "keys" / "server.key")
    result = CliRunner().invoke(cli, [*home, "keys", "authorize", server_key, "--name", ""])
    # Before: "authorized server", kept under the file's name as if no --name were given.
    assert result.exit_code == 2 and "give a name, or leave --name out" in result.output
    assert not (tmp_path / "keys" / "authorized" / "server.key").exists()


def test_link_refuses_an_empty_name(kit_box):
    result = invoke(kit_box, "link", "tcp://127.0.0.1:9", "--name", "")
    # Before: the peer was linked as "127.0.0.1:9", the empty name taken for no name.
    assert result.exit_code == 2 and "give a name, or leave --name out" in result.output
    with kit_box.client(timeout=10) as client:
        assert client.request("federation", {"op": "peers"})["peers"] == []
