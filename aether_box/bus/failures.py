"""What a service's unexpected exception becomes on the wire.

Most are bugs: answered `internal`, with the traceback in the box log. A few are the
machine's state, not a bug, and get a typed error that says what to do instead: a full disk
(SQLite's SQLITE_FULL, or ENOSPC from a file write) answers `disk_full`, without a
traceback, while reads go on being answered.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import apsw

from aether_box.errors import BoxError, DiskFull

__all__ = ["DISK_FULL_HINT", "failure_error", "is_disk_full", "no_space_at"]

DISK_FULL_HINT = (
    "Free space there (old exports, logs in <data dir>/logs, models you no longer use) "
    "and retry; `aether-box status` shows the data dir"
)
# Under this much free space, a database that fails to open is taken to have failed for it:
# SQLite needs room for its write-ahead log index (32 KiB) even to read.
MIN_FREE_BYTES = 1 << 20

log = logging.getLogger(__name__)


def failure_error(service: str, exc: Exception) -> BoxError:
    """The error to answer for `exc`, raised by `service`'s handler; logs it as it deserves."""
    if is_disk_full(exc):
        log.warning("%s: the disk is full (%s)", service, exc)
        return DiskFull(
            f"{service}: the disk that holds the box's data dir is full, so nothing was "
            f"written (reads still work). {DISK_FULL_HINT}"
        )
    log.error("service %s failed", service, exc_info=exc)
    return BoxError(f"{service} failed: {exc!r}; see the box log")


def no_space_at(path: Path) -> bool:
    """Whether the file system holding `path` (a directory) is (nearly) full."""
    try:
        stats = os.statvfs(path)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < MIN_FREE_BYTES


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether `exc`, or what caused it, says the disk is full."""
    seen = 0
    while exc is not None and seen < 8:  # the cause chain: a store may wrap what SQLite said
        if isinstance(exc, apsw.FullError):
            return True
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False
