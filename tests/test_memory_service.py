"""The `memory` service through the bus: raw vectors, metadata, filters, hybrid search, errors."""

from __future__ import annotations

import threading

import apsw
import numpy as np
import pytest
import sqlite_vec
from fixtures_box import BoxInThread, scrape, wait_for
from fixtures_memory import clustered_vectors, unit_vectors
from rich.console import Console

from aether_box.client import BadRequest, NotFound, ServiceUnavailable, TooLarge
from aether_box.errors import ConfigError
from aether_box.status_view import render_status

DIM = 16
TOPICS = ["cats purr on warm sofas", "dogs fetch sticks in the park", "rain falls on the roof"]


def create(client, name="docs", dim=DIM, **extra):
    body = {"op": "create", "collection": name, "model": "test-space", "dim": dim, **extra}
    return client.request("memory", body)


def add_sample(client, n=300, name="docs"):
    vectors = unit_vectors(n, DIM)
    ids = [f"r{i}" for i in range(n)]
    metadata = [{"i": i, "tag": ["even", "odd"][i % 2], "year": 2000 + i % 30} for i in range(n)]
    texts = [f"record {i}: {TOPICS[i % 3]}" for i in range(n)]
    client.request(
        "memory",
        {
            "op": "add",
            "collection": name,
            "ids": ids,
            "vectors": vectors,
            "metadata": metadata,
            "texts": texts,
        },
    )
    return ids, vectors, metadata


def expected_top(vectors, query, k, keep=None):
    scores = vectors @ (query / np.linalg.norm(query))
    if keep is not None:
        scores = np.where(keep, scores, -np.inf)
    return [f"r{i}" for i in np.argsort(-scores, kind="stable")[:k]]


def test_add_search_get_list_count(memory_box):
    with memory_box.client(timeout=30) as client:
        created = create(client)
        assert created["created"] and created["collection"]["dim"] == DIM
        ids, vectors, metadata = add_sample(client)

        query = vectors[17] + 0.1 * vectors[3]
        reply = client.request(
            "memory", {"op": "search", "collection": "docs", "vector": query, "k": 5}
        )
        assert [h["id"] for h in reply["results"]] == expected_top(vectors, query, 5)
        assert reply["path"] == "native"
        top = reply["results"][0]
        assert top["metadata"] == metadata[17] and top["text"].startswith("record 17:")
        assert top["score"] == pytest.approx(1 - top["distance"])

        where = {"tag": "odd", "year": {"$gte": 2020}}
        keep = np.array([m["tag"] == "odd" and m["year"] >= 2020 for m in metadata])
        reply = client.request(
            "memory",
            {"op": "search", "collection": "docs", "vector": query, "k": 7, "where": where},
        )
        assert [h["id"] for h in reply["results"]] == expected_top(vectors, query, 7, keep)

        # A filter too narrow for the nearest records to hold k passes: all of it is searched.
        for where, wanted in (({"i": 299}, {299}), ({"i": {"$in": [3, 150]}}, {3, 150})):
            keep = np.array([m["i"] in wanted for m in metadata])
            reply = client.request(
                "memory",
                {"op": "search", "collection": "docs", "vector": query, "k": 7, "where": where},
            )
            assert [h["id"] for h in reply["results"]] == expected_top(
                vectors, query, int(keep.sum()), keep
            )

        got = client.request(
            "memory",
            {"op": "get", "collection": "docs", "ids": ["r5", "nope"], "include_vectors": True},
        )
        assert [r["id"] for r in got["records"]] == ["r5"] and got["missing"] == ["nope"]
        np.testing.assert_array_equal(got["vectors"][0], vectors[5])  # stored bit for bit

        assert client.request("memory", {"op": "count", "collection": "docs"})["count"] == 300
        assert client.request("memory", {"op": "count", "collection": "docs", "where": where})[
            "count"
        ] == int(keep.sum())
        seen, cursor = [], 0
        while cursor is not None:
            page = client.request(
                "memory",
                {
                    "op": "list",
                    "collection": "docs",
                    "limit": 64,
                    "cursor": cursor,
                    "where": {"tag": "even"},
                },
            )
            seen += [r["id"] for r in page["records"]]
            cursor = page["next"]
        assert seen == ids[::2]
        # skip jumps over records after the cursor (the filter applies first).
        jumped = client.request(
            "memory",
            {
                "op": "list",
                "collection": "docs",
                "cursor": 0,
                "skip": 10,
                "limit": 3,
                "where": {"tag": "even"},
            },
        )
        assert [r["id"] for r in jumped["records"]] == ids[::2][10:13]
        past = client.request("memory", {"op": "list", "collection": "docs", "skip": 300})
        assert past["records"] == [] and past["next"] is None and past["last"] == 0
        with pytest.raises(BadRequest, match="skip must be a count"):
            client.request("memory", {"op": "list", "collection": "docs", "skip": -1})

        listed = client.request("memory", {"op": "collections"})["collections"]
        assert [(c["name"], c["count"], c["model"]) for c in listed] == [
            ("docs", 300, "test-space")
        ]
        section = client.status()["memory"]
        assert section["collections"]["docs"]["count"] == 300
        assert section["collections"]["docs"]["dim"] == DIM and section["db_mb"] > 0


