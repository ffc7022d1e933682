"""Chat sessions with the real SmolLM2: the box remembers, streams, and keeps only whole turns."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from fixtures_box import BoxInThread, wait_for
from fixtures_engines import engines_box

from aether_box.cli import cli
from aether_box.client import NotFound
from aether_box.sessions.service import history_window

GREEDY = {"temperature": 0, "max_tokens": 12, "seed": 1}


@pytest.fixture
def box(models_dir):
    with engines_box(models_dir) as running:
        yield running


def say(client, session: str, text: str, **extra) -> dict:
    return client.request(
        "session", {"op": "say", "session": session, "text": text, **GREEDY, **extra}
    )


def test_a_session_remembers_and_the_model_sees_the_history(box):
    with box.client(timeout=120) as client:
        session = client.request(
            "session", {"op": "create", "model": "smollm2", "system": "Answer briefly."}
        )["session"]
        first = say(client, session, "My name is Ada and I like green tea.")
        second = say(client, session, "What do I like?")
        assert first["messages"] == 2 and second["messages"] == 4
        # The second prompt carried the first exchange: far more tokens than its own words.
        assert second["usage"]["prompt_tokens"] > first["usage"]["prompt_tokens"] + 10
        history = client.request("session", {"op": "history", "session": session})
        assert [m["role"] for m in history["messages"]] == ["user", "assistant"] * 2
        assert history["messages"][2]["content"] == "What do I like?"
        assert history["messages"][3]["content"] == second["text"]
        listed = client.request("session", {"op": "list"})["sessions"]
        assert listed[0]["id"] == session and listed[0]["messages"] == 4


def test_streamed_turns_arrive_in_pieces_and_are_kept_whole(box):
    with box.client(timeout=120) as client:
        session = client.request("session", {"op": "create", "model": "smollm2"})["session"]
        parts = list(
            client.stream(
                "session",
                {"op": "say", "session": session, "text": "Count: 1, 2,", "stream": True, **GREEDY},
            )
        )
        tokens = "".join(p["token"] for p in parts if "token" in p)
        assert len(parts) > 2 and tokens == parts[-1]["text"]
        history = client.request("session", {"op": "history", "session": session})["messages"]
        assert history[-1]["content"] == tokens


def test_a_cancelled_turn_leaves_the_conversation_as_it_was(box):
    with box.client(timeout=120) as client:
        session = client.request("session", {"op": "create", "model": "smollm2"})["session"]
        say(client, session, "Hello")
        stream = client.stream(
            "session",
            {
                "op": "say",
                "session": session,
                "text": "Write a long story.",
                "stream": True,
                "max_tokens": 400,
                "temperature": 0,
            },
        )
        next(stream)
        stream.close()  # the client stops reading: the turn is cancelled
        # Wait for the turn to end either way: were it not cancelled, it would be stored.
        wait_for(
            lambda: client.status()["services"]["session"]["in_flight"] == 0, 60, "the turn to end"
        )
        history = client.request("session", {"op": "history", "session": session})["messages"]
        assert len(history) == 2


def test_sessions_survive_a_restart_and_unknown_ones_say_so(models_dir):
    with engines_box(models_dir) as running:
        with running.client(timeout=120) as client:
            session = client.request("session", {"op": "create", "model": "smollm2"})["session"]
            say(client, session, "Remember the number 7.")
        data_dir = running.data_dir
        running.stop()
        again = BoxInThread(data_dir, {"models": {"dir": str(models_dir)}})
        try:
            with again.client(timeout=30) as client:
                history = client.request("session", {"op": "history", "session": session})
                assert len(history["messages"]) == 2
                with pytest.raises(NotFound, match="not installed"):  # no empty session made
                    client.request("session", {"op": "create", "model": "no-such-model"})
                assert len(client.request("session", {"op": "list"})["sessions"]) == 1
                with pytest.raises(NotFound, match="no session 'nope'.*aether-box chat MODEL"):
                    client.request("session", {"op": "history", "session": "nope"})
                assert client.request("session", {"op": "delete", "session": session}) == {
                    "deleted": True
                }
        finally:
            again.stop()


def test_the_history_window_keeps_the_newest_messages_that_fit():
    messages = [{"role": "user", "content": "x" * n} for n in (50, 40, 30, 20)]
    assert [len(m["content"]) for m in history_window(messages, 55)] == [30, 20]
    assert [len(m["content"]) for m in history_window(messages, 5)] == [20]  # the newest, always


def test_the_chat_command_streams_and_goes_on_with_a_session(box):
    runner = CliRunner()
    base = ["--data-dir", str(box.data_dir), "chat", "smollm2", "--temperature", "0"]
    once = runner.invoke(cli, [*base, "--max-tokens", "6", "Hello!"])
    assert once.exit_code == 0, once.output
    session = once.stderr.split("session ")[1].strip(" )\n")
    talk = runner.invoke(
        cli, [*base, "--session", session, "--max-tokens", "6"], input="Hi again\n/history\n/quit\n"
    )
    assert talk.exit_code == 0, talk.output
    assert "user: Hello!" in talk.stdout and "user: Hi again" in talk.stdout
    with box.client(timeout=10) as client:
        history = client.request("session", {"op": "history", "session": session})
    assert len(history["messages"]) == 4
