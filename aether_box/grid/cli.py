"""`aether-box grid`: join a grid through any member, leave it, see it, revoke a member."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.table import Table

from aether_box.cli import CliState, pass_state, timeout_option
from aether_box.federation.cli import read_server_key
from aether_box.plain_console import plain_console

__all__ = ["grid"]

SERVICE = "grid"


def _ask(state: CliState, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    with state.client(timeout) as client:
        return client.request(SERVICE, body)


@click.group()
def grid() -> None:
    """Link this box with others into a grid: they share models, memory and load.

    \b
    Every link is CURVE. Before joining, on the member you join through, admit this box:
    there, `aether-box keys authorize THIS-BOX.key --scope admin` with THIS box's
    keys/server.key; then give THAT box's keys/server.key here as --server-key. The other
    members admit this box by themselves (the member list travels with the join).
    """


@grid.command()
@click.argument("endpoint")
@click.option(
    "--server-key",
    required=True,
    help="The member's public key: its keys/server.key file, or the z85 value.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the reply as JSON.")
@timeout_option()
@pass_state
def join(state: CliState, endpoint: str, server_key: str, as_json: bool, timeout: float) -> None:
    """Join the grid of the box at ENDPOINT (tcp://HOST:7745), and so link to all its members.

    \b
    aether-box grid join tcp://10.0.0.2:7745 --server-key lab-server.key
    """
    reply = _ask(
        state,
        {"op": "join", "endpoint": endpoint, "server_key": read_server_key(server_key)},
        timeout,
    )
    if as_json:
        click.echo(json.dumps(reply, indent=2))
        return
    click.echo(f"joined the grid through {reply['joined']}")
    _print_members(reply)


@grid.command()
@click.option("--json", "as_json", is_flag=True, help="Print the reply as JSON.")
@timeout_option()
@pass_state
def status(state: CliState, as_json: bool, timeout: float) -> None:
    """List the members: state, load, models, and where requests went."""
    reply = _ask(state, {"op": "status"}, timeout)
    if as_json:
        click.echo(json.dumps(reply, indent=2))
    else:
        _print_members(reply)


@grid.command()
@timeout_option()
@pass_state
def leave(state: CliState, timeout: float) -> None:
    """Leave the grid: every member forgets this box, and this box forgets them."""
    reply = _ask(state, {"op": "leave"}, timeout)
    click.echo(f"left the grid ({', '.join(reply['left']) or 'no members'})")
    if reply["not_told"]:
        click.echo(
            f"not told (down): {', '.join(reply['not_told'])}; this box tells them when they are back"
        )


@grid.command()
@click.argument("name")
@timeout_option()
@pass_state
def revoke(state: CliState, name: str, timeout: float) -> None:
    """Revoke member NAME's key on every member: it is cut off at once."""
    reply = _ask(state, {"op": "revoke", "name": name}, timeout)
    click.echo(f"revoked {reply['revoked']} (key {reply['key']})")
    if reply["not_told"]:
        click.echo(f"not told (down): {', '.join(reply['not_told'])}; revoke it there too")


def _print_members(reply: dict[str, Any]) -> None:
    click.echo(f"this box: {reply['name']} at {reply.get('endpoint') or '(no tcp address)'}")
    members = reply.get("members", [])
    if not members:
        click.echo("no members; join a grid with `aether-box grid join tcp://HOST:7745`")
        return
    table = Table("member", "state", "endpoint", "models", "queue", "free slots", "error")
    for m in members:
        loads = (m.get("load") or {}).get("models", {})
        queue = sum(int(x.get("queue", 0)) for x in loads.values())
        free = sum(int(x.get("slots", 0)) - int(x.get("busy", 0)) for x in loads.values())
        up = m["state"] == "up"  # a down member's load is its last, no longer true
        table.add_row(
            m["name"],
            m["state"],
            m["endpoint"],
            ", ".join(m.get("models", [])) or "-",
            str(queue) if up else "-",
            str(free) if loads and up else "-",
            m.get("error") or "",
        )
    plain_console().print(table)
    placed = reply.get("placements") or []
    if placed:
        click.echo(
            "placements: " + ", ".join(f"{p['box']} ({p['reason']}) {p['count']}" for p in placed)
        )
