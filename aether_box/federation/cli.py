"""`aether-box link`: link the running box to another box's bus, list links, or remove one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from aether_box.cli import CliState, pass_state, timeout_option
from aether_box.plain_console import plain_console

__all__ = ["link", "read_server_key"]

SERVICE = "federation"


def read_server_key(value: str | None) -> str | None:
    """A z85 public key, given as itself or as the path of the peer's keys/server.key."""
    if value is None or len(value) == 40 and not Path(value).exists():
        return value
    import zmq.auth

    try:
        public, _ = zmq.auth.load_certificate(Path(value).expanduser())
    except (OSError, ValueError) as exc:
        raise click.BadParameter(
            f"{value} is neither a 40-character z85 key nor a readable key file ({exc}); "
            "copy the peer's keys/server.key here, or paste its public-key value",
            param_hint="--server-key",
        ) from None
    return public.decode()


@click.command()
@click.argument("endpoint", required=False)
@click.option(
    "--name", help="What to call the peer here (default: its host, and its port unless 7745)."
)
@click.option(
    "--server-key",
    help="The peer's public key (its keys/server.key file, or the z85 value), if it uses CURVE.",
)
@click.option("--remove", "remove", metavar="NAME", help="Unlink the peer NAME.")
@click.option("--json", "as_json", is_flag=True, help="Print the reply as JSON.")
@timeout_option()
@pass_state
def link(
    state: CliState,
    endpoint: str | None,
    name: str | None,
    server_key: str | None,
    remove: str | None,
    as_json: bool,
    timeout: float,
) -> None:
    """Link this box to another box's bus: its services appear here as NAME/SERVICE.

    \b
    aether-box link tcp://10.0.0.2:7745 --name lab --server-key lab-server.key
    aether-box link                  # list the links and whether each peer answers
    aether-box link --remove lab

    Over tcp to a box with CURVE, the peer must allow this box: copy this box's
    keys/server.key into the peer's keys/authorized/ (then restart the peer).
    """
    if name is not None and not name.strip():  # else the host is taken, unasked
        raise click.BadParameter("give a name, or leave --name out", param_hint="--name")
    if remove is not None and not remove.strip():  # else it would list the links instead
        raise click.BadParameter("give the NAME of the peer to unlink", param_hint="--remove")
    if endpoint and remove:
        raise click.UsageError("give an ENDPOINT to link, or --remove NAME, not both")
    if endpoint and "://" not in endpoint:  # `link list`, `link lab`: meant as a command
        raise click.UsageError(
            f"{endpoint!r} is not an endpoint (tcp://HOST:PORT or ipc://PATH); "
            "`aether-box link` alone lists the links, `--remove NAME` unlinks one"
        )
    if remove:
        body: dict[str, Any] = {"op": "unlink", "name": remove}
    elif endpoint:
        body = {"op": "link", "endpoint": endpoint, "name": name}
        if server_key:
            body["server_key"] = read_server_key(server_key)
    else:
        body = {"op": "peers"}
    with state.client(timeout) as client:
        reply = client.request(SERVICE, body)
    if as_json:
        click.echo(json.dumps(reply, indent=2))
    elif remove:
        click.echo(f"unlinked {reply['unlinked']}")
    else:
        _print_peers([reply["linked"]] if endpoint else reply["peers"])


def _print_peers(peers: list[dict[str, Any]]) -> None:
    if not peers:
        click.echo("no linked peers; link one with `aether-box link tcp://HOST:7745`")
        return
    table = Table("peer", "state", "endpoint", "seen s ago", "services", "error")
    for peer in peers:
        seen = peer.get("last_seen_s")
        table.add_row(
            peer["name"],
            peer["state"],
            peer["endpoint"],
            "-" if seen is None else f"{seen:g}",
            ", ".join(f"{peer['name']}/{s}" for s in peer["services"]) or "-",
            peer.get("error") or "",
        )
    plain_console().print(table)
