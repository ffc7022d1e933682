"""The gateway in a real `aether-box run` process: SIGTERM with a stream in flight ends the
stream with a reason and the process exits cleanly (and never blocked its event loop)."""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlsplit

from fixtures_box import BoxProcess


def test_sigterm_with_a_stream_in_flight_ends_it_with_a_reason(models_dir, data_dir):
    box = BoxProcess(
        data_dir, "--set", f'models.dir="{models_dir}"', "--set", "bus.shutdown_grace_s=0.5"
    )
    try:
        with box.client(timeout=10) as client:
            url = urlsplit(client.status()["http"]["url"])
        body = json.dumps(
            {
                "model": "smollm2",
                "messages": [
                    {"role": "user", "content": "Tell me a very long story about a dragon."}
                ],
                "stream": True,
                "max_tokens": 4000,
                "temperature": 0,  # greedy: runs for hundreds of tokens, past the 0.5 s grace
            }
        ).encode()
        sock = socket.create_connection((url.hostname, url.port), timeout=60)
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: box\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
        received = b""
        while received.count(b"data: ") < 3:
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk
        assert b'finish_reason":"' not in received.replace(b" ", b""), "answered before SIGTERM"
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
