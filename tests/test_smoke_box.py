"""The box starts, answers status and echo, and stops cleanly."""

import numpy as np


def test_echo_and_status_in_thread(box):
    with box.client(timeout=5) as client:
        reply = client.request("echo", {"n": 3, "v": np.ones((2, 3), np.float32)})
        status = client.status()
    assert reply["n"] == 3 and reply["v"].shape == (2, 3)
    assert {"echo", "status"} <= set(status["services"])
    assert status["services"]["echo"]["requests"] == 1
