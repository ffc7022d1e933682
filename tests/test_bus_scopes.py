"""Access scopes: the ipc socket is admin, plain loopback tcp is `use`, CURVE keys carry theirs."""

from __future__ import annotations

import numpy as np
import pytest
import zmq
import zmq.auth
from click.testing import CliRunner
from fixtures_box import BoxInThread
from rich.console import Console

from aether_box.bus.scopes import (
    ADMIN,
    READ,
    USE,
    allows_every_op,
    floor_scope,
    required_scope,
)
from aether_box.bus.security import CurveKeys, init_keys, scopes_in
from aether_box.cli import cli
from aether_box.client import BoxError, Client
from aether_box.errors import Forbidden
from aether_box.status_view import render_status

VECTORS = np.eye(4, dtype=np.float32)[:2]
CREATE = {"op": "create", "collection": "c", "model": "m", "dim": 4, "exist_ok": True}
ADD = {"op": "add", "collection": "c", "vectors": VECTORS, "texts": ["a", "b"]}
SEARCH = {"op": "search", "collection": "c", "vector": VECTORS[0]}
DROP = {"op": "drop", "collection": "c", "missing_ok": True}


def test_each_op_names_the_scope_it_needs():
    assert required_scope("status", None) == READ
    assert required_scope("memory", "search") == READ
    assert required_scope("memory", "add") == USE
    assert required_scope("llm", "chat") == USE
    assert required_scope("some-tool", "anything") == USE
    assert required_scope("adapters", "show") == required_scope("tools", "list") == READ
    for service, op in [
        ("memory", "drop"),
        ("memory", "delete"),
        ("federation", "link"),
        ("federation", "unlink"),
        ("grid", "join"),
        ("models", "add"),
        ("adapters", "remove"),
        ("tuner", "apply"),
        ("align", "promote"),
        ("align", "rollback"),
        ("router", "threshold"),
        ("lab/memory", "drop"),  # a peer's memory, forwarded: the same op
    ]:
        assert required_scope(service, op) == ADMIN, (service, op)


def test_the_broker_skips_the_scope_look_only_where_no_connection_could_be_refused():
    # The broker reads a connection's scope only when the least scope any connection can
    # have here does not allow every op of the service.
    assert floor_scope(loopback_admin=False, curve=True) == READ  # a key may be read-only
    assert floor_scope(loopback_admin=False, curve=False) == USE
    assert floor_scope(loopback_admin=True, curve=False) == ADMIN
    assert allows_every_op(ADMIN, "memory")
    assert allows_every_op(USE, "embed") and allows_every_op(USE, "lab/embed")
    assert not allows_every_op(USE, "memory") and not allows_every_op(USE, "lab/llm")
    assert allows_every_op(READ, "echo") and allows_every_op(READ, "status")
    assert not allows_every_op(READ, "embed") and not allows_every_op(READ, "memory")


def test_plain_loopback_tcp_is_use_and_the_ipc_socket_is_admin(data_dir):
    running = BoxInThread(data_dir)
    try:
        with Client(running.tcp_endpoint, data_dir=data_dir, timeout=10, curve=False) as tcp:
            tcp.request("memory", CREATE)
            tcp.request("memory", ADD)
            assert tcp.request("memory", SEARCH)["results"]
            for body in (DROP, {"op": "delete", "collection": "c", "ids": ["x"]}):
                with pytest.raises(Forbidden, match="needs the admin scope") as refused:
                    tcp.request("memory", body)
                assert "plain tcp on loopback" in str(refused.value)
                assert "bus.loopback_admin" in str(refused.value)
            with pytest.raises(Forbidden, match="federation link needs the admin scope"):
                tcp.request("federation", {"op": "link", "endpoint": "tcp://127.0.0.1:9"})
            assert tcp.request("memory", {"op": "count", "collection": "c"})["count"] == 2
            status = tcp.status()
            assert status["rejected"]["forbidden"] == 3
            assert status["access"]["loopback_tcp"] == "use"
            console = Console(record=True, width=200)
            render_status(status, console)  # what `aether-box status` prints
            printed = console.export_text()
            assert (
                "access: ipc admin, loopback tcp use, CURVE the key's scope; 3 ops refused"
                in printed
            )
            assert (
                "events: " in printed and "a stalled subscriber holds at most 15.6 MiB" in printed
            )
        with running.client(timeout=10) as ipc:
            assert ipc.request("memory", DROP)["dropped"]
    finally:
        running.stop()


