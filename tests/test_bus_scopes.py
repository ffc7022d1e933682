"""Access scopes: the ipc socket is admin, plain loopback tcp is `use`, CURVE keys carry theirs."""

from __future__ import annotations

import numpy as np
import pytest
import zmq
import zmq.auth
from click.testing import CliRunner
from fixtures_box import BoxInThread
from rich.console import Console

from aether_box.bus.scopes import ADMIN, READ, USE, required_scope
from aether_box.bus.security import CurveKeys, init_keys
from aether_box.cli import cli
from aether_box.client import Client
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
    for service, op in [
        ("memory", "drop"),
        ("memory", "delete"),
        ("federation", "link"),
        ("federation", "unlink"),
        ("grid", "join"),
        ("models", "add"),
        ("adapters", "remove"),
        ("tuner", "apply"),
        ("lab/memory", "drop"),  # a peer's memory, forwarded: the same op
    ]:
        assert required_scope(service, op) == ADMIN, (service, op)


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
