"""Regressions for the faults found when the box was tried against bad input (issue #22).

Each test sends what a careless or hostile local app sent, and checks that the answer is a
typed error (never `internal`), that the box keeps answering, and that nothing it saved
stops it from starting again.
"""

from __future__ import annotations

import logging
import os
import queue
import stat
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import tomli_w
import zmq
from fixtures_box import BoxInThread, BoxProcess, wait_for

from aether_box.bus.protocol import CANCEL_SERVICE, CLIENT, RID, ClientCmd, decode_body
from aether_box.client import BadRequest, NotFound
from aether_box.logs import MAX_LOG_CHARS, _Handoff


def raw_request(endpoint: str, service: bytes, *body: bytes, timeout_ms: int = 10_000) -> dict:
    """Send one request as raw frames (what our client would never send); the decoded reply."""
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.linger = 0
    socket.rcvtimeo = timeout_ms
    try:
        socket.connect(endpoint)
        socket.send_multipart([CLIENT, ClientCmd.REQUEST, service, *body])
        frames = socket.recv_multipart()
    finally:
        socket.close()
    assert frames[:2] == [CLIENT, ClientCmd.FINAL], frames[:2]
    return decode_body(frames[3:])


def error_of(reply: dict) -> str | None:
    error = reply.get("error")
    return error["code"] if error else None


# ----------------------------------------------------------------- long strings


def test_a_long_user_string_is_cut_in_the_log():
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    handler = _Handoff(records)
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "model %r", ("m" * 2**20,), None)
    handler.handle(record)
    logged = records.get_nowait().getMessage()
    assert len(logged) < MAX_LOG_CHARS + 100
    assert logged.endswith("more characters not logged]")


@pytest.fixture(scope="module")
def box_process(tmp_path_factory, models_dir):
    """A real `aether-box run` with its log, started under umask 000 (files 0666 and dirs 0777
    unless the box restricts them itself; the common 022 gave the 0755/0644 found)."""
    data_dir = tmp_path_factory.mktemp("found")
    old = os.umask(0o000)
    try:
        running = BoxProcess(data_dir, "--set", f"models.dir={models_dir}")
    finally:
        os.umask(old)
    yield running
    running.stop()


def test_a_megabyte_name_is_refused_at_once_and_stalls_no_one(box_process):
    huge = "m" * 2**20
    with box_process.client(timeout=30) as client:
        started = time.monotonic()
        with pytest.raises(BadRequest, match="1 to 256 characters"):
            client.request("memory", {"op": "create", "collection": "c", "model": huge, "dim": 4})
        for service, body in (
            ("llm", {"op": "chat", "model": huge, "messages": []}),
            ("embed", {"op": "embed", "model": huge, "texts": ["x"]}),
            ("session", {"op": "say", "session": huge, "text": "x"}),
            ("align", {"op": "project", "from": huge, "to": "x", "vector": [1.0]}),
        ):
            with pytest.raises(BadRequest, match="1 to 256 characters"):
                client.request(service, body)
        # Nothing of it was formatted on the loop: the whole exchange took well under a second
        # of the box's time, where logging it took 46 s (64 KiB) to 50 minutes (1 MiB).
        assert time.monotonic() - started < 5
        client.request("echo", {"still": "answering"})


# ----------------------------------------------------------------- files


def test_the_data_dir_and_every_file_are_private_whatever_the_umask(box_process):
    data_dir = box_process.data_dir
    old = os.umask(0o000)
    try:
        from click.testing import CliRunner

        from aether_box.cli import cli

        result = CliRunner().invoke(cli, ["--data-dir", str(data_dir), "keys", "init"])
        assert result.exit_code == 0, result.output
    finally:
        os.umask(old)
    mode = lambda path: stat.S_IMODE(path.lstat().st_mode)  # noqa: E731
    assert mode(data_dir) == 0o700
    assert mode(data_dir / "bus.sock") & 0o077 == 0
    checked = []
    for path in data_dir.rglob("*"):
        if path.name == "box-process.log" or path.is_symlink():  # the test's own capture
            continue
        checked.append(path.relative_to(data_dir).as_posix())
        assert mode(path) & 0o077 == 0, f"{path} is {oct(mode(path))}"
    for expected in ("memory.db", "sessions.db", "logs/box.log", "keys/server.key_secret"):
        assert expected in checked
    assert any(name.endswith("-wal") for name in checked)


