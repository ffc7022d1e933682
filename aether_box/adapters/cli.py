"""`aether-box adapters`: add, list, show, remove, prune, restore and merge LoRA adapters."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn
from rich.table import Table

from aether_box.cli import CliState, Whole, pass_state
from aether_box.plain_console import plain_console, plain_description, progress

__all__ = ["adapters"]

SERVICE = "adapters"
TIMEOUT = 600.0  # a merge of big adapters, or a probe on a loaded machine, takes a while


def _verdict(adapter: dict[str, Any]) -> str:
    """The newest finished probe's verdict, and the state of a newer probe that has none."""
    probe, judged = adapter.get("probe") or {}, adapter.get("judged")
    state = probe.get("state") or "pending"
    if judged is None:
        return state
    text = f"{judged['verdict']} (KL {judged['kl_mean']:.4f}, top-1 {judged['top1']:.1%})"
    return text if state == "done" else f"{text}; newer probe {state}"


@click.group()
def adapters() -> None:
    """LoRA adapters: keep them, merge them, and see what they do to the model (fusion log).

    A request uses kept adapters with `"adapters": [{"name": N, "scale": 1.0}]` in its `llm`
    chat or complete body; the base model stays loaded.
    """


@adapters.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--base", required=True, help="The installed GGUF model it adapts, e.g. smollm2.")
@click.option("--name", help="Its name here (default: the file or directory name).")
@click.option("--no-wait", is_flag=True, help="Do not wait for the fusion probe.")
@pass_state
def add(state: CliState, path: Path, base: str, name: str | None, no_wait: bool) -> None:
    """Check and keep the adapter at PATH: a GGUF LoRA file or a PEFT directory
    (adapter_config.json + adapter_model.safetensors, converted to GGUF)."""
    body = {"op": "add", "path": str(path.resolve()), "base": base}
    if name:
        body["name"] = name
    with state.client(TIMEOUT) as client:
        adapter = client.request(SERVICE, body, timeout=TIMEOUT)
        click.echo(
            f"added {adapter['name']} for {adapter['base']} (rank {adapter['rank']}, "
            f"{adapter['tensors']} tensors, sha256 {adapter['sha256'][:16]})"
        )
        if not no_wait:
            entry = _wait(client, adapter["name"])
            click.echo(f"fusion probe: {entry.get('verdict') or entry['state']}: {entry['reason']}")


