"""`aether-box memory`: collections, records, search, and JSONL import/export, over the bus.

A JSONL line is one record: ``{"id", "text", "metadata", "vector": [floats]}``; every field is
optional except that a record needs a text or a vector (texts alone are embedded by the box
with the collection's model). `export` writes the same shape after one header line,
``{"collection": {"name", "model", "dim", "metric", "recipe"}}``, from which `import` re-creates the
collection, so an export imports as is. A collection made without ``--model`` (by `create`,
`add` or `import`) uses the default embedder: the one sentence encoder installed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import IO, Any

import click
import numpy as np
import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from aether_box.cli import CliState, Whole, pass_state
from aether_box.errors import BadRequest, NotFound
from aether_box.plain_console import plain_console, plain_description, progress

__all__ = ["memory"]

SERVICE = "memory"
TIMEOUT = 300.0  # embedding a batch of texts on a loaded machine takes a while
DEFAULT_EMBEDDER = "minilm"  # the starter kit's sentence encoder
HEADER = "collection"  # the key of an export's first line, which describes the collection


def _where(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(
            f'not JSON ({exc}); e.g. \'{{"tag": "x"}}\'', param_hint="--where"
        ) from None


def _count(n: int, noun: str) -> str:
    """ "1 record", "2 records"."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _json_out(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=_plain))


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(type(value).__name__)


@click.group()
def memory() -> None:
    """Long-term memory: collections of texts and vectors, searchable by meaning."""


@memory.command()
@click.argument("name")
@click.option(
    "--model", help="Embedding model of the vectors, e.g. minilm (default: the installed encoder)."
)
@click.option("--dim", type=Whole(), help="Vector size (default: what the model gives).")
@click.option(
    "--metric",
    type=click.Choice(["cosine", "l2", "dot"]),
    help="Distance (default: memory.default_metric).",
)
@click.option(
    "--recipe",
    type=click.Choice(["plain", "align"]),
    help="How its vectors are made: plain `embed` (the default) or the model's alignment "
    "recipe (its manifest prompt and pooling: what projectors are fitted with, so searches "
    "from other models can be projected into it).",
)
@click.option("--exist-ok", is_flag=True, help="Succeed if it already exists with these settings.")
@pass_state
def create(
    state: CliState,
    name: str,
    model: str | None,
    dim: int | None,
    metric: str | None,
    recipe: str | None,
    exist_ok: bool,
) -> None:
    """Create collection NAME."""
    with state.client(TIMEOUT) as client:
        reply = _create(
            client, name, model, dim=dim, metric=metric, recipe=recipe, exist_ok=exist_ok
        )
    verb = "created" if reply["created"] else "exists:"
    click.echo(f"{verb} {_describe(reply['collection'])}")


def _create(client: Any, name: str, model: str | None, **options: Any) -> dict[str, Any]:
    """Create collection `name` (with the default embedder when no model is named)."""
    body = {"op": "create", "collection": name, "model": model or _default_embedder(client)}
    body |= {key: value for key, value in options.items() if value is not None}
    return client.request(SERVICE, body, timeout=TIMEOUT)


def _describe(info: dict[str, Any]) -> str:
    return f"{info['name']} ({info['model']}, {info['dim']}-d, {info['metric']})"


def _default_embedder(client: Any) -> str:
    """The installed sentence encoder, when there is exactly one (or the starter kit's)."""
    installed = client.request("llm", {"op": "models"})["installed"]
    encoders = sorted(m["name"] for m in installed if m["kind"] != "gguf")
    if len(encoders) == 1:
        return encoders[0]
    if DEFAULT_EMBEDDER in encoders:
        return DEFAULT_EMBEDDER
    if not encoders:
        raise click.UsageError(
            "no embedding model is installed: run `aether-box models pull` (it brings "
            f"{DEFAULT_EMBEDDER}), or pass --model with a GGUF model to embed with"
        )
    raise click.UsageError(f"several embedding models are installed ({encoders}); pass --model")


@memory.command()
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def drop(state: CliState, name: str, yes: bool) -> None:
    """Delete collection NAME and every record in it."""
    if not yes:
        click.confirm(f"delete collection {name!r} and all its records?", abort=True)
    with state.client() as client:
        reply = client.request(SERVICE, {"op": "drop", "collection": name})
    click.echo(f"dropped {name} ({_count(reply['deleted'], 'record')})")


