"""Property tests: every op of every service, sent random and near-valid bodies.

Each answer must be a valid reply or a typed error, never `internal`, and the box must go on
answering. The bodies mix plausible values with wrong types, huge and negative numbers, NaN
vectors, wrong dtypes and shapes, unicode edge cases and names with '/' and '..'.
`AETHER_BOX_PROPERTY_EXAMPLES` (default 6; the fuzz bench runs more) sets the examples per op; hypothesis is
derandomized so a failure reproduces, and prints the body that caused it.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aether_box.bus.service import OpService
from aether_box.errors import BoxError

EXAMPLES = int(os.environ.get("AETHER_BOX_PROPERTY_EXAMPLES", "6"))
# Codes that say the box could not, or would not, do it; `internal` is the only bug.
TYPED = {
    "bad_request", "bad_frames", "not_found", "too_large", "unavailable", "cancelled",
    "overloaded", "forbidden", "disk_full", "corrupt_model", "config", "timeout",
    "not_allowed", "adapter_pruned", "adapter_in_use", "tool_failed",
}  # fmt: skip
# Generation is kept short: the property is about what the box accepts, not how long it talks.
MAX_TOKENS = 4

INTS = st.sampled_from([0, -1, 3, 2**31, 2**63 - 1, 2**63, -(2**63), 2**64 - 1])
FLOATS = st.sampled_from([0.0, -1.0, 0.5, 1e308, -1e308, math.nan, math.inf, -math.inf, 1e-320])
TEXT = st.one_of(
    st.sampled_from(
        ["", "a", "minilm", "smollm2", "c", "docs", "..", "../..", "../../etc/passwd", "a/b",
         "/abs", "\x00", "e\u0301", "\u202e\u2066", "\U0001f600" * 3, "x" * 10_000,
         "tcp://127.0.0.1:1", "ipc:///" + "a" * 200, "glosses", "cosine", "user"]
    ),
    st.text(max_size=40),  # any unicode (no lone surrogates: msgpack sends UTF-8)
)  # fmt: skip
ARRAYS = st.one_of(
    st.sampled_from(
        [
            np.zeros((0, 384), np.float32),
            np.ones((2, 384), np.float32),
            np.ones(384, np.float32),
            np.full((1, 384), np.nan, np.float32),
            np.ones((2, 3), np.float64),
            np.ones((2, 384), np.int8),
            np.ones((1, 1, 384), np.float32),
            np.ones((3, 7), np.float16),
            np.array([True, False]),
        ]
    ),
)
SCALARS = st.one_of(INTS, FLOATS, TEXT, st.none(), st.booleans())
VALUES = st.recursive(
    st.one_of(SCALARS, ARRAYS, st.binary(max_size=64)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=8,
)
# Fields the services read, each with plausible values as well as anything at all.
NEAR = {
    "collection": st.sampled_from(["c", "c", "c", "docs", "../x", "", "x" * 300]),
    "model": st.sampled_from(["minilm", "smollm2", "nope", "../../m", "lab/minilm", ""]),
    "from": st.sampled_from(["minilm", "smollm2", "..", "a/b"]),
    "to": st.sampled_from(["minilm", "smollm2", "..", "a/b"]),
    "texts": st.lists(TEXT, max_size=3),
    "text": TEXT,
    "prompt": TEXT,
    "ids": st.lists(TEXT, max_size=3),
    "vectors": ARRAYS,
    "vector": ARRAYS,
    "k": INTS,
    "limit": INTS,
    "cursor": INTS,
    "dim": st.sampled_from([384, 0, -1, 2**63 - 1, 8193]),
    "metric": st.sampled_from(["cosine", "l2", "nope"]),
    "where": st.one_of(
        st.dictionaries(st.sampled_from(["n", "tag", "a.b", "", "$or"]), SCALARS, max_size=2),
        st.dictionaries(
            st.sampled_from(["n", "tag"]),
            st.dictionaries(
                st.sampled_from(["$gt", "$eq", "$in", "$contains", "$x"]),
                VALUES,
                min_size=1,
                max_size=1,
            ),
            min_size=1,
            max_size=1,
        ),
        st.sampled_from([{"$or": []}, {"a": {"$in": [math.nan]}}, {"$not": {"$not": {}}}]),
    ),
    "messages": st.lists(
        st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "x"]), "content": TEXT}),
        max_size=3,
    ),
    "session": TEXT,
    "endpoint": TEXT,
    "name": TEXT,
    "temperature": FLOATS,
    "top_p": FLOATS,
    "stream": st.one_of(st.booleans(), SCALARS),
    "stop": st.one_of(TEXT, st.lists(TEXT, max_size=3)),
    "metadata": VALUES,
    "upsert": st.booleans(),
    "missing_ok": st.booleans(),
    "exist_ok": st.booleans(),
    "corpus": TEXT,
    "methods": st.lists(TEXT, max_size=2),
    "include_vectors": SCALARS,
    "grammar": TEXT,
    "json_schema": VALUES,
}


V = np.eye(384, dtype=np.float32)[:2]
# A valid body for each op; the properties send these with one to three fields replaced by
# odd values, removed, or joined by junk: near-valid requests that reach deep into each op.
TEMPLATES: dict[tuple[str, str], dict] = {
    ("memory", "create"): {"collection": "c2", "model": "minilm", "exist_ok": True},
    ("memory", "drop"): {"collection": "c2", "missing_ok": True},
    ("memory", "info"): {"collection": "c"},
    ("memory", "add"): {"collection": "c", "texts": ["x", "y"], "ids": ["p", "q"], "upsert": True,
                        "metadata": {"n": 1}},
    ("memory", "get"): {"collection": "c", "ids": ["p"], "include_vectors": True},
    ("memory", "update"): {"collection": "c", "ids": ["p"], "metadata": {"n": 2}},
    ("memory", "delete"): {"collection": "c", "where": {"n": 3}},
    ("memory", "list"): {"collection": "c", "limit": 5, "cursor": 0, "where": {"n": 1}},
    ("memory", "count"): {"collection": "c", "where": {"n": {"$gt": 0}}},
    ("memory", "search"): {"collection": "c", "text": "x", "k": 3, "where": {"n": 1},
                           "hybrid": True},
    ("llm", "chat"): {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}],
                      "temperature": 0},
    ("llm", "complete"): {"model": "smollm2", "prompt": "Once", "stop": ["\n"]},
    ("llm", "load"): {"model": "smollm2"},
    ("llm", "unload"): {"model": "nothing-loaded"},
    ("embed", "embed"): {"model": "minilm", "texts": ["a", "b"]},
    ("session", "create"): {"model": "smollm2", "system": "Be brief."},
    ("session", "say"): {"session": "none", "text": "hi"},
    ("session", "history"): {"session": "none"},
    ("session", "delete"): {"session": "none"},
    ("align", "project"): {"from": "minilm", "to": "smollm2", "vector": V[0]},
    ("align", "pairs"): {"from": "minilm", "to": "smollm2", "texts": ["a", "b", "c"]},
    ("align", "fit"): {"from": "minilm", "to": "smollm2", "texts": ["a", "b", "c"]},
    ("align", "fidelity"): {"from": "minilm", "to": "smollm2"},
    ("align", "delete"): {"from": "minilm", "to": "smollm2"},
    ("router", "route"): {"text": "hello"},
    ("router", "chat"): {"text": "hello"},
    ("federation", "link"): {"endpoint": "tcp://127.0.0.1:9", "name": "p1"},
    ("federation", "unlink"): {"name": "p1"},
    ("grid", "join"): {"endpoint": "tcp://127.0.0.1:9", "server_key": "k" * 40},
    ("grid", "hello"): {"member": {"name": "m1", "endpoint": "tcp://127.0.0.1:9", "key": "k" * 40}},
    ("grid", "introduce"): {"member": {"name": "m1", "endpoint": "tcp://127.0.0.1:9",
                                       "key": "k" * 40}},
    ("grid", "beat"): {"from": "m1", "digest": "d", "load": {"models": {}, "in_flight": 0}},
    ("grid", "capabilities"): {"from": "m1", "digest": "d", "services": [], "models": []},
    ("grid", "bye"): {"name": "m1"},
    ("grid", "revoke"): {"name": "m1"},
    ("grid", "revoked"): {"key": "k" * 40},
    ("router", "feedback"): {"message_id": "m1", "route": "chat", "good": True},
    ("router", "threshold"): {"min_score": 0.5},
    ("adapters", "add"): {"path": "/nonexistent/a.gguf", "base": "smollm2", "name": "a1"},
    ("adapters", "show"): {"name": "a1"},
    ("adapters", "remove"): {"name": "a1"},
    ("adapters", "merge"): {"name": "m1", "from": [{"name": "a1", "weight": 1.0},
                                                   {"name": "a2"}]},
    ("adapters", "probe"): {"name": "a1"},
    ("adapters", "wait"): {"name": "a1"},
    ("tools", "list"): {"all": True},
    ("tools", "call"): {"tool": "now", "arguments": {}},
    ("tools", "register"): {"service": "w1", "tools": [{"name": "t1", "description": "d",
                                                        "parameters": {"type": "object"}}]},
    ("tools", "unregister"): {"service": "w1"},
    ("orchestrate", "run"): {"text": "what time is it?", "model": "smollm2"},
    ("orchestrate", "select"): {"text": "what time is it?"},
    ("tuner", "log"): {"limit": 5},
    ("tuner", "apply"): {"id": 1},
    ("tuner", "rollback"): {"id": 1},
    ("tuner", "dismiss"): {"id": 1},
    ("echo", "any"): {"v": V},
}  # fmt: skip


def _paths(value: object, prefix: tuple = ()) -> list[tuple]:
    """Every place in a template a value sits: keys of maps and indexes of lists, nested."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, inner in value.items():
            found += _paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            found += _paths(inner, (*prefix, i))
    return found