def test_a_data_dir_left_open_by_an_older_version_is_made_private(data_dir):
    data_dir.chmod(0o755)
    (data_dir / "config.toml").write_text("")
    (data_dir / "config.toml").chmod(0o644)
    running = BoxInThread(data_dir, components=[])
    running.stop()
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / "config.toml").stat().st_mode) == 0o600


# ----------------------------------------------------------------- federation links


def test_an_overlong_link_is_refused_before_it_is_saved(data_dir):
    running = BoxInThread(data_dir)
    try:
        with running.client(timeout=10) as client:
            for endpoint in ("ipc:///" + "a" * 300, "tcp://host-without-port", "x" * 10_000):
                with pytest.raises(BadRequest, match="endpoint"):
                    client.request("federation", {"op": "link", "endpoint": endpoint})
            with pytest.raises(BadRequest):
                client.request("federation", {"op": "link", "endpoint": "tcp://h:1", "name": [1]})
            assert client.request("federation", {"op": "peers"})["peers"] == []
    finally:
        running.stop()
    assert (
        "aaaa" not in (data_dir / "peers.toml").read_text()
        if (data_dir / "peers.toml").exists()
        else True
    )


def test_a_saved_link_that_cannot_start_is_reported_and_skipped(data_dir):
    peers = {
        "peers": {
            "long": {"endpoint": "ipc:///" + "a" * 300},  # saved by an older version
            "typo": {"endpoint": "tcp://1.2.3.4"},  # no port: zmq refuses it
            "ok": {"endpoint": "tcp://127.0.0.1:9"},  # down, but a valid link
        }
    }
    (data_dir / "peers.toml").write_text(tomli_w.dumps(peers))
    running = BoxInThread(data_dir, {"federation": {"refresh_s": 0.3}})
    try:
        with running.client(timeout=10) as client:
            listed = {p["name"]: p for p in client.request("federation", {"op": "peers"})["peers"]}
            assert listed["long"]["state"] == "invalid" and "ipc path" in listed["long"]["error"]
            assert listed["typo"]["state"] == "invalid"
            assert listed["ok"]["state"] in ("connecting", "down")
            assert running.box.supervisors["federation"].restarts == 0
            assert client.request("federation", {"op": "unlink", "name": "long"})
            listed = client.request("federation", {"op": "peers"})["peers"]
            assert "long" not in {p["name"] for p in listed}
    finally:
        running.stop()
    assert "aaaa" not in (data_dir / "peers.toml").read_text()


# ----------------------------------------------------------------- typed errors


@pytest.fixture(scope="module")
def kit_box(models_dir):
    from fixtures_engines import engines_box

    with engines_box(models_dir) as running:
        yield running


def test_integers_beyond_64_bits_are_bad_requests(kit_box):
    with kit_box.client(timeout=30) as client:
        client.request("memory", {"op": "create", "collection": "big", "model": "minilm"})
        client.request("memory", {"op": "add", "collection": "big", "texts": ["one"]})
        for body in (
            {"op": "list", "cursor": 2**64 - 1},
            {"op": "list", "cursor": 2**63},
            {"op": "count", "where": {"n": 2**64 - 1}},
            {"op": "count", "where": {"n": {"$gt": 2**63}}},
            {"op": "search", "text": "one", "where": {"n": {"$contains": 2**64 - 1}}},
        ):
            with pytest.raises(BadRequest):
                client.request("memory", {"collection": "big", **body})
        assert client.status()["services"]["memory"]["errors"] == 0


def test_deleting_a_session_while_it_answers_is_not_found(kit_box):
    with kit_box.client(timeout=60) as client:
        session = client.request("session", {"op": "create", "model": "smollm2"})["session"]
        errors_before = client.status()["services"]["session"]["errors"]
        stream = client.stream(
            "session",
            {
                "op": "say",
                "session": session,
                "text": "Count to fifty.",
                "stream": True,
                "max_tokens": 200,
                "temperature": 0,
            },
        )
        next(stream)  # it is answering now
        with kit_box.client(timeout=30) as other:
            assert other.request("session", {"op": "delete", "session": session})["deleted"]
        with pytest.raises(NotFound, match="deleted while it answered"):
            for _ in stream:
                pass
        assert client.status()["services"]["session"]["errors"] == errors_before


