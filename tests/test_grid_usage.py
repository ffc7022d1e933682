"""The grid as a user meets it: joins that cannot work, and leaving while a member is down.

One box runs in this process; several run as processes (each needs its own ZAP handler),
on loopback with CURVE forced on (tests/test_grid.py also tries network namespaces)."""

from __future__ import annotations

import pytest
import zmq.auth
from click.testing import CliRunner
from fixtures_box import BoxInThread, wait_for
from fixtures_grid import MODE_ENV, GridBox, Network, admit

from aether_box.bus.security import init_keys, keys_dir
from aether_box.cli import cli
from aether_box.client import BadRequest


def grid(box: BoxInThread | GridBox, *args: str):
    return CliRunner().invoke(cli, ["--data-dir", str(box.data_dir), "grid", *args])


def test_a_join_that_cannot_work_says_why_at_once(data_dir):
    init_keys(data_dir)
    own = keys_dir(data_dir) / "server.key"
    a = BoxInThread(data_dir, {"bus": {"curve": "on"}, "grid": {"name": "a"}})
    try:
        for endpoint in ("garbage", "tcp://x", "http://127.0.0.1:7745"):
            joined = grid(a, "join", endpoint, "--server-key", str(own))
            assert joined.exit_code == 1, joined.output
            assert "tcp://host:port" in joined.output and "internal" not in joined.output
        with a.client(timeout=10) as client:  # no five-second wait for its own silence
            body = {
                "op": "join",
                "endpoint": a.tcp_endpoint,
                "server_key": zmq.auth.load_certificate(own)[0].decode(),
            }
            with pytest.raises(BadRequest, match="this box itself"):
                client.request("grid", body, timeout=2)
            assert client.request("grid", {"op": "status"})["members"] == []
    finally:
        a.stop()


@pytest.fixture
def loopback(monkeypatch):
    """Boxes as processes (one ZAP handler each) on loopback with CURVE forced on."""
    monkeypatch.setenv(MODE_ENV, "loopback")
    return Network(3)


def test_a_member_that_was_down_when_others_left_drops_them_once_back(loopback, tmp_path):
    a, b, c = (GridBox(loopback, i, n, tmp_path) for i, n in enumerate("abc", 1))
    try:
        for box in (a, b, c):
            box.start()
        admit(a, b)
        admit(a, c)  # both join through a: b knows c only from a's introduction
        for box in (b, c):
            joined = grid(box, "join", endpoint(a), "--server-key", str(a.key_file))
            assert joined.exit_code == 0, joined.output
        wait_for(lambda: states(c) == {"a": "up", "b": "up"}, 10, "c in the mesh")
        c.port = endpoint(c).rsplit(":", 1)[1]  # it comes back where the others look
        # A federation link may not take a member's name: its services are `a/...` here.
        taken = CliRunner().invoke(
            cli, ["--data-dir", str(c.data_dir), "link", endpoint(a), "--name", "a"]
        )
        assert taken.exit_code == 1 and "is already served here" in taken.output, taken.output

        # b leaves while c is down; c comes back (b no longer admits it): b tells it.
        c.stop()
        wait_for(lambda: states(b)["c"] == "down", 10, "b seeing c down")
        row = next(r for r in grid(b, "status").output.splitlines() if r.startswith("│ c "))
        assert row.split("│")[5].strip() == "-"  # no queue figure for a member that is down
        left = grid(b, "leave")
        assert left.exit_code == 0 and "not told (down): c" in left.output, left.output
        c.start()
        wait_for(lambda: states(c) == {"a": "up"}, 20, "c dropping b")
        assert states(b) == {} and states(a) == {"c": "up"}

        # a leaves while c is down; c is back and says hello to a, which still admits its
        # key (authorized by hand): a answers that it left, and does not take c back.
        c.stop()
        assert "not told (down): c" in grid(a, "leave").output
        c.start()
        wait_for(lambda: states(c) == {}, 20, "c dropping a")
        assert states(a) == {}
        assert "c" not in (a.data_dir / "grid.leaving.toml").read_text()
    finally:
        for box in (a, b, c):
            box.stop()
            box.remove()


def endpoint(box: GridBox) -> str:
    return box.grid()["endpoint"]


def states(box: GridBox) -> dict[str, str]:
    return {name: m["state"] for name, m in box.members().items()}