def _replace(value: object, path: tuple, new: object) -> object:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        changed = dict(value)
        if rest or new is not _DROP:
            changed[head] = _replace(value.get(head), rest, new)
        else:
            changed.pop(head, None)
        return changed
    if isinstance(value, list) and isinstance(head, int) and head < len(value):
        if not rest and new is _DROP:
            return value[:head] + value[head + 1 :]
        return [_replace(v, rest, new) if i == head else v for i, v in enumerate(value)]
    return None if new is _DROP else new


_DROP = object()  # a field left out
ODD = st.one_of(SCALARS, ARRAYS, VALUES, st.just(_DROP))


def bodies(service: str, op: str):
    """`op`'s template with one to three values (nested ones too) replaced or left out, or
    fields added that the op does not read."""
    template = dict(TEMPLATES.get((service, op), {}))
    places = _paths(template) or [("collection",)]
    near = [(key,) for key in NEAR]
    change = st.tuples(
        st.one_of(st.sampled_from(places), st.sampled_from(places), st.sampled_from(near)), ODD
    )

    def build(changes: list[tuple[tuple, object]]) -> dict:
        body: object = template
        for path, value in changes:
            body = _replace(body, path, value)
        assert isinstance(body, dict)
        return {**body, "op": op}

    return st.lists(change, min_size=1, max_size=3).map(build)


