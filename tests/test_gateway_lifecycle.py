"""The gateway in a real `aether-box run` process: SIGTERM with a stream in flight ends the
stream with a reason and the process exits cleanly (and never blocked its event loop)."""

from __future__ import annotations

import time

from fixtures_box import BoxProcess
from fixtures_gateway import start_long_stream


def test_sigterm_with_a_stream_in_flight_ends_it_with_a_reason(models_dir, data_dir):
    box = BoxProcess(
        data_dir, "--set", f'models.dir="{models_dir}"', "--set", "bus.shutdown_grace_s=0.5"
    )
    try:
        with box.client(timeout=10) as client:
            url = client.status()["http"]["url"]
        sock, received = start_long_stream(url, events=3)
        started = time.monotonic()
        assert box.stop() == 0  # SIGTERM; also checks the box never blocked its loop
        assert time.monotonic() - started < 10
        while chunk := sock.recv(65536):
            received += chunk
        sock.close()
        last = received.rstrip().rsplit(b"data: ", 1)[1]
        assert b"shut down" in last, received[-500:]
    finally:
        box.stop()