def _wait(client: Any, name: str) -> dict[str, Any]:
    """Follow `name`'s fusion probe with a progress bar; its log entry."""
    columns = (
        plain_description("probing {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
    )
    with progress(*columns, console=plain_console(stderr=True), transient=True) as bars:
        task = bars.add_task(name, total=None)
        entry: dict[str, Any] = {}
        for reply in client.stream(SERVICE, {"op": "wait", "name": name}, timeout=TIMEOUT):
            if "probed" in reply:  # "of" is 0 until the probe has read its prompts
                bars.update(task, completed=reply["probed"], total=reply["of"] or None)
            else:
                entry = reply
    return entry


@adapters.command("list")
@pass_state
def list_(state: CliState) -> None:
    """The kept adapters and their fusion verdicts."""
    with state.client() as client:
        reply = client.request(SERVICE, {"op": "list"})
    if not reply["adapters"]:
        click.echo("no adapters; keep one with `aether-box adapters add PATH --base MODEL`")
        return
    table = Table("name", "base", "rank", "verdict", "source")
    for a in reply["adapters"]:
        verdict = _verdict(a) + (f"; pruned {a['pruned']}" if a.get("pruned") else "")
        table.add_row(a["name"], a["base"], str(a["rank"]), verdict, a["source"])
    plain_console().print(table)


@adapters.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the whole reply as JSON.")
@pass_state
def show(state: CliState, name: str, as_json: bool) -> None:
    """Adapter NAME, how it was made, and its fusion log."""
    with state.client() as client:
        reply = client.request(SERVICE, {"op": "show", "name": name})
    if as_json:
        click.echo(json.dumps(reply, indent=2))
        return
    a = reply["adapter"]
    click.echo(f"{a['name']}: for {a['base']}, rank {a['rank']}, alpha {a['alpha']}")
    click.echo(f"  {a['tensors']} tensors, {a['bytes']} bytes, sha256 {a['sha256']}")
    click.echo(f"  from {a['source']}")
    if a.get("recipe"):
        click.echo(f"  recipe {json.dumps(a['recipe'])}")
    table = Table("when", "state", "verdict", "KL mean", "KL p95", "top-1", "stack KL", "s")
    for e in reply["fusion_log"]:
        fmt = lambda v, f="{:.4f}": "" if v is None else f.format(v)  # noqa: E731
        table.add_row(
            _when(e["started"]), e["state"], e["verdict"] or "", fmt(e["kl_mean"]),
            fmt(e["kl_p95"]), fmt(e["top1"], "{:.1%}"), fmt(e["stack_kl_mean"]),
            fmt(e["seconds"], "{:.1f}"),
        )  # fmt: skip
    plain_console().print(table)


def _when(at: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M", time.localtime(at))


@adapters.command()
@click.argument("name")
@pass_state
def remove(state: CliState, name: str) -> None:
    """Forget adapter NAME (refused while requests use it)."""
    with state.client() as client:
        client.request(SERVICE, {"op": "remove", "name": name})
    click.echo(f"removed {name}")


@adapters.command()
@click.argument("name")
@click.option("--reason", required=True, help="Why: requests that use it are told this.")
@pass_state
def prune(state: CliState, name: str, reason: str) -> None:
    """Refuse adapter NAME to requests that do not force it (it stays kept)."""
    with state.client() as client:
        client.request(SERVICE, {"op": "prune", "name": name, "reason": reason})
    click.echo(f"pruned {name}: requests using it are refused unless they force it")


@adapters.command()
@click.argument("name")
@pass_state
def restore(state: CliState, name: str) -> None:
    """Serve adapter NAME again, overriding a prune (until a new probe judges it)."""
    with state.client() as client:
        client.request(SERVICE, {"op": "restore", "name": name})
    click.echo(f"restored {name}")


def _part(item: str) -> dict[str, Any]:
    """One NAME:WEIGHT of --from; a weight that is no finite number (nan, inf) made a merge
    of NaN tensors, "100% of the energy kept"."""
    adapter, _, text = item.strip().partition(":")
    try:
        weight = float(text or 1.0)
    except ValueError:
        weight = math.nan
    if not adapter or not math.isfinite(weight):
        raise click.BadParameter(
            f"{item!r}: use name:weight with a finite weight, e.g. a:0.7,b:0.6",
            param_hint="--from",
        )
    return {"name": adapter, "weight": weight}


def _density(ctx: click.Context, param: click.Parameter, value: float) -> float:
    """Option callback: a share of entries, 0 < density <= 1 (nan is neither)."""
    if not 0 < value <= 1:
        raise click.BadParameter(f"{value} is not a share: give more than 0 and at most 1")
    return value


@adapters.command("merge")
@click.argument("name")
@click.option("--from", "sources", required=True, help="What to merge: a:0.7,b:0.6 (weights).")
@click.option("--method", type=click.Choice(["linear", "ties", "dare"]), default="linear")
@click.option(
    "--density",
    type=float,
    default=0.3,
    callback=_density,
    help="TIES/DARE: share of entries kept (0 to 1).",
)
@click.option("--rank", type=Whole(), default=16, help="TIES/DARE: rank of the result.")
@click.option("--no-wait", is_flag=True, help="Do not wait for the fusion probe.")
@pass_state
def merge_(
    state: CliState, name: str, sources: str, method: str, density: float, rank: int, no_wait: bool
) -> None:
    """Merge adapters into a new adapter NAME."""
    parts = [_part(item) for item in sources.split(",")]
    body = {"op": "merge", "name": name, "from": parts, "method": method}
    body |= {"density": density, "rank": rank}
    columns = (plain_description("merging {task.description}"), BarColumn(), MofNCompleteColumn())
    with state.client(TIMEOUT) as client:
        adapter: dict[str, Any] = {}
        with progress(*columns, console=plain_console(stderr=True), transient=True) as bars:
            task = bars.add_task(f"{name} tensors", total=None)
            for reply in client.stream(SERVICE, body, timeout=TIMEOUT):
                if "merged" in reply:
                    bars.update(task, completed=reply["merged"], total=reply["of"])
                else:
                    adapter = reply
        recipe = adapter["recipe"]
        click.echo(
            f"merged {name} ({method}, rank {adapter['rank']}): {recipe['energy_mean']:.2%} "
            f"of the deltas' energy kept (least {recipe['energy_min']:.2%})"
        )
        if not no_wait:
            entry = _wait(client, name)
            click.echo(f"fusion probe: {entry.get('verdict') or entry['state']}: {entry['reason']}")
            if entry.get("stack_kl_mean") is not None:
                click.echo(f"KL(stacked || merged): {entry['stack_kl_mean']:.5f} nats/token")