def test_update_delete_upsert(memory_box):
    with memory_box.client(timeout=30) as client:
        create(client)
        ids, vectors, _ = add_sample(client, n=50)
        far = -vectors[0]
        client.request(
            "memory",
            {
                "op": "update",
                "collection": "docs",
                "ids": ["r1"],
                "vectors": far,
                "metadata": [{"tag": "moved"}],
                "merge": True,
            },
        )
        hit = client.request(
            "memory", {"op": "search", "collection": "docs", "vector": far, "k": 1}
        )["results"][0]
        assert hit["id"] == "r1" and hit["metadata"]["tag"] == "moved" and hit["metadata"]["i"] == 1

        client.request(
            "memory",
            {"op": "update", "collection": "docs", "ids": ["r1"], "metadata": [{"only": True}]},
        )
        got = client.request("memory", {"op": "get", "collection": "docs", "ids": ["r1"]})
        assert got["records"][0]["metadata"] == {"only": True}

        with pytest.raises(BadRequest, match="already exist"):
            client.request(
                "memory", {"op": "add", "collection": "docs", "ids": ["r2"], "vectors": vectors[:1]}
            )
        reply = client.request(
            "memory",
            {
                "op": "add",
                "collection": "docs",
                "ids": ["r2", "new"],
                "vectors": np.stack([far, far]),
                "upsert": True,
            },
        )
        assert reply["replaced"] == 1
        top = client.request(
            "memory", {"op": "search", "collection": "docs", "vector": far, "k": 3}
        )["results"]
        assert {h["id"] for h in top} == {"r1", "r2", "new"}

        deleted = client.request(
            "memory", {"op": "delete", "collection": "docs", "ids": ["r1", "r2", "ghost"]}
        )
        assert deleted["deleted"] == 2
        deleted = client.request(
            "memory", {"op": "delete", "collection": "docs", "where": {"tag": "even"}}
        )
        assert deleted["deleted"] == 24  # r2 was even and is gone already
        # 24 odd records (r1 went) and "new" are left.
        assert client.request("memory", {"op": "count", "collection": "docs"})["count"] == 25
        top = client.request(
            "memory", {"op": "search", "collection": "docs", "vector": far, "k": 2}
        )["results"]
        assert top[0]["id"] == "new" and "r1" not in {h["id"] for h in top}

        dropped = client.request("memory", {"op": "drop", "collection": "docs"})
        assert dropped == {"dropped": True, "deleted": 25}
        with pytest.raises(NotFound, match="no collection 'docs'"):
            client.request("memory", {"op": "count", "collection": "docs"})


def test_hybrid_search_fuses_keywords_and_vectors(memory_box):
    with memory_box.client(timeout=30) as client:
        create(client)
        _, vectors, _ = add_sample(client, n=90)
        # A vector near record 4 (a dog record), keywords that only rain records have.
        reply = client.request(
            "memory",
            {
                "op": "search",
                "collection": "docs",
                "vector": vectors[4],
                "text": "rain roof",
                "hybrid": True,
                "k": 10,
            },
        )
        results = reply["results"]
        assert len(results) == 10
        # Records found by both halves come first; only rain records have keyword ranks.
        assert None not in results[0]["ranks"].values()
        assert sum("rain falls" in h["text"] for h in results) >= 5
        assert all(h["ranks"]["keyword"] is None for h in results if "rain" not in h["text"])
        plain = client.request(
            "memory", {"op": "search", "collection": "docs", "vector": vectors[4], "k": 10}
        )["results"]
        assert plain[0]["id"] == "r4" and sum("rain falls" in h["text"] for h in plain) < 5
        scores = [h["score"] for h in results]
        assert scores == sorted(scores, reverse=True)
        filtered = client.request(
            "memory",
            {
                "op": "search",
                "collection": "docs",
                "vector": vectors[4],
                "text": "rain roof",
                "hybrid": True,
                "k": 10,
                "where": {"tag": "odd"},
            },
        )["results"]
        assert filtered and all(h["metadata"]["tag"] == "odd" for h in filtered)


