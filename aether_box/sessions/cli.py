"""`aether-box chat`: talk to a model in the terminal; the box keeps the conversation."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from aether_box.cli import CliState, Whole, pass_state, timeout_option
from aether_box.errors import BoxError, NoBox

__all__ = ["chat", "sessions"]

SERVICE = "session"
HELP_LINE = (
    "/history shows the conversation, /new starts another, Ctrl-C stops an answer, "
    "/quit (or Ctrl-D) leaves"
)


@click.command()
@click.argument("model")
@click.argument("message", required=False)
@click.option("--session", "session_id", help="Go on with this session (its id).")
@click.option("--system", help="A system prompt for a new session.")
@click.option(
    "--pin/--no-pin",
    default=None,
    help="Keep the model loaded for this session (the tuner skips its idle unload) or stop "
    "doing so; a pin lapses after sessions.pin_expiry_s unused.",
)
@click.option(
    "--max-tokens", type=Whole(), default=256, show_default=True, help="Longest reply, in tokens."
)
@click.option("--temperature", default=0.7, show_default=True, type=click.FloatRange(0.0, 2.0))
@timeout_option(300.0, help="Seconds to wait per piece.")
@pass_state
def chat(
    state: CliState,
    model: str,
    message: str | None,
    session_id: str | None,
    system: str | None,
    pin: bool | None,
    max_tokens: int,
    temperature: float,
    timeout: float,
) -> None:
    """Chat with MODEL; replies stream as they are written.

    \b
    aether-box chat smollm2                      # a conversation, line by line
    aether-box chat smollm2 "Hello!"             # one message; prints the session id
    aether-box chat smollm2 --session ID "And?"  # go on with an earlier one
    aether-box chat smollm2 --pin                # the model stays loaded for it
    aether-box chat smollm2 --session ID --no-pin  # unpin it (no message: just that)
    """
    if message is not None and not message.strip():  # the model answered nothing asked
        raise click.BadParameter(
            "the message is empty; give the text to send, or leave it out to chat line by line",
            param_hint="MESSAGE",
        )
    if session_id is not None and system is not None:  # else it would be dropped unsaid
        raise click.BadParameter(
            "a session keeps the system prompt it was made with; leave --system out to go on "
            "with it, or --session out to start a new one",
            param_hint="--system",
        )
    sampling = {"max_tokens": max_tokens, "temperature": temperature}
    with state.client(timeout) as client:
        new = session_id is None
        if session_id is None:
            session_id = _create(client, model, system, bool(pin))
        else:
            _check_session(client, session_id, model)
            if pin is not None:
                client.request(SERVICE, {"op": "pin", "session": session_id, "pin": pin})
                click.echo(f"session {session_id} {'pinned' if pin else 'unpinned'}", err=True)
                if message is None:
                    return
        if message is not None:
            try:
                finished = _say(client, session_id, message, sampling)
            except BoxError:
                if new:  # a session the user never saw, holding nothing: not left behind
                    _forget(client, session_id)
                raise
            click.echo(f"(session {session_id})", err=True)
            if not finished:
                raise SystemExit(130)  # the shell's code for "stopped by Ctrl-C"
            return
        click.echo(f"session {session_id} with {model}; {HELP_LINE}", err=True)
        # No prompt when the lines come from a pipe: only the answers reach stdout.
        prompt = "you> " if sys.stdin.isatty() else ""
        while True:
            try:
                line = input(prompt)
            except EOFError:  # Ctrl-D leaves
                if prompt:
                    click.echo()
                return
            except KeyboardInterrupt:  # Ctrl-C drops the line, as in any REPL
                click.echo("\n(Ctrl-D or /quit leaves)", err=True)
                continue
            if line in ("/quit", "/exit"):
                return
            try:
                if line == "/new":
                    session_id = _create(client, model, system, bool(pin))
                    click.echo(f"session {session_id}", err=True)
                elif line == "/history":
                    _history(client, session_id)
                elif line.strip():
                    _say(client, session_id, line, sampling)
            except NoBox:  # the box is gone: every next line would fail the same way
                raise
            except BoxError as exc:  # one refused line (too long, busy) ends no conversation
                click.echo(f"Error: {exc} (this line was not kept; the session goes on)", err=True)


def _create(client: Any, model: str, system: str | None, pin: bool) -> str:
    """A new session's id."""
    body: dict[str, Any] = {"op": "create", "model": model}
    if system:
        body["system"] = system
    if pin:
        body["pin"] = True
    return str(client.request(SERVICE, body)["session"])