def test_odd_request_ids_and_cancel_ids_get_typed_errors(kit_box):
    endpoint = kit_box.endpoint
    for rid in ([1, 2], {"a": 1}, 1.5, "r" * 1000):
        reply = raw_request(endpoint, b"memory", msgpack.packb({"op": "collections", RID: rid}))
        assert error_of(reply) == "bad_frames", (rid, reply)
        reply = raw_request(endpoint, b"echo", msgpack.packb({"x": 1, RID: rid}))
        assert error_of(reply) == "bad_frames", (rid, reply)
    for rid in ([1, 2], {"a": 1}):
        reply = raw_request(endpoint, CANCEL_SERVICE.encode(), msgpack.packb({"rid": rid}))
        assert error_of(reply) == "bad_frames", (rid, reply)
    assert raw_request(endpoint, b"echo", msgpack.packb({"x": 1, RID: 7}))[RID] == 7
    with kit_box.client(timeout=10) as client:
        services = client.status()["services"]
        assert services["memory"]["errors"] == services["echo"]["errors"] == 0
        assert client.status()["rejected"].get("internal", 0) == 0


def test_huge_shapes_are_refused(kit_box):
    endpoint = kit_box.endpoint
    for shape in ([2**64 - 1], [2**40, 0], [0, 2**62, 2**62], [1] * 40, [-1]):
        header = {"op": "add", "collection": "big", "_arrays": [["vectors", "<f4", shape]]}
        reply = raw_request(endpoint, b"memory", msgpack.packb(header), b"")
        assert error_of(reply) == "bad_frames", (shape, reply)
    with kit_box.client(timeout=10) as client:
        assert client.status()["services"]["memory"]["errors"] == 0
        np.testing.assert_array_equal(
            client.request("echo", {"v": np.ones((2, 3), np.float32)})["v"], np.ones((2, 3))
        )


# ----------------------------------------------------------------- events


