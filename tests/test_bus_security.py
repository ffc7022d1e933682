"""CURVE: exposed endpoints need keys; only authorised public keys get through."""

from __future__ import annotations

import subprocess
import sys

import pytest
import zmq
from fixtures_box import BoxInThread

from aether_box.bus.security import CurveKeys, init_keys, is_loopback
from aether_box.client import Client, Timeout
from aether_box.errors import ConfigError


def test_loopback_detection():
    assert is_loopback("tcp://127.0.0.1:7745")
    assert is_loopback("tcp://localhost:7745")
    assert is_loopback("tcp://[::1]:7745")
    assert is_loopback("ipc:///tmp/x.sock")
    assert not is_loopback("tcp://0.0.0.0:7745")
    assert not is_loopback("tcp://*:7745")
    assert not is_loopback("tcp://192.168.1.5:7745")


def test_exposed_bind_without_keys_is_refused_with_a_way_out(data_dir):
    with pytest.raises(ConfigError, match="aether-box keys init"):
        BoxInThread(
            data_dir, {"bus": {"endpoints": ["ipc://{data_dir}/bus.sock", "tcp://0.0.0.0:*"]}}
        )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "aether_box",
            "--data-dir",
            str(data_dir),
            "run",
            "--bind",
            "tcp://0.0.0.0:0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "aether-box keys init" in result.stderr


def test_curve_admits_authorised_keys_only(data_dir):
    init_keys(data_dir)
    running = BoxInThread(data_dir, {"bus": {"curve": "on"}})  # loopback tcp under CURVE too
    try:
        with Client(running.tcp_endpoint, data_dir=data_dir, timeout=5) as client:
            status = client.status()
            assert status["curve"] is True
            assert client.request("echo", {"secret": 1}) == {"secret": 1}

        server_public = zmq.auth.load_certificate(data_dir / "keys" / "server.key")[0]
        stranger = CurveKeys(*zmq.curve_keypair())
        with Client(
            running.tcp_endpoint, data_dir=data_dir, timeout=1, curve=(stranger, server_public)
        ) as client:
            with pytest.raises(Timeout):
                client.request("echo", {"let me": "in"})

        # No CURVE at all: the handshake fails and nothing reaches the box either.
        plain = zmq.Context.instance().socket(zmq.DEALER)
        plain.linger = 0
        plain.connect(running.tcp_endpoint)
        plain.send_multipart([b"MDPC02", b"\x01", b"echo", b"\x80"])
        assert not plain.poll(1000)
        plain.close()

        with Client(
            running.endpoint, timeout=5
        ) as local:  # the ipc socket is guarded by file permissions
            assert local.status()["services"]["echo"]["requests"] == 1
    finally:
        running.stop()
