"""MemoryStore.insert writes a whole batch with one statement a table: what goes in comes back."""

from __future__ import annotations

import json

import pytest
from fixtures_memory import unit_vectors

from aether_box.errors import ConfigError
from aether_box.memory.filters import compile_filter
from aether_box.memory.settings import MemorySettings
from aether_box.memory.store import MemoryStore

DIM = 8
# Strings a JSON hand-over could mangle: NUL, quotes, backslashes, control characters,
# characters outside the BMP (surrogate pairs in escaped JSON).
ODD = ["a\x00b", 'q"uote\\', "line\nbreak\ttab", "émoji 😀", "\x1f", "plain"]


def test_a_batch_round_trips_exactly_and_only_texts_reach_keyword_search(tmp_path):
    store = MemoryStore(tmp_path / "memory.db")
    try:
        collection = store.create_collection("docs", "m", DIM, "cosine")
        vectors = unit_vectors(len(ODD), DIM)
        texts = [f"{s} alpha" for s in ODD[:-2]] + [None, ""]
        metadata = [json.dumps({"s": s, "i": i}, ensure_ascii=False) for i, s in enumerate(ODD)]
        rowids, replaced = store.insert(collection, ODD, texts, metadata, vectors)
        assert len(replaced) == 0 and rowids.tolist() == list(range(1, len(ODD) + 1))

        with store.reader() as conn:
            records = store.records(conn, rowids.tolist())
            assert [records[r].id for r in rowids.tolist()] == ODD
            assert [records[r].text for r in rowids.tolist()] == texts
            assert [records[r].metadata for r in rowids.tolist()] == [
                {"s": s, "i": i} for i, s in enumerate(ODD)
            ]
            # Bit for bit: the vectors were cut out of one buffer by offset.
            assert store.vectors(conn, collection, rowids.tolist()).tobytes() == vectors.tobytes()
            # Records without text (None or "") are not in the keyword index.
            found = store.keyword(conn, collection, "alpha", 100, compile_filter(None))
            assert sorted(found) == rowids[:-2].tolist()
    finally:
        store.close()


def test_a_batch_of_vectors_alone_keeps_its_odd_keys(tmp_path):
    # No texts and one metadata object: the keys go in as one carray of strings (C strings:
    # a key holding a NUL takes the JSON path instead).
    store = MemoryStore(tmp_path / "memory.db")
    try:
        collection = store.create_collection("docs", "m", DIM, "cosine")
        for keys in (ODD[1:], [f"{k}!" for k in ODD]):
            shared = [json.dumps({"s": 1})] * len(keys)
            rowids, _ = store.insert(
                collection, keys, [None] * len(keys), shared, unit_vectors(len(keys), DIM)
            )
            with store.reader() as conn:
                records = store.records(conn, rowids.tolist())
                assert [records[r].id for r in rowids.tolist()] == keys
                assert {records[r].text for r in rowids.tolist()} == {None}
                assert all(records[r].metadata == {"s": 1} for r in rowids.tolist())
    finally:
        store.close()


def test_shared_metadata_upsert_and_rowids_that_never_come_back(tmp_path):
    store = MemoryStore(tmp_path / "memory.db")
    try:
        collection = store.create_collection("docs", "m", DIM, "l2")
        shared = json.dumps({"shard": 3})
        first, _ = store.insert(
            collection, ["a", "b", "c"], [None] * 3, [shared] * 3, unit_vectors(3, DIM)
        )
        with store.reader() as conn:
            created = {r.id: r.created for r in store.records(conn, first.tolist()).values()}
            assert store.count(conn, collection, compile_filter({"shard": 3})) == 3

        # Upsert: "b" is replaced by a new row that keeps its creation time.
        again, replaced = store.insert(
            collection,
            ["b", "d"],
            ["new b", None],
            [shared] * 2,
            unit_vectors(2, DIM, seed=1),
            upsert=True,
        )
        assert replaced.tolist() == [first[1]] and again.tolist() == [4, 5]
        with store.reader() as conn:
            records = {r.id: r for r in store.records(conn, again.tolist()).values()}
            assert records["b"].created == created["b"] and records["b"].text == "new b"
            assert records["d"].created >= created["a"]
            assert store.extent(conn, collection) == (4, 5)

        # Rowids are never reused, even after the newest records are deleted.
        store.delete(collection, again)
        later, _ = store.insert(collection, ["e"], [None], [shared], unit_vectors(1, DIM))
        assert later.tolist() == [6]
    finally:
        store.close()


def test_vectors_span_several_vec0_chunks_of_the_configured_size(tmp_path):
    # 20 vectors in chunks of 8: three chunks, one part-filled; all come back in order.
    store = MemoryStore(tmp_path / "memory.db", vec0_chunk=8)
    try:
        collection = store.create_collection("docs", "m", DIM, "cosine")
        vectors = unit_vectors(20, DIM)
        keys = [f"k{i}" for i in range(20)]
        rowids, _ = store.insert(collection, keys, [None] * 20, ["{}"] * 20, vectors)
        with store.reader() as conn:
            chunks = conn.execute(f"SELECT count(*) FROM vec_{collection.id}_chunks").fetchall()
            assert chunks[0][0] == 3
            assert store.vectors(conn, collection, rowids.tolist()).tobytes() == vectors.tobytes()
    finally:
        store.close()


def test_a_vec0_chunk_size_sqlite_vec_refuses_is_a_config_error(tmp_path):
    for bad in (12, 0, 8_192):
        with pytest.raises(ConfigError, match="multiple of 8 from 8 to 4096"):
            MemorySettings(vec0_chunk=bad).resolve(tmp_path)
