"""Where a data dir's box listens, and whether anything is listening there at all.

A running box writes ``<data dir>/endpoints.json`` (its bus and event endpoints as bound,
each with whether it speaks CURVE) and removes it when it stops. Clients of that data dir
read it, so a second box started with only ``--data-dir`` (whose default tcp ports were
taken and moved) is found by its own clients. Before a client waits on an endpoint it
probes it: a stale ipc socket or a closed loopback port means no box, said at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aether_box.errors import NoBox

__all__ = [
    "ENDPOINTS_FILE",
    "check_listening",
    "clear_endpoints",
    "published_curve",
    "read_endpoints",
    "write_endpoints",
]

ENDPOINTS_FILE = "endpoints.json"


def write_endpoints(data_dir: Path, bus: dict[str, bool], events: dict[str, bool]) -> None:
    """Record the box's endpoints ({endpoint: uses CURVE}) for its data dir's clients."""
    path = data_dir / ENDPOINTS_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "bus": bus, "events": events}, indent=1))
    tmp.replace(path)  # readers never see half a file


def clear_endpoints(data_dir: Path) -> None:
    """Forget the endpoints (the box is stopping)."""
    (data_dir / ENDPOINTS_FILE).unlink(missing_ok=True)


def read_endpoints(data_dir: Path) -> dict[str, Any] | None:
    """What the data dir's box published, or None when it published nothing readable."""
    try:
        found = json.loads((data_dir / ENDPOINTS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) and isinstance(found.get("bus"), dict) else None


def published_curve(data_dir: Path, endpoint: str) -> bool | None:
    """Whether the data dir's box serves `endpoint` with CURVE (None: it did not say)."""
    found = read_endpoints(data_dir) or {}
    for group in ("bus", "events"):
        curve = (found.get(group) or {}).get(endpoint)
        if isinstance(curve, bool):
            return curve
    return None


def check_listening(endpoint: str, hint: str = "aether-box run") -> None:
    """Raise NoBox when a local endpoint provably has no listener; remote ones pass unchecked.

    The kernel answers a unix-socket or loopback tcp connect at once (refused or accepted);
    the 1 s bound only matters on a machine too loaded to answer, which counts as listening.
    It blocks that long at most: async code calls it in a worker thread.
    """
    parts = urlsplit(endpoint)
    if parts.scheme == "ipc":
        path = endpoint[len("ipc://") :]
        if not Path(path).exists():
            raise NoBox(
                f"no box is running at {endpoint} (no socket file); start one with `{hint}`"
            )
        if not _accepts(socket.AF_UNIX, path):
            raise NoBox(
                f"no box is running at {endpoint} (a stale socket left by a box that stopped); "
                f"start one with `{hint}`"
            )
    elif parts.scheme == "tcp" and parts.hostname in ("127.0.0.1", "localhost", "::1"):
        host = "::1" if parts.hostname == "::1" else "127.0.0.1"
        family = socket.AF_INET6 if host == "::1" else socket.AF_INET
        if parts.port is not None and not _accepts(family, (host, parts.port)):
            raise NoBox(
                f"no box is running at {endpoint} (nothing listens on that port); "
                f"start one with `{hint}`"
            )


def _accepts(family: int, address: Any) -> bool:
    with contextlib.closing(socket.socket(family, socket.SOCK_STREAM)) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(address)
        except TimeoutError:
            return True  # no answer either way: let the request's own timeout decide
        except OSError:
            return False  # refused, or no such path
        return True