def test_loopback_admin_gives_plain_tcp_every_op(data_dir):
    running = BoxInThread(data_dir, {"bus": {"loopback_admin": True}})
    try:
        with Client(running.tcp_endpoint, data_dir=data_dir, timeout=10, curve=False) as tcp:
            tcp.request("memory", CREATE)
            assert tcp.request("memory", DROP)["dropped"]
    finally:
        running.stop()


def _keypair(where, name: str) -> tuple[CurveKeys, object]:
    public_file, secret_file = zmq.auth.create_certificates(where, name)
    return CurveKeys.load(secret_file), public_file


def test_keys_init_authorizes_the_data_dirs_own_client_key_as_admin(data_dir):
    # The README: "`keys init` authorizes the data dir's own client key as `admin`".
    root = init_keys(data_dir)
    own, _ = zmq.auth.load_certificate(root / "client.key")
    assert scopes_in(root / "authorized") == {own: ADMIN}


def test_curve_keys_carry_the_scope_they_were_authorized_with(data_dir, tmp_path):
    init_keys(data_dir)  # its own client key is admin
    runner = CliRunner()
    keys = {}
    for scope in ("read", "use", "admin"):
        pair, public_file = _keypair(tmp_path, f"app-{scope}")
        result = runner.invoke(
            cli,
            [
                "--data-dir",
                str(data_dir),
                "keys",
                "authorize",
                str(public_file),
                "--scope",
                scope,
            ],  # fmt: skip
        )
        assert result.exit_code == 0, result.output
        assert f"scope {scope}" in result.output
        keys[scope] = pair
    bad = runner.invoke(
        cli, ["--data-dir", str(data_dir), "keys", "authorize", str(public_file), "--scope", "x"]
    )
    assert bad.exit_code != 0
    running = BoxInThread(data_dir, {"bus": {"curve": "on"}})
    server_public = zmq.auth.load_certificate(data_dir / "keys" / "server.key")[0]

    def client(scope: str) -> Client:
        curve = (keys[scope], server_public)
        return Client(running.tcp_endpoint, data_dir=data_dir, timeout=10, curve=curve)

    try:
        with Client(running.tcp_endpoint, data_dir=data_dir, timeout=10) as own:
            own.request("memory", CREATE)  # the data dir's own client key: admin
            own.request("memory", ADD)
        with client("read") as reader:
            assert reader.request("memory", SEARCH)["results"]
            assert reader.status()["ready"]
            with pytest.raises(Forbidden, match="memory add needs the use scope") as refused:
                reader.request("memory", ADD)
            assert "--scope use" in str(refused.value)
            with pytest.raises(Forbidden, match="needs the use scope"):
                reader.request("llm", {"op": "chat", "model": "x", "messages": []})
        with client("use") as user:
            user.request("memory", {**ADD, "upsert": True})
            with pytest.raises(Forbidden, match="memory drop needs the admin scope"):
                user.request("memory", DROP)
        with client("admin") as admin:
            assert admin.request("memory", DROP)["dropped"]
    finally:
        running.stop()


def test_names_from_requests_never_reach_outside_the_data_dir(data_dir, tmp_path):
    outside = tmp_path / "outside"
    (outside / "projectors").mkdir(parents=True)
    (outside / "keep.txt").write_text("mine")
    running = BoxInThread(data_dir)
    escape = "../../" * 8 + str(outside)
    try:
        with running.client(timeout=30) as client:
            for op in ("delete", "fit", "pairs", "fidelity", "project"):
                for source, target in ((escape, "x"), ("x", "/" + str(outside)), ("..", "..")):
                    body = {"op": op, "from": source, "to": target, "texts": ["a", "b"],
                            "vector": [1.0, 0.0]}  # fmt: skip
                    with pytest.raises(Exception) as refused:
                        client.request("align", body)
                    code = getattr(refused.value, "code", None)
                    assert code in ("bad_request", "not_found", "unavailable"), refused.value
            for service, body in (
                ("memory", {"op": "create", "collection": "../x", "model": "m", "dim": 2}),
                ("federation", {"op": "link", "endpoint": "tcp://h:1", "name": "../../x"}),
                ("session", {"op": "history", "session": "../../etc/passwd"}),
            ):
                with pytest.raises(Exception) as refused:
                    client.request(service, body)
                assert getattr(refused.value, "code", None) in ("bad_request", "not_found")
            assert client.status()["services"]["align"]["errors"] == 0
    finally:
        running.stop()
    assert sorted(p.name for p in outside.rglob("*")) == ["keep.txt", "projectors"]


def _escapes(outside) -> list[str]:
    """Names that would leave a directory were they joined to it."""
    return ["../../" * 8 + str(outside / "x"), str(outside / "x"), "..", ".", "a/../../x",
            "..\\..\\x", "x\0y", ".hidden"]  # fmt: skip