@memory.command("list")
@click.argument("collection", required=False)
@click.option("--where", help='Metadata filter as JSON, e.g. \'{"year": {"$gte": 2020}}\'.')
@click.option("--limit", type=Whole(), default=20, show_default=True, help="Records to show.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def list_(
    state: CliState, collection: str | None, where: str | None, limit: int, as_json: bool
) -> None:
    """List collections, or the records of COLLECTION."""
    with state.client() as client:
        if collection is None:
            reply = client.request(SERVICE, {"op": "collections"})
            if as_json:
                _json_out(reply["collections"])
                return
            table = Table("collection", "model", "dim", "metric", "records")
            for info in reply["collections"]:
                table.add_row(
                    info["name"],
                    info["model"],
                    str(info["dim"]),
                    info["metric"],
                    str(info["count"]),
                )
            plain_console().print(table)
            return
        reply = client.request(
            SERVICE,
            {"op": "list", "collection": collection, "where": _where(where), "limit": limit},
        )
    if as_json:
        _json_out(reply["records"])
        return
    _records_table(reply["records"])


@memory.command()
@click.argument("collection")
@click.argument("texts", nargs=-1, required=True)
@click.option("--id", "ids", multiple=True, help="Record id, one per text (default: generated).")
@click.option("--meta", help="Metadata JSON object for every text added.")
@click.option("--upsert", is_flag=True, help="Replace records whose ids exist.")
@pass_state
def add(
    state: CliState,
    collection: str,
    texts: tuple[str, ...],
    ids: tuple[str, ...],
    meta: str | None,
    upsert: bool,
) -> None:
    """Add TEXTS to COLLECTION (the box embeds them with the collection's model).

    A COLLECTION that does not exist is created with the default embedder (and said so).
    """
    body: dict[str, Any] = {
        "op": "add",
        "collection": collection,
        "texts": list(texts),
        "upsert": upsert,
    }
    if ids:
        body["ids"] = list(ids)
    if meta:
        body["metadata"] = _where(meta)
    with state.client(TIMEOUT) as client:
        if _ensure_collection(client, collection, None, None, []):
            click.echo(f"created collection {_describe(_info(client, collection))}")
        reply = client.request(SERVICE, body)
    for record_id in reply["ids"]:
        click.echo(record_id)


