"""`aether-box align ...`: make pairs, fit projectors and show their fidelity.

Every command talks to a running box (`aether-box run`): the box has the models loaded, its
`embed` service does the embedding, and pairs and projectors land in its data dir, where the
`align` service serves them. A CLI that ran the engines itself would load every model a second
time (hundreds of MB, and minutes of a busy machine) and could not hand the result to the box.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, TimeElapsedColumn
from rich.table import Table

from aether_box.cli import CliState, Whole, pass_state, timeout_option
from aether_box.plain_console import plain_console, plain_description, progress

__all__ = ["align"]

STEP_SCALE = 1000  # fit progress arrives as a fraction; the bar counts thousandths


def _source(corpus: Path | None, collection: str | None, builtin: str | None) -> dict[str, Any]:
    given = [v for v in (corpus, collection, builtin) if v is not None]
    if len(given) > 1:
        raise click.UsageError("give at most one of --corpus, --collection and --builtin")
    if corpus is not None:
        from aether_box.align.corpus import read_texts

        return {"texts": read_texts(corpus)}
    if collection is not None:
        return {"collection": collection}
    if builtin is not None:
        return {"corpus": builtin}
    return {}


def _run(state: CliState, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Send one streaming request, showing its progress; the final reply."""
    console = plain_console(stderr=True)
    columns = (
        plain_description(),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    tasks: dict[str, Any] = {}
    with (
        state.client(timeout) as client,
        progress(*columns, console=console) as bars,
    ):
        final: dict[str, Any] = {}
        for reply in client.stream("align", body, timeout=timeout):
            stage = reply.get("stage")
            if stage == "embed":
                key = f"embed {reply['model']}"
                if key not in tasks:
                    tasks[key] = bars.add_task(
                        f"embedding with {reply['model']}", total=reply["total"]
                    )
                bars.update(tasks[key], completed=reply["done"], total=reply["total"])
            elif stage == "fit":
                key = f"fit {reply['step']}"
                if key not in tasks:
                    tasks[key] = bars.add_task(reply["step"], total=STEP_SCALE)
                bars.update(tasks[key], completed=int(reply["fraction"] * STEP_SCALE))
            else:
                final = reply
    return final


@click.group()
def align() -> None:
    """Projectors between embedding spaces: pairs, fits, fidelity."""


_from = click.option("--from", "source", required=True, help="Model whose vectors are projected.")
_to = click.option("--to", "target", required=True, help="Model whose space they land in.")
_corpus = click.option(
    "--corpus",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A text file, one text a line.",
)
_collection = click.option("--collection", help="A memory collection's texts.")
_builtin = click.option(
    "--builtin",
    type=click.Choice(["glosses", "examples", "docs"]),
    help="A built-in set (default: the standard glosses split).",
)
_timeout = timeout_option(900.0, help="Seconds to wait for each progress report from the box.")


@align.command("pairs")
@_from
@_to
@_corpus
@_collection
@_builtin
@_timeout
@pass_state
def pairs_cmd(
    state: CliState,
    source: str,
    target: str,
    corpus: Path | None,
    collection: str | None,
    builtin: str | None,
    timeout: float,
) -> None:
    """Embed the same texts with both models (cached in the box's data dir)."""
    body = {"op": "pairs", "from": source, "to": target, **_source(corpus, collection, builtin)}
    reply = _run(state, body, timeout)
    how = "all from the cache" if reply["cached"] else "embedded and cached"
    click.echo(f"{reply['n']} pairs {source} -> {target} from {reply['corpus']} ({how})")


@align.command("fit")
@_from
@_to
@_corpus
@_collection
@_builtin
@click.option(
    "--method",
    "methods",
    multiple=True,
    type=click.Choice(["ridge", "procrustes", "mlp"]),
    help="Fit only these (repeatable; default: [align] methods).",
)
@click.option(
    "--max-pairs", type=Whole(), help="Most pairs to fit on (default: [align] max_pairs)."
)
@click.option("--test-pairs", type=Whole(), help="Held-out pairs (default: [align] test_pairs).")
@click.option(
    "--ood/--no-ood",
    default=None,
    help="Also measure on the built-in out-of-domain sets (default: only for the built-in corpus).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
@_timeout
@pass_state
def fit_cmd(
    state: CliState,
    source: str,
    target: str,
    corpus: Path | None,
    collection: str | None,
    builtin: str | None,
    methods: tuple[str, ...],
    max_pairs: int | None,
    test_pairs: int | None,
    ood: bool | None,
    as_json: bool,
    timeout: float,
) -> None:
    """Fit every method, keep the best on held-out pairs, and print the fidelity report."""
    body: dict[str, Any] = {
        "op": "fit",
        "from": source,
        "to": target,
        **_source(corpus, collection, builtin),
    }
    if methods:
        body["methods"] = list(methods)
    for key, value in (
        ("max_pairs", max_pairs),
        ("test_pairs", test_pairs),
        ("out_of_domain", ood),
    ):
        if value is not None:
            body[key] = value
    report = _run(state, body, timeout)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=float))
    else:
        print_report(report)