def _name_ops(name: str, file: str) -> list[tuple[str, dict]]:
    """Every op that takes a name from the request, with `name` in each name field."""
    v = [1.0, 0.0]
    ops: list[tuple[str, dict]] = [
        ("memory", {"op": "create", "collection": name, "model": "m", "dim": 2}),
        ("memory", {"op": "add", "collection": name, "vectors": np.eye(2, dtype=np.float32),
                    "texts": ["a", "b"]}),
        ("memory", {"op": "search", "collection": name, "vector": np.ones(2, np.float32)}),
        ("memory", {"op": "drop", "collection": name}),
        ("memory", {"op": "info", "collection": name}),
        # (A collection's model, given with its dim, is only a label: never a path.)
        ("session", {"op": "create", "model": name}),
        ("session", {"op": "say", "session": name, "text": "hi"}),
        ("session", {"op": "history", "session": name}),
        ("session", {"op": "delete", "session": name}),
        ("llm", {"op": "load", "model": name}),
        ("llm", {"op": "chat", "model": name, "messages": [{"role": "user", "content": "x"}]}),
        ("embed", {"op": "embed", "model": name, "texts": ["x"]}),
        ("adapters", {"op": "add", "path": file, "base": "smollm2", "name": name}),
        ("adapters", {"op": "show", "name": name}),
        ("adapters", {"op": "remove", "name": name}),
        ("adapters", {"op": "probe", "name": name}),
        ("adapters", {"op": "merge", "name": name, "from": [{"name": "a"}, {"name": "b"}]}),
        ("tools", {"op": "call", "tool": name, "arguments": {}}),
        ("tools", {"op": "register", "service": "w1", "tools": [
            {"name": name, "description": "d", "parameters": {"type": "object"}}]}),
        ("federation", {"op": "link", "endpoint": "tcp://127.0.0.1:9", "name": name}),
        ("federation", {"op": "unlink", "name": name}),
        ("grid", {"op": "hello", "member": {"name": name, "endpoint": "tcp://127.0.0.1:9",
                                            "key": "k" * 40}}),
        ("tuner", {"op": "apply", "id": name}),
    ]  # fmt: skip
    for source, target in ((name, "minilm"), ("minilm", name)):
        for op in ("project", "fit", "pairs", "fidelity", "delete", "refit"):
            ops.append(("align", {"op": op, "from": source, "to": target, "texts": ["a", "b"],
                                  "vector": v}))  # fmt: skip
    for op, field in (("promote", "candidate"), ("rollback", "version")):
        ops.append(("align", {"op": op, "from": "minilm", "to": "smollm2", field: name}))
    return ops


def test_no_name_in_any_op_reaches_outside_the_data_dir(data_dir, tmp_path):
    """Each op that takes a name (collections, sessions, models, adapters, projectors, tools,
    peers, grid members), given names that climb out: a typed error, and nothing written or
    removed outside the data dir."""
    outside = tmp_path / "outside"
    # What a projector pair's dir would be, were a climbing name joined to the projectors dir:
    # a delete that followed it would remove these.
    for part in ("projectors", "x", "x__minilm", "minilm__x", "x__minilm/candidates"):
        (outside / part).mkdir(parents=True, exist_ok=True)
        (outside / part / "report.json").write_text("{}")
    (outside / "keep.txt").write_text("mine")
    lora = tmp_path / "adapter.gguf"
    lora.write_bytes(b"GGUF" + b"\0" * 60)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    running = BoxInThread(data_dir)
    seen: dict[str, int] = {}
    try:
        with running.client(timeout=30) as client:
            for name in _escapes(outside):
                for service, body in _name_ops(name, str(lora)):
                    try:
                        reply = client.request(service, body)
                    except BoxError as refused:
                        code = refused.code
                    else:  # only a delete of nothing may answer, and it must say so
                        assert reply in ({"deleted": False},), f"{service} {body}: {reply}"
                        code = "nothing"
                    # A name is refused as such, or looked up and not found; never used.
                    assert code in ("bad_request", "not_found", "not_allowed", "nothing"), (
                        service, body)  # fmt: skip
                    seen[code] = seen.get(code, 0) + 1
            assert client.request("federation", {"op": "peers"})["peers"] == []
            status = client.status()
            errors = {name: s["errors"] for name, s in status["services"].items() if s["errors"]}
            assert errors == {}, errors
    finally:
        running.stop()
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")
                   if not p.is_relative_to(data_dir))  # fmt: skip
    assert after == [p for p in before if not (tmp_path / p).is_relative_to(data_dir)]
    assert seen.get("bad_request", 0) > len(seen) and seen