@memory.command()
@click.argument("collection")
@click.argument("query")
@click.option("-k", type=Whole(), default=10, show_default=True, help="How many results.")
@click.option("--where", help="Metadata filter as JSON.")
@click.option("--hybrid", is_flag=True, help="Fuse keyword (FTS5) and vector search.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_state
def search(
    state: CliState,
    collection: str,
    query: str,
    k: int,
    where: str | None,
    hybrid: bool,
    as_json: bool,
) -> None:
    """Find the records of COLLECTION closest in meaning to QUERY."""
    with state.client(TIMEOUT) as client:
        reply = client.request(
            SERVICE,
            {
                "op": "search",
                "collection": collection,
                "text": query,
                "k": k,
                "where": _where(where),
                "hybrid": hybrid,
            },
        )
    if as_json:
        _json_out(reply)
        return
    table = Table(
        "score",
        "id",
        "text",
        "metadata",
        title=f"{_count(len(reply['results']), 'result')} in {reply['took_ms']:.1f} ms",
    )
    for hit in reply["results"]:
        table.add_row(
            f"{hit['score']:.4f}",
            hit["id"],
            hit["text"] or "",
            json.dumps(hit["metadata"], ensure_ascii=False),
        )
    plain_console().print(table)


@memory.command()
@click.argument("collection")
@click.argument("ids", nargs=-1, required=True)
@pass_state
def get(state: CliState, collection: str, ids: tuple[str, ...]) -> None:
    """Print records of COLLECTION by id, as JSON."""
    with state.client() as client:
        reply = client.request(SERVICE, {"op": "get", "collection": collection, "ids": list(ids)})
    _json_out(reply)


@memory.command()
@click.argument("collection")
@click.argument("ids", nargs=-1)
@click.option("--where", help="Delete the records that pass this metadata filter (JSON).")
@pass_state
def delete(state: CliState, collection: str, ids: tuple[str, ...], where: str | None) -> None:
    """Delete records of COLLECTION by id or by filter."""
    if ids and where:
        raise click.UsageError("give record ids or --where, not both")
    if not ids and not where:
        raise click.UsageError("give the ids of the records to delete, or --where FILTER")
    body: dict[str, Any] = {"op": "delete", "collection": collection}
    body.update({"ids": list(ids)} if ids else {"where": _where(where)})
    with state.client() as client:
        reply = client.request(SERVICE, body)
    click.echo(f"deleted {reply['deleted']}")


@memory.command()
@pass_state
def check(state: CliState) -> None:
    """Run SQLite's integrity check on the memory database."""
    with state.client(TIMEOUT) as client:
        reply = client.request(SERVICE, {"op": "check"})
    click.echo("ok" if reply["ok"] else "\n".join(reply["integrity"]))
    if not reply["ok"]:
        raise SystemExit(1)


@memory.command("export")
@click.argument("collection")
@click.argument("file", type=click.File("wb"), default="-")
@click.option("--where", help="Export only the records that pass this filter (JSON).")
@click.option(
    "--vectors/--no-vectors", default=True, show_default=True, help="Include each record's vector."
)
@click.option(
    "--batch", type=Whole(), default=1_000, show_default=True, help="Records per request."
)
@pass_state
def export(
    state: CliState, collection: str, file: IO[bytes], where: str | None, vectors: bool, batch: int
) -> None:
    """Write the records of COLLECTION to FILE (default stdout) as JSONL."""
    console = plain_console(stderr=True)
    with state.client(TIMEOUT) as client:
        info = _info(client, collection)
        header = {key: info[key] for key in ("name", "model", "dim", "metric", "recipe")}
        file.write(orjson.dumps({HEADER: header}) + b"\n")
        total = client.request(
            SERVICE, {"op": "count", "collection": collection, "where": _where(where)}
        )["count"]
        with _progress(console) as bars:
            task = bars.add_task(f"export {collection}", total=total)
            cursor = 0
            while cursor is not None:
                reply = client.request(
                    SERVICE,
                    {
                        "op": "list",
                        "collection": collection,
                        "where": _where(where),
                        "limit": batch,
                        "cursor": cursor,
                        "include_vectors": vectors,
                    },
                )
                rows = reply.get("vectors")
                for i, record in enumerate(reply["records"]):
                    line = {
                        "id": record["id"],
                        "text": record["text"],
                        "metadata": record["metadata"],
                    }
                    if rows is not None:
                        line["vector"] = rows[i]
                    file.write(orjson.dumps(line, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
                bars.advance(task, len(reply["records"]))
                cursor = reply["next"]
    console.print(f"exported {_count(total, 'record')} of {collection}")


@memory.command("import")
@click.argument("file", type=click.File("rb"), default="-")
@click.option(
    "--collection", help="Collection to add to (default: the one named in an export's header)."
)
@click.option(
    "--model",
    help="Model of a collection this creates (default: the export's, else the default embedder).",
)
@click.option(
    "--metric",
    type=click.Choice(["cosine", "l2", "dot"]),
    help="Metric of a collection this creates (default: the export's).",
)
@click.option(
    "--batch", type=Whole(), default=1_000, show_default=True, help="Records per request."
)
@click.option("--upsert", is_flag=True, help="Replace records whose ids exist.")
@pass_state
def import_(
    state: CliState,
    file: IO[bytes],
    collection: str | None,
    model: str | None,
    metric: str | None,
    batch: int,
    upsert: bool,
) -> None:
    """Add the records of a JSONL FILE (default stdin; what `export` writes) to a collection.

    A collection that does not exist is created, as the export's header describes it.
    """
    console = plain_console(stderr=True)
    added = 0
    size = _size(file)
    with state.client(TIMEOUT) as client, _progress(console, in_bytes=True) as bar:
        task = bar.add_task(f"import {file.name}", total=size)
        header: dict[str, Any] = {}
        ensured = False
        for records, done, found in _batches(file, batch):
            header = header or found
            collection = collection or header.get("name")
            if collection is None:
                raise click.UsageError("the file has no export header: pass --collection")
            if not ensured:
                if _ensure_collection(
                    client,
                    collection,
                    model or header.get("model"),
                    metric or header.get("metric"),
                    records,
                    header.get("recipe"),
                ):
                    console.print(f"created collection {_describe(_info(client, collection))}")
                ensured = True
            for body in _add_bodies(collection, records, upsert):
                if "vectors" in body and header.get("recipe"):
                    body["recipe"] = header["recipe"]  # how the exported vectors were made
                added += client.request(SERVICE, body)["count"]
            bar.update(task, completed=done)
    console.print(f"imported {_count(added, 'record')} into {collection}")


def _size(file: IO[bytes]) -> int | None:
    """The file's size for the progress bar (None for a pipe)."""
    try:
        return os.fstat(file.fileno()).st_size or None
    except (OSError, ValueError):
        return None


def _info(client: Any, name: str) -> dict[str, Any]:
    return client.request(SERVICE, {"op": "info", "collection": name})["collection"]


def _progress(console: Console, *, in_bytes: bool = False) -> Progress:
    """A progress bar counting records, or bytes of the file being read."""
    count = (DownloadColumn(), TransferSpeedColumn()) if in_bytes else (MofNCompleteColumn(),)
    return progress(
        plain_description(),
        BarColumn(),
        *count,
        TimeRemainingColumn(),
        console=console,
    )


def _batches(
    stream: IO[bytes], size: int
) -> Iterator[tuple[list[dict[str, Any]], int, dict[str, Any]]]:
    """Batches of parsed JSONL records, each with the bytes read so far and the export's
    header (the collection it describes; empty when the file has none)."""
    records: list[dict[str, Any]] = []
    header: dict[str, Any] = {}
    done = 0
    sent_to = 0  # the last line of the batches handed out: the records up to it are in
    for number, line in enumerate(stream, start=1):
        done += len(line)
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"line {number} is not JSON ({exc}); {_redo(sent_to)}") from None
        if number == 1 and isinstance(record, dict) and isinstance(record.get(HEADER), dict):
            header = record[HEADER]
            continue
        if not isinstance(record, dict) or not (record.get("text") or record.get("vector")):
            raise BadRequest(f"line {number} needs a 'text' or a 'vector'; {_redo(sent_to)}")
        if not _is_vector(record.get("vector")):  # a string's length made a collection's dim
            raise BadRequest(f"line {number}: 'vector' must be a list of numbers; {_redo(sent_to)}")
        records.append(record)
        if len(records) == size:
            yield records, done, header
            records = []
            sent_to = number
    if records:
        yield records, done, header


def _redo(sent_to: int) -> str:
    """What an import stopped at a bad line has left, and how to finish it."""
    if not sent_to:
        return "nothing was imported: fix it and import again"
    return f"the records up to line {sent_to} were imported: fix it and import again with --upsert"


def _is_vector(value: Any) -> bool:
    """None (no vector), or a list of numbers."""
    if value is None:
        return True
    return isinstance(value, list) and all(
        isinstance(x, int | float) and not isinstance(x, bool) for x in value
    )


def _add_bodies(
    collection: str, records: list[dict[str, Any]], upsert: bool
) -> Iterator[dict[str, Any]]:
    """One add request for the records with vectors, one for those to embed."""
    with_vectors = [r for r in records if r.get("vector") is not None]
    texts_only = [r for r in records if r.get("vector") is None]
    for group in (with_vectors, texts_only):
        if not group:
            continue
        body: dict[str, Any] = {
            "op": "add",
            "collection": collection,
            "upsert": upsert,
            "texts": [r.get("text") for r in group],
            "metadata": [r.get("metadata") or {} for r in group],
        }
        if any(r.get("id") is not None for r in group):
            if not all(isinstance(r.get("id"), str) for r in group):
                raise BadRequest("give every record an 'id', or none of them")
            body["ids"] = [r["id"] for r in group]
        if group is with_vectors:
            try:
                body["vectors"] = np.asarray([r["vector"] for r in group], np.float32)
            except ValueError:
                raise BadRequest("the vectors in the file have different lengths") from None
        yield body


def _ensure_collection(
    client: Any,
    name: str,
    model: str | None,
    metric: str | None,
    records: list[dict[str, Any]],
    recipe: dict[str, Any] | None = None,
) -> bool:
    """Create collection `name` unless it exists (True when it was created)."""
    try:
        _info(client, name)
        return False
    except NotFound:
        pass
    vector = next((r["vector"] for r in records if r.get("vector") is not None), None)
    dim = None if vector is None else len(vector)
    _create(client, name, model, dim=dim, metric=metric, recipe=recipe)
    return True


def _records_table(records: list[dict[str, Any]]) -> None:
    table = Table("id", "text", "metadata")
    for record in records:
        table.add_row(
            record["id"], record["text"] or "", json.dumps(record["metadata"], ensure_ascii=False)
        )
    plain_console().print(table)