def _short_generation(body: dict) -> dict:
    tokens = body.get("max_tokens")
    if not (isinstance(tokens, int) and tokens <= 0) or isinstance(tokens, bool):
        body["max_tokens"] = MAX_TOKENS  # a valid count stays short; invalid ones are kept
    if body.get("op") in ("fit", "pairs") and not isinstance(body.get("texts"), list):
        body["texts"] = ["one", "two"]  # align never embeds a whole corpus here
    return body


@pytest.fixture(scope="module")
def fuzz_box(models_dir):
    from fixtures_engines import engines_box

    with engines_box(models_dir) as running:
        with running.client(timeout=60) as client:
            _seed(client)
        yield running


def _seed(client) -> None:
    client.request(
        "memory", {"op": "create", "collection": "c", "model": "minilm", "exist_ok": True}
    )
    client.request(
        "memory",
        {"op": "add", "collection": "c", "texts": ["a", "b"], "ids": ["p", "q"], "upsert": True,
         "metadata": [{"n": 1}, {"n": 2}]},
    )  # fmt: skip


def service_ops(box) -> list[tuple[str, str]]:
    """Every (service, op) the box serves in-process."""
    found = []
    for name, svc in sorted(box.box.broker.services.items()):
        handler = svc.handler
        if isinstance(handler, OpService):
            found += [(name, op) for op in handler.ops()]
        elif name == "status":
            found += [(name, op) for op in ("get", "summary")]
        elif name == "orchestrate":
            found += [(name, op) for op in ("run", "select")]
        elif name not in ("http",):  # echo and any other one-op service
            found.append((name, "any"))
    return found


def test_every_service_op_is_covered(fuzz_box):
    covered = {s for s, _ in service_ops(fuzz_box)}
    assert {"memory", "llm", "embed", "session", "align", "router", "federation", "grid",
            "adapters", "tools", "orchestrate", "tuner"} <= covered  # fmt: skip


@pytest.mark.parametrize(
    "service",
    [
        "memory",
        "llm",
        "embed",
        "session",
        "align",
        "router",
        "federation",
        "grid",
        "adapters",
        "tools",
        "orchestrate",
        "tuner",
        "status",
        "echo",
    ],  # fmt: skip
)
def test_random_bodies_get_valid_replies_or_typed_errors(fuzz_box, service):
    ops = [op for s, op in service_ops(fuzz_box) if s == service]
    assert ops, f"no ops found for {service}"
    seen: dict[str, int] = {}

    @settings(
        max_examples=EXAMPLES * len(ops),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(body=st.sampled_from(ops).flatmap(lambda op: bodies(service, op)))
    def check(body: dict) -> None:
        body = _short_generation(body)
        with fuzz_box.client(timeout=120) as client:
            try:
                client.request(service, body)
                seen["ok"] = seen.get("ok", 0) + 1
            except BoxError as exc:
                assert exc.code in TYPED, f"{service} {body!r:.400} -> {exc}"
                seen[exc.code] = seen.get(exc.code, 0) + 1
            assert client.request("echo", {"alive": 1}) == {"alive": 1}
            if service == "memory" and body.get("op") in ("drop", "delete"):
                _seed(client)  # the next examples find the collection they aim at

    check()
    with fuzz_box.client(timeout=30) as client:
        stats = client.status()["services"][service]
    assert stats["errors"] == 0, (service, stats)
    assert sum(seen.values()) >= len(ops)
