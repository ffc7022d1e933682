"""`aether-box chat` and `aether-box sessions` as a user meets them: piped lines, refused
lines, sessions that do not exist or talk to another model, and the sessions commands."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from fixtures_engines import engines_box

from aether_box.cli import cli

# Far more tokens than SmolLM2's context (2048) holds: the box refuses the prompt.
TOO_LONG = "word " * 5000


@pytest.fixture(scope="module")
def box(models_dir):
    with engines_box(models_dir) as running:
        yield running


def run(box, *args: str, input: str | None = None):
    return CliRunner().invoke(cli, ["--data-dir", str(box.data_dir), *args], input=input)


def listed(box) -> list[dict]:
    with box.client(timeout=30) as client:
        return client.request("session", {"op": "list"})["sessions"]


def history(box, session: str) -> list[dict]:
    with box.client(timeout=30) as client:
        return client.request("session", {"op": "history", "session": session})["messages"]


def test_a_refused_line_does_not_end_a_piped_chat(box):
    chat = ["chat", "smollm2", "--temperature", "0", "--max-tokens", "4"]
    talk = run(box, *chat, input=f"Hi\n\n{TOO_LONG}\nStill there?\n")
    assert talk.exit_code == 0, talk.output
    assert "context holds 2048" in talk.stderr and "the session goes on" in talk.stderr
    assert "you>" not in talk.stdout  # a pipe gets the answers only, no prompts
    session = talk.stderr.split("session ")[1].split()[0]
    kept = [m["content"] for m in history(box, session) if m["role"] == "user"]
    assert kept == ["Hi", "Still there?"]


def test_going_on_with_a_session_checks_it_before_the_first_line(box):
    made = run(box, "chat", "smollm2", "--system", "Be brief.", input="/quit\n")
    assert made.exit_code == 0, made.output
    session = made.stderr.split("session ")[1].split()[0]
    unknown = run(box, "chat", "smollm2", "--session", "nope", input="/quit\n")
    assert unknown.exit_code == 1 and "no session 'nope'" in unknown.output
    assert "with smollm2" not in unknown.output  # no conversation was offered
    other = run(box, "chat", "gemma", "--session", session, input="/quit\n")
    assert other.exit_code == 2
    assert f"talks to smollm2, not gemma; run `aether-box chat smollm2 --session {session}`" in (
        " ".join(other.output.split())
    )
    system = run(box, "chat", "smollm2", "--session", session, "--system", "x", "Hi")
    assert system.exit_code == 2 and "keeps the system prompt" in system.output


def test_a_refused_first_message_leaves_no_empty_session(box):
    before = {s["id"] for s in listed(box)}
    once = run(box, "chat", "smollm2", TOO_LONG)
    assert once.exit_code == 1 and "context holds 2048" in once.output
    assert {s["id"] for s in listed(box)} == before


def test_the_sessions_commands_list_show_and_delete(box):
    made = run(box, "chat", "smollm2", "--system", "Be brief.", input="/quit\n")
    session = made.stderr.split("session ")[1].split()[0]
    with box.client(timeout=30) as client:
        client.request(
            "session",
            {"op": "append", "session": session, "messages": [{"role": "user", "content": "Hi"}]},
        )
    shown = run(box, "sessions", "list")
    assert shown.exit_code == 0 and f"{session}  smollm2" in shown.output
    assert "1 message " in shown.output.split(session)[1].splitlines()[0]
    one = run(box, "sessions", "show", session)
    assert one.exit_code == 0 and one.stdout == "system: Be brief.\nuser: Hi\n"
    assert run(box, "sessions", "delete", session).exit_code == 0
    gone = run(box, "sessions", "delete", session)
    assert gone.exit_code == 1
    assert f"no session '{session}'; `aether-box sessions list` shows them" in gone.output
    missing = run(box, "sessions", "show", session)
    assert missing.exit_code == 1 and "no session" in missing.output