@align.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the raw list as JSON.")
@timeout_option(10.0)
@pass_state
def list_cmd(state: CliState, as_json: bool, timeout: float) -> None:
    """Every fitted projector with its held-out figures."""
    with state.client(timeout) as client:
        reply = client.request("align", {"op": "list"}, timeout=timeout)
    if as_json:
        click.echo(json.dumps(reply, indent=2, default=float))
        return
    if not reply["projectors"]:  # an empty table alone says nothing of what to do
        click.echo("no projectors yet; fit one with `aether-box align fit --from MODEL --to MODEL`")
        return
    table = Table(title=f"projectors (gate {reply['gate']})")
    for column in (
        "projector",
        "served",
        "pairs",
        "corpus",
        "top-1 in",
        "top-1 out",
        "R@10 in",
        "top-1 in by method",
        "projections",
    ):
        table.add_column(column, overflow="fold")
    for p in reply["projectors"]:
        out = p.get("out_of_domain") or {}
        counters = p.get("counters") or {}
        table.add_row(
            p["name"],
            p["method"],
            str(p["pairs"]),
            p["corpus"],
            _f(p["in_domain"]["top1"]),
            _f(out.get("top1")),
            _f(p["in_domain"]["recall_at_10"]),
            " ".join(f"{m} {_f(v)}" for m, v in p["methods"].items()),
            str(counters.get("projections", 0)),
        )
    plain_console().print(table)


@align.command("remove")
@_from
@_to
@timeout_option(30.0)
@pass_state
def remove_cmd(state: CliState, source: str, target: str, timeout: float) -> None:
    """Forget a projector, with its kept versions and candidates (admin)."""
    with state.client(timeout) as client:
        reply = client.request("align", {"op": "delete", "from": source, "to": target})
    click.echo(f"removed {reply['removed']} ({reply['method']}); its kept versions went too")


