"""`aether-box chat`: talk to a model in the terminal; the box keeps the conversation."""

from __future__ import annotations

from typing import Any

import click

from aether_box.cli import CliState, Whole, pass_state, timeout_option

__all__ = ["chat"]

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
    sampling = {"max_tokens": max_tokens, "temperature": temperature}
    with state.client(timeout) as client:
        if session_id is None:
            body: dict[str, Any] = {"op": "create", "model": model}
            if system:
                body["system"] = system
            if pin:
                body["pin"] = True
            session_id = client.request(SERVICE, body)["session"]
        elif pin is not None:
            client.request(SERVICE, {"op": "pin", "session": session_id, "pin": pin})
            click.echo(f"session {session_id} {'pinned' if pin else 'unpinned'}", err=True)
            if message is None:
                return
        if message is not None:
            finished = _say(client, session_id, message, sampling)
            click.echo(f"(session {session_id})", err=True)
            if not finished:
                raise SystemExit(130)  # the shell's code for "stopped by Ctrl-C"
            return
        click.echo(f"session {session_id} with {model}; {HELP_LINE}", err=True)
        while True:
            try:
                line = input("you> ")
            except EOFError:  # Ctrl-D leaves
                click.echo()
                return
            except KeyboardInterrupt:  # Ctrl-C drops the line, as in any REPL
                click.echo("\n(Ctrl-D or /quit leaves)", err=True)
                continue
            if line in ("/quit", "/exit"):
                return
            if line == "/new":
                session_id = client.request(SERVICE, {"op": "create", "model": model})["session"]
                click.echo(f"session {session_id}", err=True)
            elif line == "/history":
                _history(client, session_id)
            elif line.strip():
                _say(client, session_id, line, sampling)


def _say(client: Any, session_id: str, text: str, sampling: dict[str, Any]) -> bool:
    """Stream one answer; Ctrl-C stops it (False). The stream's cancel reaches the box as the
    interrupt leaves it, and the session keeps nothing of an unfinished turn."""
    body = {"op": "say", "session": session_id, "text": text, "stream": True, **sampling}
    try:
        for part in client.stream(SERVICE, body):
            if "token" in part:
                click.echo(part["token"], nl=False)
    except KeyboardInterrupt:
        click.echo("\n(stopped; this turn was not kept)", err=True)
        return False
    click.echo()
    return True


def _history(client: Any, session_id: str) -> None:
    reply = client.request(SERVICE, {"op": "history", "session": session_id})
    for message in reply["messages"]:
        click.echo(f"{message['role']}: {message['content']}")
