"""The `memory` bus service and its component.

Ops (body ``{"op": ..., ...}``; vectors are float32 arrays, sent as raw frames)::

    create       collection, model, [dim], [metric], [recipe], [exist_ok]
                                                                  -> {collection: info, created}
                 dim defaults to what the embed service gives for `model`; recipe: how its
                 vectors are made, "plain" (the default: `embed` with no options), "align"
                 (the model's alignment recipe, what its projectors are fitted with) or
                 {prompt, pooling}; texts are embedded that way, vectors must say so
    drop         collection, [missing_ok]                         -> {dropped, deleted}
    collections                                                   -> {collections: [info]}
    info         collection                                       -> {collection: info}
    add          collection, texts and/or vectors (n, dim), [ids], [metadata], [upsert],
                 [recipe] (of the vectors; unstated: plain; another than the collection's
                 is refused, RecipeMismatch)
                                                                  -> {ids, count, replaced}
                 texts without vectors are embedded with the collection's model
    get          collection, ids, [include_vectors]               -> {records, missing, [vectors]}
    update       collection, ids, [texts], [vectors], [metadata], [merge], [keep_vectors]
                                                                  -> {ids, count}
    delete       collection, ids | where                          -> {deleted}
    list         collection, [where], [limit], [cursor], [skip], [include_vectors]
                                                                  -> {records, next, last, [vectors]}
                 skip: leave out that many records after the cursor (to jump ahead cheaply)
    count        collection, [where]                              -> {count}
    search       collection, text | vector, [k], [where], [hybrid], [query_model],
                 [query_recipe] (of the vector; unstated: plain), [gate],
                 [include_vectors], [index], [scope]              -> {results, path, took_ms, ...}
                 scope "grid": on every grid member too, merged   -> {results (each with its
                 box), members (who answered, who timed out), partial, took_ms}
    check                                                         -> {ok, integrity}

A record on the wire is ``{id, text, metadata, created, updated}``; a search result is
``{id, score, distance, text, metadata}`` (score: larger is closer; distance as sqlite-vec
reports it), plus ``ranks`` in hybrid search, where score is the fused RRF score.
`where` is a filter (see `aether_box.memory.filters`), as a map or JSON text.

Cross-model search: a `vector` sent with a `query_model` other than the collection's model is
mapped into the collection's space by the `align` service::

    align {"op": "project", "from": query_model, "to": collection model, "vector": (d_from,),
           "text": query text or None, "collection": name, "recipe": query_recipe,
           "target_recipe": the collection's recipe, ["gate": the search's own gate]}
      ->  {"vector": (d_to,), "projector": name, "method": str, "agreement": float,
           "gate": float, "accepted": bool}

When `accepted` is false (agreement below the gate), when there is no projector, or when no
align service runs, the box re-embeds the query `text` with the collection's own model (the
"proxy" path); without a text that is an error. The reply's `path` says which way it went:
"native", "projector" or "proxy", and `alignment` carries the projector's figures. A query
vector made with another recipe than the projector's source side, or a collection whose
recipe is not the projector's target side, is refused (RecipeMismatch, saying which recipe to
use), never projected: a client embedding SmolLM2 with plain `embed` must use the model's
alignment recipe (`embed` with its manifest prompt and pooling) and state it as query_recipe.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar, TypeVar

import anyio
import anyio.abc
import numpy as np

from aether_box.align.gate import combine
from aether_box.align.recipes import PLAIN, model_recipe, options_of
from aether_box.bus.service import OpService, Request, require, require_name
from aether_box.context import BoxContext
from aether_box.contract import Grid
from aether_box.errors import BadRequest, NotFound, RecipeMismatch, ServiceUnavailable
from aether_box.memory.core import Memory
from aether_box.memory.filters import compile_filter
from aether_box.memory.settings import INDEXES, MemorySettings
from aether_box.memory.store import Collection
from aether_box.memory.validate import (
    batch_size,
    collection_name,
    dim_field,
    ids_field,
    metadata_field,
    metric_field,
    new_ids,
    texts_field,
    vectors_field,
)

__all__ = ["MemoryComponent", "MemoryService"]

log = logging.getLogger(__name__)
T = TypeVar("T")
EMBED_CHUNK = 256  # texts per call to `embed`, so long batches can report progress
DEFAULT_K = 10
DEFAULT_PAGE = 100


class MemoryService(OpService):
    """Answers the `memory` service's ops (see the module docstring)."""

    name = "memory"

    def __init__(self, ctx: BoxContext, memory: Memory) -> None:
        self.ctx = ctx
        self.memory = memory
        self.settings = memory.settings
        # Cross-model searches by outcome: "projector", "proxy", or "refused" (RecipeMismatch).
        self.cross_model: dict[str, int] = {"projector": 0, "proxy": 0, "refused": 0}

    # ----------------------------------------------------------------- collections

    async def op_create(self, request: Request) -> dict[str, Any]:
        body = request.body
        name = collection_name(require(body, "collection", str))
        model = require_name(body, "model")
        if not model:
            raise BadRequest("model must name the embedding model (or space) of the vectors")
        metric = metric_field(body.get("metric") or self.settings.default_metric)
        dim = body.get("dim")
        if dim is not None:
            dim = dim_field(dim)
        recipe = await self._creation_recipe(model, body.get("recipe"))
        existing = self.memory.catalog.get(name)
        if existing is not None and body.get("exist_ok"):
            wanted = {"model": model, "metric": metric, "recipe": recipe or PLAIN}
            wanted |= {"dim": dim} if dim else {}
            have = {
                "model": existing.model,
                "metric": existing.metric,
                "dim": existing.dim,
                "recipe": existing.recipe_options,
            }
            clash = {k: v for k, v in wanted.items() if have[k] != v}
            if clash:
                raise BadRequest(f"collection {name!r} exists with {have}, not {clash}")
            return {"collection": self.memory.info(existing), "created": False}
        if dim is None:
            probe = await self._embed(model, ["dimension probe"], recipe)
            dim = dim_field(int(probe.shape[1]))
        collection = await self.memory.create(name, model, dim, metric, recipe)
        log.info("memory: created collection %r (%s, %d-d, %s)", name, model, dim, metric)
        return {"collection": self.memory.info(collection), "created": True}

    async def op_drop(self, request: Request) -> dict[str, Any]:
        name = collection_name(require(request.body, "collection", str))
        if name not in self.memory.catalog and request.body.get("missing_ok"):
            return {"dropped": False, "deleted": 0}
        deleted = await self.memory.drop(name)
        log.info("memory: dropped collection %r (%d records)", name, deleted)
        return {"dropped": True, "deleted": deleted}

    async def op_collections(self, request: Request) -> dict[str, Any]:
        return {"collections": [self.memory.info(c) for c in self.memory.catalog.values()]}

    async def op_info(self, request: Request) -> dict[str, Any]:
        return {"collection": self.memory.info(self._collection(request.body))}

    # ----------------------------------------------------------------- records

    async def op_add(self, request: Request) -> dict[str, Any]:
        body = request.body
        collection = self._collection(body)
        texts = body.get("texts")
        vectors = body.get("vectors")
        if texts is None and vectors is None:
            raise BadRequest(
                "add needs 'texts' (embedded by the box) or 'vectors' (n, dim), or both"
            )
        n = len(texts) if isinstance(texts, list) else _rows(vectors)
        batch_size(n, self.settings.max_batch)
        if texts is not None:
            texts = texts_field(texts, n, required=vectors is None)
        ids = body.get("ids")
        generated = ids is None
        # Checking 10,000 records is milliseconds of CPU: off the event loop, and before any
        # embedding, so a bad id or metadata costs no model time.
        keys, metadata = await _off_loop(
            lambda: (
                new_ids(n) if generated else ids_field(ids, n),
                metadata_field(body.get("metadata"), n, self.settings.max_metadata_bytes),
            )
        )
        if vectors is None:
            vectors = await self._embed_for(collection, texts, request)
        else:
            _check_recipe(body.get("recipe"), collection, "vectors")
        array = await _off_loop(partial(vectors_field, vectors, collection, rows=n))
        replaced = await self.memory.add(
            collection.name,
            keys,
            texts or [None] * n,
            metadata,
            array,
            upsert=bool(body.get("upsert")),
            check_ids=not generated,
        )
        return {"ids": keys, "count": n, "replaced": replaced}

    async def op_get(self, request: Request) -> dict[str, Any]:
        body = request.body
        collection = self._collection(body)
        ids = ids_field(require(body, "ids", list))
        batch_size(len(ids), self.settings.max_batch, "ids")
        with_vectors = bool(body.get("include_vectors"))
        records, missing, vectors = await self.memory.get(
            collection.name, ids, vectors=with_vectors
        )
        reply: dict[str, Any] = {"records": [r.to_wire() for r in records], "missing": missing}
        if vectors is not None:
            reply["vectors"] = vectors
        return reply

    async def op_update(self, request: Request) -> dict[str, Any]:
        body = request.body
        collection = self._collection(body)
        ids = ids_field(require(body, "ids", list))
        n = len(ids)
        batch_size(n, self.settings.max_batch, "ids")
        texts = body.get("texts")
        vectors = body.get("vectors")
        metadata = body.get("metadata")
        if texts is None and vectors is None and metadata is None:
            raise BadRequest("update needs 'texts', 'vectors' or 'metadata'")
        meta = (
            None
            if metadata is None
            else await _off_loop(
                partial(metadata_field, metadata, n, self.settings.max_metadata_bytes)
            )
        )
        if vectors is not None:
            _check_recipe(body.get("recipe"), collection, "vectors")
        if texts is not None:
            texts = texts_field(texts, n)
            if vectors is None and not body.get("keep_vectors"):
                # New text, new meaning: its vector follows unless the caller says otherwise.
                vectors = await self._embed_for(
                    collection, texts_field(texts, n, required=True), request
                )
        array = (
            None
            if vectors is None
            else await _off_loop(partial(vectors_field, vectors, collection, rows=n))
        )
        await self.memory.update(
            collection.name,
            ids,
            texts=texts,
            metadata=meta,
            merge=bool(body.get("merge")),
            vectors=array,
        )
        return {"ids": ids, "count": n}

    async def op_delete(self, request: Request) -> dict[str, Any]:
        body = request.body
        collection = self._collection(body)
        ids, where = body.get("ids"), body.get("where")
        if (ids is None) == (where is None):
            raise BadRequest(
                "delete needs either 'ids' or a 'where' filter (drop the "
                "collection to delete everything)"
            )
        if ids is not None:
            ids = ids_field(ids)
            batch_size(len(ids), self.settings.max_batch, "ids")
            return {"deleted": await self.memory.delete(collection.name, ids=ids)}
        compiled = compile_filter(where)
        if compiled.empty:
            raise BadRequest("an empty filter would delete everything; drop the collection instead")
        return {"deleted": await self.memory.delete(collection.name, where=compiled)}

    async def op_list(self, request: Request) -> dict[str, Any]:
        body = request.body
        collection = self._collection(body)
        limit = body.get("limit", DEFAULT_PAGE)
        cursor = body.get("cursor") or 0
        skip = body.get("skip") or 0
        if not isinstance(limit, int) or not 1 <= limit <= self.settings.max_batch:
            raise BadRequest(f"limit must be an integer from 1 to {self.settings.max_batch}")
        if not isinstance(cursor, int) or not 0 <= cursor < 2**63:
            raise BadRequest("cursor must be the 'next' value of the previous page")
        if not isinstance(skip, int) or isinstance(skip, bool) or not 0 <= skip < 2**63:
            raise BadRequest("skip must be a count of records, 0 or more")
        records, vectors, following = await self.memory.page(
            collection.name,
            compile_filter(body.get("where")),
            limit=limit,
            after=cursor,
            skip=skip,
            vectors=bool(body.get("include_vectors")),
        )
        reply: dict[str, Any] = {
            "records": [r.to_wire() for r in records],
            "next": following,
            # Where the next page will start once more records arrive (for following a
            # growing collection, as the observer's drift watch does).
            "last": records[-1].rowid if records else cursor,
        }
        if vectors is not None:
            reply["vectors"] = vectors
        return reply

    async def op_count(self, request: Request) -> dict[str, Any]:
        collection = self._collection(request.body)
        where = compile_filter(request.body.get("where"))
        return {"count": await self.memory.count(collection.name, where)}

    async def op_check(self, request: Request) -> dict[str, Any]:
        findings = await self.memory.integrity()
        return {"ok": findings == ["ok"], "integrity": findings}

    # ----------------------------------------------------------------- search

    async def op_search(self, request: Request) -> dict[str, Any]:
        scope = request.body.get("scope", "local")
        if scope == "grid":
            return await self._grid_search(request.body)
        if scope != "local":
            raise BadRequest(f"scope must be 'local' or 'grid', got {scope!r}")
        return await self._search(request.body)

    async def _grid_search(self, body: dict[str, Any]) -> dict[str, Any]:
        """The same search on every grid member too, merged (see aether_box.grid.search)."""
        from aether_box.grid.search import search_grid
        from aether_box.grid.settings import GridSettings

        grid = self.ctx.get(Grid)
        if grid is None:
            raise ServiceUnavailable("scope 'grid' needs the grid component, which is not running")
        name = body.get("collection")
        found = self.memory.catalog.get(name) if isinstance(name, str) else None
        return await search_grid(
            grid,
            self._search,
            body,
            timeout=self.ctx.config.get(GridSettings).search_timeout_s,
            model=found.model if found is not None else None,
        )

    async def _search(self, body: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        collection = self._collection(body)
        k = body.get("k", DEFAULT_K)
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= self.settings.max_k:
            raise BadRequest(f"k must be an integer from 1 to {self.settings.max_k}")
        text = body.get("text")
        if text is not None and not isinstance(text, str):
            raise BadRequest("text must be a string")
        index = body.get("index")
        if index is not None and index not in INDEXES:
            raise BadRequest(f"index must be one of {list(INDEXES)}")
        hybrid = bool(body.get("hybrid"))
        if hybrid and not text:
            raise BadRequest("hybrid search needs the query 'text' for its keyword half")
        where = compile_filter(body.get("where"))  # a bad filter fails before any embedding
        query, route = await self._query_vector(collection, body, text)
        search = partial(
            self.memory.search,
            collection.name,
            where=where,
            keywords=text if hybrid else None,
            index=index,
            vectors=bool(body.get("include_vectors")),
        )
        judge = route.pop("judge", None)
        if judge is None:
            hits = await search(query, k)
        else:  # the combined gate needs the projection's two nearest records
            # (hybrid scores are fused ranks, not cosines: the agreement alone decides there)
            hits = await search(query, max(k, 2))
            if not _passes(route["alignment"], [] if hybrid else hits, judge):
                judged = route["alignment"]
                score = (
                    f"combined agreement {judged['combined']} (agreement and collection margin)"
                    if "combined" in judged
                    else f"agreement {judged['agreement']}"
                )
                query, route = await self._proxy(
                    collection,
                    text,
                    judged,
                    f"the projection's {score} is below the gate {judged['gate']}",
                )
                hits = await search(query, k)
            hits = hits[:k]
        if route["path"] in self.cross_model:
            self.cross_model[route["path"]] += 1
        reply: dict[str, Any] = {
            "results": [h.to_wire() for h in hits],
            **route,
            "collection": collection.name,
            "took_ms": round((time.perf_counter() - started) * 1000, 3),
        }
        if body.get("include_vectors"):
            reply["vectors"] = (
                np.stack([h.vector for h in hits])
                if hits
                else np.empty((0, collection.dim), np.float32)
            )
        return reply

    async def _query_vector(
        self, collection: Collection, body: dict[str, Any], text: str | None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """The query in the collection's space, and the route taken to get it there."""
        vector = body.get("vector")
        query_model = body.get("query_model")
        if query_model is not None and not isinstance(query_model, str):
            raise BadRequest("query_model must be a model name")
        if vector is None:
            if not text:
                raise BadRequest("search needs a query 'text' or a 'vector'")
            return (await self._embed_in(collection, [text]))[0], {"path": "native"}
        if query_model is None or query_model == collection.model:
            _check_recipe(body.get("query_recipe"), collection, "the query vector")
            return vectors_field(vector, collection, key="vector", rows=1)[0], {"path": "native"}
        try:
            return await self._align(collection, vector, query_model, text, body)
        except RecipeMismatch:
            self.cross_model["refused"] += 1
            raise

    async def _align(
        self,
        collection: Collection,
        vector: Any,
        query_model: str,
        text: str | None,
        body: dict[str, Any],
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Project a vector from `query_model`'s space, or fall back to embedding the text.

        The query vector's recipe (`query_recipe`; unstated: plain `embed` output) and the
        collection's go with it: align refuses either one unlike its projector's sides
        (RecipeMismatch), so nothing is projected from or into vectors of another kind."""
        gate = body.get("gate")
        query_recipe = options_of(body.get("query_recipe"), "query_recipe")
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # overflow shows up as inf
                array = np.asarray(vector, np.float32)
        except (TypeError, ValueError):
            raise BadRequest("vector must be a float32 array") from None
        if array.ndim == 2 and len(array) == 1:
            array = array[0]
        if array.ndim != 1 or not array.size or not np.isfinite(array).all():
            raise BadRequest("vector must be one finite float32 vector")
        if not self.ctx.has_service("align"):
            return await self._proxy(
                collection,
                text,
                {"reason": "no align service"},
                f"no align service runs to project {query_model!r} "
                f"vectors into {collection.model!r}'s space",
            )
        try:
            ask = {
                "op": "project",
                "from": query_model,
                "to": collection.model,
                "vector": array,
                "text": text,
                "collection": collection.name,
                "recipe": query_recipe,
                "target_recipe": collection.recipe_options,
            }
            if gate is not None:  # the caller's own threshold for this query
                ask["gate"] = gate
            reply = await self.ctx.call("align", ask)
        except NotFound as exc:
            return await self._proxy(collection, text, {"reason": exc.message}, exc.message)
        alignment = {
            k: reply.get(k) for k in ("projector", "method", "agreement", "gate", "accepted")
        }
        coef = reply.get("combined_coef")
        if coef and collection.metric == "cosine" and reply.get("vector") is not None:
            # Judged once the collection is searched (_passes): agreement and margin combined.
            projected = vectors_field(reply["vector"], collection, key="projected vector")[0]
            return projected, {"path": "projector", "alignment": alignment, "judge": coef}
        if reply.get("accepted", True) and reply.get("vector") is not None:
            projected = vectors_field(reply["vector"], collection, key="projected vector")[0]
            return projected, {"path": "projector", "alignment": alignment}
        return await self._proxy(
            collection,
            text,
            alignment,
            f"the projector's agreement {reply.get('agreement')} is below "
            f"the gate {reply.get('gate')}",
        )

    async def _proxy(
        self, collection: Collection, text: str | None, alignment: dict[str, Any], why: str
    ) -> tuple[np.ndarray, dict[str, Any]]:
        if not text:
            raise ServiceUnavailable(
                f"{why}; send the query 'text' too, so the box can embed it with "
                f"{collection.model!r} instead"
            )
        vector = (await self._embed_in(collection, [text]))[0]
        return vector, {"path": "proxy", "alignment": alignment}

    # ----------------------------------------------------------------- helpers

    def _collection(self, body: dict[str, Any]) -> Collection:
        return self.memory.collection(collection_name(require(body, "collection", str)))

    async def _embed_for(
        self, collection: Collection, texts: list[str | None], request: Request
    ) -> np.ndarray:
        """Embed texts with the collection's model, reporting progress on long batches."""
        chunks = []
        for start in range(0, len(texts), EMBED_CHUNK):
            chunk = [t or "" for t in texts[start : start + EMBED_CHUNK]]
            chunks.append(await self._embed_in(collection, chunk))
            if len(texts) > EMBED_CHUNK:
                await request.partial({"embedded": start + len(chunk), "total": len(texts)})
        return np.concatenate(chunks)

    async def _creation_recipe(self, model: str, raw: Any) -> dict[str, Any] | None:
        """A new collection's recipe: None (plain `embed`), or {prompt, pooling}; "align"
        takes the model's alignment recipe (the models manifest's), the one its projectors
        are fitted with."""
        if raw == "align":
            from aether_box.models.settings import ModelsSettings
            from aether_box.models.store import ModelStore

            models_dir = self.ctx.config.get(ModelsSettings).dir
            found = await _off_loop(lambda: model_recipe(ModelStore(models_dir), model))
            raw = {"prompt": found.prompt, "pooling": found.pooling}
        options = options_of(raw)
        return None if options == PLAIN else options

    async def _embed_in(self, collection: Collection, texts: list[str]) -> np.ndarray:
        """Texts embedded the way the collection's vectors are (its model and recipe)."""
        return await self._embed(collection.model, texts, collection.recipe)

    async def _embed(
        self, model: str, texts: list[str], recipe: dict[str, Any] | None = None
    ) -> np.ndarray:
        if not self.ctx.has_service("embed"):
            raise ServiceUnavailable(
                "this box has no embed service, so it cannot embed texts; send 'vectors' "
                "(and 'dim' when creating a collection)"
            )
        try:
            options = {k: v for k, v in (recipe or {}).items() if v not in (None, "mean")}
            reply = await self.ctx.call(
                "embed", {"op": "embed", "model": model, "texts": texts, **options}
            )
        except NotFound as exc:
            raise NotFound(
                f"cannot embed texts with {model!r}: {exc.message}; or send "
                "'vectors' with the texts"
            ) from None
        vectors = reply.get("vectors")
        if not isinstance(vectors, np.ndarray) or vectors.shape[:1] != (len(texts),):
            raise ServiceUnavailable(f"embed returned no vectors for {len(texts)} texts")
        return np.asarray(vectors, np.float32)


class MemoryComponent:
    """Opens the memory database and serves `memory` until the box stops."""

    name: ClassVar[str] = "memory"
    settings_class: ClassVar[type | None] = MemorySettings

    def __init__(self, ctx: BoxContext) -> None:
        self.settings = ctx.config.get(MemorySettings)
        self.memory = Memory(self.settings)
        self.service = MemoryService(ctx, self.memory)
        self._open = False

    async def serve(
        self,
        ctx: BoxContext,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        await self.memory.open()
        try:
            ctx.add_service("memory", self.service, concurrency=16)
            self._open = True
            task_status.started()
            if self.settings.index == "memory":
                try:
                    await self.memory.warm()  # so the first search does not pay for loading
                except Exception:  # the search that needs the index will load it and report
                    log.exception("memory: could not preload the search indexes")
            await anyio.sleep_forever()
        finally:
            self._open = False
            with anyio.CancelScope(shield=True):
                await self.memory.close()

    def status_section(self) -> dict[str, Any] | None:
        """The "memory" section of `status`: collections, sizes and the database file."""
        if not self._open:
            return None
        memory = self.memory
        collections = {}
        for collection in memory.catalog.values():
            info = memory.info(collection)
            index = memory.indexes.get(collection.id)
            info["index_mb"] = round(index.nbytes / 2**20, 1) if index is not None else None
            # Why its index was rebuilt from the database rather than loaded (None: it was not).
            info["index_rebuilt"] = memory.snapshots.rebuilt.get(collection.id)
            if index is not None:
                info["index_scan"] = index.scan
                info["scan_threads"] = index.scan_threads
                info["bit_budget"] = index.budget
                # Searches switch to the bit scan once a calibration chooses it (a second or
                # so after a large ingest stops): until then `index_scan` says int8+rescore.
                info["calibrating"] = memory.calibrating(index)
                info["searches_by_scan"] = dict(index.searches)
            collections[collection.name] = info
        return {
            "cross_model": dict(self.service.cross_model),
            "db": str(self.settings.db_path),
            "db_mb": round(memory.db_bytes / 2**20, 2),
            "index": self.settings.index,
            "synchronous": self.settings.synchronous,
            "collections": collections,
        }


async def _off_loop(work: Callable[[], T]) -> T:
    """Run CPU-bound checking in a worker thread."""
    return await anyio.to_thread.run_sync(work)


def _passes(alignment: dict[str, Any], hits: list[Any], coef: list[float]) -> bool:
    """The combined gate (aether_box.align.gate.combine): is the projection's agreement,
    with the margin of its nearest record over the next, likely enough to find the native
    top-1? Records `margin`, `combined` and `accepted` in `alignment`. With fewer than two
    records there is no margin: the agreement alone decides."""
    if len(hits) < 2:
        alignment["accepted"] = alignment["agreement"] >= alignment["gate"]
        return bool(alignment["accepted"])
    gap = float(hits[0].score - hits[1].score)
    combined = float(combine(alignment["agreement"], [gap], coef)[0])
    alignment.update(margin=round(gap, 4), combined=round(combined, 4))
    alignment["accepted"] = combined >= alignment["gate"]
    return bool(alignment["accepted"])


def _check_recipe(given: Any, collection: Collection, what: str) -> None:
    """Refuse vectors whose stated recipe (unstated: plain `embed` output) is not the
    collection's: they would sit among vectors of another kind and match nothing right."""
    have = options_of(given, "recipe")
    if have != collection.recipe_options:
        options = {k: v for k, v in collection.recipe_options.items() if v not in (None, "mean")}
        raise RecipeMismatch(
            f"{what}: made with {json.dumps(have)}, but collection {collection.name!r} holds "
            f"{collection.model} vectors made with {json.dumps(collection.recipe_options)}; "
            f'embed with {{"op": "embed", "model": "{collection.model}", ...{json.dumps(options)}}}'
            " and say so ('recipe' on add/update, 'query_recipe' on search), or send texts"
        )


def _rows(vectors: Any) -> int:
    if isinstance(vectors, np.ndarray):
        return 1 if vectors.ndim == 1 else len(vectors)
    if isinstance(vectors, list):
        return len(vectors) if vectors and isinstance(vectors[0], list) else 1
    raise BadRequest("vectors must be a float32 array (n, dim)")