def _f(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_report(report: dict[str, Any]) -> None:
    """The fit report as tables: fidelity per method and held-out set, then the gate."""
    console = plain_console()
    sets = [
        k
        for k in report["methods"][report["best"]]
        if k == "in_domain" or k.startswith("out_of_domain")
    ]
    pairs = report["pairs"]
    table = Table(
        title=f"{report['name']}: fitted on {pairs['fit']} pairs of {pairs['corpus']};"
        f" served: {report['best']}"
    )
    for column in ("method", "held-out set", "N", "top-1", "R@10", "mean rank", "mean cos"):
        table.add_column(column)
    for method, result in report["methods"].items():
        for name in sets:
            r = result[name]
            table.add_row(
                method + (" *" if method == report["best"] else ""),
                name,
                str(r["n"]),
                _f(r["top1"]),
                _f(r["recall_at_10"]),
                f"{r['mean_rank']:.1f}",
                _f(r["mean_cosine"]),
            )
    first = report["methods"][report["best"]]
    for name in sets:
        base = first[name].get("unprojected")
        if base:
            table.add_row(
                "unprojected",
                name,
                str(base["n"]),
                _f(base["top1"]),
                _f(base["recall_at_10"]),
                f"{base['mean_rank']:.1f}",
                _f(base["mean_cosine"]),
            )
    console.print(table)
    if all(first[name].get("unprojected") is None for name in sets):
        d_in, d_out = report["dims"]
        console.print(
            f"(no unprojected baseline: {d_in} and {d_out} dimensions differ; "
            f"chance top-1 is {_f(first['in_domain']['chance_top1'])})"
        )
    gate = report["gate"]
    g_table = Table(
        title=f"gate {gate['threshold']}: agreement = estimated chance that the "
        "projection finds the native top-1"
    )
    for column in (
        "held-out set",
        "top-1",
        "mean agreement",
        "AUC top-1",
        "r (cosine)",
        "to proxy",
        "accepted top-1",
        "combined top-1",
    ):
        g_table.add_column(column)
    for name in sets:
        g = gate[name]
        row = next((t for t in g["thresholds"] if abs(t["gate"] - gate["threshold"]) < 1e-9), None)
        g_table.add_row(
            name,
            _f(g["top1"]),
            _f(g["mean_agreement"]),
            _f(g["auc_top1"]),
            _f(g["pearson_cosine"]),
            _f(row["proxy_share"]) if row else "-",
            _f(row["accepted_top1"]) if row else "-",
            _f(row["combined_top1"]) if row else "-",
        )
    console.print(g_table)


@align.command("join")
@click.option("--model", required=True, help="The model that joins the hub.")
@click.option("--hub", help="The hub model (default: the box's [align] hub).")
@click.option(
    "--max-pairs", type=Whole(), help="Most pairs to fit on (default: [align] max_pairs)."
)
@_timeout
@pass_state
def join_cmd(
    state: CliState, model: str, hub: str | None, max_pairs: int | None, timeout: float
) -> None:
    """Fit a model's two hub projectors (into the hub and out of it), on the standard split.

    After that the model reaches every other model that joined, through the hub: N models
    need 2N fits, and a new one never refits those already there.
    """
    if hub is None:
        with state.client(10.0) as client:
            hub = client.status().get("align", {}).get("hub")
        if not hub:
            raise click.UsageError("the box has no [align] hub; give --hub")
    for source, target in ((model, hub), (hub, model)):
        body: dict[str, Any] = {"op": "fit", "from": source, "to": target}
        if max_pairs is not None:
            body["max_pairs"] = max_pairs
        report = _run(state, body, timeout)
        best = report["methods"][report["best"]]
        click.echo(
            f"{report['name']}: {report['best']}, top-1 in-domain {_f(best['in_domain']['top1'])}"
            f", out-of-domain {_f((best.get('out_of_domain') or {}).get('top1'))}"
        )


@align.command("hub")
@click.option(
    "--models",
    required=True,
    help="Comma-separated models the shared space is built from, e.g. smollm2,gemma3-270m,minilm.",
)
@click.option("--dim", type=Whole(), help="Dimensions of the space (default: [align] hub_dim).")
@click.option(
    "--max-pairs", type=Whole(), help="Most texts to build on (default: [align] max_pairs)."
)
@click.option(
    "--test-pairs", type=Whole(), help="Held-out texts kept out (default: [align] test_pairs)."
)
@_timeout
@pass_state
def hub_cmd(
    state: CliState,
    models: str,
    dim: int | None,
    max_pairs: int | None,
    test_pairs: int | None,
    timeout: float,
) -> None:
    """Build the shared hub space: a learned space holding every named model's directions.

    With `[align] hub = "shared"` every model then joins it (`align join --model NAME`, two
    fits each, founders included) and any two reach each other through it about as well as
    through a direct projector. A model that is not a founder joins the same way later;
    rebuilding the space means every model joins again.
    """
    body: dict[str, Any] = {"op": "hub", "models": [m for m in models.split(",") if m]}
    for key, value in (("dim", dim), ("max_pairs", max_pairs), ("test_pairs", test_pairs)):
        if value is not None:
            body[key] = value
    reply = _run(state, body, timeout)
    served = "served" if reply["served"] else 'not served: set [align] hub = "shared"'
    click.echo(
        f"shared hub space: {reply['dim']}-d from {', '.join(reply['founders'])} on "
        f"{reply['texts']} texts ({served})"
    )


@align.command("report")
@click.option("--json", "as_json", is_flag=True, help="Print the raw report as JSON.")
@timeout_option(120.0)
@pass_state
def report_cmd(state: CliState, as_json: bool, timeout: float) -> None:
    """Which models can share memory: every pair through the hub, judged per domain.

    in / out / far: held-out glosses, WordNet usage sentences and Python-docs sentences.
    top-1 and R@10 among each set's N texts, cos: mean cosine to the native vectors, AUC:
    how well the gate's agreement tells projections that find the native top-1, proxy: the
    share the gate re-embeds, gap: direct projector's top-1 minus the hub's.
    """
    with state.client(timeout) as client:
        reply = client.request("align", {"op": "report"}, timeout=timeout)
    if as_json:
        click.echo(json.dumps(reply, indent=2, default=float))
        return
    print_coherence(reply)


def print_coherence(reply: dict[str, Any]) -> None:
    """The coherence report as one table."""
    table = Table(title=f"pairs through the hub {reply['hub']} (gate {reply['gate']})")
    for column in ("pair", "set", "N", "top-1", "R@10", "cos", "AUC", "proxy", "combined", "gap"):
        table.add_column(column)
    for row in reply["pairs"]:
        via = f" (via {row['via']})" if row["via"] else ""
        for short in ("in", "out", "far"):
            f = row.get(short)
            if f is None:
                continue
            table.add_row(
                f"{row['from']} -> {row['to']}{via}",
                short,
                str(f["n"]),
                _f(f["top1"]),
                _f(f["recall_at_10"]),
                _f(f["mean_cosine"]),
                _f(f["gate_auc"]),
                _f(f["proxy_share"]),
                _f(f["combined_top1"]),
                _f(f.get("hub_gap")),
            )
    if not reply["pairs"]:
        table.caption = "no model has joined the hub yet: `aether-box align join --model NAME`"
    plain_console().print(table)