def test_a_subscriber_that_stops_reading_costs_a_bounded_queue_and_stalls_nothing(box):
    import psutil

    from aether_box.bus.events import MAX_EVENT_BYTES, QUEUE_BYTES

    context = zmq.Context.instance()
    stuck = context.socket(zmq.SUB)  # subscribes to everything, then never reads
    stuck.linger = 0
    stuck.rcvhwm = 10
    stuck.subscribe(b"")
    stuck.connect(f"ipc://{box.data_dir}/events.sock")
    reader = context.socket(zmq.SUB)
    reader.linger = 0
    reader.subscribe(b"flood.")
    reader.connect(f"ipc://{box.data_dir}/events.sock")
    events = box.box.events
    with box.client(timeout=10) as client:
        client.request("echo", {"warm": True})
        # The subscribers are connected once an event reaches the reader.
        wait_for(
            lambda: (box.portal.call(events.publish, "flood.hello", {}), reader.poll(50))[1],
            10,
            "the subscriber connecting",
        )
        reader.recv_multipart()
        process = psutil.Process()
        rss_before = process.memory_info().rss
        payload = "x" * (MAX_EVENT_BYTES // 2)

        def flood() -> float:
            started = time.monotonic()
            for _ in range(20_000):  # 160 MB of events, were they all kept
                events.publish("flood.big", {"payload": payload})
            return time.monotonic() - started

        took = box.portal.call(_run_sync_on_loop, flood)
        assert took < 10  # publishing never waited on the subscriber
        started = time.monotonic()
        client.request("echo", {"after": "flood"})
        assert time.monotonic() - started < 1
        growth = process.memory_info().rss - rss_before
        assert growth < 2 * QUEUE_BYTES + 64 * 2**20, growth / 2**20
        dropped_before = sum(client.status()["events"]["dropped"].values())
        box.portal.call(events.publish, "flood.huge", {"payload": "x" * MAX_EVENT_BYTES})
        report = client.status()["events"]
        assert sum(report["dropped"].values()) == dropped_before + 1
        assert report["queue_bytes_max"] == QUEUE_BYTES
        # The reader saw the flood in order, and can count what it missed from `seq`.
        seqs = []
        while reader.poll(200):
            seqs.append(msgpack.unpackb(reader.recv_multipart()[1])["seq"])
        assert seqs and seqs == sorted(seqs)
    stuck.close()
    reader.close()


async def _run_sync_on_loop(func):
    return func()


# ----------------------------------------------------------------- metrics address


@pytest.mark.parametrize("address", ["0.0.0.0:7747", "[::]:0", "example.org:7747", "10.1.2.3:9"])
def test_metrics_on_a_non_loopback_address_are_refused_unless_made_public(data_dir, address):
    from aether_box.config import Config
    from aether_box.errors import ConfigError
    from aether_box.monitor.settings import MonitorSettings

    with pytest.raises(ConfigError, match="metrics_public"):
        Config(data_dir, {"monitor": {"metrics_address": address}}).get(MonitorSettings)
    public = {"metrics_address": address, "metrics_public": True}
    assert Config(data_dir, {"monitor": public}).get(MonitorSettings).metrics_public
    for loopback in ("127.0.0.1:0", "localhost:7747", "[::1]:7747"):
        settings = Config(data_dir, {"monitor": {"metrics_address": loopback}}).get(MonitorSettings)
        assert settings.metrics_address == loopback


# ----------------------------------------------------------------- models add


def _broken_copies(good: Path, where: Path) -> dict[str, Path]:
    """Copies of a real GGUF file, each broken the way downloads and disks break them."""
    data = good.read_bytes()
    broken = {
        "truncated": data[: len(data) - 4096],  # the tail of the last tensor is missing
        "header_only": data[:100_000],
        "bad_version": data[:4] + (99).to_bytes(4, "little") + data[8:],
        "huge_count": data[:8] + (2**62).to_bytes(8, "little") + data[16:],
        "zeroed_metadata": data[:24] + b"\xff" * 4096 + data[24 + 4096 :],
    }
    paths = {}
    for name, content in broken.items():
        paths[name] = where / f"{name}.gguf"
        paths[name].write_bytes(content)
    return paths


def test_models_add_reads_the_gguf_header_and_refuses_broken_files(models_dir, tmp_path):
    from click.testing import CliRunner

    from aether_box.cli import cli

    good = next((models_dir / "smollm2").glob("*.gguf"))
    data_dir = tmp_path / "box"
    own = tmp_path / "models"
    runner = CliRunner()
    base = ["--data-dir", str(data_dir), "--set", f"models.dir={own}", "models"]
    for name, path in _broken_copies(good, tmp_path).items():
        result = runner.invoke(cli, [*base, "add", str(path)])
        assert result.exit_code != 0, name
        assert "[corrupt_model]" in result.output, (name, result.output)
    listed = runner.invoke(cli, [*base, "list"]).output
    assert "truncated" not in listed and "header" not in listed
    result = runner.invoke(cli, [*base, "add", str(good), "--name", "mine"])
    assert result.exit_code == 0, result.output
    assert "mine" in runner.invoke(cli, [*base, "list"]).output


# ----------------------------------------------------------------- full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MB file system made for the test (tmpfs; needs root), and a way to fill it."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small file system for the test: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError:
        pass
    try:
        while True:
            os.write(fd, b"\0")
    except OSError:
        pass
    os.close(fd)
    return filler


def test_a_full_disk_answers_disk_full_keeps_reads_and_the_box_starts(small_disk, tmp_path):
    data_dir = small_disk / "box"
    data_dir.mkdir()
    vectors = np.eye(8, dtype=np.float32)[:3]
    query = {"op": "search", "collection": "c", "vector": vectors[0]}
    running = BoxProcess(data_dir, log_path=tmp_path / "box1.log")
    try:
        with running.client(timeout=30) as client:
            client.request("memory", {"op": "create", "collection": "c", "model": "m", "dim": 8})
            added = client.request(
                "memory", {"op": "add", "collection": "c", "vectors": vectors, "texts": list("abc")}
            )
            filler = _fill(small_disk)
            big = {"op": "add", "collection": "c", "vectors": np.ones((500, 8), np.float32),
                   "texts": ["x" * 2000] * 500}  # fmt: skip
            with pytest.raises(Exception) as refused:
                client.request("memory", big)
            assert getattr(refused.value, "code", None) == "disk_full", refused.value
            assert "Free space" in str(refused.value)
            assert client.request("memory", query)["results"][0]["id"] == added["ids"][0]
            assert client.request("memory", {"op": "check"})["ok"]
            # Space freed: writes work again, without a restart.
            filler.unlink()
            client.request("memory", {"op": "add", "collection": "c", "vectors": vectors[:1],
                                      "texts": ["d"]})  # fmt: skip
            _fill(small_disk)
    finally:
        running.stop()
    # It starts on the full disk, reads what was acknowledged, and says why writes fail.
    again = BoxProcess(data_dir, log_path=tmp_path / "box2.log")
    try:
        with again.client(timeout=30) as client:
            assert client.request("memory", {"op": "count", "collection": "c"})["count"] == 4
            assert client.request("memory", query)["results"][0]["text"] == "a"
            with pytest.raises(Exception) as refused:
                client.request("memory", {"op": "add", "collection": "c",
                                          "vectors": vectors[:1], "texts": ["e"]})  # fmt: skip
            assert getattr(refused.value, "code", None) == "disk_full"
            assert client.request("session", {"op": "list"})["sessions"] == []
            assert client.status()["services"]["memory"]["requests"] >= 3
    finally:
        again.stop()
