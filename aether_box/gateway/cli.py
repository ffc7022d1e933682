"""`aether-box keys api create|list|revoke`: API keys for the HTTP gateway.

Keys live hashed in ``http.keys_file`` (see aether_box.gateway.keys). After a change, a box
running on the same data dir is asked to re-read the file at once (the `http` service's op
``reload_keys``), so a revoked key fails with the next request; a box that does not answer
picks the change up by itself within a second or two.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from aether_box.cli import CliState, pass_state
from aether_box.errors import BoxError

__all__ = ["api"]


def _names(values: tuple[str, ...]) -> list[str] | None:
    """Repeatable options that also take comma-separated lists; None when none given."""
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    return names or None


def _keys_file(state: CliState) -> Path:
    from aether_box.gateway.settings import HttpSettings

    path = state.config().get(HttpSettings).keys_file
    assert path is not None  # resolve() fills the default
    return path


def _tell_box(state: CliState) -> str:
    """Ask a running box to re-read the keys; says what happened, for the user."""
    try:
        with state.client(timeout=3.0) as client:
            client.request("http", {"op": "reload_keys"})
    except BoxError:
        return "no running box with the HTTP gateway answered; a box reads the keys as it starts"
    return "the running box has the change now"


@click.group("api")
def api() -> None:
    """API keys for the HTTP gateway (OpenAI and Ollama APIs)."""


@api.command("create")
@click.argument("name")
@click.option(
    "--models",
    multiple=True,
    metavar="NAME[,NAME]",
    help="Only these models (repeatable or comma-separated; default: every model).",
)
@click.option(
    "--services",
    multiple=True,
    metavar="NAME[,NAME]",
    help="Only these bus services: llm, embed, router, session (default: all).",
)
@pass_state
def create(state: CliState, name: str, models: tuple[str, ...], services: tuple[str, ...]) -> None:
    """Make a key called NAME and print it (once: only its hash is kept)."""
    from aether_box.gateway.keys import create_key

    path = _keys_file(state)
    record, secret = create_key(path, name, _names(models), _names(services))
    click.echo(secret)
    limits = []
    if record.models is not None:
        limits.append(f"models {', '.join(record.models)}")
    if record.services is not None:
        limits.append(f"services {', '.join(record.services)}")
    click.echo(
        f"API key {name!r} made ({'; '.join(limits) or 'every model and service'}); it is shown "
        f"only now, keep it safe. Stored hashed in {path}; {_tell_box(state)}.",
        err=True,
    )


@api.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON.")
@pass_state
def list_keys(state: CliState, as_json: bool) -> None:
    """List the keys (names, limits, dates; never the keys)."""
    from aether_box.gateway.keys import load_keys

    records = [k.public() for k in load_keys(_keys_file(state))]
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    if not records:
        click.echo("no API keys; make one with `aether-box keys api create NAME`")
    for r in records:
        state_ = f"revoked {r['revoked']}" if r["revoked"] else "live"
        models = ",".join(r["models"]) if r["models"] else "all"
        services = ",".join(r["services"]) if r["services"] else "all"
        click.echo(
            f"{r['name']}\t{state_}\tcreated {r['created']}\tmodels {models}\tservices {services}"
        )


@api.command("revoke")
@click.argument("name")
@pass_state
def revoke(state: CliState, name: str) -> None:
    """Revoke the key called NAME: requests with it fail with 401."""
    from aether_box.gateway.keys import revoke_key

    revoke_key(_keys_file(state), name)
    click.echo(f"API key {name!r} revoked; {_tell_box(state)}.")