def test_sqlite_vec_search_agrees_with_the_memory_index(sqlite_vec_box):
    with sqlite_vec_box.client(timeout=30) as client:
        create(client)
        _, vectors, metadata = add_sample(client)
        for i in (0, 99, 250):
            query = vectors[i] + 0.2 * vectors[i + 1]
            for where in (None, {"tag": "even"}):
                keep = None if where is None else np.array([m["tag"] == "even" for m in metadata])
                reply = client.request(
                    "memory",
                    {"op": "search", "collection": "docs", "vector": query, "k": 8, "where": where},
                )
                assert [h["id"] for h in reply["results"]] == expected_top(vectors, query, 8, keep)
        assert client.status()["memory"]["collections"]["docs"]["index_mb"] is None
        create(client, "dotty", metric="dot")
        client.request("memory", {"op": "add", "collection": "dotty", "vectors": vectors[:3]})
        with pytest.raises(BadRequest, match="no dot-product search"):
            client.request("memory", {"op": "search", "collection": "dotty", "vector": vectors[0]})
        reply = client.request(
            "memory",
            {
                "op": "search",
                "collection": "dotty",
                "vector": vectors[0],
                "index": "memory",
                "k": 1,
            },
        )
        assert reply["results"][0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_records_and_index_survive_a_restart(data_dir):
    first = BoxInThread(data_dir)
    try:
        with first.client(timeout=30) as client:
            create(client, metric="l2")
            _, vectors, _ = add_sample(client, n=120)
            client.request("memory", {"op": "delete", "collection": "docs", "ids": ["r7"]})
    finally:
        first.stop()
    second = BoxInThread(data_dir)
    try:
        with second.client(timeout=30) as client:
            assert client.request("memory", {"op": "count", "collection": "docs"})["count"] == 119
            hit = client.request(
                "memory", {"op": "search", "collection": "docs", "vector": vectors[8], "k": 1}
            )["results"][0]
            assert hit["id"] == "r8" and hit["distance"] == pytest.approx(0.0, abs=1e-3)
            assert client.request("memory", {"op": "check"})["ok"]
    finally:
        second.stop()
    conn = apsw.Connection(str(data_dir / "memory.db"))  # a plain sqlite-vec database
    conn.enable_load_extension(True)
    conn.load_extension(sqlite_vec.loadable_path())
    assert conn.execute("SELECT count(*) FROM vec_1").fetchall() == [(119,)]


def test_bad_input_is_refused_and_nothing_is_half_written(data_dir):
    box = BoxInThread(data_dir, overrides={"memory": {"max_batch": 100}})
    try:
        with box.client(timeout=30) as client:
            create(client)
            add_sample(client, n=10)
            good = unit_vectors(5, DIM, seed=9)

            def refused(error, match, **body):
                with pytest.raises(error, match=match):
                    client.request("memory", {"op": "add", "collection": "docs", **body})

            refused(
                BadRequest, "5 dimensions, but collection 'docs' holds 16-d", vectors=good[:, :5]
            )
            nan = good.copy()
            nan[3, 2] = np.nan
            refused(BadRequest, r"vectors\[3\] holds NaN", vectors=nan)
            inf = good.copy()
            inf[4, 0] = np.inf
            refused(BadRequest, r"vectors\[4\] holds NaN or infinite", vectors=inf)
            refused(BadRequest, "too large for float32", vectors=good.astype(np.float64) * 1e300)
            refused(BadRequest, "all zeros", vectors=np.zeros((1, DIM), np.float32))
            refused(
                TooLarge,
                "101 records in one request is over the limit of 100",
                vectors=unit_vectors(101, DIM),
            )
            refused(
                BadRequest,
                "5 ids for 5 records|appears twice",
                vectors=good,
                ids=["a", "b", "c", "d", "a"],
            )
            refused(BadRequest, "already exist", vectors=good, ids=["x1", "x2", "x3", "x4", "r9"])
            refused(
                BadRequest,
                r"metadata\[1\] is not plain JSON",
                vectors=good[:2],
                metadata=[{"ok": 1}, {"blob": b"\x00"}],
            )
            refused(NotFound, "cannot embed texts with 'test-space'", texts=["hello"])
            with pytest.raises(NotFound, match="no collection 'ghost'"):
                client.request("memory", {"op": "add", "collection": "ghost", "vectors": good})
            with pytest.raises(BadRequest, match="unknown operator"):
                client.request(
                    "memory",
                    {
                        "op": "search",
                        "collection": "docs",
                        "vector": good[0],
                        "where": {"i": {"$near": 1}},
                    },
                )
            with pytest.raises(BadRequest, match="empty filter would delete everything"):
                client.request("memory", {"op": "delete", "collection": "docs", "where": {}})
            with pytest.raises(NotFound, match="2 id"):
                client.request(
                    "memory",
                    {
                        "op": "update",
                        "collection": "docs",
                        "ids": ["r1", "zz", "yy"],
                        "metadata": {"x": 1},
                    },
                )
            with pytest.raises(BadRequest, match="k must be"):
                client.request(
                    "memory", {"op": "search", "collection": "docs", "vector": good[0], "k": 0}
                )
            with pytest.raises(BadRequest, match="collection must be a name"):
                create(client, name="bad name; DROP TABLE records")

            # Nothing above wrote anything: the 10 records are exactly as they were.
            assert client.request("memory", {"op": "count", "collection": "docs"})["count"] == 10
            got = client.request("memory", {"op": "get", "collection": "docs", "ids": ["r1"]})
            assert got["records"][0]["metadata"]["i"] == 1
            hits = client.request(
                "memory", {"op": "search", "collection": "docs", "vector": good[0], "k": 100}
            )["results"]
            assert sorted(h["id"] for h in hits) == sorted(f"r{i}" for i in range(10))
    finally:
        box.stop()


def test_cross_model_query_without_align_says_what_to_do(memory_box):
    with memory_box.client(timeout=30) as client:
        create(client)
        add_sample(client, n=5)
        foreign = unit_vectors(1, 24)[0]
        # Whether or not an align service runs, there is no projector from "other-model".
        with pytest.raises(
            ServiceUnavailable, match="(no align service|no projector).*send the query 'text'"
        ):
            client.request(
                "memory",
                {
                    "op": "search",
                    "collection": "docs",
                    "vector": foreign,
                    "query_model": "other-model",
                },
            )


def test_a_damaged_database_stops_the_box_with_a_clear_error(data_dir):
    (data_dir / "memory.db").write_bytes(b"this is not an SQLite file " * 200)
    with pytest.raises(Exception) as caught:
        BoxInThread(data_dir).stop()
    errors = getattr(caught.value, "exceptions", [caught.value])
    assert any(
        isinstance(e, ConfigError) and "cannot open the memory database" in e.message
        for e in errors
    ), caught.value


def test_concurrent_writers_and_readers_see_consistent_data(memory_box):
    with memory_box.client(timeout=30) as client:
        create(client)
    errors: list[BaseException] = []
    seen_counts: list[int] = []

    def writer(w: int) -> None:
        try:
            with memory_box.client(timeout=60) as client:
                for b in range(10):
                    ids = [f"w{w}b{b}r{i}" for i in range(50)]
                    client.request(
                        "memory",
                        {
                            "op": "add",
                            "collection": "docs",
                            "ids": ids,
                            "metadata": {"w": w},
                            "vectors": unit_vectors(50, DIM, seed=100 * w + b),
                        },
                    )
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def reader() -> None:
        try:
            with memory_box.client(timeout=60) as client:
                for i in range(30):
                    reply = client.request(
                        "memory",
                        {
                            "op": "search",
                            "collection": "docs",
                            "k": 5,
                            "vector": unit_vectors(1, DIM, seed=i)[0],
                            "where": {"w": {"$lt": 2}},
                        },
                    )
                    assert all(h["metadata"]["w"] < 2 for h in reply["results"])
                    seen_counts.append(
                        client.request("memory", {"op": "count", "collection": "docs"})["count"]
                    )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert all(count % 50 == 0 for count in seen_counts)  # never half a batch
    with memory_box.client(timeout=30) as client:
        assert client.request("memory", {"op": "count", "collection": "docs"})["count"] == 2_000
        hits = client.request(
            "memory",
            {
                "op": "search",
                "collection": "docs",
                "k": 1,
                "vector": unit_vectors(50, DIM, seed=203)[9],
            },
        )["results"]
        assert hits[0]["id"] == "w2b3r9"


def test_filters_stay_exact_through_the_int8_scan(data_dir):
    # Every search takes the int8 scan + float32 re-scoring path, however small the collection.
    box = BoxInThread(data_dir, overrides={"memory": {"quantized_min_rows": 0}})
    try:
        with box.client(timeout=30) as client:
            create(client)
            _, vectors, metadata = add_sample(client, n=2_000)
            queries = unit_vectors(10, DIM, seed=11)
            client.request("memory", {"op": "search", "collection": "docs", "vector": queries[0]})
            collections = client.status()["memory"]["collections"]
            assert collections["docs"]["index_scan"] == "int8+rescore"
            for where in (None, {"tag": "odd"}, {"year": {"$gte": 2025}}, {"i": {"$in": [7, 9]}}):
                keep = None if where is None else np.array([_passes(m, where) for m in metadata])
                for query in queries:
                    k = 10 if keep is None else min(10, int(keep.sum()))
                    reply = client.request(
                        "memory",
                        {"op": "search", "collection": "docs", "vector": query, "k": 10}
                        | ({"where": where} if where else {}),
                    )
                    assert [h["id"] for h in reply["results"]] == expected_top(
                        vectors, query, k, keep
                    )
    finally:
        box.stop()


def test_bit_scan_through_the_bus_keeps_filters_exact_and_survives_a_restart(data_dir):
    # Small thresholds so that an 8,000-row collection takes the sign-bit scan.
    settings = {
        "memory": {"bit_scan_min_rows": 4_096, "quantized_min_rows": 0, "snapshot_min_rows": 1}
    }
    dim, n = 128, 8_000
    vectors = clustered_vectors(n, dim, seed=21)
    metadata = [{"i": i, "tag": ["even", "odd"][i % 2], "year": 2000 + i % 30} for i in range(n)]
    queries = clustered_vectors(20, dim, seed=22)

    def scan(client):
        return client.status()["memory"]["collections"]["docs"]["index_scan"]

    def check_searches(client):
        found = total = 0
        for where in (None, {"tag": "odd"}, {"year": {"$gte": 2025}}, {"i": {"$in": [7, 9]}}):
            keep = None if where is None else np.array([_passes(m, where) for m in metadata])
            for query in queries:
                k = 10 if keep is None else min(10, int(keep.sum()))
                reply = client.request(
                    "memory",
                    {"op": "search", "collection": "docs", "vector": query, "k": 10}
                    | ({"where": where} if where else {}),
                )
                got = [h["id"] for h in reply["results"]]
                assert len(got) == k
                if keep is not None:  # a filter admits exactly what it says
                    assert all(keep[int(g[1:])] for g in got)
                found += len(set(got) & set(expected_top(vectors, query, k, keep)))
                total += k
        assert found / total >= 0.99

    first = BoxInThread(data_dir, overrides=settings)
    try:
        with first.client(timeout=30) as client:
            create(client, dim=dim)
            client.request(
                "memory",
                {
                    "op": "add",
                    "collection": "docs",
                    "ids": [f"r{i}" for i in range(n)],
                    "vectors": vectors,
                    "metadata": metadata,
                },
            )
            # The calibration runs after the acknowledgement, on a thread of its own.
            wait_for(lambda: scan(client) == "bits+rescore", 30, "the bit-scan calibration")
            status = client.status()
            budget = status["memory"]["collections"]["docs"]["bit_budget"]
            assert budget > 0
            metrics = scrape(status["metrics"]["url"])
            assert metrics[("aether_box_memory_bit_budget", (("collection", "docs"),))] == budget
            assert metrics[("aether_box_memory_records", (("collection", "docs"),))] == n
            console = Console(record=True, width=200)
            render_status(status, console)  # what `aether-box status` prints
            assert f"docs ({n}, bits+rescore {budget})" in console.export_text()
            check_searches(client)
    finally:
        first.stop()
    second = BoxInThread(data_dir, overrides=settings)  # the saved index keeps its calibration
    try:
        with second.client(timeout=30) as client:
            client.request("memory", {"op": "search", "collection": "docs", "vector": queries[0]})
            assert scan(client) == "bits+rescore"
            check_searches(client)
    finally:
        second.stop()


def _passes(record, where):
    """The three filter shapes the int8 test uses, evaluated in Python."""
    ((key, cond),) = where.items()
    if isinstance(cond, dict) and "$gte" in cond:
        return record[key] >= cond["$gte"]
    if isinstance(cond, dict) and "$in" in cond:
        return record[key] in cond["$in"]
    return record[key] == cond