def _forget(client: Any, session_id: str) -> None:
    """Delete a session made for a message that failed (best effort: the box may be gone)."""
    try:
        client.request(SERVICE, {"op": "delete", "session": session_id})
    except BoxError:
        pass


def _check_session(client: Any, session_id: str, model: str) -> None:
    """NotFound for an unknown session; refuse MODEL when the session talks to another one
    (the box would answer with the session's model, not the one asked for)."""
    found = client.request(SERVICE, {"op": "history", "session": session_id})
    if found["model"] != model:
        raise click.BadParameter(
            f"session {session_id} talks to {found['model']}, not {model}; run `aether-box "
            f"chat {found['model']} --session {session_id}`, or leave --session out to start "
            f"a session with {model}",
            param_hint="MODEL",
        )


def _say(client: Any, session_id: str, text: str, sampling: dict[str, Any]) -> bool:
    """Stream one answer; Ctrl-C stops it (False). The stream's cancel reaches the box as the
    interrupt leaves it, and the session keeps nothing of an unfinished turn."""
    body = {"op": "say", "session": session_id, "text": text, "stream": True, **sampling}
    started = False
    try:
        for part in client.stream(SERVICE, body):
            if "token" in part:
                click.echo(part["token"], nl=False)
                started = True
    except KeyboardInterrupt:
        click.echo("\n(stopped; this turn was not kept)", err=True)
        return False
    except BoxError:
        if started:  # the error's line starts on a line of its own
            click.echo()
        raise
    click.echo()
    return True


def _history(client: Any, session_id: str) -> dict[str, Any]:
    """Print the session's system prompt and messages, oldest first; -> the history reply."""
    reply: dict[str, Any] = client.request(SERVICE, {"op": "history", "session": session_id})
    if reply.get("system"):
        click.echo(f"system: {reply['system']}")
    for message in reply["messages"]:
        click.echo(f"{message['role']}: {message['content']}")
    return reply


@click.group()
def sessions() -> None:
    """The conversations the box keeps (`aether-box chat` makes them).

    \b
    aether-box sessions list          # every session, most recently used first
    aether-box sessions show ID       # one conversation, message by message
    aether-box sessions delete ID     # forget it
    """


@sessions.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the sessions as JSON.")
@pass_state
def sessions_list(state: CliState, as_json: bool) -> None:
    """Every session: id, model, messages and when it was last used."""
    with state.client() as client:
        found = client.request(SERVICE, {"op": "list"})["sessions"]
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    if not found:
        click.echo("no sessions yet; `aether-box chat MODEL` starts one")
    for s in found:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(s["updated"]))
        pinned = "  pinned" if s["pinned"] else ""
        count = f"{s['messages']} message" + ("" if s["messages"] == 1 else "s")
        click.echo(f"{s['id']}  {s['model']:<16} {count:>14}  {used}{pinned}")


@sessions.command("show")
@click.argument("session_id", metavar="ID")
@pass_state
def sessions_show(state: CliState, session_id: str) -> None:
    """Session ID's system prompt and messages, oldest first."""
    with state.client() as client:
        found = _history(client, session_id)
    click.echo(f"(session {session_id} with {found['model']})", err=True)


@sessions.command("delete")
@click.argument("session_id", metavar="ID")
@pass_state
def sessions_delete(state: CliState, session_id: str) -> None:
    """Delete session ID and its messages."""
    with state.client() as client:
        deleted = client.request(SERVICE, {"op": "delete", "session": session_id})["deleted"]
    if not deleted:
        raise click.ClickException(
            f"no session {session_id!r}; `aether-box sessions list` shows them"
        )
    click.echo(f"deleted session {session_id}")
